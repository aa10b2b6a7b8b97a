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
use serde::Deserialize;

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
    /// UDP address to listen on; must be this node's address in the topology.
    pub listen: SocketAddr,
    /// The operator's Ed25519 public key: a topology document must be
    /// signed by it.
    #[serde(deserialize_with = "operator_key")]
    pub operator_key: IdentityPublic,
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
    /// Refuse to start if one shard's filter for one epoch would exceed this.
    #[serde(default = "default_filter_mb")]
    pub max_filter_mb: u64,
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            rate_pps: default_rate(),
            fp_rate: default_fp(),
            max_filter_mb: default_filter_mb(),
        }
    }
}

fn default_grace_s() -> u64 {
    300
}

/// `[epochs]`: key rotation.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EpochSection {
    /// Accept the previous epoch's key for this long after the change.
    #[serde(default = "default_grace_s")]
    pub grace_s: u64,
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

/// `[provider]`: the inbox, the client registry and pulls (providers only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Directory of the inbox (`inbox.redb`) and the client registry
    /// (`clients/`).
    pub data_dir: PathBuf,
    /// Frames in every pull answer (k), whatever the inbox holds.
    #[serde(default = "default_pull_frames")]
    pub pull_frames: u16,
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
    /// Packets and pulls queued from the shards to the inbox thread; more are
    /// dropped and counted (`inbox_queue_full`).
    #[serde(default = "default_store_queue")]
    pub store_queue: usize,
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
    /// Loops per second, a Poisson process; 0 sends none. Every node of a
    /// network should use the same value (a node that sends fewer loops is
    /// one an observer can tell apart).
    #[serde(default = "default_lambda_m")]
    pub lambda_m: f64,
    /// Mean per-hop delay of a loop (1/µ), milliseconds.
    #[serde(default = "default_loop_delay_ms")]
    pub mean_delay_ms: f64,
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
        }
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
        // At most 10^5 loops per second: far above any sane cover rate,
        // low enough that the control thread can build them.
        if !(l.lambda_m.is_finite() && (0.0..=100_000.0).contains(&l.lambda_m)) {
            return Err((
                "loops.lambda_m",
                format!(
                    "is {}; use a rate in loops per second from 0 (none) to 100000, \
                     e.g. 0.1667 (the paper's 10 per minute)",
                    l.lambda_m
                ),
            ));
        }
        if !(l.mean_delay_ms.is_finite() && l.mean_delay_ms >= 0.0)
            || l.mean_delay_ms * 1000.0 * 20.0 > (delay_cap_ms * 1000) as f64
        {
            return Err((
                "loops.mean_delay_ms",
                format!(
                    "is {}; use a mean delay in milliseconds, 0 or more and at most \
                     engine.delay_cap_ms / 20 ({}) so that almost no loop hop is over the cap",
                    l.mean_delay_ms,
                    delay_cap_ms / 20
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
        if !(1..=1024).contains(&p.pull_frames) {
            return Err((
                "provider.pull_frames",
                format!("is {}; use 1 to 1024", p.pull_frames),
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
    /// `[provider]`: present for providers, absent for mixes.
    pub provider: Option<ProviderSection>,
}

impl MixConfig {
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
        Ok(config)
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
        if !(r.fp_rate > 0.0 && r.fp_rate < 0.5) {
            return Err(bad(
                "replay.fp_rate",
                format!("is {}; use a probability in (0, 0.5), e.g. 1e-6", r.fp_rate),
            ));
        }
        self.loops
            .check(self.engine.delay_cap_ms)
            .map_err(invalid)?;
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
        assert!(c.metrics.listen.is_none());
        assert_eq!(c.loops.lambda_m, 10.0 / 60.0);
        assert_eq!(c.loops.mean_delay_ms, 1.0);
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
