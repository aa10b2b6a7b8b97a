//! The scenario: everything a run needs, from a TOML file (`--scenario`),
//! overridden by command-line flags (`--lambda-p 2` sets `lambda_p`). The
//! flags are the fields' names with `-` for `_`, so the two can never
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One fixed load for `duration_s`.
    Run,
    /// Raise the load step by step until a bound is passed.
    Sweep,
}

/// What a sweep raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepBy {
    /// Every per-client rate times `factor` each step.
    Rate,
    /// Active clients times `factor` each step (up to `clients`).
    Clients,
}

/// The scenario file (and the flags), every field optional; defaults in
/// [`Scenario::resolve`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// `run` or `sweep`.
    pub mode: Option<Mode>,
    /// Topology file of the network.
    pub topology: Option<PathBuf>,
    /// Directory of registration TOML files (as `loopix provider register`
    /// prints them), one per emulated client.
    pub registrations: Option<PathBuf>,
    /// A `loopix testnet --keep DIR` network (wired by the lead).
    pub testnet: Option<PathBuf>,
    /// Node metrics endpoints, `name=host:port` or `host:port`.
    pub metrics: Option<Vec<String>>,
    /// Emulated clients (the first N registrations, by file name).
    pub clients: Option<usize>,
    /// Per-client payload stream rate, per second.
    pub lambda_p: Option<f64>,
    /// Per-client loop rate, per second.
    pub lambda_l: Option<f64>,
    /// Per-client drop rate, per second.
    pub lambda_d: Option<f64>,
    /// Mean per-hop delay (1/mu), milliseconds.
    pub mean_delay_ms: Option<f64>,
    /// Pull period, milliseconds.
    pub pull_ms: Option<u64>,
    /// Share of `lambda_p` slots that carry a real message.
    pub real_share: Option<f64>,
    /// Sending time of a step, seconds.
    pub duration_s: Option<f64>,
    /// Pull-only time after each step, seconds.
    pub drain_s: Option<f64>,
    /// `rate` or `clients`.
    pub sweep_by: Option<SweepBy>,
    /// Multiplier from one sweep step to the next.
    pub factor: Option<f64>,
    /// Most steps of a sweep.
    pub max_steps: Option<u32>,
    /// A step is within bounds while its loss is at most this (0..1).
    pub loss_bound: Option<f64>,
    /// ... and its p99 end-to-end latency at most this, milliseconds.
    pub p99_bound_ms: Option<f64>,
    /// Largest prepared schedule, megabytes.
    pub memory_cap_mb: Option<u64>,
    /// Threads for creating clients and preparing packets.
    pub threads: Option<usize>,
    /// Seed of client keys and every random choice. Default: a fresh
    /// random seed each run (reported in report.json). A seed reused
    /// against the same network in the same key epoch rebuilds the same
    /// packets, which the nodes rightly drop as replays.
    pub seed: Option<u64>,
    /// Output directory (report.json, report.csv, *.svg).
    pub out: Option<PathBuf>,
    /// Print progress to stderr.
    pub progress: Option<bool>,
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

/// Fields whose flag values are strings (everything else is parsed as a
/// TOML number or boolean).
const STRING_FIELDS: &[&str] = &[
    "mode",
    "topology",
    "registrations",
    "testnet",
    "out",
    "sweep_by",
];

/// Merge `--scenario FILE` (if any) and the flags in `args` into one file.
/// Flags win. `--metrics a,b` is a list.
pub fn parse_args(args: &[String]) -> Result<ScenarioFile, String> {
    let mut table = toml::Table::new();
    let mut it = args.iter();
    let mut flags = toml::Table::new();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!(
                "unexpected argument {a:?}; every option is --name value"
            ));
        };
        if name == "no-progress" {
            flags.insert("progress".into(), toml::Value::Boolean(false));
            continue;
        }
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        if name == "scenario" {
            let text = std::fs::read_to_string(value)
                .map_err(|e| format!("--scenario {value}: cannot read: {e}"))?;
            table = toml::from_str(&text).map_err(|e| format!("scenario {value}: {e}"))?;
            continue;
        }
        let field = name.replace('-', "_");
        let v = if field == "metrics" {
            toml::Value::Array(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            )
        } else if STRING_FIELDS.contains(&field.as_str()) {
            toml::Value::String(value.clone())
        } else if let Ok(i) = value.parse::<i64>() {
            toml::Value::Integer(i)
        } else if let Ok(f) = value.parse::<f64>() {
            toml::Value::Float(f)
        } else if let Ok(b) = value.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(value.clone())
        };
        if flags.insert(field, v).is_some() {
            return Err(format!("--{name} given twice"));
        }
    }
    for (k, v) in flags {
        table.insert(k, v);
    }
    table.try_into::<ScenarioFile>().map_err(|e| {
        format!(
            "scenario: {} (flags are the field names with - for _)",
            e.to_string().trim()
        )
    })
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

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_map_to_fields_and_errors_name_them() {
        let f = parse_args(&args(
            "--lambda-p 2 --registrations r --topology t.toml --metrics a=127.0.0.1:1,127.0.0.1:2 --mode sweep",
        ))
        .expect("parses");
        let s = Scenario::resolve(f).expect("valid");
        assert_eq!(s.lambda_p, 2.0);
        assert_eq!(s.mode, Mode::Sweep);
        assert_eq!(s.metrics[1].0, "node1");
        let e = parse_args(&args("--lambda-q 2")).expect_err("unknown");
        assert!(e.contains("lambda_q"), "{e}");
        let f = parse_args(&args("--lambda-p -1 --registrations r --topology t")).expect("parses");
        let e = Scenario::resolve(f).expect_err("range");
        assert!(e.contains("lambda_p") && e.contains("0 to 1000"), "{e}");
        let f = parse_args(&args("--clients 0 --registrations r --topology t")).expect("parses");
        assert!(Scenario::resolve(f).expect_err("range").contains("clients"));
        let f = parse_args(&args("--registrations r")).expect("parses");
        assert!(Scenario::resolve(f)
            .expect_err("topology")
            .contains("topology"));
    }

    #[test]
    fn checked_in_scenarios_parse_and_are_in_range() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            let a = vec![
                "--scenario".to_string(),
                path.display().to_string(),
                "--registrations".into(),
                "r".into(),
                "--topology".into(),
                "t".into(),
            ];
            let f = parse_args(&a).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Scenario::resolve(f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 3, "{n} scenarios");
    }
}
