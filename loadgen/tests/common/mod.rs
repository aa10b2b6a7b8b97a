//! Test helpers: a small network (one provider, one mix) with real Sphinx
//! keys, registrations for many clients, and a fake provider thread on
//! 127.0.0.1 that authenticates each client's frames with that client's
//! access key, routes its packets hop by hop at once (no mixing delay),
//! stores deliveries by mailbox and answers every pull with exactly `K`
//! delivery frames. Or a sink that only counts datagrams. Both stop (and
//! are joined) when dropped, also when a test fails.

#![allow(dead_code)] // reason: each test file uses a different part

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use loopix_client::{ClientTopology, NodeInfo, Registration};
use loopix_crypto::access::{self, PullRequest};
use loopix_crypto::identity::IdentityKey;
use loopix_crypto::link::{FrameHeader, KIND_CLIENT_PACKET, KIND_PULL};
use loopix_crypto::{
    sphinx, Geometry, LinkKey, MailboxId, NodeId, RouteKey, RoutingCommand, SecretKey,
};
use loopix_directory::descriptor::NodeDescriptor;
use loopix_directory::topology::{BuildParams, Role, TopologyFile};
use loopix_loadgen::target::Target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const G: Geometry = Geometry::DEFAULT;
/// Frames in every pull answer.
pub const K: u16 = 4;

/// One provider and one mix, with their secrets.
pub struct Net {
    pub topology: Arc<ClientTopology>,
    secrets: HashMap<NodeId, SecretKey>,
    pub provider: NodeId,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut secrets = HashMap::new();
        let mut node = |_: u8| {
            let sk = SecretKey::generate(&mut rng);
            let info = NodeInfo {
                // As in a real topology: the id is the hash of the link key
                // (here the link key is the Sphinx key too).
                id: loopix_directory::descriptor::node_id_of(&sk.public_key()),
                key: Arc::new(RouteKey::new(&sk.public_key()).expect("honest key")),
            };
            secrets.insert(info.id, sk);
            info
        };
        let provider = node(1);
        let mix = node(2);
        Net {
            provider: provider.id,
            topology: Arc::new(ClientTopology {
                providers: vec![provider],
                layers: vec![vec![mix]],
            }),
            secrets,
        }
    }

    /// The operator key that signs [`Net::topology_toml`]'s document.
    pub fn operator() -> IdentityKey {
        IdentityKey::from_seed([7; 32]).expect("any seed")
    }

    /// A signed topology document of this network (epoch length 1 h, keys
    /// for the current epoch), the provider at `provider` and the mix at a
    /// dead address (the fake provider routes to it in-process).
    pub fn topology_toml(&self, provider: SocketAddr) -> String {
        let now = loopix_engine::keyfile::unix_now_s();
        let epoch = loopix_directory::descriptor::epoch_at(now, 3600);
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
            let d = loopix_directory::descriptor::sign_descriptor(
                &identity,
                &pk,
                &keys,
                Some(addr),
                3600,
            );
            (d, role, layer)
        })
        .collect();
        let params = BuildParams {
            serial: 1,
            valid_from: now - 300,
            valid_until: now + 86_400,
            layers: 1,
        };
        TopologyFile::build(params, &placed, &Self::operator())
            .expect("builds")
            .to_toml()
            .expect("serializes")
    }

    /// Route a packet from the provider at once: the mailbox and packet it
    /// is delivered with, or `None` for a drop.
    fn route(&self, mut packet: Vec<u8>) -> Option<(MailboxId, Vec<u8>)> {
        let mut at = self.provider;
        for _ in 0..8 {
            let sk = self.secrets.get(&at)?;
            match sphinx::process(&G, sk, &mut packet).ok()?.command {
                RoutingCommand::Relay { next, .. } => at = next,
                RoutingCommand::Deliver { mailbox } => return Some((mailbox, packet)),
                _ => return None,
            }
        }
        None
    }
}

/// Registration `i` at `addr`: slot `i`, a key and mailbox derived from `i`.
pub fn registration(net: &Net, addr: SocketAddr, i: u32) -> Registration {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[4] = 0xAA;
    let mut mailbox = [0u8; 16];
    mailbox[..4].copy_from_slice(&i.to_be_bytes());
    mailbox[15] = 0x55;
    Registration {
        provider_id: net.provider,
        provider_address: addr,
        slot: i,
        mailbox: MailboxId(mailbox),
        access_key: key,
        operator_key: Net::operator().public(),
    }
}

pub fn target(net: &Net, regs: Vec<Registration>) -> Target {
    Target {
        topology: Arc::clone(&net.topology),
        layers: 1,
        registrations: regs,
        metrics: Vec::new(),
    }
}

/// What the fake provider counted.
#[derive(Default, Debug)]
pub struct Counts {
    pub packets: AtomicU64,
    pub pulls: AtomicU64,
    pub bad: AtomicU64,
    pub delivered: AtomicU64,
}

/// A thread on a UDP socket; stops and joins on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    socket
}

/// A sink: counts datagrams, answers nothing.
pub fn sink() -> Server {
    let socket = bind();
    let addr = socket.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv_from(&mut buf).is_ok() {
                    counts.packets.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    Server {
        addr,
        counts,
        stop,
        thread: Some(thread),
    }
}

/// The fake provider for `clients` registrations made by [`registration`].
/// Its address is known only once bound, so it returns the registrations.
pub fn provider(net: Arc<Net>, clients: u32) -> (Server, Vec<Registration>) {
    let socket = bind();
    let addr = socket.local_addr().expect("addr");
    let regs: Vec<Registration> = (0..clients).map(|i| registration(&net, addr, i)).collect();
    let keys: HashMap<u32, (LinkKey, MailboxId)> = regs
        .iter()
        .map(|r| (r.slot, (LinkKey::from_bytes(&r.access_key), r.mailbox)))
        .collect();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
        std::thread::spawn(move || serve(&socket, &net, &keys, &counts, &stop))
    };
    (
        Server {
            addr,
            counts,
            stop,
            thread: Some(thread),
        },
        regs,
    )
}

fn serve(
    socket: &UdpSocket,
    net: &Net,
    keys: &HashMap<u32, (LinkKey, MailboxId)>,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let mut mailboxes: HashMap<MailboxId, BTreeMap<u64, Vec<u8>>> = HashMap::new();
    let mut next_id = 0u64;
    let mut counter = 1u64;
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; access::delivery_frame_len(&G)];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let frame = &mut buf[..n];
        let Ok(h) = FrameHeader::peek(frame) else {
            counts.bad.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some((key, mailbox)) = keys.get(&h.sender) else {
            counts.bad.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match h.kind {
            KIND_CLIENT_PACKET => {
                let Ok((_, packet)) = key.open(frame) else {
                    counts.bad.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                counts.packets.fetch_add(1, Ordering::Relaxed);
                if let Some((to, p)) = net.route(packet.to_vec()) {
                    next_id += 1;
                    mailboxes.entry(to).or_default().insert(next_id, p);
                }
            }
            KIND_PULL => {
                let Ok((_, body)) = key.open_in_place(frame) else {
                    counts.bad.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let Ok(req) = PullRequest::parse(body) else {
                    counts.bad.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if req.mailbox != *mailbox {
                    counts.bad.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counts.pulls.fetch_add(1, Ordering::Relaxed);
                let inbox = mailboxes.entry(req.mailbox).or_default();
                for id in &req.acks {
                    inbox.remove(id);
                }
                let real: Vec<(u64, Vec<u8>)> = inbox
                    .iter()
                    .take(K as usize)
                    .map(|(id, p)| (*id, p.clone()))
                    .collect();
                for i in 0..K {
                    let msg = real.get(i as usize).map(|(id, p)| (*id, &p[..]));
                    if msg.is_some() {
                        counts.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    access::seal_delivery(
                        &G,
                        key,
                        h.sender,
                        counter,
                        req.request_id,
                        i,
                        K,
                        msg,
                        &mut out,
                    )
                    .expect("sized");
                    counter += 1;
                    let _ = socket.send_to(&out, from);
                }
            }
            _ => {
                counts.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
