//! The scenario: everything a run needs, from a TOML file (`--scenario`),
//! overridden by command-line flags (`--lambda-p 2` sets `lambda_p`). The
//! flags ([`Args`], parsed by clap) are derived from the file's fields
//! ([`ScenarioFile`]), their names with `-` for `_`, so the two can never
//! drift apart; unknown fields and flags are refused by name.
//!
//! [`Scenario::check`] checks every value against its range and names the
//! field and the range on error; the caller then checks the target (the
//! topology verifies, the registrations parse, the metrics endpoints
//! answer) and the output directory, all before any load is sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One fixed load for `duration_s`.
    Run,
    /// Raise the load step by step until a bound is passed.
    Sweep,
}

/// What a sweep raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SweepBy {
    /// Every per-client rate times `factor` each step.
    Rate,
    /// Active clients times `factor` each step (up to `clients`).
    Clients,
}

/// The scenario file (and the flags), every field optional; defaults in
/// [`Scenario::resolve`]. Every field is also a flag of the same name with
/// `-` for `_` (clap derives them from this struct, the doc comments are
/// their help), so the file and the flags cannot drift apart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// `run` (one fixed load for duration-s) or `sweep` (raise the load
    /// step by step until a bound is passed). Default: run.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Topology file of the network (with --registrations).
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Directory of registration TOML files (as `loopix provider register`
    /// prints them), one per emulated client.
    #[arg(long, value_name = "DIR")]
    pub registrations: Option<PathBuf>,
    /// A running `loopix testnet --clients 0 --keep DIR` network.
    #[arg(long, value_name = "DIR")]
    pub testnet: Option<PathBuf>,
    /// Node metrics endpoints, `name=host:port` or `host:port`, comma
    /// separated.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',')]
    pub metrics: Option<Vec<String>>,
    /// Emulated clients (the first N registrations, by file name).
    /// Default 1000; 1 to 1000000.
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Per-client payload stream rate, per second. Default 1; 0 to 1000.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub lambda_p: Option<f64>,
    /// Per-client loop rate, per second. Default 0.5; 0 to 1000.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub lambda_l: Option<f64>,
    /// Per-client drop rate, per second. Default 0.5; 0 to 1000.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub lambda_d: Option<f64>,
    /// Mean per-hop delay (1/mu), milliseconds. Default 1; 0 to 60000.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub mean_delay_ms: Option<f64>,
    /// Pull period, milliseconds. Default 200; 1 to 60000.
    #[arg(long, value_name = "MS")]
    pub pull_ms: Option<u64>,
    /// Share of lambda-p slots that carry a real message. Default 0.1;
    /// 0 to 1.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub real_share: Option<f64>,
    /// Sending time of a step, seconds. Default 10; 0.1 to 86400.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub duration_s: Option<f64>,
    /// Pull-only time after each step, seconds. Default 2; 0 to 600.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub drain_s: Option<f64>,
    /// What a sweep raises: `rate` (every per-client rate) or `clients`
    /// (active clients, up to --clients). Default: rate.
    #[arg(long)]
    pub sweep_by: Option<SweepBy>,
    /// Multiplier from one sweep step to the next. Default 1.5; 1.01 to
    /// 100.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub factor: Option<f64>,
    /// Most steps of a sweep. Default 8; 1 to 100.
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u32>,
    /// A step is within bounds while its loss is at most this. Default
    /// 0.01; 0 to 1.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub loss_bound: Option<f64>,
    /// ... and while its p99 end-to-end latency is at most this,
    /// milliseconds. Default 5000; above 0.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub p99_bound_ms: Option<f64>,
    /// Largest prepared schedule, megabytes. Default 2048; 16 to 1048576.
    #[arg(long, value_name = "MB")]
    pub memory_cap_mb: Option<u64>,
    /// Threads for creating clients and preparing packets. Default 2; 1
    /// to 64.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seed of client keys and every random choice. Default: a fresh
    /// random seed each run (reported in report.json). A seed reused
    /// against the same network in the same key epoch rebuilds the same
    /// packets, which the nodes rightly drop as replays.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Output directory (report.json, report.csv, *.svg). Default:
    /// loadgen-out.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print progress to stderr. Default: true.
    #[arg(long, value_name = "BOOL")]
    pub progress: Option<bool>,
}

/// The `loopix-loadgen` command line: `--scenario FILE`, then every field
/// of [`ScenarioFile`] as a flag that overrides the file's value only when
/// given; or the hidden `node` subcommand.
#[derive(Debug, clap::Parser)]
#[command(
    name = "loopix-loadgen",
    version,
    about,
    arg_required_else_help = true,
    args_conflicts_with_subcommands = true,
    after_help = "Every field of the scenario file is also a flag, with - for _ \
                  (lambda_p is --lambda-p); flags override the file. See \
                  loadgen/README.md for every field and its range.\n\
                  Exit status: 0 done, 1 a failure while running, 2 bad input \
                  (nothing was sent)."
)]
pub struct Args {
    /// Scenario TOML file; the flags override its fields.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Do not print progress to stderr (progress = false).
    #[arg(long, conflicts_with = "progress")]
    pub no_progress: bool,
    /// The scenario's fields.
    #[command(flatten)]
    pub fields: ScenarioFile,
    /// `node mix|provider --config FILE` (hidden).
    #[command(subcommand)]
    pub node: Option<NodeCommand>,
}

/// The hidden subcommand.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
    /// Run a node, as `loopix mix|provider` does. Not for operators: it
    /// lets this crate's tests start a `loopix testnet` (whose nodes are
    /// child processes of a binary that embeds the node) without the
    /// `loopix` binary.
    #[command(hide = true)]
    Node {
        /// Which node.
        role: NodeRole,
        /// The node's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// The role of `loopix-loadgen node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeRole {
    /// `loopix mix`.
    Mix,
    /// `loopix provider`.
    Provider,
}

/// A checked scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Mode.
    pub mode: Mode,
    /// Topology file.
    pub topology: Option<PathBuf>,
    /// Registrations directory.
    pub registrations: Option<PathBuf>,
    /// Testnet directory.
    pub testnet: Option<PathBuf>,
    /// Metrics endpoints by name.
    pub metrics: Vec<(String, SocketAddr)>,
    /// Clients.
    pub clients: usize,
    /// Rates.
    pub lambda_p: f64,
    /// Rates.
    pub lambda_l: f64,
    /// Rates.
    pub lambda_d: f64,
    /// Mean per-hop delay, ms.
    pub mean_delay_ms: f64,
    /// Pull period, ms.
    pub pull_ms: u64,
    /// Real share.
    pub real_share: f64,
    /// Step duration, s.
    pub duration_s: f64,
    /// Drain, s.
    pub drain_s: f64,
    /// Sweep variable.
    pub sweep_by: SweepBy,
    /// Sweep factor.
    pub factor: f64,
    /// Sweep steps.
    pub max_steps: u32,
    /// Loss bound.
    pub loss_bound: f64,
    /// p99 bound, ms.
    pub p99_bound_ms: f64,
    /// Memory cap, MB.
    pub memory_cap_mb: u64,
    /// Threads.
    pub threads: usize,
    /// Seed.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Progress to stderr.
    pub progress: bool,
}

impl Args {
    /// The scenario file (if `--scenario` was given) with the flags that
    /// were given laid over it: a flag wins over the file, a flag not given
    /// leaves the file's value. Unknown fields in the file are refused by
    /// name.
    pub fn scenario_file(self) -> Result<ScenarioFile, String> {
        let (mut table, name) = match &self.scenario {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--scenario {}: cannot read: {e}", path.display()))?;
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| format!("scenario {}: {e}", path.display()))?;
                (table, format!("scenario {}", path.display()))
            }
            None => (toml::Table::new(), "scenario".to_string()),
        };
        let mut fields = self.fields;
        if let Some(m) = &mut fields.metrics {
            m.retain(|s| !s.is_empty());
        }
        if self.no_progress {
            fields.progress = Some(false);
        }
        // Fields not given serialize to nothing, so only the given ones
        // replace the file's.
        let flags = toml::Table::try_from(&fields).map_err(|e| format!("flags: {e}"))?;
        table.extend(flags);
        table
            .try_into::<ScenarioFile>()
            .map_err(|e| format!("{name}: {}", e.to_string().trim()))
    }
}

fn range_f(field: &str, v: f64, lo: f64, hi: f64) -> Result<f64, String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(format!("{field} = {v} is out of range; use {lo} to {hi}"))
    }
}

fn range_u(field: &str, v: u64, lo: u64, hi: u64) -> Result<u64, String> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(format!("{field} = {v} is out of range; use {lo} to {hi}"))
    }
}

/// Parse `name=host:port` or `host:port` (named `node<i>`).
pub fn parse_metrics(items: &[String]) -> Result<Vec<(String, SocketAddr)>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (name, addr) = match s.split_once('=') {
                Some((n, a)) => (n.to_string(), a),
                None => (format!("node{i}"), s.as_str()),
            };
            let addr = addr.parse().map_err(|_| {
                format!("metrics[{i}] = {s:?}: expected host:port or name=host:port")
            })?;
            Ok((name, addr))
        })
        .collect()
}

impl Scenario {
    /// Defaults, then range checks; errors name the field and the range.
    pub fn resolve(f: ScenarioFile) -> Result<Scenario, String> {
        let s = Scenario {
            mode: f.mode.unwrap_or(Mode::Run),
            topology: f.topology,
            registrations: f.registrations,
            testnet: f.testnet,
            metrics: parse_metrics(&f.metrics.unwrap_or_default())?,
            clients: range_u("clients", f.clients.unwrap_or(1000) as u64, 1, 1_000_000)? as usize,
            lambda_p: range_f("lambda_p", f.lambda_p.unwrap_or(1.0), 0.0, 1000.0)?,
            lambda_l: range_f("lambda_l", f.lambda_l.unwrap_or(0.5), 0.0, 1000.0)?,
            lambda_d: range_f("lambda_d", f.lambda_d.unwrap_or(0.5), 0.0, 1000.0)?,
            mean_delay_ms: range_f(
                "mean_delay_ms",
                f.mean_delay_ms.unwrap_or(1.0),
                0.0,
                60_000.0,
            )?,
            pull_ms: range_u("pull_ms", f.pull_ms.unwrap_or(200), 1, 60_000)?,
            real_share: range_f("real_share", f.real_share.unwrap_or(0.1), 0.0, 1.0)?,
            duration_s: range_f("duration_s", f.duration_s.unwrap_or(10.0), 0.1, 86_400.0)?,
            drain_s: range_f("drain_s", f.drain_s.unwrap_or(2.0), 0.0, 600.0)?,
            sweep_by: f.sweep_by.unwrap_or(SweepBy::Rate),
            factor: range_f("factor", f.factor.unwrap_or(1.5), 1.01, 100.0)?,
            max_steps: range_u("max_steps", u64::from(f.max_steps.unwrap_or(8)), 1, 100)? as u32,
            loss_bound: range_f("loss_bound", f.loss_bound.unwrap_or(0.01), 0.0, 1.0)?,
            p99_bound_ms: range_f(
                "p99_bound_ms",
                f.p99_bound_ms.unwrap_or(5_000.0),
                0.001,
                3.6e6,
            )?,
            memory_cap_mb: range_u(
                "memory_cap_mb",
                f.memory_cap_mb.unwrap_or(2048),
                16,
                1 << 20,
            )?,
            threads: range_u("threads", f.threads.unwrap_or(2) as u64, 1, 64)? as usize,
            seed: f
                .seed
                .unwrap_or_else(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng)),
            out: f.out.unwrap_or_else(|| PathBuf::from("loadgen-out")),
            progress: f.progress.unwrap_or(true),
        };
        if s.lambda_p + s.lambda_l + s.lambda_d <= 0.0 {
            return Err(
                "lambda_p + lambda_l + lambda_d is 0: nothing would be sent; \
                        set at least one above 0"
                    .into(),
            );
        }
        if s.lambda_l <= 0.0 && (s.real_share <= 0.0 || s.lambda_p <= 0.0) {
            return Err(
                "lambda_l is 0 and no real messages are sent (real_share or lambda_p \
                        is 0): nothing comes back to measure delivery; set lambda_l > 0 or \
                        real_share > 0"
                    .into(),
            );
        }
        let targets = [&s.registrations, &s.testnet]
            .iter()
            .filter(|t| t.is_some())
            .count();
        if targets != 1 {
            return Err(
                "give exactly one target: registrations = DIR (with topology = FILE) \
                        or testnet = DIR"
                    .into(),
            );
        }
        if s.registrations.is_some() && s.topology.is_none() {
            return Err("registrations needs topology = FILE (the network's topology)".into());
        }
        Ok(s)
    }

    /// Per-client rates for a rate multiplier `k`.
    pub fn rates(&self, k: f64) -> loopix_client::Rates {
        loopix_client::Rates {
            lambda_p: self.lambda_p * k,
            lambda_l: self.lambda_l * k,
            lambda_d: self.lambda_d * k,
            mean_delay_us: self.mean_delay_ms * 1000.0,
            pull_period_us: self.pull_ms * 1000,
        }
    }
}

/// Create `dir` if needed and check that a file can be written in it.
pub fn check_out_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("out = {}: cannot create the directory: {e}", dir.display()))?;
    let probe = dir.join(".loadgen-write-probe");
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("out = {}: cannot write there: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::Parser;

    /// Parse `flags` as the command line does.
    fn parse(flags: &str) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loopix-loadgen").chain(flags.split_whitespace()))
    }

    fn file(flags: &str) -> ScenarioFile {
        parse(flags)
            .expect("flags parse")
            .scenario_file()
            .expect("scenario")
    }

    #[test]
    fn flags_map_to_fields_and_errors_name_them() {
        let f = file(
            "--lambda-p 2 --registrations r --topology t.toml --metrics a=127.0.0.1:1,127.0.0.1:2 --mode sweep",
        );
        let s = Scenario::resolve(f).expect("valid");
        assert_eq!(s.lambda_p, 2.0);
        assert_eq!(s.mode, Mode::Sweep);
        assert_eq!(s.metrics[1].0, "node1");
        assert!(s.progress);
        let e = parse("--lambda-q 2").expect_err("unknown");
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--lambda-q"), "{e}");
        let e = parse("--clients many").expect_err("not a number");
        assert!(e.to_string().contains("--clients"), "{e}");
        let e = parse("--mode fast").expect_err("not a mode");
        assert!(e.to_string().contains("--mode"), "{e}");
        let e = parse("--clients 1 --clients 2").expect_err("twice");
        assert!(e.to_string().contains("--clients"), "{e}");
        let f = file("--lambda-p -1 --registrations r --topology t");
        let e = Scenario::resolve(f).expect_err("range");
        assert!(e.contains("lambda_p") && e.contains("0 to 1000"), "{e}");
        let f = file("--clients 0 --registrations r --topology t");
        assert!(Scenario::resolve(f).expect_err("range").contains("clients"));
        let f = file("--registrations r");
        assert!(Scenario::resolve(f)
            .expect_err("topology")
            .contains("topology"));
        assert_eq!(file("--no-progress").progress, Some(false));
        assert_eq!(file("--progress false").progress, Some(false));
        assert!(parse("--no-progress --progress true").is_err());
        assert_eq!(parse("--help").expect_err("help").exit_code(), 0);
        assert_eq!(parse("--version").expect_err("version").exit_code(), 0);
        // No arguments at all: the help, as a usage error.
        assert_eq!(parse("").expect_err("empty").exit_code(), 2);
        assert!(matches!(
            parse("node mix --config c.toml").expect("node").node,
            Some(NodeCommand::Node {
                role: NodeRole::Mix,
                ..
            })
        ));
        assert!(parse("--clients 1 node mix --config c.toml").is_err());
    }

    #[test]
    fn flags_override_the_file_only_when_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "clients = 7\nlambda_p = 3.0\nprogress = false\n").expect("write");
        let f = file(&format!("--scenario {} --lambda-p 4", path.display()));
        assert_eq!(
            (f.clients, f.lambda_p, f.progress),
            (Some(7), Some(4.0), Some(false))
        );
        assert_eq!(f.lambda_l, None);
        std::fs::write(&path, "clients = 7\nlambda_q = 1.0\n").expect("write");
        let e = parse(&format!("--scenario {}", path.display()))
            .expect("flags parse")
            .scenario_file()
            .expect_err("unknown field");
        assert!(e.contains("lambda_q"), "{e}");
        let e = parse("--scenario /nonexistent/s.toml")
            .expect("flags parse")
            .scenario_file()
            .expect_err("missing file");
        assert!(
            e.contains("--scenario /nonexistent/s.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn checked_in_scenarios_parse_and_are_in_range() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            let a = format!(
                "--scenario {} --registrations r --topology t",
                path.display()
            );
            let f = parse(&a)
                .map_err(|e| e.to_string())
                .and_then(Args::scenario_file)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Scenario::resolve(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 3, "{n} scenarios");
    }
}
