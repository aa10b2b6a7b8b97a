//! Mix node configuration: the TOML file an operator writes, parsed into
//! typed values and checked as a whole before anything starts.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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

/// The whole mix node configuration.
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
        for p in [&mut config.node.key_dir, &mut config.node.topology] {
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let e = &self.engine;
        if e.shards == 0 || e.shards > 256 {
            return Err(bad(
                "engine.shards",
                format!(
                    "is {}; use 1 to 256 (this host has {cores} cores)",
                    e.shards
                ),
            ));
        }
        if e.pin_cores && e.first_core + e.shards > cores {
            return Err(bad(
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
            return Err(bad(
                "engine.pool_packets",
                format!("is {}; use 16 to 16777216", e.pool_packets),
            ));
        }
        if !(1..=1024).contains(&e.batch) {
            return Err(bad(
                "engine.batch",
                format!("is {}; use 1 to 1024", e.batch),
            ));
        }
        if e.delay_cap_ms == 0 || e.delay_cap_ms > 3_600_000 {
            return Err(bad(
                "engine.delay_cap_ms",
                format!("is {}; use 1 to 3600000 (one hour)", e.delay_cap_ms),
            ));
        }
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
        if self.shutdown.drain_ms > 600_000 {
            return Err(bad(
                "shutdown.drain_ms",
                format!(
                    "is {}; use at most 600000 (ten minutes)",
                    self.shutdown.drain_ms
                ),
            ));
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
        ];
        for (text, field) in cases {
            let err = parse(&text).expect_err("invalid").to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn unknown_io_lists_valid_values() {
        let err = parse(&format!("{MINIMAL}[engine]\nio = \"fast\"\n"))
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("auto") && err.contains("portable"), "{err}");
    }
}
