//! One fake provider, for the client driver's and the load generator's
//! tests: a network of one provider and one mix with real Sphinx keys
//! ([`FakeNet`]), and a thread on a UDP socket on 127.0.0.1 that
//! authenticates each client's frames with that client's access key,
//! routes its packets hop by hop at once (no mixing delay), stores
//! deliveries by mailbox and answers every pull with exactly `k` delivery
//! frames, real messages first. It can also misbehave on purpose: forget
//! acknowledgements (an ack lost on the way) and send bad frames after the
//! first answer. [`Sink`] only counts datagrams.
//!
//! Invariant: both stop and are joined when dropped, also when a test
//! fails; a poisoned lock (a failed assertion holding it) does not stop
//! the thread.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loopix_client::{ClientTopology, NodeInfo, Registration};
use loopix_crypto::access::{self, PullRequest};
use loopix_crypto::identity::IdentityKey;
use loopix_crypto::link::{FrameHeader, KIND_CLIENT_PACKET, KIND_PACKET, KIND_PULL};
use loopix_crypto::{
    sphinx, Geometry, LinkKey, MailboxId, NodeId, RouteKey, RoutingCommand, SecretKey,
};
use loopix_directory::descriptor::{epoch_at, node_id_of, sign_descriptor, NodeDescriptor};
use loopix_directory::topology::{BuildParams, Role, TopologyFile};
use rand_core::CryptoRngCore;

/// The packet geometry of every fake network.
pub const G: Geometry = Geometry::DEFAULT;

/// One provider and one mix, with their secrets.
pub struct FakeNet {
    /// What a client is given.
    pub topology: Arc<ClientTopology>,
    /// The provider's id.
    pub provider: NodeId,
    secrets: HashMap<NodeId, SecretKey>,
}

impl FakeNet {
    /// Keys from `rng`; ids, as in a real topology, the hash of the key
    /// (here the link key is the Sphinx key too).
    pub fn new(rng: &mut impl CryptoRngCore) -> FakeNet {
        let mut secrets = HashMap::new();
        let mut node = || {
            let sk = SecretKey::generate(rng);
            let info = NodeInfo {
                id: node_id_of(&sk.public_key()),
                key: Arc::new(RouteKey::new(&sk.public_key()).expect("honest key")),
            };
            secrets.insert(info.id, sk);
            info
        };
        let provider = node();
        let mix = node();
        FakeNet {
            provider: provider.id,
            topology: Arc::new(ClientTopology {
                providers: vec![provider],
                layers: vec![vec![mix]],
            }),
            secrets,
        }
    }

    /// The operator key that signs [`FakeNet::topology_toml`]'s document.
    pub fn operator() -> IdentityKey {
        IdentityKey::from_seed([7; 32]).expect("any seed")
    }

    /// A signed topology document of this network (epoch length 1 h, keys
    /// for the current epoch), the provider at `provider` and the mix at a
    /// dead address (the fake provider routes to it in-process).
    pub fn topology_toml(&self, provider: SocketAddr, now_s: u64) -> String {
        let epoch = epoch_at(now_s, 3600);
        let mix = self.topology.layers[0][0].id;
        let placed: Vec<(NodeDescriptor, Role, u8)> = [
            (self.provider, Role::Provider, 0u8, provider),
            (mix, Role::Mix, 1, "127.0.0.1:9".parse().expect("addr")),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (id, role, layer, addr))| {
            let pk = self.secrets[&id].public_key();
            let identity = IdentityKey::from_seed([i as u8 + 1; 32]).expect("any seed");
            let keys = BTreeMap::from([(epoch, pk)]);
            let d = sign_descriptor(&identity, &pk, &keys, Some(addr), 3600);
            (d, role, layer)
        })
        .collect();
        let params = BuildParams {
            serial: 1,
            valid_from: now_s - 300,
            valid_until: now_s + 86_400,
            layers: 1,
            // The default geometry (`G`), roomier than one layer needs;
            // the fake checks no client's rates, so it allows any.
            network: loopix_directory::NetworkParams {
                allow_rate_overrides: true,
                ..loopix_directory::NetworkParams::default()
            },
        };
        TopologyFile::build(params, &placed, &Self::operator())
            .expect("builds")
            .to_toml()
            .expect("serializes")
    }

    /// Route a packet from the provider, every hop for real and at once:
    /// the mailbox and packet it is delivered with, or `None` for a drop.
    pub fn route(&self, mut packet: Vec<u8>) -> Option<(MailboxId, Vec<u8>)> {
        let mut at = self.provider;
        for _ in 0..8 {
            let sk = self.secrets.get(&at)?;
            match sphinx::process(&G, sk, &mut packet).ok()?.command {
                RoutingCommand::Relay { next, .. } => at = next,
                RoutingCommand::Deliver { mailbox, .. } => return Some((mailbox, packet)),
                _ => return None,
            }
        }
        None
    }

    /// A registration at the provider at `addr` for `access`.
    pub fn registration(&self, addr: SocketAddr, access: &Access) -> Registration {
        Registration {
            provider_id: self.provider,
            provider_address: addr,
            slot: access.slot,
            mailbox: access.mailbox,
            access_key: access.key,
            operator_key: Self::operator().public(),
        }
    }
}

/// A client's access credentials at the fake provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Its slot (the sender field of its frames).
    pub slot: u32,
    /// Its access-link key.
    pub key: [u8; 16],
    /// Its mailbox.
    pub mailbox: MailboxId,
}

impl Access {
    /// Client `i`'s: slot `i`, a key and mailbox derived from `i`.
    pub fn derived(i: u32) -> Access {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key[4] = 0xAA;
        let mut mailbox = [0u8; 16];
        mailbox[..4].copy_from_slice(&i.to_be_bytes());
        mailbox[15] = 0x55;
        Access {
            slot: i,
            key,
            mailbox: MailboxId(mailbox),
        }
    }
}

/// How the fake provider behaves.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Frames in every pull answer.
    pub k: u16,
    /// Refuse a pull for another mailbox than the slot's (as a real
    /// provider does); off lets a test register one mailbox and pull
    /// another.
    pub check_mailbox: bool,
    /// Answer this many first pulls without deleting acknowledged messages
    /// (an ack lost on the way, as far as the client can tell).
    pub ignore_acks_pulls: u64,
    /// After the answer to the first pull, send bad frames: a wrong key, a
    /// wrong kind, a replay, a short datagram and a valid frame from
    /// another address.
    pub inject_bad: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            k: 8,
            check_mailbox: true,
            ignore_acks_pulls: 0,
            inject_bad: false,
        }
    }
}

/// What the fake provider saw and holds.
#[derive(Debug, Default)]
pub struct State {
    /// Stored messages by mailbox, by message id.
    pub mailboxes: HashMap<MailboxId, BTreeMap<u64, Vec<u8>>>,
    next_id: u64,
    /// Authentic client packets.
    pub client_packets: u64,
    /// Authentic pulls.
    pub pulls: u64,
    /// Every acknowledged id, in arrival order.
    pub acks: Vec<u64>,
    /// Frame counters of the clients, in arrival order.
    pub counters: Vec<u64>,
    /// Frames that failed to authenticate or parse.
    pub bad_client_frames: u64,
    /// Delivery frames sent with a message.
    pub delivered: u64,
}

impl State {
    /// Store `packet` for `mailbox` under the next id.
    pub fn store(&mut self, mailbox: MailboxId, packet: Vec<u8>) {
        self.next_id += 1;
        let id = self.next_id;
        self.mailboxes
            .entry(mailbox)
            .or_default()
            .insert(id, packet);
    }
}

/// The fake provider's thread; stops and joins on drop.
pub struct FakeProvider {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw (see [`FakeProvider::state`]).
    pub shared: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeProvider {
    /// Serve the clients of `access` on a fresh port, starting from `state`.
    pub fn start(
        net: Arc<FakeNet>,
        access: &[Access],
        behaviour: Behaviour,
        state: State,
    ) -> FakeProvider {
        let socket = bind();
        let addr = socket.local_addr().expect("addr");
        let clients = access
            .iter()
            .map(|a| (a.slot, (Arc::new(LinkKey::from_bytes(&a.key)), a.mailbox)))
            .collect();
        let shared = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = Server {
                socket,
                stranger: bind(),
                net,
                clients,
                behaviour,
                counter: 1,
            };
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::spawn(move || server.serve(&shared, &stop))
        };
        FakeProvider {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// The state now (the lock, even if a failed test poisoned it).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait (at most 5 s) until the state satisfies `done`: the client's
    /// last frames may still be in flight.
    pub fn wait_for(&self, done: impl Fn(&State) -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !done(&self.state()) {
            assert!(Instant::now() < end, "fake provider never caught up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's side.
struct Server {
    socket: UdpSocket,
    /// Another socket, for the valid frame from a wrong address.
    stranger: UdpSocket,
    net: Arc<FakeNet>,
    clients: HashMap<u32, (Arc<LinkKey>, MailboxId)>,
    behaviour: Behaviour,
    /// The next delivery frame's counter.
    counter: u64,
}

impl Server {
    fn serve(mut self, shared: &Mutex<State>, stop: &AtomicBool) {
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
            if self.datagram(&mut st, &mut buf[..n], from).is_none() {
                st.bad_client_frames += 1;
            }
        }
    }

    /// Handle one datagram; `None` if it was bad.
    fn datagram(&mut self, st: &mut State, frame: &mut [u8], from: SocketAddr) -> Option<()> {
        let h = FrameHeader::peek(frame).ok()?;
        let (key, mailbox) = self.clients.get(&h.sender).cloned()?;
        match h.kind {
            KIND_CLIENT_PACKET => {
                let (h, packet) = key.open(frame).ok()?;
                st.counters.push(h.counter);
                st.client_packets += 1;
                if let Some((to, p)) = self.net.route(packet.to_vec()) {
                    st.store(to, p);
                }
            }
            KIND_PULL => {
                let (h, body) = key.open_in_place(frame).ok()?;
                let req = PullRequest::parse(body).ok()?;
                if self.behaviour.check_mailbox && req.mailbox != mailbox {
                    return None;
                }
                st.counters.push(h.counter);
                st.pulls += 1;
                st.acks.extend(&req.acks);
                let first = self.answer(st, &key, h.sender, &req, from);
                if self.behaviour.inject_bad && st.pulls == 1 {
                    self.misbehave(&key, h.sender, &req, &first, from);
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Apply the acks (unless told to forget them), then send exactly k
    /// frames; returns the first.
    fn answer(
        &mut self,
        st: &mut State,
        key: &LinkKey,
        slot: u32,
        req: &PullRequest,
        from: SocketAddr,
    ) -> Vec<u8> {
        let k = self.behaviour.k;
        let forget = st.pulls <= self.behaviour.ignore_acks_pulls;
        let inbox = st.mailboxes.entry(req.mailbox).or_default();
        if !forget {
            for id in &req.acks {
                inbox.remove(id);
            }
        }
        let real: Vec<(u64, Vec<u8>)> = inbox
            .iter()
            .take(usize::from(k))
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        let mut first = Vec::new();
        let mut out = vec![0u8; access::delivery_frame_len(&G)];
        for i in 0..k {
            let msg = real.get(usize::from(i)).map(|(id, p)| (*id, &p[..]));
            st.delivered += u64::from(msg.is_some());
            access::seal_delivery(
                &G,
                key,
                slot,
                self.counter,
                req.request_id,
                i,
                k,
                msg,
                &mut out,
            )
            .expect("sized");
            self.counter += 1;
            let _ = self.socket.send_to(&out, from);
            if i == 0 {
                first.clone_from(&out);
            }
        }
        first
    }

    /// The bad frames of [`Behaviour::inject_bad`].
    fn misbehave(
        &mut self,
        key: &LinkKey,
        slot: u32,
        req: &PullRequest,
        first: &[u8],
        from: SocketAddr,
    ) {
        let k = self.behaviour.k;
        let mut out = vec![0u8; access::delivery_frame_len(&G)];
        let seal = |key: &LinkKey, counter: &mut u64, out: &mut [u8]| {
            access::seal_delivery(&G, key, slot, *counter, req.request_id, 0, k, None, out)
                .expect("sized");
            *counter += 1;
        };
        // Wrong key, fresh counter.
        seal(&LinkKey::from_bytes(&[6; 16]), &mut self.counter, &mut out);
        let _ = self.socket.send_to(&out, from);
        // Right key, wrong kind.
        key.seal_kind(
            KIND_PACKET,
            access::provider_sender(slot),
            self.counter,
            &mut out,
        )
        .expect("sized");
        self.counter += 1;
        let _ = self.socket.send_to(&out, from);
        // A replay of the first frame of the answer.
        let _ = self.socket.send_to(first, from);
        // Too short.
        let _ = self.socket.send_to(&[0x04; 10], from);
        // A valid frame from the wrong address.
        seal(key, &mut self.counter, &mut out);
        let _ = self.stranger.send_to(&out, from);
    }
}

fn bind() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    socket
}

/// A sink: counts datagrams, answers nothing; stops and joins on drop.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Datagrams received.
    pub datagrams: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Bind a fresh port and count.
    pub fn start() -> Sink {
        let socket = bind();
        let addr = socket.local_addr().expect("addr");
        let datagrams = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (datagrams, stop) = (Arc::clone(&datagrams), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv_from(&mut buf).is_ok() {
                        datagrams.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Sink {
            addr,
            datagrams,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
