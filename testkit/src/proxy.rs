//! An (n−1) attacker on loopback: a UDP proxy in front of one node that
//! blocks a chosen fraction of the node's incoming datagrams and forwards
//! the rest unchanged. It sees only link frames (encrypted, one length),
//! so it cannot tell the node's own returning loops from other traffic and
//! blocks uniformly at random, which is the best the paper's §4.2 allows
//! such an adversary.
//!
//! The node is placed behind it with `node.public_address` (the topology
//! lists the proxy's address; the node listens elsewhere), see
//! [`crate::localnet::LocalNetSpec::fronted`].

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rand_core::{OsRng, RngCore};

/// What the proxy did.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    /// Datagrams passed on to the node.
    pub forwarded: AtomicU64,
    /// Datagrams blocked.
    pub blocked: AtomicU64,
}

/// A running blocking proxy; stops when dropped or on [`BlockingProxy::stop`].
pub struct BlockingProxy {
    stop: Arc<AtomicBool>,
    counts: Arc<ProxyCounts>,
    thread: Option<JoinHandle<()>>,
}

impl BlockingProxy {
    /// Listen on `front`, block each datagram with probability `block`,
    /// forward the rest to `back`.
    pub fn start(front: SocketAddr, back: SocketAddr, block: f64) -> Result<BlockingProxy, String> {
        if !(0.0..=1.0).contains(&block) {
            return Err(format!("block fraction {block} is not in [0, 1]"));
        }
        let socket = UdpSocket::bind(front).map_err(|e| format!("proxy at {front}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| format!("proxy: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(ProxyCounts::default());
        let (st, c) = (Arc::clone(&stop), Arc::clone(&counts));
        // Compare a uniform 64-bit draw with the fraction's share of 2^64.
        let cut = (block * u64::MAX as f64) as u64;
        let thread = std::thread::Builder::new()
            .name("n-1-proxy".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !st.load(Ordering::Relaxed) {
                    let Ok((n, _)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if block >= 1.0 || OsRng.next_u64() < cut {
                        c.blocked.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if socket.send_to(&buf[..n], back).is_ok() {
                        c.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|e| format!("proxy thread: {e}"))?;
        Ok(BlockingProxy {
            stop,
            counts,
            thread: Some(thread),
        })
    }

    /// Counts so far: (forwarded, blocked).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.forwarded.load(Ordering::Relaxed),
            self.counts.blocked.load(Ordering::Relaxed),
        )
    }

    /// Stop and wait for the thread; returns the final counts.
    pub fn stop(mut self) -> (u64, u64) {
        self.halt();
        self.counts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BlockingProxy {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_about_the_fraction_and_forwards_the_rest_unchanged() {
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind");
        back.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let back_addr = back.local_addr().expect("addr");
        let front = crate::localnet::free_udp_addr().expect("free port");
        let proxy = BlockingProxy::start(front, back_addr, 0.75).expect("proxy");
        let receiver = std::thread::spawn(move || {
            let mut got = 0u32;
            let mut buf = [0u8; 64];
            while let Ok((len, _)) = back.recv_from(&mut buf) {
                assert_eq!(len, 4, "forwarded unchanged");
                got += 1;
            }
            got
        });
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let n = 2_000u32;
        for i in 0..n {
            sender.send_to(&i.to_le_bytes(), front).expect("send");
            if i % 50 == 49 {
                // Let the proxy keep up (loopback drops when buffers fill).
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let got = receiver.join().expect("receiver");
        let (forwarded, blocked) = proxy.stop();
        assert_eq!(u64::from(got), forwarded);
        // Loopback may drop a few datagrams before the proxy reads them.
        let seen = forwarded + blocked;
        assert!(seen * 10 >= u64::from(n) * 9, "the proxy saw {seen} of {n}");
        // 25% forwarded: sd about 1%; allow 5 sd.
        let share = forwarded as f64 / seen as f64;
        assert!(
            (share - 0.25).abs() < 0.05,
            "forwarded {forwarded} of {seen}"
        );
    }
}
