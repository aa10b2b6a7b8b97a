//! Node configuration (mixes and providers): the TOML file an operator
//! writes, parsed into typed values and checked as a whole before anything
//! starts. A provider's file is a mix's plus a `[provider]` section.
//!
//! Invariant: every error names the field (`section.key`) and what would be
//! valid. Unknown fields are errors, so a typo is caught at start rather than
//! silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use loopix_crypto::IdentityPublic;
use loopix_directory::NetworkParams;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::detector::Response;

/// What to do about `node.operator_key`, for every error about it.
const OPERATOR_KEY_FIX: &str =
    "set `node.operator_key` to the operator's public key (64 hex digits), \
     printed by `loopix operator-keygen` and written beside its key file as `.pub`";

/// A configuration error, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, an unknown or missing field.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the field and line.
        message: String,
    },
    /// A value out of range.
    #[error("config {path}: `{field}` {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `section.key`.
        field: &'static str,
        /// What is wrong and what would be valid.
        problem: String,
    },
}

/// Which datagram backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoChoice {
    /// io_uring if this host allows it, else portable (with a logged reason).
    #[default]
    Auto,
    /// io_uring, or fail at start.
    Uring,
    /// `recvmmsg`/`sendmmsg`.
    Portable,
}

/// `[node]`: who this node is and where its files are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Directory written by `loopix keygen` (link key, epoch mix keys).
    pub key_dir: PathBuf,
    /// The topology file listing every node.
    pub topology: PathBuf,
    /// UDP address to listen on; must be this node's address in the
    /// topology unless `public_address` is set.
    pub listen: SocketAddr,
    /// The address the topology lists for this node, when datagrams reach
    /// `listen` through something in between (a NAT, a port forward, a
    /// proxy). Unset: the topology lists `listen`.
    #[serde(default)]
    pub public_address: Option<SocketAddr>,
    /// The operator's Ed25519 public key: a topology document must be
    /// signed by it.
    #[serde(deserialize_with = "operator_key")]
    pub operator_key: IdentityPublic,
    /// Where the node keeps what must outlive a restart: the replay
    /// filters and the link state (docs/restarts.md). Unset: `state` inside
    /// `key_dir`. Locked, like `key_dir`, by the one running node.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl NodeSection {
    /// `state_dir`, or its default `<key_dir>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.key_dir.join("state"))
    }
}

fn operator_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IdentityPublic, D::Error> {
    let text = String::deserialize(d)?;
    IdentityPublic::from_hex(&text)
        .map_err(|e| serde::de::Error::custom(format!("operator_key: {e}; {OPERATOR_KEY_FIX}")))
}

fn default_shards() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_pool() -> u32 {
    65_536
}
fn default_batch() -> usize {
    // A shard checks its timing wheel between batches, so a full receive
    // batch of packets at about 57 us each adds batch x 57 us to scheduling
    // lateness at full load. node-bench: 64 gave p99 lateness of 1.5 to
    // 3.5 ms near saturation, 8 kept it under 0.5 ms with the same
    // throughput (the crypto, not the system calls, is the cost).
    8
}
fn default_delay_cap_ms() -> u64 {
    60_000
}
fn default_socket_buffer() -> usize {
    8 << 20
}

/// `[engine]`: shards, cores and buffers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Shards (threads), one per core.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Pin shard `i` to core `first_core + i`.
    #[serde(default = "default_true")]
    pub pin_cores: bool,
    /// First core to pin to.
    #[serde(default)]
    pub first_core: usize,
    /// Datagram backend.
    #[serde(default)]
    pub io: IoChoice,
    /// Packets each shard can hold (its buffer pool, allocated at start).
    #[serde(default = "default_pool")]
    pub pool_packets: u32,
    /// Datagrams received or sent per system call; also bounds the work a
    /// shard does between two looks at its timing wheel.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Largest per-hop delay accepted; longer ones are dropped and counted.
    #[serde(default = "default_delay_cap_ms")]
    pub delay_cap_ms: u64,
    /// Socket receive and send buffer size.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer_bytes: usize,
    /// Refuse datagrams of the wrong length or frame kind in the kernel,
    /// before they are queued (a socket filter; counted as
    /// `loopix_dropped_total{reason="kernel"}`). Off: the node reads them
    /// and counts them as `bad_length` or `bad_frame` (slower under junk).
    #[serde(default = "default_true")]
    pub socket_filter: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            shards: default_shards(),
            pin_cores: true,
            first_core: 0,
            io: IoChoice::Auto,
            pool_packets: default_pool(),
            batch: default_batch(),
            delay_cap_ms: default_delay_cap_ms(),
            socket_buffer_bytes: default_socket_buffer(),
            socket_filter: true,
        }
    }
}

fn default_rate() -> u64 {
    10_000
}
fn default_fp() -> f64 {
    1e-6
}
fn default_filter_mb() -> u64 {
    2048
}

/// `[replay]`: sizing of the replay filters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    /// Expected packets per second for the whole node (sizes the filters).
    #[serde(default = "default_rate")]
    pub rate_pps: u64,
    /// Target false-positive rate at that rate over one epoch.
    #[serde(default = "default_fp")]
    pub fp_rate: f64,
    /// Refuse to start if the node's filter for one epoch would exceed this.
    #[serde(default = "default_filter_mb")]
    pub max_filter_mb: u64,
    /// Write the filters and the link state to the disk at least this
    /// often: what a power loss can forget (a crashed process forgets
    /// nothing). Each sync writes up to the filters' size.
    #[serde(default = "default_sync_s")]
    pub sync_s: u64,
}

fn default_sync_s() -> u64 {
    10
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            rate_pps: default_rate(),
            fp_rate: default_fp(),
            max_filter_mb: default_filter_mb(),
            sync_s: default_sync_s(),
        }
    }
}

fn default_grace_s() -> u64 {
    300
}

/// `[epochs]`: key rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSection {
    /// Accept the previous epoch's key for this long after the change.
    #[serde(default = "default_grace_s")]
    pub grace_s: u64,
    /// Warn (and say so in `loopix_future_keys`) when fewer mix keys than
    /// this remain for the epochs after the current one.
    #[serde(default = "default_min_future_keys")]
    pub min_future_keys: u64,
}

fn default_min_future_keys() -> u64 {
    3
}

// Written out: a derived `Default` gave a config without `[epochs]` a grace
// of 0 s instead of the documented 300 s.
impl Default for EpochSection {
    fn default() -> Self {
        EpochSection {
            grace_s: default_grace_s(),
            min_future_keys: default_min_future_keys(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address for `GET /metrics`; absent: no endpoint.
    pub listen: Option<SocketAddr>,
}

fn default_drain_ms() -> u64 {
    2_000
}

/// `[shutdown]`: what SIGTERM does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// After SIGTERM, keep sending packets whose time comes within this long;
    /// count the rest as dropped (`shutting_down`) and exit.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            drain_ms: default_drain_ms(),
        }
    }
}

fn default_pull_frames() -> u16 {
    8
}
fn default_max_messages() -> u32 {
    10_000
}
fn default_max_bytes() -> u64 {
    64 << 20
}
fn default_max_age_s() -> u64 {
    604_800
}
fn default_commit_max_batch() -> usize {
    256
}
fn default_commit_max_wait_ms() -> u64 {
    2
}
fn default_store_queue() -> usize {
    8192
}
/// The default `provider.answer_delay_us`: every pull answer leaves this
/// long after its pull arrived.
pub const DEFAULT_ANSWER_DELAY_US: u64 = 1_000;

fn default_answer_delay_us() -> u64 {
    DEFAULT_ANSWER_DELAY_US
}

/// `[provider]`: the inbox, the client registry and pulls (providers only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Directory of the inbox (`inbox.redb`) and the client registry
    /// (`clients/`).
    pub data_dir: PathBuf,
    /// Frames in every pull answer (k), whatever the inbox holds: the
    /// signed document's `params.pull_frames` ([`MixConfig::take_network`]),
    /// never read from the file.
    #[serde(skip, default = "default_pull_frames")]
    pub pull_frames: u16,
    /// `pull_frames` in the file: refused with the fix (it moved to the
    /// document).
    #[serde(default, rename = "pull_frames")]
    moved_pull_frames: Option<IgnoredAny>,
    /// Messages one client's mailbox may hold; more are refused and counted.
    #[serde(default = "default_max_messages")]
    pub max_messages_per_client: u32,
    /// Bytes one client's mailbox may hold; more are refused and counted.
    #[serde(default = "default_max_bytes")]
    pub max_bytes_per_client: u64,
    /// Messages not acknowledged after this long are removed and counted.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
    /// Group commit: at most this many packets per durable transaction.
    #[serde(default = "default_commit_max_batch")]
    pub commit_max_batch: usize,
    /// Group commit: wait at most this long for more packets to join one.
    #[serde(default = "default_commit_max_wait_ms")]
    pub commit_max_wait_ms: u64,
    /// Packets and acknowledgements queued from the shards to the inbox
    /// writer; more are dropped and counted (`inbox_queue_full`,
    /// `loopix_inbox_acks_dropped_total`).
    #[serde(default = "default_store_queue")]
    pub store_queue: usize,
    /// Every pull answer leaves this long after its pull arrived, whatever
    /// the work it took (reading, hiding acknowledged ids, sealing), so its
    /// timing says nothing of the inbox (docs/providers.md). Keep it above
    /// the longest answer the shard builds; 0 sends at once and leaks.
    #[serde(default = "default_answer_delay_us")]
    pub answer_delay_us: u64,
}

fn default_lambda_m() -> f64 {
    // The paper's evaluation: λM = 10 loops per minute per node.
    10.0 / 60.0
}
fn default_loop_delay_ms() -> f64 {
    // The client's default per-hop mean delay (`loopix client init`), so
    // that a loop waits at each hop like a client's packet.
    1.0
}
fn default_loop_lead_ms() -> u64 {
    500
}

/// `[loops]`: this node's own loop cover traffic (the paper's λM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopsSection {
    /// Loops per second, a Poisson process; 0 sends none: the signed
    /// document's `params.lambda_m`, the same for every node (a node that
    /// sends fewer loops is one an observer can tell apart), never read
    /// from the file ([`MixConfig::take_network`]).
    #[serde(skip, default = "default_lambda_m")]
    pub lambda_m: f64,
    /// Mean per-hop delay of a loop (1/µ), milliseconds: the document's
    /// `params.mean_delay_ms`, like every client's packets.
    #[serde(skip, default = "default_loop_delay_ms")]
    pub mean_delay_ms: f64,
    /// `lambda_m` in the file: refused with the fix.
    #[serde(default, rename = "lambda_m")]
    moved_lambda_m: Option<IgnoredAny>,
    /// `mean_delay_ms` in the file: refused with the fix.
    #[serde(default, rename = "mean_delay_ms")]
    moved_mean_delay_ms: Option<IgnoredAny>,
    /// How far ahead of its departure a loop is built, milliseconds.
    #[serde(default = "default_loop_lead_ms")]
    pub lead_ms: u64,
}

impl Default for LoopsSection {
    fn default() -> Self {
        LoopsSection {
            lambda_m: default_lambda_m(),
            mean_delay_ms: default_loop_delay_ms(),
            lead_ms: default_loop_lead_ms(),
            moved_lambda_m: None,
            moved_mean_delay_ms: None,
        }
    }
}

fn default_threshold() -> f64 {
    0.3
}
fn default_hysteresis() -> f64 {
    0.1
}
fn default_timeout_factor() -> f64 {
    4.0
}
fn default_timeout_grace_ms() -> u64 {
    1000
}
fn default_min_loops() -> u32 {
    20
}
fn default_cover_multiple() -> f64 {
    4.0
}
/// Returns a window must expect by default (`window_s = 0`).
pub const AUTO_WINDOW_RETURNS: f64 = 50.0;

/// `[detector]`: the (n−1) detector on this node's own loops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSection {
    /// The public threshold `r` (the paper's §4.2): the alarm starts when
    /// fewer than this fraction of loops come back.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The alarm ends when the fraction is back at `threshold + hysteresis`.
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f64,
    /// Sliding window of resolved loops, seconds; 0 (default): long enough
    /// that 50 returns are expected at `loops.lambda_m`.
    #[serde(default)]
    pub window_s: u64,
    /// A loop is lost after this many times the model's 99.9th percentile
    /// of its round trip ...
    #[serde(default = "default_timeout_factor")]
    pub timeout_factor: f64,
    /// ... plus this allowance for the wire and processing, milliseconds.
    #[serde(default = "default_timeout_grace_ms")]
    pub timeout_grace_ms: u64,
    /// No decision on fewer resolved loops than this in the window.
    #[serde(default = "default_min_loops")]
    pub min_loops: u32,
    /// `cover` (default), `log` or `halt`.
    #[serde(default)]
    pub response: Response,
    /// In alarm with `response = "cover"`, loops at this multiple of λM.
    #[serde(default = "default_cover_multiple")]
    pub cover_multiple: f64,
}

impl Default for DetectorSection {
    fn default() -> Self {
        DetectorSection {
            threshold: default_threshold(),
            hysteresis: default_hysteresis(),
            window_s: 0,
            timeout_factor: default_timeout_factor(),
            timeout_grace_ms: default_timeout_grace_ms(),
            min_loops: default_min_loops(),
            response: Response::default(),
            cover_multiple: default_cover_multiple(),
        }
    }
}

impl DetectorSection {
    /// The window in seconds: `window_s`, or the automatic one.
    pub fn window_s_for(&self, lambda_m: f64) -> u64 {
        if self.window_s > 0 || lambda_m <= 0.0 {
            return self.window_s;
        }
        (AUTO_WINDOW_RETURNS / lambda_m).ceil().max(1.0) as u64
    }

    /// Check `[detector]` against the loop rate.
    /// Check `[detector]`; against the network's `lambda_m` once the
    /// document's parameters are known (`None` before).
    fn check(&self, lambda_m: Option<f64>) -> Result<(), Invalid> {
        let d = self;
        if !(d.threshold.is_finite() && d.threshold > 0.0 && d.threshold < 1.0) {
            return Err((
                "detector.threshold",
                format!(
                    "is {}; use a fraction of loops expected back, strictly between 0 and 1 \
                     (the paper's r; default 0.3)",
                    d.threshold
                ),
            ));
        }
        if !(d.hysteresis.is_finite() && d.hysteresis >= 0.0 && d.threshold + d.hysteresis <= 1.0) {
            return Err((
                "detector.hysteresis",
                format!(
                    "is {}; use 0 or more with threshold + hysteresis at most 1",
                    d.hysteresis
                ),
            ));
        }
        if !(d.timeout_factor.is_finite() && (1.0..=100.0).contains(&d.timeout_factor)) {
            return Err((
                "detector.timeout_factor",
                format!("is {}; use 1 to 100 (default 4)", d.timeout_factor),
            ));
        }
        if d.timeout_grace_ms > 600_000 {
            return Err((
                "detector.timeout_grace_ms",
                format!("is {}; use at most 600000", d.timeout_grace_ms),
            ));
        }
        if d.min_loops == 0 {
            return Err(("detector.min_loops", "must be at least 1".into()));
        }
        if !(d.cover_multiple.is_finite() && (1.0..=100.0).contains(&d.cover_multiple))
            || lambda_m.unwrap_or(0.0) * d.cover_multiple > 100_000.0
        {
            return Err((
                "detector.cover_multiple",
                format!(
                    "is {}; use 1 to 100, with params.lambda_m × cover_multiple at most 100000",
                    d.cover_multiple
                ),
            ));
        }
        if d.window_s > 86_400 {
            return Err((
                "detector.window_s",
                format!("is {} s; use at most 86400 (a day)", d.window_s),
            ));
        }
        let Some(lambda_m) = lambda_m else {
            return Ok(());
        };
        let window_s = d.window_s_for(lambda_m);
        let expected = lambda_m * window_s as f64;
        if lambda_m > 0.0 && expected < f64::from(d.min_loops) {
            return Err((
                "detector.window_s",
                format!(
                    "is {window_s} s, in which the topology document's params.lambda_m = {lambda_m}/s \
                     sends {expected:.1} loops, \
                     fewer than detector.min_loops ({}); use at least {} s, or 0 for the default",
                    d.min_loops,
                    (f64::from(d.min_loops) / lambda_m).ceil()
                ),
            ));
        }
        if window_s > 86_400 {
            return Err((
                "detector.window_s",
                format!("is {window_s} s; use at most 86400 (a day), or raise params.lambda_m"),
            ));
        }
        Ok(())
    }
}

fn default_aqm_target_ms() -> f64 {
    // The standing queue overstates the wait near full load: node-bench saw
    // drops at about 93% of a shard's CPU with 5 and 20 ms (docs/aqm.md).
    // 100 ms keeps the AQM to overloads and is still far under the 0.7 s of
    // work a full 8 MiB socket buffer holds, where the kernel drops.
    100.0
}

fn default_aqm_interval_ms() -> u64 {
    100
}
fn default_aqm_max_drop() -> f64 {
    0.95
}

/// `[aqm]`: active queue management on each shard's lateness.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AqmSection {
    /// The lateness (departure after deadline) each shard is held under,
    /// milliseconds; 0 turns the AQM off (the pool-full drop remains).
    #[serde(default = "default_aqm_target_ms")]
    pub target_ms: f64,
    /// How often the controller updates its drop probability, milliseconds.
    #[serde(default = "default_aqm_interval_ms")]
    pub interval_ms: u64,
    /// The highest drop probability it sets.
    #[serde(default = "default_aqm_max_drop")]
    pub max_drop: f64,
}

impl Default for AqmSection {
    fn default() -> Self {
        AqmSection {
            target_ms: default_aqm_target_ms(),
            interval_ms: default_aqm_interval_ms(),
            max_drop: default_aqm_max_drop(),
        }
    }
}

impl AqmSection {
    /// Check `[aqm]`.
    fn check(&self) -> Result<(), Invalid> {
        let a = self;
        if !(a.target_ms.is_finite() && (0.0..=60_000.0).contains(&a.target_ms)) {
            return Err((
                "aqm.target_ms",
                format!(
                    "is {}; use 0 (off) to 60000 milliseconds (default 100)",
                    a.target_ms
                ),
            ));
        }
        if !(1..=60_000).contains(&a.interval_ms) {
            return Err((
                "aqm.interval_ms",
                format!("is {}; use 1 to 60000 (default 100)", a.interval_ms),
            ));
        }
        if !(a.max_drop.is_finite() && a.max_drop > 0.0 && a.max_drop <= 1.0) {
            return Err((
                "aqm.max_drop",
                format!(
                    "is {}; use a probability in (0, 1] (default 0.95)",
                    a.max_drop
                ),
            ));
        }
        Ok(())
    }
}

/// A config field and what is wrong with it.
type Invalid = (&'static str, String);

impl EngineSection {
    /// Check `[engine]`.
    fn check(&self) -> Result<(), Invalid> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let e = self;
        if e.shards == 0 || e.shards > 256 {
            return Err((
                "engine.shards",
                format!(
                    "is {}; use 1 to 256 (this host has {cores} cores)",
                    e.shards
                ),
            ));
        }
        if e.pin_cores && e.first_core + e.shards > cores {
            return Err((
                "engine.first_core",
                format!(
                    "{} plus {} shards needs cores up to {}, this host has {cores}; \
                     lower engine.shards or set engine.pin_cores = false",
                    e.first_core,
                    e.shards,
                    e.first_core + e.shards - 1
                ),
            ));
        }
        if !(16..=16_777_216).contains(&e.pool_packets) {
            return Err((
                "engine.pool_packets",
                format!("is {}; use 16 to 16777216", e.pool_packets),
            ));
        }
        if !(1..=1024).contains(&e.batch) {
            return Err(("engine.batch", format!("is {}; use 1 to 1024", e.batch)));
        }
        if e.delay_cap_ms == 0 || e.delay_cap_ms > 3_600_000 {
            return Err((
                "engine.delay_cap_ms",
                format!("is {}; use 1 to 3600000 (one hour)", e.delay_cap_ms),
            ));
        }
        Ok(())
    }
}

impl LoopsSection {
    /// Check `[loops]` (hop delays against `engine.delay_cap_ms`).
    fn check(&self, delay_cap_ms: u64) -> Result<(), Invalid> {
        let l = self;
        if l.moved_lambda_m.is_some() {
            return Err(("loops.lambda_m", moved("lambda_m")));
        }
        if l.moved_mean_delay_ms.is_some() {
            return Err(("loops.mean_delay_ms", moved("mean_delay_ms")));
        }
        // At most 10^5 loops per second: far above any sane cover rate,
        // low enough that the control thread can build them.
        if !(l.lambda_m.is_finite() && (0.0..=100_000.0).contains(&l.lambda_m)) {
            return Err((
                "params.lambda_m",
                format!(
                    "(in the topology document) is {}; use a rate in loops per second from 0 \
                     (none) to 100000, e.g. 0.1667 (the paper's 10 per minute)",
                    l.lambda_m
                ),
            ));
        }
        if !(l.mean_delay_ms.is_finite() && l.mean_delay_ms >= 0.0)
            || l.mean_delay_ms * 1000.0 * 20.0 > (delay_cap_ms * 1000) as f64
        {
            return Err((
                "engine.delay_cap_ms",
                format!(
                    "is {delay_cap_ms}, but the topology document's params.mean_delay_ms is {}: \
                     raise engine.delay_cap_ms to at least 20 times the mean delay ({:.0}) so \
                     that almost no hop is over the cap",
                    l.mean_delay_ms,
                    (l.mean_delay_ms * 20.0).ceil()
                ),
            ));
        }
        if !(100..=10_000).contains(&l.lead_ms) {
            return Err((
                "loops.lead_ms",
                format!(
                    "is {}; use 100 to 10000 (the control plane builds loops every 100 ms)",
                    l.lead_ms
                ),
            ));
        }
        Ok(())
    }
}

impl ProviderSection {
    /// Check `[provider]`.
    fn check(&self) -> Result<(), Invalid> {
        let p = self;
        if p.data_dir.as_os_str().is_empty() {
            return Err((
                "provider.data_dir",
                "is empty; name the directory for the inbox and the client registry".into(),
            ));
        }
        if p.moved_pull_frames.is_some() {
            return Err(("provider.pull_frames", moved("pull_frames")));
        }
        if !(1..=1024).contains(&p.pull_frames) {
            return Err((
                "params.pull_frames",
                format!(
                    "(in the topology document) is {}; use 1 to 1024",
                    p.pull_frames
                ),
            ));
        }
        if p.max_messages_per_client == 0 {
            return Err((
                "provider.max_messages_per_client",
                "must be at least 1".into(),
            ));
        }
        if p.max_bytes_per_client < 4096 {
            return Err((
                "provider.max_bytes_per_client",
                format!(
                    "is {}; use at least 4096 (one packet is about 1.4 KB)",
                    p.max_bytes_per_client
                ),
            ));
        }
        if p.max_age_s == 0 {
            return Err(("provider.max_age_s", "must be at least 1".into()));
        }
        if !(1..=65_536).contains(&p.commit_max_batch) {
            return Err((
                "provider.commit_max_batch",
                format!("is {}; use 1 to 65536", p.commit_max_batch),
            ));
        }
        if p.commit_max_wait_ms > 1000 {
            return Err((
                "provider.commit_max_wait_ms",
                format!("is {}; use 0 to 1000", p.commit_max_wait_ms),
            ));
        }
        if p.answer_delay_us > 1_000_000 {
            return Err((
                "provider.answer_delay_us",
                format!(
                    "is {}; use 0 to 1000000 (the default 1000 hides the answer's work)",
                    p.answer_delay_us
                ),
            ));
        }
        if !(1..=1_048_576).contains(&p.store_queue) {
            return Err((
                "provider.store_queue",
                format!("is {}; use 1 to 1048576", p.store_queue),
            ));
        }
        Ok(())
    }
}

/// The whole node configuration (the name is historical: a provider's is
/// the same plus `[provider]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// The file this was read from (names it in errors found later, when
    /// the topology document's parameters are taken).
    #[serde(skip)]
    pub source: PathBuf,
    /// The network's parameters, once taken from the topology document
    /// ([`MixConfig::take_network`]); `None` after parsing.
    #[serde(skip)]
    pub network: Option<NetworkParams>,
    /// `[node]`
    pub node: NodeSection,
    /// `[engine]`
    #[serde(default)]
    pub engine: EngineSection,
    /// `[replay]`
    #[serde(default)]
    pub replay: ReplaySection,
    /// `[epochs]`
    #[serde(default)]
    pub epochs: EpochSection,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[shutdown]`
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// `[loops]`
    #[serde(default)]
    pub loops: LoopsSection,
    /// `[detector]`
    #[serde(default)]
    pub detector: DetectorSection,
    /// `[aqm]`
    #[serde(default)]
    pub aqm: AqmSection,
    /// `[provider]`: present for providers, absent for mixes.
    pub provider: Option<ProviderSection>,
}

/// Why a key that moved to the topology document is refused.
fn moved(key: &str) -> String {
    format!(
        "is a network parameter now: every node and client takes it from the signed topology \
         document's [params] ({key}, set by `loopix topology build`); remove it from this file"
    )
}

impl MixConfig {
    /// Take the network's parameters from the signed topology document (λM,
    /// the per-hop delay of loops, and a provider's `k`) and check them
    /// against this file's settings.
    pub fn take_network(&mut self, params: &NetworkParams) -> Result<(), ConfigError> {
        self.network = Some(*params);
        self.loops.lambda_m = params.lambda_m;
        self.loops.mean_delay_ms = params.mean_delay_ms;
        if let Some(p) = self.provider.as_mut() {
            p.pull_frames = params.pull_frames;
        }
        self.check(&self.source)
    }

    /// Read, parse and check `path`. Relative paths inside are taken
    /// relative to the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![&mut config.node.key_dir, &mut config.node.topology];
        if let Some(p) = config.provider.as_mut() {
            paths.push(&mut p.data_dir);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Parse and check TOML text (`path` only names the file in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: MixConfig = toml::from_str(text).map_err(|e| {
            let mut message = e.to_string().trim_end().to_owned();
            if message.contains("missing field `operator_key`") {
                message = format!("{message}\n`node.operator_key` is required: {OPERATOR_KEY_FIX}");
            }
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })?;
        config.check(path)?;
        Ok(MixConfig {
            source: path.to_owned(),
            ..config
        })
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        let invalid = |(field, problem): Invalid| bad(field, problem);
        self.engine.check().map_err(invalid)?;
        let r = &self.replay;
        if r.rate_pps == 0 {
            return Err(bad("replay.rate_pps", "must be at least 1".into()));
        }
        if r.sync_s == 0 || r.sync_s > 3600 {
            return Err(bad(
                "replay.sync_s",
                format!("is {}; use 1 to 3600 seconds (default 10)", r.sync_s),
            ));
        }
        if !(r.fp_rate > 0.0 && r.fp_rate < 0.5) {
            return Err(bad(
                "replay.fp_rate",
                format!("is {}; use a probability in (0, 0.5), e.g. 1e-6", r.fp_rate),
            ));
        }
        self.loops
            .check(self.engine.delay_cap_ms)
            .map_err(invalid)?;
        self.detector
            .check(self.network.map(|p| p.lambda_m))
            .map_err(invalid)?;
        self.aqm.check().map_err(invalid)?;
        if self.shutdown.drain_ms > 600_000 {
            return Err(bad(
                "shutdown.drain_ms",
                format!(
                    "is {}; use at most 600000 (ten minutes)",
                    self.shutdown.drain_ms
                ),
            ));
        }
        if let Some(p) = &self.provider {
            p.check().map_err(invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
key_dir = "keys"
topology = "topology.toml"
listen = "127.0.0.1:9001"
operator_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
"#;

    fn parse(text: &str) -> Result<MixConfig, ConfigError> {
        MixConfig::parse(Path::new("mix.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.engine.shards, 1);
        assert_eq!(c.engine.io, IoChoice::Auto);
        assert_eq!(c.replay.fp_rate, 1e-6);
        assert_eq!(c.replay.sync_s, 10);
        assert_eq!((c.epochs.grace_s, c.epochs.min_future_keys), (300, 3));
        assert_eq!(c.node.state_dir(), Path::new("keys").join("state"));
        assert!(c.metrics.listen.is_none());
        assert_eq!(c.loops.lambda_m, 10.0 / 60.0);
        // 50 returns at 10 per minute: five minutes.
        assert_eq!(c.detector.window_s_for(c.loops.lambda_m), 300);
        assert_eq!(c.detector.response, Response::Cover);
        assert!(c.node.public_address.is_none());
        assert_eq!(c.loops.mean_delay_ms, 1.0);
    }

    #[test]
    fn network_parameters_come_from_the_document_only() {
        for (text, field) in [
            (
                format!("{MINIMAL}[loops]\nlambda_m = 0.5\n"),
                "loops.lambda_m",
            ),
            (
                format!("{MINIMAL}[loops]\nmean_delay_ms = 2.0\n"),
                "loops.mean_delay_ms",
            ),
            (
                format!("{MINIMAL}[provider]\ndata_dir = \"d\"\npull_frames = 4\n"),
                "provider.pull_frames",
            ),
        ] {
            let e = parse(&text).expect_err(field).to_string();
            assert!(
                e.contains(field) && e.contains("topology document's [params]"),
                "{e}"
            );
        }
        let mut c = parse(&format!(
            "{MINIMAL}[engine]\ndelay_cap_ms = 100\n[provider]\ndata_dir = \"d\"\n"
        ))
        .expect("valid");
        let mut p = NetworkParams {
            lambda_m: 2.5,
            pull_frames: 12,
            ..NetworkParams::default()
        };
        c.take_network(&p).expect("1 ms hops under a 100 ms cap");
        assert_eq!(c.loops.lambda_m, 2.5);
        assert_eq!(c.provider.as_ref().expect("provider").pull_frames, 12);
        p.mean_delay_ms = 50.0;
        let e = c
            .take_network(&p)
            .expect_err("50 ms hops, 100 ms cap")
            .to_string();
        assert!(
            e.contains("engine.delay_cap_ms") && e.contains("params.mean_delay_ms is 50"),
            "{e}"
        );
        assert!(e.contains("mix.toml"), "names the config file: {e}");
        // 10 per minute for 60 s: 10 loops, fewer than 20.
        let mut c = parse(&format!("{MINIMAL}[detector]\nwindow_s = 60\n")).expect("valid");
        let e = c
            .take_network(&NetworkParams::default())
            .expect_err("too few loops")
            .to_string();
        assert!(
            e.contains("detector.window_s") && e.contains("params.lambda_m"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (format!("{MINIMAL}[engine]\nshards = 0\n"), "engine.shards"),
            (format!("{MINIMAL}[engine]\nio = \"fast\"\n"), "io"),
            (format!("{MINIMAL}[engine]\nshard = 2\n"), "shard"),
            (
                format!("{MINIMAL}[replay]\nfp_rate = 2.0\n"),
                "replay.fp_rate",
            ),
            (
                format!("{MINIMAL}[engine]\npool_packets = 1\n"),
                "engine.pool_packets",
            ),
            ("[node]\nkey_dir = \"k\"\n".to_string(), "topology"),
            (MINIMAL.replace("127.0.0.1:9001", "nowhere"), "listen"),
            (
                MINIMAL.replace("operator_key = \"d75a", "operator_key = \"zz"),
                "operator-keygen",
            ),
            (
                MINIMAL.replace("operator_key", "#operator_key"),
                "`node.operator_key` is required",
            ),
            (
                format!("{MINIMAL}[loops]\nlambda_m = -1.0\n"),
                "loops.lambda_m",
            ),
            (
                format!("{MINIMAL}[loops]\nlambda_m = nan\n"),
                "loops.lambda_m",
            ),
            (
                format!("{MINIMAL}[loops]\nlambda_m = inf\n"),
                "loops.lambda_m",
            ),
            (
                format!("{MINIMAL}[loops]\nmean_delay_ms = -2.0\n"),
                "loops.mean_delay_ms",
            ),
            (
                format!("{MINIMAL}[engine]\ndelay_cap_ms = 100\n[loops]\nmean_delay_ms = 50.0\n"),
                "loops.mean_delay_ms",
            ),
            (format!("{MINIMAL}[loops]\nlead_ms = 5\n"), "loops.lead_ms"),
            (
                format!("{MINIMAL}[detector]\nthreshold = 0.0\n"),
                "detector.threshold",
            ),
            (
                format!("{MINIMAL}[detector]\nthreshold = 1.0\n"),
                "detector.threshold",
            ),
            (
                format!("{MINIMAL}[detector]\nthreshold = nan\n"),
                "detector.threshold",
            ),
            (
                format!("{MINIMAL}[detector]\nthreshold = 0.95\n"),
                "detector.hysteresis",
            ),
            (
                format!("{MINIMAL}[detector]\nwindow_s = 100000\n"),
                "detector.window_s",
            ),
            (
                format!("{MINIMAL}[detector]\ntimeout_factor = 0.5\n"),
                "detector.timeout_factor",
            ),
            (
                format!("{MINIMAL}[detector]\nmin_loops = 0\n"),
                "detector.min_loops",
            ),
            (
                format!("{MINIMAL}[detector]\ncover_multiple = 0.5\n"),
                "detector.cover_multiple",
            ),
            (
                format!("{MINIMAL}[aqm]\ntarget_ms = -1.0\n"),
                "aqm.target_ms",
            ),
            (
                format!("{MINIMAL}[aqm]\ninterval_ms = 0\n"),
                "aqm.interval_ms",
            ),
            (format!("{MINIMAL}[aqm]\nmax_drop = 0.0\n"), "aqm.max_drop"),
        ];
        for (text, field) in cases {
            let err = parse(&text).expect_err("invalid").to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn provider_section() {
        let c = parse(&format!("{MINIMAL}[provider]\ndata_dir = \"data\"\n")).expect("valid");
        let p = c.provider.expect("present");
        assert_eq!(p.pull_frames, 8);
        assert_eq!(p.max_messages_per_client, 10_000);
        assert_eq!(p.max_bytes_per_client, 64 << 20);
        assert_eq!((p.commit_max_batch, p.commit_max_wait_ms), (256, 2));
        assert!(parse(MINIMAL).expect("valid").provider.is_none());
        let cases = [
            ("pull_frames = 0", "provider.pull_frames"),
            ("pull_frames = 2000", "provider.pull_frames"),
            (
                "max_messages_per_client = 0",
                "provider.max_messages_per_client",
            ),
            ("max_bytes_per_client = 10", "provider.max_bytes_per_client"),
            ("max_age_s = 0", "provider.max_age_s"),
            ("commit_max_batch = 0", "provider.commit_max_batch"),
            ("commit_max_wait_ms = 5000", "provider.commit_max_wait_ms"),
            ("store_queue = 0", "provider.store_queue"),
            ("k = 3", "k"),
        ];
        for (line, field) in cases {
            let text = format!("{MINIMAL}[provider]\ndata_dir = \"d\"\n{line}\n");
            let err = parse(&text).expect_err("invalid").to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
        let err = parse(&format!("{MINIMAL}[provider]\npull_frames = 4\n"))
            .expect_err("data_dir is required")
            .to_string();
        assert!(err.contains("data_dir"), "{err}");
    }

    #[test]
    fn unknown_io_lists_valid_values() {
        let err = parse(&format!("{MINIMAL}[engine]\nio = \"fast\"\n"))
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("auto") && err.contains("portable"), "{err}");
    }
}
