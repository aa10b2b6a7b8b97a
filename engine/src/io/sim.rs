//! The simulated backend: datagrams move through in-memory queues instead
//! of a socket, so a shard can run on simulated time inside one thread
//! (fuzz targets, the seeded whole-network simulation in `engine/src/sim.rs`).
//!
//! A [`SimNet`] holds one bounded inbox per bound address; a [`SimBackend`]
//! is one address's end of it. `send` + `flush` move datagrams into the
//! destination's inbox (or count them lost when the inbox is full or
//! nothing is bound there, as a kernel would drop them), `recv` hands over
//! what is waiting, at most `batch` per call, and never blocks: simulated
//! time only moves when the simulator moves it.
//!
//! Invariants: every queue is bounded (`inbox_max` datagrams per address,
//! `batch` queued sends); nothing here reads a clock or sleeps; delivery
//! order is the order of `flush` calls, so a run is a function of its seed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Backend, Datagram, IoKind};

/// What every simulated address shares: one inbox per bound address.
#[derive(Clone, Default)]
pub struct SimNet {
    inner: Arc<Mutex<NetInner>>,
}

#[derive(Default)]
struct NetInner {
    inboxes: HashMap<SocketAddr, VecDeque<(SocketAddr, Vec<u8>)>>,
    inbox_max: HashMap<SocketAddr, usize>,
    /// Datagrams sent to an unbound address or a full inbox.
    lost: u64,
    /// What an observer of every wire recorded, and how much it may hold.
    captured: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    capture_max: usize,
}

impl SimNet {
    /// An empty network.
    pub fn new() -> SimNet {
        SimNet::default()
    }

    fn lock(&self) -> MutexGuard<'_, NetInner> {
        // A panic elsewhere must not hide the queues from the simulator.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bind `addr` with an inbox of at most `inbox_max` datagrams.
    pub fn bind(&self, addr: SocketAddr, inbox_max: usize) {
        let mut n = self.lock();
        n.inboxes.entry(addr).or_default();
        n.inbox_max.insert(addr, inbox_max);
    }

    /// A backend bound at `addr` (binding it if it is not yet), sending in
    /// batches of at most `batch` datagrams.
    pub fn backend(&self, addr: SocketAddr, inbox_max: usize, batch: usize) -> SimBackend {
        self.bind(addr, inbox_max);
        SimBackend {
            net: self.clone(),
            addr,
            batch: batch.max(1),
            queue: Vec::with_capacity(batch.max(1)),
            scratch: Vec::new(),
        }
    }

    /// Record every datagram put on the network from now on (as a global
    /// passive adversary would), keeping at most `max`.
    pub fn capture(&self, max: usize) {
        self.lock().capture_max = max;
    }

    /// Take what was recorded: (from, to, bytes), in order.
    pub fn captured(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.lock().captured)
    }

    /// Put a datagram from `from` into `to`'s inbox now. Returns `false`
    /// (and counts it lost) if nothing is bound at `to` or its inbox is full.
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) -> bool {
        let mut n = self.lock();
        if n.captured.len() < n.capture_max {
            n.captured.push((from, to, data.to_vec()));
        }
        let max = n.inbox_max.get(&to).copied().unwrap_or(0);
        match n.inboxes.get_mut(&to) {
            Some(q) if q.len() < max => {
                q.push_back((from, data.to_vec()));
                true
            }
            _ => {
                n.lost += 1;
                false
            }
        }
    }

    /// Take every datagram waiting for `addr` (an address the simulator
    /// plays itself, such as a client or a node outside the simulation).
    pub fn take(&self, addr: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        self.lock()
            .inboxes
            .get_mut(&addr)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Datagrams waiting for `addr`.
    pub fn waiting(&self, addr: SocketAddr) -> usize {
        self.lock().inboxes.get(&addr).map_or(0, VecDeque::len)
    }

    /// Datagrams lost so far (unbound address or full inbox).
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }
}

/// One address's end of a [`SimNet`].
pub struct SimBackend {
    net: SimNet,
    addr: SocketAddr,
    batch: usize,
    queue: Vec<(SocketAddr, Vec<u8>)>,
    /// Datagrams taken from the inbox for one `recv` call.
    scratch: Vec<(SocketAddr, Vec<u8>)>,
}

impl SimBackend {
    /// The address this backend is bound at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> IoKind {
        IoKind::Sim
    }

    /// Never waits: simulated time moves only when the simulator moves it.
    fn recv(
        &mut self,
        _timeout: Option<Duration>,
        on_datagram: &mut dyn FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        self.scratch.clear();
        {
            let mut n = self.net.lock();
            if let Some(q) = n.inboxes.get_mut(&self.addr) {
                let take = q.len().min(self.batch);
                self.scratch.extend(q.drain(..take));
            }
        }
        for (from, data) in &self.scratch {
            on_datagram(Datagram {
                from: *from,
                data,
                truncated: false,
            });
        }
        Ok(self.scratch.len())
    }

    fn send(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        if self.queue.len() >= self.batch {
            return false;
        }
        self.queue.push((to, data.to_vec()));
        true
    }

    fn flush(&mut self) -> (usize, usize) {
        let mut sent = 0;
        for (to, data) in self.queue.drain(..) {
            // Like UDP: a datagram that finds no room is lost, and the
            // sender learns nothing; it still counts as sent.
            self.net.inject(self.addr, to, &data);
            sent += 1;
        }
        (sent, 0)
    }

    fn input_pending(&mut self) -> bool {
        self.net.waiting(self.addr) > 0
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn datagrams_move_in_order_and_queues_are_bounded() {
        let net = SimNet::new();
        let mut a = net.backend(addr(1), 4, 2);
        let mut b = net.backend(addr(2), 2, 2);
        assert!(a.send(addr(2), b"one"));
        assert!(a.send(addr(2), b"two"));
        assert!(!a.send(addr(2), b"three"), "batch of 2 is full");
        assert_eq!(a.flush(), (2, 0));
        assert!(a.send(addr(2), b"three"));
        a.flush();
        assert_eq!(net.lost(), 1, "b's inbox holds 2");
        let mut got = Vec::new();
        let n = b
            .recv(None, &mut |d| got.push((d.from, d.data.to_vec())))
            .expect("never fails");
        assert_eq!(n, 2);
        assert_eq!(got[0], (addr(1), b"one".to_vec()));
        assert_eq!(got[1], (addr(1), b"two".to_vec()));
        assert!(!net.inject(addr(1), addr(9), b"x"), "nothing bound at 9");
        assert_eq!(net.lost(), 2);
    }
}
