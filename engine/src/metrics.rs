//! Node metrics: per-shard counters and latency histograms written by the
//! shard alone (relaxed atomics on memory no other core writes), read by the
//! control plane, and served in the Prometheus text format.
//!
//! Invariants: nothing here allocates or locks on the packet path; a shard's
//! counters are written only by that shard; histograms have a fixed number of
//! buckets, so memory does not grow with load.
//!
//! Series (every one labelled `node`; shard series also `shard`):
//! - `loopix_received_datagrams_total`, `loopix_forwarded_packets_total`,
//!   `loopix_loops_received_total`, `loopix_dropped_total{reason}`, pool,
//!   replay filter and latency series: every node;
//! - providers only: `loopix_delivered_to_inbox_total` (packets with a
//!   `Deliver` command handed to the inbox writer),
//!   `loopix_cover_discarded_total` (`Drop` cover discarded),
//!   `loopix_inbox_stored_total` (durably stored: counted only after the
//!   commit), `loopix_inbox_refused_total{reason=count_quota|bytes_quota|
//!   unknown_mailbox|storage_error}`, `loopix_inbox_expired_total`,
//!   `loopix_inbox_acked_total`, `loopix_inbox_foreign_acks_total`,
//!   `loopix_inbox_dropped_unregistered_total`, `loopix_inbox_commits_total`,
//!   `loopix_inbox_store_wait_microseconds_total` over
//!   `loopix_inbox_store_waits_total` (the mean wait for a durable commit),
//!   `loopix_pulls_total`, `loopix_pull_frames_total` (all frames sent, real
//!   and dummy), `loopix_pull_real_frames_total`,
//!   `loopix_pull_send_failed_total`, `loopix_pull_read_errors_total`,
//!   `loopix_inbox_acks_dropped_total`, and the gauges
//!   `loopix_inbox_messages`, `loopix_inbox_bytes`,
//!   `loopix_registered_clients`;
//! - own loops (the paper's λM), per shard: `loopix_loops_sent_total`
//!   (left the node; counted in `forwarded` too),
//!   `loopix_loops_late_total` (reached the shard after their departure
//!   time), and with `loopix_loops_received_total` the loops that came back;
//! - control plane (written by the control thread, `ControlMetrics`):
//!   `loopix_topology_serial` (the serial of the document in use),
//!   `loopix_topology_reloads_total{result=ok|refused}` (SIGHUP reloads) and
//!   `loopix_loops_missed_total{reason=unbuilt|queue_full|refused}` (loop
//!   departures that passed without a loop), and the (n−1) detector's
//!   `loopix_loops_returned_total`, `loopix_loops_lost_total`,
//!   `loopix_loops_unmatched_total`, `loopix_loop_returns_queue_full_total`,
//!   `loopix_loops_return_ratio`,
//!   `loopix_detector_congestion_ratio`, `loopix_loops_rate_per_second`,
//!   `loopix_nminus1_alarm` and `loopix_nminus1_alarms_total`; restart
//!   safety's `loopix_state_syncs_total`, `loopix_state_sync_errors_total`,
//!   `loopix_state_sync_seconds`, `loopix_future_keys` and
//!   `loopix_retired_keys_deleted_total`; and the network parameters in
//!   use, `loopix_params_mean_delay_seconds` (1/µ) and
//!   `loopix_params_lambda_m_per_second` (λM);
//! - AQM, per shard: `loopix_aqm_drop_probability` and
//!   `loopix_dropped_total{reason="aqm"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a datagram or packet was dropped. Each is a label value of
/// `loopix_dropped_total{reason=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not exactly one frame long (or truncated by the receive buffer).
    BadLength,
    /// Unknown frame kind.
    BadFrame,
    /// Sender not an allowed neighbour, or the frame's tag did not verify.
    Unauthenticated,
    /// Link counter already seen or older than the window.
    LinkReplay,
    /// Group element non-canonical or of low order.
    BadPacket,
    /// Sphinx header MAC did not verify under any accepted key.
    BadMac,
    /// Sphinx replay tag already in the epoch's filter.
    SphinxReplay,
    /// A valid packet whose command this node does not execute.
    BadCommand,
    /// Relay to a node that is not a next-layer neighbour.
    UnknownNextHop,
    /// Delay above `engine.delay_cap_ms`.
    DelayOverCap,
    /// The shard's buffer pool (and so its timing wheel) is full.
    PoolFull,
    /// Still queued when the shutdown drain time ran out.
    ShuttingDown,
    /// The kernel refused the send.
    SendFailed,
    /// (Provider) a client frame from a slot with no registered client.
    UnknownClient,
    /// (Provider) a client frame whose tag did not verify under the slot's
    /// access key.
    ClientUnauthenticated,
    /// (Provider) an authentic pull request whose body does not parse.
    BadPull,
    /// (Provider) a pull request for a mailbox that is not the client's.
    PullWrongMailbox,
    /// (Provider) a client whose pull announced rates other than the
    /// network's (its topology document forbids overrides): that pull, and
    /// its packets until a pull announces the network's rates.
    ClientRates,
    /// (Provider) the queue to the inbox writer is full.
    InboxQueueFull,
    /// (Provider) a pull while this shard already holds
    /// `MAX_HELD_ANSWERS` answers waiting for their release time.
    AnswerBacklog,
    /// (Mix) a client frame kind: only providers take those.
    NotAProvider,
    /// A topology reload removed the next hop of a packet waiting on the
    /// wheel (or it is no longer a next-layer neighbour).
    NextHopRemoved,
    /// The shard's AQM dropped it at arrival (see `docs/aqm.md`).
    Aqm,
    /// The node is in (n−1) alarm with `detector.response = "halt"`: it
    /// emits nothing but its own loops.
    Halted,
    /// Dropped by the kernel before the node read it: the socket's receive
    /// queue was full (overload), or its socket filter refused it.
    Kernel,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 25] = [
        DropReason::BadLength,
        DropReason::BadFrame,
        DropReason::Unauthenticated,
        DropReason::LinkReplay,
        DropReason::BadPacket,
        DropReason::BadMac,
        DropReason::SphinxReplay,
        DropReason::BadCommand,
        DropReason::UnknownNextHop,
        DropReason::DelayOverCap,
        DropReason::PoolFull,
        DropReason::ShuttingDown,
        DropReason::SendFailed,
        DropReason::UnknownClient,
        DropReason::ClientUnauthenticated,
        DropReason::BadPull,
        DropReason::PullWrongMailbox,
        DropReason::ClientRates,
        DropReason::InboxQueueFull,
        DropReason::AnswerBacklog,
        DropReason::NotAProvider,
        DropReason::NextHopRemoved,
        DropReason::Aqm,
        DropReason::Halted,
        DropReason::Kernel,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::BadLength => "bad_length",
            DropReason::BadFrame => "bad_frame",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::LinkReplay => "link_replay",
            DropReason::BadPacket => "bad_packet",
            DropReason::BadMac => "bad_mac",
            DropReason::SphinxReplay => "sphinx_replay",
            DropReason::BadCommand => "bad_command",
            DropReason::UnknownNextHop => "unknown_next_hop",
            DropReason::DelayOverCap => "delay_over_cap",
            DropReason::PoolFull => "pool_full",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::SendFailed => "send_failed",
            DropReason::UnknownClient => "unknown_client",
            DropReason::ClientUnauthenticated => "client_unauthenticated",
            DropReason::BadPull => "bad_pull",
            DropReason::PullWrongMailbox => "pull_wrong_mailbox",
            DropReason::ClientRates => "client_rates",
            DropReason::InboxQueueFull => "inbox_queue_full",
            DropReason::AnswerBacklog => "answer_backlog",
            DropReason::NotAProvider => "not_a_provider",
            DropReason::NextHopRemoved => "next_hop_removed",
            DropReason::Aqm => "aqm",
            DropReason::Halted => "halted",
            DropReason::Kernel => "kernel",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Sub-buckets per power of two: relative bucket width 1/16 (about 6%).
const SUB_BUCKETS: u64 = 16;
/// Powers of two covered: values up to 2^40 us (about 12 days).
const OCTAVES: usize = 40;
const BUCKETS: usize = OCTAVES * SUB_BUCKETS as usize;

/// A fixed-size log-linear histogram of microsecond values (values below 16
/// are exact, above that buckets are 1/16 of their power of two wide).
/// Written by one thread with relaxed atomics; read by another.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros() as u64; // >= 4
    let shift = octave - 4;
    let sub = (v >> shift) - SUB_BUCKETS; // 0..16
    let idx = ((octave - 3) * SUB_BUCKETS + sub) as usize;
    idx.min(BUCKETS - 1)
}

/// The largest value that falls in bucket `i` (what quantiles report).
fn bucket_upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB_BUCKETS {
        return i;
    }
    let octave = i / SUB_BUCKETS + 3;
    let sub = i % SUB_BUCKETS;
    let shift = octave - 4;
    ((SUB_BUCKETS + sub + 1) << shift) - 1
}

impl LatencyHistogram {
    /// Record one value (single writer).
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.store(us, Ordering::Relaxed);
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Largest value recorded.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// Add this histogram's buckets into `into` (for merging shards).
    pub fn add_to(&self, into: &mut Vec<u64>) {
        into.resize(BUCKETS, 0);
        for (a, b) in into.iter_mut().zip(self.buckets.iter()) {
            *a += b.load(Ordering::Relaxed);
        }
    }

    /// The `q` quantile (0..=1) of merged bucket counts, as the bucket's
    /// upper bound in microseconds; `None` if empty.
    pub fn quantile_of(buckets: &[u64], q: f64) -> Option<u64> {
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper(i));
            }
        }
        Some(bucket_upper(buckets.len() - 1))
    }

    /// This histogram's own `q` quantile.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let mut b = Vec::new();
        self.add_to(&mut b);
        Self::quantile_of(&b, q)
    }
}

/// One shard's counters, gauges and histograms.
#[derive(Default)]
pub struct ShardMetrics {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Packets sent on to the next hop.
    pub forwarded: AtomicU64,
    /// This node's own loops that came back.
    pub loops_received: AtomicU64,
    /// This node's own loops that left (counted in `forwarded` too).
    pub loops_sent: AtomicU64,
    /// Of those, loops that reached the shard after their departure time
    /// and left at once (a gap an observer could see).
    pub loops_late: AtomicU64,
    /// Loops the shard could not send: pool full, or a reload removed the
    /// first hop since the loop was built.
    pub loops_refused: AtomicU64,
    /// Returned loops the control plane was not told of (its queue of
    /// returns was full): they will count as lost.
    pub loop_returns_queue_full: AtomicU64,
    /// The AQM's drop probability now, as `f64::to_bits`.
    pub aqm_drop_bits: AtomicU64,
    /// (Provider) `Deliver` packets handed to the inbox writer.
    pub to_inbox: AtomicU64,
    /// (Provider) `Drop` cover packets discarded.
    pub cover_discarded: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Packets held in the pool now.
    pub pool_in_use: AtomicU64,
    /// Of those, this node's own loops waiting to leave.
    pub pool_own_loops: AtomicU64,
    /// Pool capacity.
    pub pool_capacity: AtomicU64,
    /// Replay filter bytes held (all open epochs).
    pub filter_bytes: AtomicU64,
    /// Current epoch filter fill ratio, as `f64::to_bits`.
    pub filter_fill_bits: AtomicU64,
    /// Arrival to scheduled, microseconds.
    pub overhead: LatencyHistogram,
    /// Deadline to actual send, microseconds.
    pub lateness: LatencyHistogram,
}

impl ShardMetrics {
    /// Count one drop.
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
    /// Drops so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }
    /// Count `n` drops.
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// A provider's inbox and pull counters and gauges, written by its inbox
/// thread alone.
#[derive(Default)]
pub struct ProviderMetrics {
    /// Packets durably stored.
    pub stored: AtomicU64,
    /// Refused: the mailbox was at its message quota.
    pub refused_count: AtomicU64,
    /// Refused: the mailbox was at its byte quota.
    pub refused_bytes: AtomicU64,
    /// Refused: no such registered mailbox.
    pub unknown_mailbox: AtomicU64,
    /// Lost: the commit failed (storage error).
    pub storage_error: AtomicU64,
    /// Removed by age.
    pub expired: AtomicU64,
    /// Removed by acknowledgement.
    pub acked: AtomicU64,
    /// Acknowledgements naming another mailbox's message (ignored).
    pub foreign_acks: AtomicU64,
    /// Removed with their client's registration.
    pub dropped_unregistered: AtomicU64,
    /// Durable transactions of stores.
    pub commits: AtomicU64,
    /// Microseconds stored packets waited from their handover to the
    /// writer to their durable commit, summed.
    pub store_wait_us: AtomicU64,
    /// Stored packets `store_wait_us` sums over.
    pub store_waits: AtomicU64,
    /// Pull requests answered.
    pub pulls: AtomicU64,
    /// Delivery frames sent (real and dummy).
    pub pull_frames: AtomicU64,
    /// Delivery frames that carried a message.
    pub pull_real_frames: AtomicU64,
    /// Delivery frames the kernel refused.
    pub pull_send_failed: AtomicU64,
    /// Pulls answered with dummies only because the inbox could not be
    /// read.
    pub pull_read_errors: AtomicU64,
    /// Pulls whose acknowledgements the writer's queue could not take
    /// (their messages are offered again).
    pub acks_dropped: AtomicU64,
    /// Messages held now.
    pub inbox_messages: AtomicU64,
    /// Bytes held now.
    pub inbox_bytes: AtomicU64,
    /// Clients registered now.
    pub registered_clients: AtomicU64,
}

/// The control plane's counters (the topology document and its reloads,
/// the loops it builds), written by the control thread alone.
#[derive(Default)]
pub struct ControlMetrics {
    /// Serial of the document in use.
    pub serial: AtomicU64,
    /// Reloads that installed a new document.
    pub reloads_ok: AtomicU64,
    /// Reloads refused (the node kept the document it had).
    pub reloads_refused: AtomicU64,
    /// Loop departures that passed without a loop (it could not be built).
    pub loops_unbuilt: AtomicU64,
    /// Loops built but not handed over (the shard's control queue was full).
    pub loops_queue_full: AtomicU64,
    /// Loops back before their time-out.
    pub loops_returned: AtomicU64,
    /// Loops whose time-out passed first.
    pub loops_lost: AtomicU64,
    /// Returns with an id not awaited.
    pub loops_unmatched: AtomicU64,
    /// The window's return fraction as `f64::to_bits` (NaN: undecided).
    pub loops_ratio_bits: AtomicU64,
    /// The congestion fraction divided out, as `f64::to_bits`.
    pub congestion_bits: AtomicU64,
    /// 1 in alarm, else 0.
    pub alarm: AtomicU64,
    /// Times the alarm started.
    pub alarms: AtomicU64,
    /// The loop rate now, as `f64::to_bits`.
    pub loops_rate_bits: AtomicU64,
    /// Replay state made durable (link state written, filters synced).
    pub state_syncs: AtomicU64,
    /// Syncs that failed in part.
    pub state_sync_errors: AtomicU64,
    /// The last sync's duration, µs.
    pub state_sync_last_us: AtomicU64,
    /// Mix keys of epochs after the current one on disk.
    pub future_keys: AtomicU64,
    /// Retired mix keys deleted.
    pub retired_keys_deleted: AtomicU64,
    /// The network's mean delay per hop (1/µ), seconds, as `f64::to_bits`.
    pub params_mean_delay_bits: AtomicU64,
    /// The network's loop rate per mix (λM), per second, as `f64::to_bits`.
    pub params_lambda_m_bits: AtomicU64,
}

impl ControlMetrics {
    /// Counters at zero, with the document of `serial` in use.
    pub fn serving(serial: u64) -> ControlMetrics {
        let m = ControlMetrics::default();
        m.serial.store(serial, Ordering::Relaxed);
        m.loops_ratio_bits
            .store(f64::NAN.to_bits(), Ordering::Relaxed);
        m
    }

    /// Record the network parameters in use (the topology document's
    /// `params.mean_delay_ms` and `params.lambda_m`), served as gauges so
    /// that tools need not read the document.
    pub fn set_params(&self, mean_delay_ms: f64, lambda_m_per_s: f64) {
        let delay_s = mean_delay_ms / 1e3;
        self.params_mean_delay_bits
            .store(delay_s.to_bits(), Ordering::Relaxed);
        self.params_lambda_m_bits
            .store(lambda_m_per_s.to_bits(), Ordering::Relaxed);
    }
}

/// Every series a node serves, by the name a scraper sees (counters end in
/// `_total`). Tests, the test kit's metrics reader, the testnet and the
/// benchmarks read metrics by these constants, so a rename is one edit and
/// a reader can never ask for a series the node does not serve.
pub mod names {
    /// Datagrams received, per shard.
    pub const RECEIVED_DATAGRAMS: &str = "loopix_received_datagrams_total";
    /// Packets sent to the next hop, per shard.
    pub const FORWARDED_PACKETS: &str = "loopix_forwarded_packets_total";
    /// Own loop packets that came back, per shard.
    pub const LOOPS_RECEIVED: &str = "loopix_loops_received_total";
    /// Own loop packets that left, per shard (also in `forwarded`).
    pub const LOOPS_SENT: &str = "loopix_loops_sent_total";
    /// Own loops that reached their shard after their departure time.
    pub const LOOPS_LATE: &str = "loopix_loops_late_total";
    /// Loop departures that passed without a loop, by `reason`
    /// (`unbuilt`, `queue_full`, `refused`), for the node.
    pub const LOOPS_MISSED: &str = "loopix_loops_missed_total";
    /// Own loops back before their time-out, for the node.
    pub const LOOPS_RETURNED: &str = "loopix_loops_returned_total";
    /// Own loops whose time-out passed first, for the node.
    pub const LOOPS_LOST: &str = "loopix_loops_lost_total";
    /// Loop returns with an id not awaited (forged, repeated or too late).
    pub const LOOPS_UNMATCHED: &str = "loopix_loops_unmatched_total";
    /// Returned loops the shards could not pass to the detector (its queue
    /// was full): they count as lost.
    pub const LOOP_RETURNS_QUEUE_FULL: &str = "loopix_loop_returns_queue_full_total";
    /// Returned fraction of the loops resolved in the detector's window
    /// (gauge; absent until the window holds `detector.min_loops`).
    pub const LOOPS_RETURN_RATIO: &str = "loopix_loops_return_ratio";
    /// The node's own congestion drop fraction the detector divides out.
    pub const DETECTOR_CONGESTION: &str = "loopix_detector_congestion_ratio";
    /// 1 while the node is in (n−1) alarm (gauge).
    pub const NMINUS1_ALARM: &str = "loopix_nminus1_alarm";
    /// Times the (n−1) alarm started.
    pub const NMINUS1_ALARMS: &str = "loopix_nminus1_alarms_total";
    /// The loop rate in use now, loops per second (λM, or its multiple in
    /// alarm with the `cover` response).
    pub const LOOPS_RATE: &str = "loopix_loops_rate_per_second";
    /// A shard's AQM drop probability (gauge).
    pub const AQM_DROP_PROBABILITY: &str = "loopix_aqm_drop_probability";
    /// Drops, per shard and `reason` (a [`super::DropReason`] label).
    pub const DROPPED: &str = "loopix_dropped_total";
    /// Packets held in a shard's pool (gauge).
    pub const POOL_IN_USE: &str = "loopix_pool_in_use_packets";
    /// Of a shard's pool, this node's own loops waiting to leave (gauge):
    /// the mix's pool in the paper's sense is the difference.
    pub const POOL_OWN_LOOPS: &str = "loopix_pool_own_loops_packets";
    /// Size of a shard's pool (gauge).
    pub const POOL_CAPACITY: &str = "loopix_pool_capacity_packets";
    /// Replay filter memory (gauge): the node's filters, shared by its
    /// shards, so every shard reports the same figure.
    pub const REPLAY_FILTER_BYTES: &str = "loopix_replay_filter_bytes";
    /// Fill of the current epoch's filter (gauge).
    pub const REPLAY_FILTER_FILL: &str = "loopix_replay_filter_fill_ratio";
    /// Arrival to scheduled, by `quantile`.
    pub const PROCESSING_OVERHEAD_US: &str = "loopix_processing_overhead_microseconds";
    /// Deadline to actual send, by `quantile`.
    pub const SCHEDULING_LATENESS_US: &str = "loopix_scheduling_lateness_microseconds";
    /// Static facts (`io`), value 1.
    pub const NODE_INFO: &str = "loopix_node_info";
    /// Providers: packets handed to the inbox writer, per shard.
    pub const DELIVERED_TO_INBOX: &str = "loopix_delivered_to_inbox_total";
    /// Providers: drop cover discarded, per shard.
    pub const COVER_DISCARDED: &str = "loopix_cover_discarded_total";
    /// Providers: packets durably stored.
    pub const INBOX_STORED: &str = "loopix_inbox_stored_total";
    /// Providers: messages removed by age.
    pub const INBOX_EXPIRED: &str = "loopix_inbox_expired_total";
    /// Providers: messages removed by acknowledgement.
    pub const INBOX_ACKED: &str = "loopix_inbox_acked_total";
    /// Providers: acknowledgements naming another mailbox's message.
    pub const INBOX_FOREIGN_ACKS: &str = "loopix_inbox_foreign_acks_total";
    /// Providers: messages dropped with their client's registration.
    pub const INBOX_DROPPED_UNREGISTERED: &str = "loopix_inbox_dropped_unregistered_total";
    /// Providers: group commits.
    pub const INBOX_COMMITS: &str = "loopix_inbox_commits_total";
    /// Providers: microseconds stored packets waited for their durable
    /// commit, summed (the mean is this over `INBOX_STORE_WAITS`).
    pub const INBOX_STORE_WAIT_US: &str = "loopix_inbox_store_wait_microseconds_total";
    /// Providers: stored packets `INBOX_STORE_WAIT_US` sums over.
    pub const INBOX_STORE_WAITS: &str = "loopix_inbox_store_waits_total";
    /// Providers: packets not stored, by `reason`.
    pub const INBOX_REFUSED: &str = "loopix_inbox_refused_total";
    /// Providers: pull requests answered.
    pub const PULLS: &str = "loopix_pulls_total";
    /// Providers: delivery frames sent, real and dummy.
    pub const PULL_FRAMES: &str = "loopix_pull_frames_total";
    /// Providers: delivery frames that carried a message.
    pub const PULL_REAL_FRAMES: &str = "loopix_pull_real_frames_total";
    /// Providers: delivery frames the kernel refused.
    pub const PULL_SEND_FAILED: &str = "loopix_pull_send_failed_total";
    /// Providers: pulls answered with dummies because the inbox could not
    /// be read.
    pub const PULL_READ_ERRORS: &str = "loopix_pull_read_errors_total";
    /// Providers: pulls whose acknowledgements the writer's queue refused.
    pub const ACKS_DROPPED: &str = "loopix_inbox_acks_dropped_total";
    /// Providers: messages held (gauge).
    pub const INBOX_MESSAGES: &str = "loopix_inbox_messages";
    /// Providers: bytes held (gauge).
    pub const INBOX_BYTES: &str = "loopix_inbox_bytes";
    /// Providers: clients registered now (gauge).
    pub const REGISTERED_CLIENTS: &str = "loopix_registered_clients";
    /// Serial of the topology document in use (gauge).
    pub const TOPOLOGY_SERIAL: &str = "loopix_topology_serial";
    /// SIGHUP reloads, by `result` (`ok`, `refused`).
    pub const TOPOLOGY_RELOADS: &str = "loopix_topology_reloads_total";
    /// Replay state written to the disk (link state and filters synced).
    pub const STATE_SYNCS: &str = "loopix_state_syncs_total";
    /// State syncs that failed in part.
    pub const STATE_SYNC_ERRORS: &str = "loopix_state_sync_errors_total";
    /// The last state sync's duration (gauge).
    pub const STATE_SYNC_SECONDS: &str = "loopix_state_sync_seconds";
    /// Mix keys on disk for epochs after the current one (gauge).
    pub const FUTURE_KEYS: &str = "loopix_future_keys";
    /// Retired mix keys deleted.
    pub const RETIRED_KEYS_DELETED: &str = "loopix_retired_keys_deleted_total";
    /// The network's mean delay per hop, 1/µ, seconds (gauge, from the
    /// topology document's `params.mean_delay_ms`).
    pub const PARAMS_MEAN_DELAY_S: &str = "loopix_params_mean_delay_seconds";
    /// The network's loop rate per mix, λM, per second (gauge, from
    /// `params.lambda_m`).
    pub const PARAMS_LAMBDA_M: &str = "loopix_params_lambda_m_per_second";
}

/// The name to register a counter under: the client library adds `_total`.
fn counter(series: &'static str) -> &'static str {
    let base = series.strip_suffix("_total");
    debug_assert!(base.is_some(), "counter series {series} must end in _total");
    base.unwrap_or(series)
}

type Labels = Vec<(String, String)>;

/// The (n−1) detector's series, from the control plane's figures.
fn register_detector(registry: &mut Registry, base: &Labels, t: &ControlMetrics) {
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            names::LOOPS_RETURNED,
            "Own loops back before their time-out",
            &t.loops_returned,
        ),
        (
            names::LOOPS_LOST,
            "Own loops whose time-out passed first",
            &t.loops_lost,
        ),
        (
            names::LOOPS_UNMATCHED,
            "Loop returns with an id not awaited (forged, repeated or too late)",
            &t.loops_unmatched,
        ),
        (
            names::NMINUS1_ALARMS,
            "Times the (n-1) alarm started",
            &t.alarms,
        ),
    ] {
        let f = Family::<Labels, Counter>::default();
        f.get_or_create(base).inc_by(load(v));
        registry.register(counter(name), help, f);
    }
    let alarm = Family::<Labels, Gauge>::default();
    alarm
        .get_or_create(base)
        .set(i64::try_from(load(&t.alarm)).unwrap_or(1));
    registry.register(
        names::NMINUS1_ALARM,
        "1 while the node is in (n-1) alarm",
        alarm,
    );
    for (name, help, v) in [
        (
            names::LOOPS_RETURN_RATIO,
            "Returned fraction of the loops resolved in the detector's window",
            &t.loops_ratio_bits,
        ),
        (
            names::DETECTOR_CONGESTION,
            "Own congestion drop fraction the detector divides out",
            &t.congestion_bits,
        ),
        (
            names::LOOPS_RATE,
            "Loop rate in use now, loops per second",
            &t.loops_rate_bits,
        ),
    ] {
        let value = f64::from_bits(load(v));
        if value.is_finite() {
            let f = Family::<Labels, FloatGauge>::default();
            f.get_or_create(base).set(value);
            registry.register(name, help, f);
        }
    }
}

/// The restart-safety series: state syncs and key hygiene.
fn register_state(registry: &mut Registry, base: &Labels, t: &ControlMetrics) {
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            names::STATE_SYNCS,
            "Replay state written to the disk",
            &t.state_syncs,
        ),
        (
            names::STATE_SYNC_ERRORS,
            "Replay state syncs that failed in part",
            &t.state_sync_errors,
        ),
        (
            names::RETIRED_KEYS_DELETED,
            "Retired mix keys deleted",
            &t.retired_keys_deleted,
        ),
    ] {
        let f = Family::<Labels, Counter>::default();
        f.get_or_create(base).inc_by(load(v));
        registry.register(counter(name), help, f);
    }
    let future = Family::<Labels, Gauge>::default();
    future
        .get_or_create(base)
        .set(i64::try_from(load(&t.future_keys)).unwrap_or(i64::MAX));
    registry.register(
        names::FUTURE_KEYS,
        "Mix keys on disk for epochs after the current one",
        future,
    );
    let took = Family::<Labels, FloatGauge>::default();
    took.get_or_create(base)
        .set(load(&t.state_sync_last_us) as f64 / 1e6);
    registry.register(
        names::STATE_SYNC_SECONDS,
        "The last replay state sync's duration",
        took,
    );
}

/// The network parameters in use, from the topology document.
fn register_params(registry: &mut Registry, base: &Labels, t: &ControlMetrics) {
    for (name, help, v) in [
        (
            names::PARAMS_MEAN_DELAY_S,
            "The network's mean delay per hop (1/mu), seconds, from params.mean_delay_ms",
            &t.params_mean_delay_bits,
        ),
        (
            names::PARAMS_LAMBDA_M,
            "The network's loop rate per mix (lambda_M), per second, from params.lambda_m",
            &t.params_lambda_m_bits,
        ),
    ] {
        let f = Family::<Labels, FloatGauge>::default();
        f.get_or_create(base)
            .set(f64::from_bits(v.load(Ordering::Relaxed)));
        registry.register(name, help, f);
    }
}

fn register_control(
    registry: &mut Registry,
    base: &Labels,
    t: &ControlMetrics,
    shards: &[Arc<ShardMetrics>],
) {
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let missed = Family::<Labels, Counter>::default();
    let refused: u64 = shards.iter().map(|s| load(&s.loops_refused)).sum();
    for (reason, v) in [
        ("unbuilt", load(&t.loops_unbuilt)),
        ("queue_full", load(&t.loops_queue_full)),
        ("refused", refused),
    ] {
        let mut l = base.clone();
        l.push(("reason".into(), reason.into()));
        missed.get_or_create(&l).inc_by(v);
    }
    registry.register(
        counter(names::LOOPS_MISSED),
        "Own loop departures that passed without a loop, by reason",
        missed,
    );
    register_detector(registry, base, t);
    register_state(registry, base, t);
    register_params(registry, base, t);
    let queue_full = Family::<Labels, Counter>::default();
    queue_full.get_or_create(base).inc_by(
        shards
            .iter()
            .map(|s| load(&s.loop_returns_queue_full))
            .sum(),
    );
    registry.register(
        counter(names::LOOP_RETURNS_QUEUE_FULL),
        "Returned loops not passed to the detector (its queue was full)",
        queue_full,
    );
    let serial = Family::<Labels, Gauge>::default();
    serial
        .get_or_create(base)
        .set(i64::try_from(load(&t.serial)).unwrap_or(i64::MAX));
    registry.register(
        names::TOPOLOGY_SERIAL,
        "Serial of the topology document in use",
        serial,
    );
    let reloads = Family::<Labels, Counter>::default();
    for (result, v) in [("ok", &t.reloads_ok), ("refused", &t.reloads_refused)] {
        let mut l = base.clone();
        l.push(("result".into(), result.into()));
        reloads.get_or_create(&l).inc_by(load(v));
    }
    registry.register(
        counter(names::TOPOLOGY_RELOADS),
        "Topology reloads on SIGHUP, by result",
        reloads,
    );
}

/// Render every shard's metrics in the Prometheus text format.
pub fn render(node_labels: &[(&str, &str)], shards: &[Arc<ShardMetrics>], io: &str) -> String {
    render_with(node_labels, shards, io, None)
}

/// A provider's plain counters: (name, help, value).
fn provider_counters(p: &ProviderMetrics) -> [(&'static str, &'static str, &AtomicU64); 14] {
    [
        (
            names::INBOX_STORED,
            "Packets durably stored in the inbox",
            &p.stored,
        ),
        (names::INBOX_EXPIRED, "Messages removed by age", &p.expired),
        (
            names::INBOX_ACKED,
            "Messages removed by acknowledgement",
            &p.acked,
        ),
        (
            names::INBOX_FOREIGN_ACKS,
            "Acknowledgements naming another mailbox's message, ignored",
            &p.foreign_acks,
        ),
        (
            names::INBOX_DROPPED_UNREGISTERED,
            "Messages dropped with their client's registration",
            &p.dropped_unregistered,
        ),
        (
            names::INBOX_COMMITS,
            "Durable transactions of stores (group commits)",
            &p.commits,
        ),
        (
            names::INBOX_STORE_WAIT_US,
            "Microseconds stored packets waited from handover to durable commit, summed",
            &p.store_wait_us,
        ),
        (
            names::INBOX_STORE_WAITS,
            "Stored packets the store wait sums over",
            &p.store_waits,
        ),
        (names::PULLS, "Pull requests answered", &p.pulls),
        (
            names::PULL_FRAMES,
            "Delivery frames sent, real and dummy",
            &p.pull_frames,
        ),
        (
            names::PULL_REAL_FRAMES,
            "Delivery frames that carried a message",
            &p.pull_real_frames,
        ),
        (
            names::PULL_SEND_FAILED,
            "Delivery frames the kernel refused",
            &p.pull_send_failed,
        ),
        (
            names::PULL_READ_ERRORS,
            "Pulls answered with dummies only because the inbox could not be read",
            &p.pull_read_errors,
        ),
        (
            names::ACKS_DROPPED,
            "Pulls whose acknowledgements the inbox writer's queue refused (messages offered again)",
            &p.acks_dropped,
        ),
    ]
}

fn register_provider(registry: &mut Registry, base: &Labels, p: &ProviderMetrics) {
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    for (name, help, v) in provider_counters(p) {
        let c = Family::<Labels, Counter>::default();
        c.get_or_create(base).inc_by(load(v));
        registry.register(counter(name), help, c);
    }
    let refused = Family::<Labels, Counter>::default();
    for (reason, v) in [
        ("count_quota", &p.refused_count),
        ("bytes_quota", &p.refused_bytes),
        ("unknown_mailbox", &p.unknown_mailbox),
        ("storage_error", &p.storage_error),
    ] {
        let mut l = base.clone();
        l.push(("reason".into(), reason.into()));
        refused.get_or_create(&l).inc_by(load(v));
    }
    registry.register(
        counter(names::INBOX_REFUSED),
        "Packets not stored, by reason",
        refused,
    );
    let gauges: [(&str, &str, &AtomicU64); 3] = [
        (
            names::INBOX_MESSAGES,
            "Messages held in the inbox",
            &p.inbox_messages,
        ),
        (
            names::INBOX_BYTES,
            "Bytes of messages held in the inbox",
            &p.inbox_bytes,
        ),
        (
            names::REGISTERED_CLIENTS,
            "Clients registered now",
            &p.registered_clients,
        ),
    ];
    for (name, help, v) in gauges {
        let g = Family::<Labels, Gauge>::default();
        g.get_or_create(base)
            .set(i64::try_from(load(v)).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    }
}

/// Render every shard's metrics, and a provider's if given, in the
/// Prometheus text format.
pub fn render_with(
    node_labels: &[(&str, &str)],
    shards: &[Arc<ShardMetrics>],
    io: &str,
    provider: Option<&ProviderMetrics>,
) -> String {
    render_node(node_labels, shards, io, provider, None)
}

/// Render every shard's metrics, a provider's and the topology's if given,
/// in the Prometheus text format (what a running node serves).
pub fn render_node(
    node_labels: &[(&str, &str)],
    shards: &[Arc<ShardMetrics>],
    io: &str,
    provider: Option<&ProviderMetrics>,
    control: Option<&ControlMetrics>,
) -> String {
    let mut registry = Registry::default();
    let base: Labels = node_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let families = ShardFamilies::collect(&base, shards, io, provider.is_some());
    families.register(&mut registry);
    if let Some(p) = provider {
        register_provider(&mut registry, &base, p);
    }
    if let Some(t) = control {
        register_control(&mut registry, &base, t, shards);
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The per-shard series of every node (and a provider's shards' two), filled
/// from the shards' atomics, then registered in one place.
struct ShardFamilies {
    provider: bool,
    received: Family<Labels, Counter>,
    forwarded: Family<Labels, Counter>,
    loops: Family<Labels, Counter>,
    loops_sent: Family<Labels, Counter>,
    loops_late: Family<Labels, Counter>,
    to_inbox: Family<Labels, Counter>,
    cover: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    pool_in_use: Family<Labels, Gauge>,
    pool_own_loops: Family<Labels, Gauge>,
    pool_capacity: Family<Labels, Gauge>,
    filter_bytes: Family<Labels, Gauge>,
    filter_fill: Family<Labels, FloatGauge>,
    aqm_drop: Family<Labels, FloatGauge>,
    overhead_q: Family<Labels, FloatGauge>,
    lateness_q: Family<Labels, FloatGauge>,
    info: Family<Labels, Gauge>,
}

impl ShardFamilies {
    /// Read every shard's counters, and the node's latency quantiles over
    /// all shards.
    fn collect(base: &Labels, shards: &[Arc<ShardMetrics>], io: &str, provider: bool) -> Self {
        let with = |extra: &[(&str, String)]| -> Labels {
            let mut l = base.clone();
            l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            l
        };
        let f = ShardFamilies {
            provider,
            received: Family::default(),
            forwarded: Family::default(),
            loops: Family::default(),
            loops_sent: Family::default(),
            loops_late: Family::default(),
            to_inbox: Family::default(),
            cover: Family::default(),
            dropped: Family::default(),
            pool_in_use: Family::default(),
            pool_own_loops: Family::default(),
            pool_capacity: Family::default(),
            filter_bytes: Family::default(),
            filter_fill: Family::default(),
            aqm_drop: Family::default(),
            overhead_q: Family::default(),
            lateness_q: Family::default(),
            info: Family::default(),
        };
        f.info
            .get_or_create(&with(&[("io", io.to_string())]))
            .set(1);
        let mut overhead_all = Vec::new();
        let mut lateness_all = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            let shard = [("shard", i.to_string())];
            let l = with(&shard);
            let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
            f.received.get_or_create(&l).inc_by(load(&s.received));
            f.forwarded.get_or_create(&l).inc_by(load(&s.forwarded));
            f.loops.get_or_create(&l).inc_by(load(&s.loops_received));
            f.loops_sent.get_or_create(&l).inc_by(load(&s.loops_sent));
            f.loops_late.get_or_create(&l).inc_by(load(&s.loops_late));
            if provider {
                f.to_inbox.get_or_create(&l).inc_by(load(&s.to_inbox));
                f.cover.get_or_create(&l).inc_by(load(&s.cover_discarded));
            }
            for r in DropReason::ALL {
                f.dropped
                    .get_or_create(&with(&[
                        shard[0].clone(),
                        ("reason", r.label().to_string()),
                    ]))
                    .inc_by(s.drops(r));
            }
            let gauge = |v: &AtomicU64| i64::try_from(load(v)).unwrap_or(i64::MAX);
            f.pool_in_use.get_or_create(&l).set(gauge(&s.pool_in_use));
            f.pool_own_loops
                .get_or_create(&l)
                .set(gauge(&s.pool_own_loops));
            f.pool_capacity
                .get_or_create(&l)
                .set(gauge(&s.pool_capacity));
            f.filter_bytes.get_or_create(&l).set(gauge(&s.filter_bytes));
            f.filter_fill
                .get_or_create(&l)
                .set(f64::from_bits(load(&s.filter_fill_bits)));
            f.aqm_drop
                .get_or_create(&l)
                .set(f64::from_bits(load(&s.aqm_drop_bits)));
            s.overhead.add_to(&mut overhead_all);
            s.lateness.add_to(&mut lateness_all);
        }
        for (q, name) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")] {
            let l = with(&[("quantile", name.to_string())]);
            if let Some(v) = LatencyHistogram::quantile_of(&overhead_all, q) {
                f.overhead_q.get_or_create(&l).set(v as f64);
            }
            if let Some(v) = LatencyHistogram::quantile_of(&lateness_all, q) {
                f.lateness_q.get_or_create(&l).set(v as f64);
            }
        }
        f
    }

    /// Register every family under its name in [`names`].
    fn register(self, registry: &mut Registry) {
        use names::*;
        let r = registry;
        r.register(
            counter(RECEIVED_DATAGRAMS),
            "Datagrams received",
            self.received,
        );
        r.register(
            counter(FORWARDED_PACKETS),
            "Packets sent to the next hop",
            self.forwarded,
        );
        r.register(
            counter(LOOPS_RECEIVED),
            "Own loop packets that came back",
            self.loops,
        );
        r.register(
            counter(LOOPS_SENT),
            "Own loop packets that left (also counted as forwarded)",
            self.loops_sent,
        );
        r.register(
            counter(LOOPS_LATE),
            "Own loops that reached their shard after their departure time",
            self.loops_late,
        );
        r.register(
            counter(DROPPED),
            "Datagrams or packets dropped, by reason",
            self.dropped,
        );
        r.register(
            POOL_IN_USE,
            "Packets held in the shard's pool",
            self.pool_in_use,
        );
        r.register(
            POOL_OWN_LOOPS,
            "Of the packets in the pool, this node's own loops waiting to leave",
            self.pool_own_loops,
        );
        r.register(
            POOL_CAPACITY,
            "Size of the shard's pool",
            self.pool_capacity,
        );
        r.register(
            REPLAY_FILTER_BYTES,
            "Replay filter memory, all open epochs (the node's filters, shared by its shards: the same in every shard, do not sum)",
            self.filter_bytes,
        );
        r.register(
            REPLAY_FILTER_FILL,
            "Fraction of the current epoch filter's bits set",
            self.filter_fill,
        );
        r.register(
            AQM_DROP_PROBABILITY,
            "The shard's AQM drop probability at arrival now",
            self.aqm_drop,
        );
        r.register(
            PROCESSING_OVERHEAD_US,
            "Arrival to scheduled (quantiles over the node's life)",
            self.overhead_q,
        );
        r.register(
            SCHEDULING_LATENESS_US,
            "Deadline to actual send (quantiles over the node's life)",
            self.lateness_q,
        );
        r.register(NODE_INFO, "Static facts about the node", self.info);
        if self.provider {
            r.register(
                counter(DELIVERED_TO_INBOX),
                "Packets with a Deliver command handed to the inbox writer",
                self.to_inbox,
            );
            r.register(
                counter(COVER_DISCARDED),
                "Drop cover packets discarded",
                self.cover,
            );
        }
    }
}

/// Serve `GET /metrics` on `listen` until `stop` is set. Runs on its own
/// thread; returns an error only if the address cannot be bound.
pub fn serve(
    listen: std::net::SocketAddr,
    render_fn: impl Fn() -> String + Send + 'static,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let server =
        tiny_http::Server::http(listen).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let req = match server.recv_timeout(std::time::Duration::from_millis(200)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                let response = if req.url() == "/metrics" && *req.method() == tiny_http::Method::Get
                {
                    let body = render_fn();
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4; charset=utf-8"[..],
                    )
                    .expect("static header is valid");
                    tiny_http::Response::from_string(body).with_header(header)
                } else {
                    tiny_http::Response::from_string("not found: try GET /metrics\n")
                        .with_status_code(404)
                };
                let _ = req.respond(response);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 31, 32, 100, 1000, 12345, 1 << 30] {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let up = bucket_upper(b);
            assert!(up >= v, "{v} -> bucket {b} upper {up}");
            assert!(
                up as f64 <= v as f64 * 1.07 + 1.0,
                "{v}: upper {up} too loose"
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).expect("non-empty");
        let p99 = h.quantile(0.99).expect("non-empty");
        assert!((480..=540).contains(&p50), "{p50}");
        assert!((980..=1060).contains(&p99), "{p99}");
        assert_eq!(h.max_us(), 1000);
        assert_eq!(h.count(), 1000);
    }

    #[test]
    fn render_has_every_reason_and_quantiles() {
        let s = Arc::new(ShardMetrics::default());
        s.count_drop(DropReason::SphinxReplay);
        // 42 falls in the bucket 42..=43; quantiles report its upper bound.
        s.overhead.record(42);
        s.received.fetch_add(3, Ordering::Relaxed);
        let text = render(&[("node", "n1")], &[s], "portable");
        for r in DropReason::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", r.label())),
                "{}",
                r.label()
            );
        }
        assert!(
            text.contains(
                "loopix_dropped_total{node=\"n1\",shard=\"0\",reason=\"sphinx_replay\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("loopix_received_datagrams_total{node=\"n1\",shard=\"0\"} 3"));
        assert!(
            text.contains(
                "loopix_processing_overhead_microseconds{node=\"n1\",quantile=\"0.5\"} 43.0"
            ),
            "{text}"
        );
        assert!(text.contains("loopix_node_info{node=\"n1\",io=\"portable\"} 1"));
        assert!(
            !text.contains("loopix_inbox"),
            "no provider series at a mix"
        );
    }

    #[test]
    fn provider_series() {
        let s = Arc::new(ShardMetrics::default());
        s.to_inbox.fetch_add(5, Ordering::Relaxed);
        let p = ProviderMetrics::default();
        p.stored.store(4, Ordering::Relaxed);
        p.refused_count.store(2, Ordering::Relaxed);
        p.inbox_messages.store(3, Ordering::Relaxed);
        p.registered_clients.store(1, Ordering::Relaxed);
        let text = render_with(&[("node", "n1")], &[s], "portable", Some(&p));
        for line in [
            "loopix_inbox_stored_total{node=\"n1\"} 4",
            "loopix_inbox_refused_total{node=\"n1\",reason=\"count_quota\"} 2",
            "loopix_inbox_refused_total{node=\"n1\",reason=\"unknown_mailbox\"} 0",
            "loopix_inbox_messages{node=\"n1\"} 3",
            "loopix_registered_clients{node=\"n1\"} 1",
            "loopix_pulls_total{node=\"n1\"} 0",
            "loopix_delivered_to_inbox_total{node=\"n1\",shard=\"0\"} 5",
            "reason=\"pull_wrong_mailbox\"",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn network_params_are_served_as_gauges() {
        let c = ControlMetrics::serving(7);
        c.set_params(250.0, 2.5);
        let text = render_node(&[("node", "n1")], &[], "portable", None, Some(&c));
        for line in [
            "loopix_params_mean_delay_seconds{node=\"n1\"} 0.25",
            "loopix_params_lambda_m_per_second{node=\"n1\"} 2.5",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
