//! A whole Loopix network on simulated time, in one thread: real shards
//! (`loopix_engine::shard::Shard` over `io::sim`) for every provider and
//! mix, real inboxes (redb in a scratch directory), and real client cores
//! with their `AccessSession`s, all driven from one seed (TigerBeetle's VOPR
//! habit, quinn's `Pair`).
//!
//! Everything random comes from the seed: node keys (identity, link and
//! Sphinx keys are derived from it, so the signed topology is the same bytes
//! for the same seed), client keys, paths and delays, and message contents.
//! Time moves in steps of `step_us`; at each step the clients run their due
//! stream events and send, every node takes its turns at that time, each
//! provider's inbox writer round is done (`provider::commit_round`: stores
//! in one commit, then the acknowledgements the shards' answers carried),
//! and the clients take their deliveries. Pulls are answered by the
//! provider's shard itself, through its own (simulated) I/O, as in a node.
//!
//! What the provider's writer thread does with its own clock is done here
//! by [`SimInbox`], with the same engine function.
//!
//! Invariants: no system call on the packet path, no wall clock: a run is a
//! function of its seed and configuration; every queue is the engine's own
//! bounded one; the scratch directory is removed on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use loopix_client::{
    AccessSession, Address, Client, ClientLimits, Event, Rates, Received, SessionLimits,
};
use loopix_crypto::identity::IdentityKey;
use loopix_crypto::{Geometry, MailboxId, NodeId, SecretKey};
use loopix_directory::descriptor::{self, epoch_at, node_id_of, NodeDescriptor};
use loopix_directory::routes::route_table;
use loopix_directory::topology::{BuildParams, Role, Topology, TopologyFile};
use loopix_directory::NetworkParams;
use loopix_engine::io::sim::SimNet;
use loopix_engine::loops::{LoopMaker, LoopSettings};
use loopix_engine::metrics::{DropReason, ShardMetrics};
use loopix_engine::node::build_links;
use loopix_engine::provider::inbox::{Inbox, InboxConfig};
use loopix_engine::provider::registry::{ClientEntry, ClientTable};
use loopix_engine::provider::{commit_round, Answerer, PullShared, Round, WriterWork};
use loopix_engine::shard::{Clock, Control, EpochKey, Links, ProviderHooks, Shard, ShardSettings};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The simulated network's wall clock at time zero (unix seconds).
pub const START_UNIX_S: u64 = 1_800_000_000;
/// Key epoch length.
pub const EPOCH_S: u64 = 3600;
/// Inbox capacity of every simulated node, datagrams.
const INBOX_DATAGRAMS: usize = 8192;
/// How far ahead of its departure a node's loop reaches its shard.
const LOOP_LEAD_US: u64 = 100_000;
/// Largest per-hop delay a node accepts.
const DELAY_CAP_US: u64 = 10_000_000;

/// The shape and load of a simulated network.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Everything random comes from it.
    pub seed: u64,
    /// Providers.
    pub providers: usize,
    /// Mix layers.
    pub layers: u8,
    /// Mixes in each layer.
    pub mixes_per_layer: usize,
    /// Clients registered at each provider.
    pub clients_per_provider: usize,
    /// Every client's rates.
    pub rates: Rates,
    /// Frames in a pull answer.
    pub pull_frames: u16,
    /// Simulated time per step.
    pub step_us: u64,
    /// Every node's own loops per second (λM), built by the engine's
    /// `LoopMaker` as the control plane does and handed to the node's shard
    /// on its control channel; 0: none.
    pub lambda_m: f64,
}

impl SimConfig {
    /// The parameters the simulated network's document carries.
    pub fn network(&self) -> NetworkParams {
        let mut p = NetworkParams {
            mean_delay_ms: self.rates.mean_delay_us / 1000.0,
            lambda_p: self.rates.lambda_p,
            lambda_l: self.rates.lambda_l,
            lambda_d: self.rates.lambda_d,
            lambda_m: self.lambda_m,
            pull_period_ms: self.rates.pull_period_us / 1000,
            pull_frames: self.pull_frames,
            ..NetworkParams::default()
        };
        p.set_geometry_for(self.layers);
        p
    }

    /// A small network: 2 providers, 2 layers of 2 mixes, 2 clients each,
    /// 5 ms mean delays, pulls every 50 ms.
    pub fn small(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            providers: 2,
            layers: 2,
            mixes_per_layer: 2,
            clients_per_provider: 2,
            rates: Rates {
                lambda_p: 20.0,
                lambda_l: 10.0,
                lambda_d: 5.0,
                mean_delay_us: 5_000.0,
                pull_period_us: 50_000,
            },
            pull_frames: 4,
            step_us: 250,
            // The scenarios count clients' packets; a run that wants the
            // nodes' loops sets a rate.
            lambda_m: 0.0,
        }
    }
}

/// A provider's inbox work, done between node turns.
struct SimInbox {
    work: Receiver<WriterWork>,
    inbox: Inbox,
    entries: Vec<ClientEntry>,
    shared: Arc<PullShared>,
    round: Round,
}

/// One node of the network.
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// Its address on the simulated network.
    pub addr: SocketAddr,
    /// Provider or mix.
    pub role: Role,
    /// Its layer (0 for providers).
    pub layer: u8,
    /// Its shard's counters.
    pub metrics: Arc<ShardMetrics>,
    shard: Shard,
    control: Sender<Control>,
    link_secret: SecretKey,
    inbox: Option<SimInbox>,
    loops: Option<LoopMaker>,
}

impl SimNode {
    /// Drops so far under `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.metrics.drops(reason)
    }

    /// Drops so far under every reason.
    pub fn drops_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.metrics.drops(*r)).sum()
    }
}

/// One client of the network.
pub struct SimClient {
    /// The core.
    pub client: Client,
    /// Its address on the simulated network.
    pub addr: SocketAddr,
    /// Its provider's address.
    pub provider_addr: SocketAddr,
    /// Whole messages received, in order.
    pub received: Vec<Vec<u8>>,
    /// Its loops that came back.
    pub loops_returned: u64,
    /// Datagrams refused because they did not come from its provider.
    pub wrong_source: u64,
    session: AccessSession,
    rng: ChaCha20Rng,
    buf: Vec<u8>,
}

impl SimClient {
    /// The access session's counters.
    pub fn session_stats(&self) -> loopix_client::SessionStats {
        self.session.stats()
    }
}

/// A simulated network (see the module documentation).
pub struct SimNetwork {
    /// Its configuration.
    pub config: SimConfig,
    /// The network every node and client is on.
    pub net: SimNet,
    /// The nodes, in topology order (providers first, then layer by layer).
    pub nodes: Vec<SimNode>,
    /// The clients.
    pub clients: Vec<SimClient>,
    /// The signed topology every node runs on.
    pub topology: Topology,
    rng: ChaCha20Rng,
    now: Arc<AtomicU64>,
    t_us: u64,
    scratch: PathBuf,
    operator: IdentityKey,
    /// Per node (by topology index): identity, link and Sphinx secrets.
    keys: Vec<(IdentityKey, SecretKey, SecretKey)>,
}

fn seed32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b
}

fn seed16(rng: &mut ChaCha20Rng) -> [u8; 16] {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b
}

fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

fn client_addr(j: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 30_000 + j as u16))
}

impl SimNetwork {
    /// Build the network of `config`: keys, a signed topology, every
    /// node's shard (and a provider's inbox) and every client.
    pub fn new(config: SimConfig) -> SimNetwork {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let operator = IdentityKey::from_seed(seed32(&mut rng)).expect("any seed is a key");
        let epoch = epoch_at(START_UNIX_S, EPOCH_S);
        let count = config.providers + usize::from(config.layers) * config.mixes_per_layer;
        let mut placed = Vec::with_capacity(count);
        let mut keys = Vec::with_capacity(count);
        for i in 0..count {
            let identity = IdentityKey::from_seed(seed32(&mut rng)).expect("any seed is a key");
            let link = SecretKey::from_bytes(seed32(&mut rng));
            let mix = SecretKey::from_bytes(seed32(&mut rng));
            let mix_keys = BTreeMap::from([(epoch, mix.public_key())]);
            let d = descriptor::sign_descriptor(
                &identity,
                &link.public_key(),
                &mix_keys,
                Some(node_addr(i)),
                EPOCH_S,
            );
            let (role, layer) = if i < config.providers {
                (Role::Provider, 0)
            } else {
                let m = i - config.providers;
                (Role::Mix, (m / config.mixes_per_layer) as u8 + 1)
            };
            placed.push((d, role, layer));
            keys.push((identity, link, mix));
        }
        let topology = Self::sign(&operator, &placed, &config, 1);
        // tmpfs where there is one: the inbox syncs every commit.
        let base = Some(PathBuf::from("/dev/shm"))
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        // Unique per network: tests run networks of one seed in parallel.
        static NETWORKS: AtomicU64 = AtomicU64::new(0);
        let scratch = base.join(format!(
            "loopix-sim-{}-{}-{}",
            std::process::id(),
            config.seed,
            NETWORKS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("scratch directory");
        let mut sim = SimNetwork {
            config,
            net: SimNet::new(),
            nodes: Vec::new(),
            clients: Vec::new(),
            topology,
            rng,
            now: Arc::new(AtomicU64::new(0)),
            t_us: 0,
            scratch,
            operator,
            keys,
        };
        sim.start_nodes(epoch);
        sim.start_clients(epoch);
        sim
    }

    /// A signed, checked topology of `placed` (the order within a layer is
    /// the order given).
    fn sign(
        operator: &IdentityKey,
        placed: &[(NodeDescriptor, Role, u8)],
        config: &SimConfig,
        serial: u64,
    ) -> Topology {
        let params = BuildParams {
            serial,
            valid_from: START_UNIX_S - 60,
            valid_until: START_UNIX_S + 86_400,
            layers: config.layers,
            network: config.network(),
        };
        let file = TopologyFile::build(params, placed, operator).expect("a valid network");
        Topology::from_file("sim", file, &operator.public(), START_UNIX_S).expect("it checks")
    }

    fn index_of(topology: &Topology, link: &SecretKey) -> u32 {
        let id = node_id_of(&link.public_key());
        topology.index_of(&id).expect("every node is listed")
    }

    fn start_nodes(&mut self, epoch: u64) {
        let g = Geometry::DEFAULT;
        let mut order: Vec<(u32, usize)> = (0..self.keys.len())
            .map(|i| (Self::index_of(&self.topology, &self.keys[i].1), i))
            .collect();
        order.sort_unstable();
        for (own, i) in order {
            let link = SecretKey::from_bytes(self.keys[i].1.to_bytes());
            let mix = SecretKey::from_bytes(self.keys[i].2.to_bytes());
            let entry = &self.topology.nodes[own as usize];
            let (addr, id, role, layer) = (entry.address, entry.id, entry.role, entry.layer);
            let links = build_links(&self.topology, own, &link).expect("valid links");
            let settings = ShardSettings {
                index: 0,
                geometry: g,
                pool_packets: 4096,
                batch: 64,
                delay_cap_us: DELAY_CAP_US,
                drain_us: 0,
                filter_items: 200_000,
                // Low enough that a false positive (a dropped packet the
                // scenarios would report) is not a risk of any run.
                filter_fp: 1e-12,
                filter_max_bytes: 16 << 20,
                aqm: loopix_engine::aqm::AqmSettings::OFF,
            };
            let (control, control_rx) = bounded(8);
            let metrics = Arc::new(ShardMetrics::default());
            let backend = self.net.backend(addr, INBOX_DATAGRAMS, 64);
            let mut shard = Shard::new(
                settings,
                Box::new(backend),
                Arc::new(links),
                vec![EpochKey {
                    epoch,
                    secret: SecretKey::from_bytes(mix.to_bytes()),
                }],
                // In memory, built by the shard: nothing here restarts.
                Vec::new(),
                control_rx,
                Arc::new(AtomicBool::new(false)),
                Arc::clone(&metrics),
            )
            .expect("shard")
            .with_clock(Clock::Sim(Arc::clone(&self.now)), 1_000 + u64::from(own));
            let mut inbox = None;
            if role == Role::Provider {
                let (tx, rx) = bounded(4096);
                let clients = self.register_clients(own);
                let path = self.scratch.join(format!("inbox-{own}.redb"));
                let config = InboxConfig::new(path, 1_000, 1 << 24, 3_600)
                    .with_id_key(seed32(&mut self.rng));
                let mut store = Inbox::open(config).expect("inbox");
                for c in &clients {
                    store.register(c.mailbox).expect("register");
                }
                // Delivery counters from the simulated start (µs).
                let shared = PullShared::new(START_UNIX_S * 1_000_000);
                shard = shard.with_provider(ProviderHooks {
                    clients: Arc::new(ClientTable::new(&clients)),
                    writer: tx.clone(),
                    answerer: Answerer::new(
                        store.reader(),
                        Arc::clone(&shared),
                        tx,
                        Arc::new(Default::default()),
                        g,
                        self.config.pull_frames,
                    ),
                    answer_delay_us: 1_000,
                    rates: Some(self.config.network().client_rates().digest()),
                });
                inbox = Some(SimInbox {
                    work: rx,
                    inbox: store,
                    entries: clients,
                    shared,
                    round: Round::default(),
                });
            }
            let loops = self.loop_maker(id, epoch, u64::from(own));
            self.nodes.push(SimNode {
                id,
                addr,
                role,
                layer,
                metrics,
                shard,
                control,
                link_secret: link,
                inbox,
                loops,
            });
        }
    }

    /// The registry entries of provider `own`'s clients.
    fn register_clients(&mut self, own: u32) -> Vec<ClientEntry> {
        (0..self.config.clients_per_provider as u32)
            .map(|slot| ClientEntry {
                slot,
                name: format!("sim-{own}-{slot}"),
                mailbox: MailboxId(seed16(&mut self.rng)),
                access_key: seed16(&mut self.rng),
            })
            .collect()
    }

    fn start_clients(&mut self, epoch: u64) {
        let g = Geometry::DEFAULT;
        let view =
            Arc::new(loopix_client::client_topology(&self.topology, epoch).expect("client view"));
        for p in 0..self.nodes.len() {
            let Some(inbox) = &self.nodes[p].inbox else {
                continue;
            };
            let entries = inbox.entries.clone();
            for ClientEntry {
                slot,
                mailbox,
                access_key,
                ..
            } in entries
            {
                let j = self.clients.len();
                let mut rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
                let secret = SecretKey::from_bytes(seed32(&mut rng));
                let client = Client::new(
                    g,
                    Arc::clone(&view),
                    self.config.rates,
                    ClientLimits::default(),
                    secret,
                    mailbox,
                    self.nodes[p].id,
                    0,
                    &mut rng,
                )
                .expect("client");
                let session = AccessSession::new(
                    g,
                    &access_key,
                    slot,
                    mailbox,
                    self.config.rates.announced().digest(),
                    1 + j as u64 * 1_000_000,
                    SessionLimits::CLIENT,
                );
                self.net.bind(client_addr(j), INBOX_DATAGRAMS);
                self.clients.push(SimClient {
                    client,
                    addr: client_addr(j),
                    provider_addr: self.nodes[p].addr,
                    received: Vec::new(),
                    loops_returned: 0,
                    wrong_source: 0,
                    session,
                    rng,
                    buf: vec![0u8; g.frame_len()],
                });
            }
        }
    }
}

impl SimNetwork {
    /// Simulated time now, microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.t_us
    }

    /// The seed of this run (print it with every failure).
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// Node `i`'s link secret (an adversary that corrupted it holds it).
    pub fn link_secret(&self, i: usize) -> &SecretKey {
        &self.nodes[i].link_secret
    }

    /// Client `j`'s address for senders.
    pub fn address_of(&self, j: usize) -> Address {
        self.clients[j].client.address()
    }

    /// Queue `data` at client `from` for client `to`.
    pub fn send(&mut self, from: usize, to: usize, data: &[u8]) {
        let address = self.address_of(to);
        let c = &mut self.clients[from];
        c.client
            .send(address, data, false, &mut c.rng)
            .expect("a message that fits");
    }

    /// Run until `until_us` of simulated time.
    pub fn run_until(&mut self, until_us: u64) {
        while self.t_us < until_us {
            self.t_us = (self.t_us + self.config.step_us).min(until_us);
            self.step(true);
        }
    }

    /// Run until `until_us` with every client silent (no stream events,
    /// no pulls): only what is already in flight moves.
    pub fn drain_until(&mut self, until_us: u64) {
        while self.t_us < until_us {
            self.t_us = (self.t_us + self.config.step_us).min(until_us);
            self.step(false);
        }
    }

    /// Let every node take its turns at the current time, without moving
    /// time or running clients (after an injection).
    pub fn settle_nodes(&mut self) {
        self.nodes_turn();
    }

    fn step(&mut self, clients_run: bool) {
        self.now.store(self.t_us, Ordering::Relaxed);
        if clients_run {
            for j in 0..self.clients.len() {
                self.client_send(j);
            }
        }
        self.nodes_turn();
        for j in 0..self.clients.len() {
            self.client_receive(j);
        }
    }

    /// Node `id`'s loop maker, if the network has loops; its randomness is
    /// its own stream of the seed, so turning loops on changes nothing else.
    fn loop_maker(&self, id: NodeId, epoch: u64, stream: u64) -> Option<LoopMaker> {
        if self.config.lambda_m <= 0.0 {
            return None;
        }
        let routes = Arc::new(route_table(&self.topology, epoch).expect("every node has a key"));
        let mut rng = ChaCha20Rng::seed_from_u64(self.config.seed);
        rng.set_stream(0x6c6f_6f70 + stream);
        let settings = LoopSettings {
            lambda_per_s: self.config.lambda_m,
            mean_delay_us: self.config.rates.mean_delay_us,
            lead_us: LOOP_LEAD_US,
        };
        let maker = LoopMaker::new(settings, Geometry::DEFAULT, routes, id, 0, Box::new(rng));
        Some(maker.expect("a node of the table, sane settings"))
    }

    /// Hand every node's loops due within their lead to its shard.
    fn loops_turn(&mut self) {
        let t = self.t_us;
        for n in &mut self.nodes {
            let Some(maker) = n.loops.as_mut() else {
                continue;
            };
            let mut out = Vec::new();
            maker.due(t, &mut out);
            if !out.is_empty() {
                // One message per node per step, taken at its next turn:
                // the queue never fills (and a full one must not block the
                // only thread).
                n.control
                    .try_send(Control::Loops(out))
                    .expect("the shard's control queue has room");
            }
        }
    }

    fn nodes_turn(&mut self) {
        self.loops_turn();
        let t = self.t_us;
        // Datagrams a node sends in its turn reach nodes later in the list
        // in the same step and earlier ones in the next: bounded rounds let
        // a step settle without letting a loop run forever.
        for _ in 0..4 {
            let mut moved = 0;
            for i in 0..self.nodes.len() {
                for _ in 0..64 {
                    let n = self.nodes[i].shard.turn(t);
                    moved += n;
                    if n == 0 {
                        break;
                    }
                }
                self.inbox_work(i);
            }
            if moved == 0 {
                break;
            }
        }
    }

    /// A provider's writer round: the stores in one commit, then the
    /// acknowledgements the shard's answers carried, as the writer thread
    /// does.
    fn inbox_work(&mut self, i: usize) {
        let now_s = START_UNIX_S + self.t_us / 1_000_000;
        let Some(ib) = self.nodes[i].inbox.as_mut() else {
            return;
        };
        while let Ok(w) = ib.work.try_recv() {
            ib.round.take(w);
        }
        let errors = commit_round(&mut ib.inbox, &ib.shared, now_s, &mut ib.round);
        assert!(
            errors.is_empty(),
            "seed {}: inbox round: {}",
            self.config.seed,
            errors
                .iter()
                .map(|(what, _, e)| format!("{what}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    fn client_send(&mut self, j: usize) {
        let t = self.t_us;
        let c = &mut self.clients[j];
        c.client.handle_timeout(t, &mut c.rng);
        while let Some(tx) = c.client.poll_transmit() {
            c.session
                .seal_packet(&tx.packet, &mut c.buf)
                .expect("packets are packet_len");
            self.net.inject(c.addr, c.provider_addr, &c.buf);
        }
        self.client_events(j);
    }

    fn client_events(&mut self, j: usize) {
        let c = &mut self.clients[j];
        while let Some(ev) = c.client.poll_event() {
            match ev {
                Event::Pull { .. } => {
                    c.session.seal_pull(&mut c.buf).expect("sized");
                    self.net.inject(c.addr, c.provider_addr, &c.buf);
                }
                Event::Message { data, .. } => c.received.push(data),
                Event::LoopReturned { .. } => c.loops_returned += 1,
                Event::Reply { .. } => {}
            }
        }
    }

    fn client_receive(&mut self, j: usize) {
        let t = self.t_us;
        let addr = self.clients[j].addr;
        for (from, mut bytes) in self.net.take(addr) {
            let c = &mut self.clients[j];
            if from != c.provider_addr {
                c.wrong_source += 1;
                continue;
            }
            if let Received::Message { packet, .. } = c.session.handle_frame(&mut bytes) {
                c.client.handle_packet(t, packet);
            }
        }
        self.client_events(j);
    }

    /// Tell node `i`'s shard to halt (send nothing but its own loops) or
    /// resume, as the (n−1) detector's `halt` response does.
    pub fn halt(&mut self, i: usize, on: bool) {
        self.nodes[i]
            .control
            .send(Control::Halt(on))
            .expect("shard alive");
    }

    /// Reload every node onto a topology that lists the mixes of each layer
    /// in reverse order (so their indices move), one node per `stagger_us`
    /// of simulated time while traffic keeps flowing.
    pub fn reload_reordered(&mut self, stagger_us: u64) {
        let epoch = epoch_at(START_UNIX_S, EPOCH_S);
        let mut placed = Vec::new();
        for n in &self.topology.nodes {
            let i = self
                .keys
                .iter()
                .position(|k| node_id_of(&k.1.public_key()) == n.id)
                .expect("known node");
            let (identity, link, mix) = &self.keys[i];
            let d = descriptor::sign_descriptor(
                identity,
                &link.public_key(),
                &BTreeMap::from([(epoch, mix.public_key())]),
                Some(n.address),
                EPOCH_S,
            );
            placed.push((d, n.role, n.layer));
        }
        // Reverse within each layer (providers are layer 0).
        placed.sort_by_key(|(_, _, layer)| *layer);
        let mut reordered = Vec::new();
        let mut start = 0;
        while start < placed.len() {
            let layer = placed[start].2;
            let end = placed[start..]
                .iter()
                .position(|p| p.2 != layer)
                .map_or(placed.len(), |k| start + k);
            reordered.extend(placed[start..end].iter().rev().cloned());
            start = end;
        }
        let next = Self::sign(&self.operator, &reordered, &self.config, 2);
        self.topology
            .check_successor(&next, "sim")
            .expect("a valid successor");
        for i in 0..self.nodes.len() {
            let own = next.index_of(&self.nodes[i].id).expect("listed");
            let links: Links =
                build_links(&next, own, &self.nodes[i].link_secret).expect("valid links");
            self.nodes[i]
                .control
                .send(Control::Links(Arc::new(links)))
                .expect("shard alive");
            let until = self.t_us + stagger_us;
            self.run_until(until);
        }
        self.topology = next;
    }
}

impl Drop for SimNetwork {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
