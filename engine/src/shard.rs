//! One shard: a thread pinned to one core that owns, alone and without
//! locks, its socket backend, buffer pool, timing wheel, link replay windows
//! and counters; the replay filters are the node's, shared by its shards
//! (see `replay`), and its windows' tops are published once a second for
//! the node's state file (see `state`).
//!
//! The packet path, in order, with the cheapest checks first so that junk
//! costs the least: length, frame kind, sender is an allowed neighbour, link
//! counter not replayed, frame tag (no scalar mult yet), a pool slot, the
//! Sphinx shared secret (one scalar mult), replay-tag lookup, MAC, command,
//! then the blinding (second scalar mult) and scheduling on the wheel.
//!
//! A provider's shards also take client frames (kinds `0x02` packets and
//! `0x03` pulls): the slot must hold a registered client (a table lookup,
//! before any cryptography), then the slot's replay window, the tag under
//! the client's access key, and for packets the same Sphinx path as above,
//! where a client may only ask for `Relay`. A packet whose command is
//! `Deliver` waits on the wheel for the delay its sender drew (the egress
//! provider mixes like every hop), then goes to the inbox writer over a
//! bounded channel; `Drop` cover is discarded and counted. An authentic
//! pull is answered here, at once, from the inbox's last committed
//! snapshot (`provider::answer`), through this shard's own batched sends.
//!
//! Topology reload (`Control::Links`): a pool slot waiting on the wheel
//! holds its next hop as an index into the links table it was scheduled
//! under. When a new table arrives, the shard remaps every slot's index
//! once, by node id, from the old table to the new one (an `O(pool)` walk
//! off the packet path), and re-keys the link replay windows the same way;
//! a slot whose next hop is no longer an outbound neighbour is marked
//! `NO_PEER` and dropped as `next_hop_removed` when it falls due. The send
//! path stays a plain index into the current table: no hashing, no
//! allocation.
//!
//! A reload may move indices, and neighbours reload at slightly different
//! times, so for `RELOAD_GRACE_US` the shard keeps the previous table: a
//! frame that fails as `unauthenticated` under the current table is tried
//! once more as the same sender index under the previous table (mapped by
//! node id to a current inbound neighbour), and for the first half of the
//! grace this node seals frames to neighbours that knew it with its previous
//! index. Both sides therefore agree on each frame whichever reloads first,
//! provided every node is signalled within half the grace.
//!
//! Time: `State` reads no clock; it takes `now` from its caller. The
//! [`Shard`] owns a [`Clock`], real (monotonic, from the shard's start) or
//! simulated (a counter the simulator moves), and [`Shard::turn`] runs one
//! turn of the loop on the caller's `now` without waiting, which is how
//! fuzz targets and the simulation drive real shards over `io::sim`.
//!
//! Invariants: nothing on the mix path allocates or crosses cores (a
//! provider copies each delivered packet once, to hand it to its inbox
//! thread); every drop is counted by reason; a replay tag is inserted only
//! after its MAC verified; the pool bounds the wheel, so memory does not
//! grow with load; every index in the pool and in the windows refers to the
//! shard's current links table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use loopix_crypto::access::PullRequest;
use loopix_crypto::link::{FRAME_HEADER_LEN, KIND_CLIENT_PACKET, KIND_PACKET, KIND_PULL, TAG_LEN};
use loopix_crypto::{
    sphinx, FrameHeader, Geometry, LinkError, LinkKey, MailboxId, NodeId, RecipientKind,
    ReplayWindow, RoutingCommand, SecretKey, SphinxError,
};

use crate::aqm::{Aqm, AqmSettings};
use crate::io::{Backend, Datagram};
use crate::loops::LoopPacket;
use crate::metrics::{DropReason, ShardMetrics};
use crate::provider::registry::ClientTable;
use crate::provider::{Answerer, WriterWork};
use crate::replay::{BloomFilter, ReplayFilters};
use crate::state::{keep_max, LinkState, COUNTER_RESERVE};
use crate::wheel::{InsertError, TimingWheel};

/// Bits of the link counter that carry the sending shard, so that each
/// sending shard has its own counter sequence and window at the receiver.
const COUNTER_SHARD_SHIFT: u32 = 56;
/// The counter bits below the sending shard's.
const COUNTER_LOW_MASK: u64 = (1 << COUNTER_SHARD_SHIFT) - 1;

/// Where the Sphinx packet sits in a link frame (and a pool slot).
fn packet_range(g: &Geometry) -> std::ops::Range<usize> {
    FRAME_HEADER_LEN..g.frame_len() - TAG_LEN
}

/// Shard `index`'s link counter with `low` as its sequence part.
fn shard_counter(index: u32, low: u64) -> u64 {
    (u64::from(index) << COUNTER_SHARD_SHIFT) | (low & COUNTER_LOW_MASK)
}
/// Longest idle wait, so control messages and the stop flag are seen.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// A pool slot's next hop when a reload removed it from the topology.
const NO_PEER: u32 = u32::MAX;
/// A pool slot's next hop when it holds a `Deliver` packet: the inbox.
const TO_INBOX: u32 = u32::MAX - 1;
/// How long after a reload frames under the previous table's sender
/// indices are accepted; this node seals with its previous index for the
/// first half.
const RELOAD_GRACE_US: u64 = 10_000_000;

/// A neighbour as the shards see it (shared, read-only).
pub struct Peer {
    /// Its id.
    pub id: NodeId,
    /// Where to send.
    pub address: SocketAddr,
    /// Pairwise link key.
    pub link: LinkKey,
    /// May send to us.
    pub inbound: bool,
    /// We may send to it.
    pub outbound: bool,
}

/// Who this node talks to: peers indexed by topology index (the link-frame
/// sender index), and next hops by id.
pub struct Links {
    /// This node's own topology index (its sender index in frames).
    pub own_index: u32,
    /// Peers by topology index; `None` for nodes that are not neighbours.
    pub peers: Vec<Option<Peer>>,
    /// Outbound peers by id.
    pub next_hop: HashMap<NodeId, u32>,
}

impl Links {
    /// For each index of `old`'s peers, the index of the same node (by id)
    /// among this table's peers, if it is still a neighbour: how a reload
    /// carries indices from one table to the next.
    pub fn remap_from(&self, old: &Links) -> Vec<Option<u32>> {
        let by_id: HashMap<NodeId, u32> = self
            .peers
            .iter()
            .enumerate()
            .filter_map(|(j, p)| p.as_ref().map(|p| (p.id, j as u32)))
            .collect();
        old.peers
            .iter()
            .map(|p| p.as_ref().and_then(|p| by_id.get(&p.id).copied()))
            .collect()
    }

    fn peer(&self, index: u32) -> Option<&Peer> {
        self.peers.get(index as usize).and_then(|p| p.as_ref())
    }
}

/// The Sphinx key of one accepted epoch.
pub struct EpochKey {
    /// Key epoch number.
    pub epoch: u64,
    /// The secret.
    pub secret: SecretKey,
}

/// Messages from the control plane, drained between batches.
pub enum Control {
    /// The keys to accept from now on, the current epoch's first, with
    /// filters the control plane built (and faulted in) for epochs this
    /// shard has not opened yet.
    Keys(Vec<EpochKey>, Vec<(u64, BloomFilter)>),
    /// (Provider) the registered clients from now on.
    Clients(Arc<ClientTable>),
    /// The neighbours from now on (a topology reload); packets already on
    /// the wheel are carried over by node id.
    Links(Arc<Links>),
    /// This node's own loops, built by the control plane ahead of their
    /// departure: each goes on the wheel at its time like a forwarded
    /// packet (same slot, same frame, same send path).
    Loops(Vec<LoopPacket>),
    /// (n−1) alarm with `response = "halt"`: while `true`, send nothing
    /// but this node's own loops (the rest is dropped as `halted` when it
    /// falls due).
    Halt(bool),
}

/// One of this node's loops came back: its id and the shard-clock time it
/// arrived, for the control plane's detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopReturn {
    /// The id its last hop command carried.
    pub id: [u8; 16],
    /// Arrival time, on the node's clock (microseconds since its start).
    pub at_us: u64,
}

/// What makes a shard a provider's: its clients, the way to its inbox
/// writer, and its pull answering.
pub struct ProviderHooks {
    /// The registered clients (replaced by `Control::Clients`).
    pub clients: Arc<ClientTable>,
    /// The bounded channel to the inbox writer.
    pub writer: Sender<WriterWork>,
    /// This shard's pull answering.
    pub answerer: Answerer,
    /// Every answer leaves this long after its pull arrived.
    pub answer_delay_us: u64,
    /// The digest of the network's client rates every pull must announce
    /// (`ClientRates::digest`); `None` where the document allows clients
    /// other rates. A client whose pull announces others is refused: that
    /// pull and its packets until a pull announces the network's
    /// (`client_rates`).
    pub rates: Option<[u8; 8]>,
}

/// Answers one shard holds for their release time at most; more pulls are
/// dropped (`answer_backlog`). At the default 1 ms delay that is 4 million
/// pulls a second, far above what a shard answers: the bound is for memory.
const MAX_HELD_ANSWERS: usize = 4096;

/// How often a provider shard hands the acknowledgements it answered to the
/// inbox writer: on a clock of its own, so the writer's commits do not
/// follow any one client's pulls (their ids stay hidden meanwhile).
const ACK_HANDOFF_US: u64 = 100_000;

/// A pull answer waiting for its release time.
struct HeldAnswer {
    release_us: u64,
    to: SocketAddr,
    frames: Vec<u8>,
}

/// A provider shard's client state.
struct ProviderState {
    clients: Arc<ClientTable>,
    writer: Sender<WriterWork>,
    answerer: Answerer,
    answer_delay_us: u64,
    /// Answers waiting for their release (pull arrival plus the delay), in
    /// release order; their buffers are reused.
    held: std::collections::VecDeque<HeldAnswer>,
    spare: Vec<Vec<u8>>,
    /// The mailbox of each pool slot holding a `Deliver` packet on the
    /// wheel (its next hop is `TO_INBOX`).
    deliveries: HashMap<u32, MailboxId>,
    /// Replay windows of client frames, by slot.
    windows: HashMap<u32, ReplayWindow>,
    /// A frame-sized buffer to decrypt pulls in (the received one is
    /// borrowed immutably).
    scratch: Vec<u8>,
    /// The rates digest pulls must announce (`ProviderHooks::rates`).
    rates: Option<[u8; 8]>,
    /// Slots whose last pull announced other rates: their packets are
    /// refused until a pull announces the network's. At most one entry per
    /// registered client.
    misrated: std::collections::HashSet<u32>,
}

/// Fixed settings of a shard.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Shard number (also the reuseport index).
    pub index: u32,
    /// Packet geometry.
    pub geometry: Geometry,
    /// Pool slots.
    pub pool_packets: u32,
    /// Datagrams per batch.
    pub batch: usize,
    /// Largest delay accepted.
    pub delay_cap_us: u64,
    /// After stop: keep sending what is due within this long.
    pub drain_us: u64,
    /// Replay filter sizing per epoch, for a filter the shard builds itself
    /// in memory (simulations, fuzzing, or an epoch whose shared filter the
    /// node could not open).
    pub filter_items: u64,
    /// Target false-positive rate.
    pub filter_fp: f64,
    /// Cap on one filter's size.
    pub filter_max_bytes: u64,
    /// The AQM on this shard's queueing delay ([`AqmSettings::OFF`]: none).
    pub aqm: AqmSettings,
}

/// The buffer pool: `capacity` frame-sized slots allocated at start.
struct Pool {
    bytes: Vec<u8>,
    slot_len: usize,
    free: Vec<u32>,
    next_peer: Vec<u32>,
    /// The slot holds one of this node's own loops (counted when it leaves).
    is_loop: Vec<bool>,
    /// Slots whose `is_loop` is set: this node's loops waiting to leave,
    /// which are not part of the mix's pool in the paper's sense.
    held_loops: u64,
}

impl Pool {
    fn new(capacity: u32, slot_len: usize) -> Self {
        Pool {
            bytes: vec![0u8; capacity as usize * slot_len],
            slot_len,
            free: (0..capacity).rev().collect(),
            next_peer: vec![0; capacity as usize],
            is_loop: vec![false; capacity as usize],
            held_loops: 0,
        }
    }
    fn slot(&mut self, i: u32) -> &mut [u8] {
        let s = i as usize * self.slot_len;
        &mut self.bytes[s..s + self.slot_len]
    }
    fn in_use(&self) -> usize {
        debug_assert!(
            self.free.len() <= self.next_peer.len(),
            "a slot freed twice"
        );
        self.next_peer.len() - self.free.len()
    }
}

impl State {
    /// Hand the `Deliver` packet in pool slot `idx` to the inbox writer
    /// (the caller frees the slot).
    fn hand_to_inbox(&mut self, idx: u32) {
        let Some(p) = self.provider.as_mut() else {
            return;
        };
        let Some(mailbox) = p.deliveries.remove(&idx) else {
            debug_assert!(
                false,
                "slot {idx} on the wheel to the inbox without a mailbox"
            );
            return;
        };
        let g = self.settings.geometry;
        let range = packet_range(&g);
        let packet = self.pool.slot(idx)[range].to_vec();
        match p
            .writer
            .try_send(WriterWork::Store(mailbox, packet, Instant::now()))
        {
            Ok(()) => {
                self.metrics.to_inbox.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.metrics.count_drop(DropReason::InboxQueueFull),
        }
    }

    /// Between datagrams and batches every pool slot is either free or
    /// waiting on the wheel, never both and never neither (a provider's
    /// stored packets are copied out, so they give their slot back).
    fn check_accounting(&self) {
        debug_assert_eq!(
            self.pool.free.len() + self.wheel.len(),
            self.settings.pool_packets as usize,
            "pool free + on the wheel = capacity"
        );
        debug_assert!(
            self.pool.held_loops as usize <= self.wheel.len(),
            "more own loops held than slots on the wheel"
        );
        #[cfg(debug_assertions)]
        for &idx in self.pool.free.iter().rev().take(4) {
            debug_assert!(
                !self.wheel.contains(idx),
                "slot {idx} is free and on the wheel"
            );
        }
    }
}

/// The table before the last reload, kept for `RELOAD_GRACE_US`.
struct Previous {
    /// Previous sender index -> current index of the same node.
    remap: Vec<Option<u32>>,
    /// This node's index in the previous table.
    own_index: u32,
    /// By current index: the peer was in the previous table too.
    knew_us: Vec<bool>,
    /// Accept previous-table sender indices until then (shard clock).
    accept_until_us: u64,
    /// Seal with `own_index` to peers that knew us until then.
    seal_until_us: u64,
}

/// Everything but the backend, so the receive callback can borrow it while
/// the backend is borrowed too.
struct State {
    settings: ShardSettings,
    links: Arc<Links>,
    keys: Vec<EpochKey>,
    filters: ReplayFilters,
    windows: HashMap<(u32, u8), ReplayWindow>,
    pool: Pool,
    wheel: TimingWheel,
    metrics: Arc<ShardMetrics>,
    counter: u64,
    /// Packets put on the wheel so far (the caller times each one).
    scheduled: u64,
    provider: Option<ProviderState>,
    previous: Option<Previous>,
    /// Where returned loops go (the control plane's detector).
    loop_returns: Option<Sender<LoopReturn>>,
    /// In (n−1) alarm with the `halt` response.
    halted: bool,
    /// Drops arrivals at random while the shard runs late.
    aqm: Aqm,
    /// When a receive last found the input empty (less than a full batch,
    /// or nothing left after one).
    input_empty_at_us: u64,
    /// Link counters accepted before the last restart, by neighbour and its
    /// sending shard: a window opened for one refuses them.
    restored: HashMap<(NodeId, u8), u64>,
    /// A provider's: client counters accepted before the last restart.
    restored_clients: HashMap<MailboxId, u64>,
    /// Where the shard publishes its link state for the state file.
    link_out: Option<Arc<Mutex<LinkState>>>,
}

/// Where a shard's time comes from.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Microseconds on the monotonic clock since the shard was built.
    Real(Instant),
    /// Microseconds as set by a simulator.
    Sim(Arc<AtomicU64>),
}

impl Clock {
    /// Now, in microseconds on this clock.
    pub fn now_us(&self) -> u64 {
        match self {
            Clock::Real(start) => micros_since(*start),
            Clock::Sim(now) => now.load(Ordering::Relaxed),
        }
    }
}

/// A shard ready to run.
pub struct Shard {
    clock: Clock,
    backend: Box<dyn Backend + Send>,
    control: Receiver<Control>,
    stop: Arc<AtomicBool>,
    state: State,
    due: Vec<(u32, u64)>,
    /// The kernel's drop counter of the socket when last read.
    kernel_drops_seen: u32,
}

/// Microseconds since `start` on the monotonic clock.
fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Shard {
    /// Build a shard; allocates its pool and wheel, installs `filters`
    /// (shared with the node's other shards) and builds, in process memory,
    /// the filter of any epoch of `keys` they lack.
    #[allow(clippy::too_many_arguments)] // reason: each is a distinct part the node hands over once
    pub fn new(
        settings: ShardSettings,
        backend: Box<dyn Backend + Send>,
        links: Arc<Links>,
        keys: Vec<EpochKey>,
        shared_filters: Vec<(u64, BloomFilter)>,
        control: Receiver<Control>,
        stop: Arc<AtomicBool>,
        metrics: Arc<ShardMetrics>,
    ) -> Result<Shard, String> {
        let slot_len = settings.geometry.frame_len();
        let mut filters = ReplayFilters::new(
            settings.filter_items,
            settings.filter_fp,
            settings.filter_max_bytes,
        )
        .map_err(|e| format!("replay filter for shard {}: {e}", settings.index))?;
        for (epoch, f) in shared_filters {
            filters
                .install(epoch, f)
                .map_err(|e| format!("replay filter for epoch {epoch}: {e}"))?;
        }
        for k in &keys {
            filters
                .open_epoch(k.epoch)
                .map_err(|e| format!("replay filter for epoch {}: {e}", k.epoch))?;
        }
        // Counters start at the wall clock in microseconds, and past the
        // saved state's floor once `with_link_state` gives it, so that a
        // restarted node's counters are above what peers last saw from it.
        let counter = shard_counter(settings.index, crate::state::wall_us());
        metrics
            .pool_capacity
            .store(u64::from(settings.pool_packets), Ordering::Relaxed);
        metrics
            .filter_bytes
            .store(filters.memory_bytes(), Ordering::Relaxed);
        let aqm = Aqm::new(
            settings.aqm,
            rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        );
        let state = State {
            pool: Pool::new(settings.pool_packets, slot_len),
            wheel: TimingWheel::new(
                settings.pool_packets,
                0,
                // Slack over the cap for a wheel that lags behind the clock
                // while it works through a burst of due packets.
                settings.delay_cap_us + 60_000_000,
            ),
            windows: HashMap::with_capacity(links.peers.len()),
            settings,
            links,
            keys,
            filters,
            metrics,
            counter,
            scheduled: 0,
            provider: None,
            previous: None,
            loop_returns: None,
            halted: false,
            aqm,
            input_empty_at_us: 0,
            restored: HashMap::new(),
            restored_clients: HashMap::new(),
            link_out: None,
        };
        let batch = state.settings.batch;
        Ok(Shard {
            clock: Clock::Real(Instant::now()),
            backend,
            control,
            stop,
            state,
            due: Vec::with_capacity(batch),
            kernel_drops_seen: 0,
        })
    }

    /// Count time from `start` (the node's start, which its control plane
    /// shares, so that a loop's departure time means the same instant on
    /// both sides).
    pub fn with_start(mut self, start: Instant) -> Shard {
        self.clock = Clock::Real(start);
        self
    }

    /// Make this a provider's shard: it takes client frames, stores
    /// `Deliver` packets through `hooks.writer` and answers pulls.
    pub fn with_provider(mut self, hooks: ProviderHooks) -> Shard {
        self.state.provider = Some(ProviderState {
            clients: hooks.clients,
            writer: hooks.writer,
            answerer: hooks.answerer,
            answer_delay_us: hooks.answer_delay_us,
            held: std::collections::VecDeque::new(),
            spare: Vec::new(),
            deliveries: HashMap::new(),
            windows: HashMap::new(),
            scratch: vec![0u8; self.state.settings.geometry.frame_len()],
            rates: hooks.rates,
            misrated: std::collections::HashSet::new(),
        });
        self
    }

    /// Tell the control plane of every returned loop through `returns`
    /// (bounded; a full queue is counted and the loop will look lost).
    pub fn with_loop_returns(mut self, returns: Sender<LoopReturn>) -> Shard {
        self.state.loop_returns = Some(returns);
        self
    }

    /// Resume from the node's saved link state: refuse the counters it
    /// accepted before, seal above every counter it used, and publish the
    /// windows into `out` once a second for the next save.
    pub fn with_link_state(mut self, saved: &LinkState, out: Arc<Mutex<LinkState>>) -> Shard {
        let st = &mut self.state;
        st.restored = saved.windows.clone();
        st.restored_clients = saved.clients.clone();
        let low = (st.counter & COUNTER_LOW_MASK).max(saved.counter_floor);
        st.counter = shard_counter(st.settings.index, low);
        st.link_out = Some(out);
        st.publish_link_state();
        self
    }

    /// Run on `clock` (a simulator's) from now on, with link counters
    /// starting at `first_counter` (deterministic frames for a seeded run).
    pub fn with_clock(mut self, clock: Clock, first_counter: u64) -> Shard {
        self.clock = clock;
        let seed = first_counter ^ u64::from(self.state.settings.index);
        self.state.aqm = Aqm::new(self.state.settings.aqm, seed);
        self.state.counter = shard_counter(self.state.settings.index, first_counter);
        self
    }

    /// The shard's counters.
    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.state.metrics
    }

    /// When the earliest waiting packet falls due, on the shard's clock.
    pub fn next_wakeup_us(&self) -> Option<u64> {
        self.state.wheel.next_wakeup_us()
    }

    /// Packets waiting on the wheel.
    pub fn waiting(&self) -> usize {
        self.state.pool.in_use()
    }

    fn apply_control(&mut self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                Control::Keys(keys, filters) => self.state.set_keys(keys, filters),
                Control::Clients(table) => self.state.set_clients(table),
                Control::Links(links) => self.state.set_links(links, self.clock.now_us()),
                Control::Loops(loops) => {
                    let now = self.clock.now_us();
                    for p in &loops {
                        self.state.inject_loop(p, now);
                    }
                    self.state.check_accounting();
                }
                Control::Halt(on) => self.state.halted = on,
            }
        }
    }

    /// Receive at most one batch, waiting at most `timeout`, and handle
    /// each datagram with the batch's arrival time.
    fn receive(&mut self, timeout: Duration) -> std::io::Result<usize> {
        let state = &mut self.state;
        let clock = &self.clock;
        let mut arrival = None;
        let n = self.backend.recv(Some(timeout), &mut |d: Datagram<'_>| {
            // One arrival time per batch: the moment the kernel handed it over.
            let at = *arrival.get_or_insert_with(|| clock.now_us());
            let before = state.scheduled;
            state.handle(d, at);
            state.check_accounting();
            if state.scheduled != before {
                let now = clock.now_us();
                state.metrics.overhead.record(now.saturating_sub(at));
            }
        })?;
        // Less than a full batch, or nothing left after a full one: the input
        // is empty now. The time since it last was is the standing queue the
        // AQM watches.
        let now = clock.now_us();
        if n < state.settings.batch || !self.backend.input_pending() {
            state.input_empty_at_us = now;
        }
        let standing = now.saturating_sub(state.input_empty_at_us);
        state.aqm.observe_backlog(standing, now);
        if let Some(p) = state.provider.as_mut() {
            p.answerer.end_round();
        }
        Ok(n)
    }

    /// Send the held pull answers whose release time is `now` or earlier,
    /// in batches.
    fn release_answers(&mut self, now: u64) {
        let Some(p) = self.state.provider.as_mut() else {
            return;
        };
        if p.held.front().is_none_or(|h| h.release_us > now) {
            return;
        }
        let len = p.answerer.frame_len();
        let mut sent_frames = 0u64;
        let mut failed_frames = 0u64;
        while p.held.front().is_some_and(|h| h.release_us <= now) {
            let Some(h) = p.held.pop_front() else { break };
            // The k frames of one answer in one offloaded send where the
            // kernel can: one pass through the stack, not k.
            let (sent, failed) = self.backend.send_segments(h.to, &h.frames, len);
            sent_frames += sent as u64;
            failed_frames += failed as u64;
            p.spare.push(h.frames);
        }
        p.answerer.count_sent(sent_frames, failed_frames);
    }

    /// Hand the acknowledgements answered so far to the inbox writer.
    fn hand_over_acks(&mut self) {
        if let Some(p) = self.state.provider.as_mut() {
            p.answerer.hand_over_acks();
        }
    }

    /// When the first held answer is due.
    fn next_answer_us(&self) -> Option<u64> {
        let p = self.state.provider.as_ref()?;
        p.held.front().map(|h| h.release_us)
    }

    /// One turn of the loop without waiting, for a caller that owns time
    /// (a simulator or a fuzz target, with [`Clock::Sim`] set to `now_us`):
    /// control messages, every packet due by `now_us`, then one batch of
    /// waiting datagrams. Returns the datagrams handled.
    pub fn turn(&mut self, now_us: u64) -> usize {
        self.apply_control();
        self.send_due(now_us);
        self.hand_over_acks();
        // The simulated backend cannot fail; a real one that does is
        // reported by `run`, which a caller of `turn` does not use.
        self.receive(Duration::ZERO).unwrap_or_default()
    }

    /// Run until the stop flag is set and the drain is done.
    pub fn run(mut self) {
        let mut stop_at: Option<u64> = None;
        let mut last_stats = 0u64;
        let mut last_acks = 0u64;
        loop {
            let now = self.clock.now_us();
            self.send_due(now);
            self.apply_control();
            if now.saturating_sub(last_acks) >= ACK_HANDOFF_US {
                self.hand_over_acks();
                last_acks = now;
            }
            if now.saturating_sub(last_stats) >= 1_000_000 {
                self.state.publish_stats();
                self.state.publish_link_state();
                self.count_kernel_drops();
                last_stats = now;
            }
            if stop_at.is_none() && self.stop.load(Ordering::Relaxed) {
                stop_at = Some(now + self.state.settings.drain_us);
            }
            if let Some(at) = stop_at {
                if now >= at || self.state.wheel.is_empty() {
                    self.finish_drain();
                    return;
                }
                let wake = self.state.wheel.next_wakeup_us().unwrap_or(at).min(at);
                let wake = self.next_answer_us().map_or(wake, |a| a.min(wake));
                std::thread::sleep(Duration::from_micros(wake.saturating_sub(now)).min(IDLE_WAIT));
                continue;
            }
            let next = match (self.state.wheel.next_wakeup_us(), self.next_answer_us()) {
                (Some(w), Some(a)) => Some(w.min(a)),
                (w, a) => w.or(a),
            };
            let timeout = match next {
                Some(w) => Duration::from_micros(w.saturating_sub(now)).min(IDLE_WAIT),
                None => IDLE_WAIT,
            };
            if let Err(e) = self.receive(timeout) {
                eprintln!("shard {}: receive failed: {e}", self.state.settings.index);
                std::thread::sleep(IDLE_WAIT);
            }
        }
    }

    /// Seal and send every packet whose deadline has passed.
    fn send_due(&mut self, now: u64) {
        self.release_answers(now);
        loop {
            self.due.clear();
            let due = &mut self.due;
            let fired = self
                .state
                .wheel
                .poll(now, self.state.settings.batch, |i, d| due.push((i, d)));
            for k in 0..self.due.len() {
                let (idx, deadline) = self.due[k];
                self.send_one(idx, deadline);
            }
            if self.backend.queued() > 0 {
                let (sent, failed) = self.backend.flush();
                let m = &self.state.metrics;
                m.forwarded.fetch_add(sent as u64, Ordering::Relaxed);
                m.drop_n(DropReason::SendFailed, failed as u64);
            }
            if fired < self.state.settings.batch {
                break;
            }
        }
        self.state.check_accounting();
        let st = &mut self.state;
        st.aqm.tick(now);
        let m = &st.metrics;
        m.pool_in_use
            .store(st.pool.in_use() as u64, Ordering::Relaxed);
        m.pool_own_loops
            .store(st.pool.held_loops, Ordering::Relaxed);
        m.aqm_drop_bits
            .store(st.aqm.drop_probability().to_bits(), Ordering::Relaxed);
    }

    fn send_one(&mut self, idx: u32, deadline: u64) {
        let st = &mut self.state;
        let peer_index = st.pool.next_peer[idx as usize];
        let own_loop = std::mem::take(&mut st.pool.is_loop[idx as usize]);
        if own_loop {
            st.pool.held_loops = st.pool.held_loops.saturating_sub(1);
        }
        let counter = st.counter;
        st.counter = st.counter.wrapping_add(1);
        let own = match &st.previous {
            Some(p)
                if deadline < p.seal_until_us
                    && p.knew_us.get(peer_index as usize) == Some(&true) =>
            {
                p.own_index
            }
            _ => st.links.own_index,
        };
        if st.halted && !own_loop {
            if peer_index == TO_INBOX {
                if let Some(p) = st.provider.as_mut() {
                    p.deliveries.remove(&idx);
                }
            }
            st.metrics.count_drop(DropReason::Halted);
            st.pool.free.push(idx);
            return;
        }
        if peer_index == TO_INBOX {
            st.hand_to_inbox(idx);
            st.pool.free.push(idx);
            return;
        }
        let frame = st.pool.slot(idx);
        let Some(peer) = st.links.peer(peer_index) else {
            // NO_PEER: a reload removed the next hop while the packet waited.
            debug_assert!(peer_index == NO_PEER, "scheduled to a non-peer");
            st.metrics.count_drop(DropReason::NextHopRemoved);
            st.pool.free.push(idx);
            return;
        };
        if peer.link.seal_in_place(own, counter, frame).is_err() {
            st.metrics.count_drop(DropReason::SendFailed);
            st.pool.free.push(idx);
            return;
        }
        if !self.backend.send(peer.address, frame) {
            let (sent, failed) = self.backend.flush();
            st.metrics
                .forwarded
                .fetch_add(sent as u64, Ordering::Relaxed);
            st.metrics.drop_n(DropReason::SendFailed, failed as u64);
            if !self.backend.send(peer.address, st.pool.slot(idx)) {
                st.metrics.count_drop(DropReason::SendFailed);
            }
        }
        let now = self.clock.now_us();
        let lateness = now.saturating_sub(deadline);
        st.metrics.lateness.record(lateness);
        st.aqm.observe(lateness, now);
        if own_loop {
            st.metrics.loops_sent.fetch_add(1, Ordering::Relaxed);
        }
        st.pool.free.push(idx);
    }

    /// Stop: send what is due now, count the rest as dropped.
    fn finish_drain(&mut self) {
        let now = self.clock.now_us();
        self.send_due(now);
        // Answers still held go now rather than never, and the writer
        // commits what they acknowledged before it ends.
        self.release_answers(u64::MAX);
        self.hand_over_acks();
        let st = &mut self.state;
        let mut left = 0u64;
        let mut deliveries = Vec::new();
        let pool = &mut st.pool;
        st.wheel.drain(|idx, _| {
            if std::mem::take(&mut pool.is_loop[idx as usize]) {
                pool.held_loops = pool.held_loops.saturating_sub(1);
            }
            if pool.next_peer[idx as usize] == TO_INBOX {
                // Accepted for a client: store it now rather than lose it
                // (its mixing delay is cut short, only at a stop).
                deliveries.push(idx);
                return;
            }
            pool.free.push(idx);
            left += 1;
        });
        for idx in deliveries {
            st.hand_to_inbox(idx);
            st.pool.free.push(idx);
        }
        st.metrics.drop_n(DropReason::ShuttingDown, left);
        st.metrics.pool_in_use.store(0, Ordering::Relaxed);
        st.publish_stats();
        st.publish_link_state();
        self.count_kernel_drops();
    }

    /// Add the datagrams the kernel dropped for this shard's socket since
    /// the last look (its counter is 32 bits: deltas wrap).
    fn count_kernel_drops(&mut self) {
        if let Some(now) = self.backend.kernel_drops() {
            let delta = now.wrapping_sub(self.kernel_drops_seen);
            self.kernel_drops_seen = now;
            self.state
                .metrics
                .drop_n(DropReason::Kernel, u64::from(delta));
        }
    }
}

/// The link checks of a packet frame from the peer at `index` of `links`,
/// then its window moves.
fn open_link(
    windows: &mut HashMap<(u32, u8), ReplayWindow>,
    restored: &HashMap<(NodeId, u8), u64>,
    links: &Links,
    index: u32,
    header: &FrameHeader,
    data: &[u8],
) -> Result<(), DropReason> {
    // Borrow the shared table (no refcount traffic: an Arc clone per
    // datagram would write a cache line every shard shares).
    let Some(peer) = links.peer(index).filter(|p| p.inbound) else {
        return Err(DropReason::Unauthenticated);
    };
    let sender_shard = (header.counter >> COUNTER_SHARD_SHIFT) as u8;
    let window_key = (index, sender_shard);
    // Before a restart, this neighbour's shard had sent up to `saved`.
    let saved = || restored.get(&(peer.id, sender_shard)).copied();
    if !admits(windows.get(&window_key), saved, header.counter) {
        return Err(DropReason::LinkReplay);
    }
    if let Err(e) = peer.link.open(data) {
        return Err(match e {
            LinkError::Replay(_) | LinkError::TooOld(_) => DropReason::LinkReplay,
            _ => DropReason::Unauthenticated,
        });
    }
    windows
        .entry(window_key)
        .or_insert_with(|| window_from(saved()))
        .commit(header.counter);
    Ok(())
}

/// Whether a sender's `window`, or before one is opened the top `saved`
/// before a restart, accepts `counter` (without recording it).
fn admits(
    window: Option<&ReplayWindow>,
    saved: impl FnOnce() -> Option<u64>,
    counter: u64,
) -> bool {
    match window {
        Some(w) => w.check(counter).is_ok(),
        None => saved().is_none_or(|top| counter > top),
    }
}

/// A sender's first window: above the top it had reached before a
/// restart, if any.
fn window_from(saved: Option<u64>) -> ReplayWindow {
    saved.map_or_else(ReplayWindow::new, ReplayWindow::resume_above)
}

impl State {
    /// Put one of this node's loops on the wheel to leave at its departure
    /// time (at once, counted late, if that has passed). It then takes the
    /// forwarded packets' path: the frame on the wire is the same.
    fn inject_loop(&mut self, p: &LoopPacket, now: u64) {
        let g = self.settings.geometry;
        let m = &self.metrics;
        let range = packet_range(&g);
        let Some(&peer) = self.links.next_hop.get(&p.first_hop) else {
            // A reload removed the first hop after the loop was built.
            m.loops_refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if p.packet.len() != range.len() {
            debug_assert!(false, "a loop of {} bytes", p.packet.len());
            m.loops_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(idx) = self.pool.free.pop() else {
            m.loops_refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.pool.slot(idx)[range].copy_from_slice(&p.packet);
        self.pool.next_peer[idx as usize] = peer;
        if self.wheel.insert(p.depart_us.max(now), idx).is_err() {
            self.pool.free.push(idx);
            m.loops_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pool.is_loop[idx as usize] = true;
        self.pool.held_loops += 1;
        if p.depart_us < now {
            m.loops_late.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_keys(&mut self, keys: Vec<EpochKey>, filters: Vec<(u64, BloomFilter)>) {
        if let Some(oldest) = keys.iter().map(|k| k.epoch).min() {
            self.filters.retire_before(oldest);
        }
        for (epoch, filter) in filters {
            if let Err(e) = self.filters.install(epoch, filter) {
                eprintln!(
                    "shard {}: filter for epoch {epoch} refused: {e}",
                    self.settings.index
                );
            }
        }
        for k in &keys {
            // Normally installed above; building it here is the fallback.
            if let Err(e) = self.filters.open_epoch(k.epoch) {
                // The key stays unusable: without a filter its replays could
                // not be caught. Packets for it fail as bad_mac.
                eprintln!(
                    "shard {}: epoch {} not accepted: {e}",
                    self.settings.index, k.epoch
                );
            }
        }
        let keys: Vec<EpochKey> = keys
            .into_iter()
            .filter(|k| self.filters.is_open(k.epoch))
            .collect();
        self.keys = keys;
        self.publish_stats();
    }

    fn set_clients(&mut self, table: Arc<ClientTable>) {
        if let Some(p) = self.provider.as_mut() {
            // A removed client's window goes with it.
            p.windows.retain(|slot, _| table.by_slot.contains_key(slot));
            p.clients = table;
        }
    }

    /// A reload: carry every pool slot's next hop and every link window
    /// over to the new table by node id, then use it. Runs between batches;
    /// allocates only the remap table and the re-keyed window map.
    fn set_links(&mut self, links: Arc<Links>, now: u64) {
        let remap = links.remap_from(&self.links);
        let carry = |old: u32, want: fn(&Peer) -> bool| -> Option<u32> {
            remap
                .get(old as usize)
                .copied()
                .flatten()
                .filter(|&j| links.peer(j).is_some_and(want))
        };
        // Free slots are rewritten too (their value is overwritten before
        // use), which spares telling free slots from waiting ones.
        for next in self.pool.next_peer.iter_mut() {
            if *next != TO_INBOX {
                *next = carry(*next, |p| p.outbound).unwrap_or(NO_PEER);
            }
        }
        let windows = std::mem::take(&mut self.windows);
        self.windows = windows
            .into_iter()
            .filter_map(|((sender, shard), w)| {
                carry(sender, |p| p.inbound).map(|s| ((s, shard), w))
            })
            .collect();
        let mut knew_us = vec![false; links.peers.len()];
        for j in remap.iter().flatten() {
            knew_us[*j as usize] = true;
        }
        self.previous = Some(Previous {
            own_index: self.links.own_index,
            remap,
            knew_us,
            accept_until_us: now + RELOAD_GRACE_US,
            seal_until_us: now + RELOAD_GRACE_US / 2,
        });
        self.links = links;
    }

    /// Link layer of a packet frame: the sender is an inbound neighbour,
    /// the counter is inside its window, the tag verifies; then the window
    /// moves. Within the grace after a reload, a sender index that fails
    /// under the current table (as another node's, whose window or tag
    /// refuses it, or as no neighbour's) is tried once more as an index of
    /// the previous table.
    fn authenticate(
        &mut self,
        data: &[u8],
        header: &FrameHeader,
        now_us: u64,
    ) -> Result<(), DropReason> {
        let first = open_link(
            &mut self.windows,
            &self.restored,
            &self.links,
            header.sender,
            header,
            data,
        );
        if first.is_ok() || self.previous.is_none() {
            return first;
        }
        let again = self
            .previous
            .as_ref()
            .filter(|p| now_us < p.accept_until_us)
            .and_then(|p| p.remap.get(header.sender as usize).copied().flatten())
            .filter(|&j| j != header.sender);
        match again.map(|j| {
            open_link(
                &mut self.windows,
                &self.restored,
                &self.links,
                j,
                header,
                data,
            )
        }) {
            Some(Ok(())) => Ok(()),
            Some(Err(DropReason::LinkReplay)) => Err(DropReason::LinkReplay),
            _ => first,
        }
    }

    fn publish_stats(&self) {
        self.metrics
            .filter_bytes
            .store(self.filters.memory_bytes(), Ordering::Relaxed);
        if let Some(current) = self.keys.first() {
            if let Some((_, fill, _, _)) = self
                .filters
                .stats()
                .into_iter()
                .find(|s| s.0 == current.epoch)
            {
                self.metrics
                    .filter_fill_bits
                    .store(fill.to_bits(), Ordering::Relaxed);
            }
        }
    }

    /// Publish the windows' tops (over the restored ones) and the counter
    /// limit for the node's state file; skipped if the syncer holds the
    /// lock (the next second publishes).
    fn publish_link_state(&self) {
        let Some(out) = &self.link_out else { return };
        let Ok(mut snap) = out.try_lock() else { return };
        snap.windows.clone_from(&self.restored);
        for (&(index, shard), w) in &self.windows {
            let (Some(peer), Some(top)) = (self.links.peer(index), w.highest()) else {
                continue;
            };
            keep_max(&mut snap.windows, (peer.id, shard), top);
        }
        snap.clients.clone_from(&self.restored_clients);
        if let Some(p) = &self.provider {
            for (slot, w) in &p.windows {
                let (Some(client), Some(top)) = (p.clients.by_slot.get(slot), w.highest()) else {
                    continue;
                };
                keep_max(&mut snap.clients, client.mailbox, top);
            }
        }
        snap.counter_floor = (self.counter & COUNTER_LOW_MASK).saturating_add(COUNTER_RESERVE);
    }

    fn drop(&self, reason: DropReason) {
        self.metrics.count_drop(reason);
    }

    /// The whole receive path for one datagram.
    fn handle(&mut self, d: Datagram<'_>, arrival_us: u64) {
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        let g = self.settings.geometry;
        if d.truncated || d.data.len() != g.frame_len() {
            return self.drop(DropReason::BadLength);
        }
        let header = match FrameHeader::peek(d.data) {
            Ok(h) => h,
            Err(_) => return self.drop(DropReason::BadFrame),
        };
        if header.kind != KIND_PACKET {
            return self.handle_client(d, header, arrival_us);
        }
        if let Err(reason) = self.authenticate(d.data, &header, arrival_us) {
            return self.drop(reason);
        }
        // The AQM decides before any scalar multiplication, independently of
        // the packet (docs/aqm.md).
        if !self.aqm.admit() {
            return self.drop(DropReason::Aqm);
        }

        let Some(idx) = self.pool.free.pop() else {
            return self.drop(DropReason::PoolFull);
        };
        let packet_range = packet_range(&g);
        let slot = self.pool.slot(idx);
        slot[packet_range.clone()].copy_from_slice(&d.data[packet_range.clone()]);
        match self.process(idx, packet_range, arrival_us, false) {
            Ok(()) => {}
            Err(reason) => {
                self.pool.free.push(idx);
                self.drop(reason);
            }
        }
    }

    /// Client frames (providers only): slot lookup, window, tag; then a
    /// packet goes the Sphinx path and a pull is answered (`provider::answer`).
    fn handle_client(&mut self, d: Datagram<'_>, header: FrameHeader, arrival_us: u64) {
        let metrics = &self.metrics;
        let Some(p) = self.provider.as_mut() else {
            return metrics.count_drop(DropReason::NotAProvider);
        };
        if header.kind != KIND_CLIENT_PACKET && header.kind != KIND_PULL {
            return metrics.count_drop(DropReason::BadFrame);
        }
        let slot = header.sender;
        let Some(client) = p.clients.by_slot.get(&slot) else {
            return metrics.count_drop(DropReason::UnknownClient);
        };
        // Before a restart, this client had sent up to `saved`.
        let saved = self.restored_clients.get(&client.mailbox).copied();
        if !admits(p.windows.get(&slot), || saved, header.counter) {
            return metrics.count_drop(DropReason::LinkReplay);
        }
        let window = || window_from(saved);
        if header.kind == KIND_PULL {
            p.scratch.copy_from_slice(d.data);
            let body = match client.link.open_in_place(&mut p.scratch) {
                Ok((_, body)) => body,
                Err(_) => return metrics.count_drop(DropReason::ClientUnauthenticated),
            };
            p.windows
                .entry(slot)
                .or_insert_with(window)
                .commit(header.counter);
            let Ok(request) = PullRequest::parse(body) else {
                return metrics.count_drop(DropReason::BadPull);
            };
            if request.mailbox != client.mailbox {
                return metrics.count_drop(DropReason::PullWrongMailbox);
            }
            if p.rates.is_some_and(|r| r != request.rates) {
                p.misrated.insert(slot);
                return metrics.count_drop(DropReason::ClientRates);
            }
            p.misrated.remove(&slot);
            if p.held.len() >= MAX_HELD_ANSWERS {
                return metrics.count_drop(DropReason::AnswerBacklog);
            }
            let frames = p.answerer.answer(slot, client, &request);
            let mut buf = p.spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(frames);
            p.held.push_back(HeldAnswer {
                release_us: arrival_us + p.answer_delay_us,
                to: d.from,
                frames: buf,
            });
            return;
        }
        if client.link.open(d.data).is_err() {
            return metrics.count_drop(DropReason::ClientUnauthenticated);
        }
        p.windows
            .entry(slot)
            .or_insert_with(window)
            .commit(header.counter);
        if p.misrated.contains(&slot) {
            return metrics.count_drop(DropReason::ClientRates);
        }
        if !self.aqm.admit() {
            return self.drop(DropReason::Aqm);
        }
        let g = self.settings.geometry;
        let Some(idx) = self.pool.free.pop() else {
            return self.drop(DropReason::PoolFull);
        };
        let packet_range = packet_range(&g);
        let pool_slot = self.pool.slot(idx);
        pool_slot[packet_range.clone()].copy_from_slice(&d.data[packet_range.clone()]);
        if let Err(reason) = self.process(idx, packet_range, arrival_us, true) {
            self.pool.free.push(idx);
            self.drop(reason);
        }
    }

    /// One of this node's loops came back: count it and tell the detector.
    fn loop_returned(&self, id: [u8; 16], arrival_us: u64) {
        self.metrics.loops_received.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.loop_returns {
            let back = LoopReturn {
                id,
                at_us: arrival_us,
            };
            if tx.try_send(back).is_err() {
                self.metrics
                    .loop_returns_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sphinx processing of the packet in pool slot `idx`, trying each
    /// accepted epoch key; schedules it on success (or, at a provider,
    /// stores or discards it). From a client only `Relay` is valid.
    fn process(
        &mut self,
        idx: u32,
        range: std::ops::Range<usize>,
        arrival_us: u64,
        from_client: bool,
    ) -> Result<(), DropReason> {
        let g = self.settings.geometry;
        let mut outcome = Err(DropReason::BadMac);
        for k in 0..self.keys.len() {
            let epoch = self.keys[k].epoch;
            let packet = &mut self.pool.slot(idx)[range.clone()];
            let unwrapped = match sphinx::unwrap(&g, &self.keys[k].secret, packet) {
                Ok(u) => u,
                Err(SphinxError::NonCanonicalPoint | SphinxError::LowOrderPoint) => {
                    return Err(DropReason::BadPacket)
                }
                Err(_) => return Err(DropReason::BadLength),
            };
            let tag = unwrapped.replay_tag();
            // `None` (no filter for the epoch) cannot happen for an accepted
            // key; if it did, dropping is the safe answer.
            if self.filters.contains(epoch, &tag) != Some(false) {
                return Err(DropReason::SphinxReplay);
            }
            match unwrapped.finish(packet) {
                Ok(p) => {
                    self.filters.insert(epoch, &p.replay_tag);
                    outcome = Ok(p.command);
                    break;
                }
                Err(SphinxError::BadMac) => continue,
                Err(_) => {
                    // MAC verified but the command is invalid: the sender
                    // holds the key; remember the tag so a retry costs less.
                    self.filters.insert(epoch, &tag);
                    return Err(DropReason::BadCommand);
                }
            }
        }
        match outcome? {
            RoutingCommand::Relay { next, delay } => {
                let delay_us = u64::from(delay.as_micros());
                if delay_us > self.settings.delay_cap_us {
                    return Err(DropReason::DelayOverCap);
                }
                let Some(&peer) = self.links.next_hop.get(&next) else {
                    return Err(DropReason::UnknownNextHop);
                };
                self.pool.next_peer[idx as usize] = peer;
                let deadline = arrival_us + delay_us;
                match self.wheel.insert(deadline, idx) {
                    Ok(()) => {}
                    Err(InsertError::TooFar) => return Err(DropReason::DelayOverCap),
                    Err(_) => return Err(DropReason::PoolFull),
                }
                self.scheduled += 1;
                Ok(())
            }
            RoutingCommand::Deliver { mailbox, delay } if !from_client => {
                let Some(p) = self.provider.as_mut() else {
                    return Err(DropReason::BadCommand);
                };
                let delay_us = u64::from(delay.as_micros());
                if delay_us > self.settings.delay_cap_us {
                    return Err(DropReason::DelayOverCap);
                }
                // Held like a relayed packet, then handed to the writer
                // (`send_one`): the egress provider is a mixing hop.
                self.pool.next_peer[idx as usize] = TO_INBOX;
                match self.wheel.insert(arrival_us + delay_us, idx) {
                    Ok(()) => {}
                    Err(InsertError::TooFar) => return Err(DropReason::DelayOverCap),
                    Err(_) => return Err(DropReason::PoolFull),
                }
                p.deliveries.insert(idx, mailbox);
                self.scheduled += 1;
                Ok(())
            }
            RoutingCommand::Drop if !from_client && self.provider.is_some() => {
                self.metrics.cover_discarded.fetch_add(1, Ordering::Relaxed);
                self.pool.free.push(idx);
                Ok(())
            }
            RoutingCommand::Recipient {
                kind: RecipientKind::Loop,
                id,
            } if !from_client => {
                self.loop_returned(id, arrival_us);
                // Consumed: give the slot back.
                self.pool.free.push(idx);
                Ok(())
            }
            _ => Err(DropReason::BadCommand),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u8, inbound: bool, outbound: bool) -> Option<Peer> {
        Some(Peer {
            id: NodeId([id; 16]),
            address: SocketAddr::from(([127, 0, 0, 1], 9000 + u16::from(id))),
            link: LinkKey::from_bytes(&[id; 16]),
            inbound,
            outbound,
        })
    }

    fn links(own: u32, peers: Vec<Option<Peer>>) -> Links {
        let next_hop = peers
            .iter()
            .enumerate()
            .filter_map(|(j, p)| p.as_ref().filter(|p| p.outbound).map(|p| (p.id, j as u32)))
            .collect();
        Links {
            own_index: own,
            peers,
            next_hop,
        }
    }

    #[test]
    fn remap_follows_node_ids() {
        // Old: [self, a, b, c]; new: [self, x (new), a, c] with b removed.
        let old = links(
            0,
            vec![
                None,
                peer(1, true, false),
                peer(2, false, true),
                peer(3, false, true),
            ],
        );
        let new = links(
            0,
            vec![
                None,
                peer(9, true, false),
                peer(1, true, false),
                peer(3, false, true),
            ],
        );
        assert_eq!(new.remap_from(&old), vec![None, Some(2), None, Some(3)]);
        assert_eq!(old.remap_from(&old), vec![None, Some(1), Some(2), Some(3)]);
    }
}
