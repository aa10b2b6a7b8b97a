//! `restart-bench`: what the persistent replay filters cost a node at start
//! and while it runs, for filters of production sizes.
//!
//! Usage: `cargo run --release -p loopix-bench --bin restart-bench --
//! [--json] [--rates-pps 1000,10000,50000] [--epoch-s 3600] [--dir DIR]`.
//!
//! For each `replay.rate_pps` (a filter sized for that rate over one epoch
//! at the node's false-positive rate, 1e-6), in a fresh directory under
//! `--dir` (default: the system's temporary directory; give one on the
//! disk the node will use):
//! - `create`: `BloomFilter::open_file` of a new file: the file is made,
//!   its blocks reserved (`posix_fallocate`), mapped and every page made
//!   writable (what a node does at start, and for each new epoch on its control
//!   thread);
//! - `fill`: insert `rate_pps x 60` fresh tags (a minute of traffic), which
//!   dirties pages all over the filter;
//! - `sync`: one `sync` (msync) of the filled filter: what every
//!   `replay.sync_s` costs in writes;
//! - `resume`: drop the filter and `open_file` it again (a restart): map,
//!   read every page and count its bits, write back what is dirty, make
//!   every page writable. The file is in the page cache
//!   here; from a cold disk add the file's size over the disk's read rate.
//!
//! Reports milliseconds and the filter's size; the figures go in
//! BENCHMARKING.md and docs/restarts.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use loopix_bench::{emit, parse_options};
use loopix_crypto::ReplayTag;
use loopix_engine::replay::{BloomFilter, FilterSizing};
use rand_core::{OsRng, RngCore};
use serde_json::json;

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "restart-bench",
    version,
    about = "What the persistent replay filters cost a node at start and \
             while it runs, for filters of production sizes."
)]
struct Cli {
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// The replay.rate_pps values to measure, comma separated, each at
    /// least 1.
    #[arg(
        long = "rates-pps",
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1000,10000,50000"
    )]
    rates: Vec<u64>,
    /// Epoch length, seconds, at least 1 (the filter holds rate x epoch
    /// tags).
    #[arg(long, value_name = "S", default_value_t = 3600)]
    epoch_s: u64,
    /// Directory for the filter files (default: the system's temporary
    /// directory; give one on the disk the node will use).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

struct Options {
    json: bool,
    rates: Vec<u64>,
    epoch_s: u64,
    dir: PathBuf,
}

fn options(c: Cli) -> Result<Options, String> {
    if c.rates.is_empty() || c.rates.contains(&0) || c.epoch_s == 0 {
        return Err("--rates-pps and --epoch-s must be at least 1".into());
    }
    Ok(Options {
        json: c.json,
        rates: c.rates,
        epoch_s: c.epoch_s,
        dir: c.dir.unwrap_or_else(std::env::temp_dir),
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn measure(rate: u64, o: &Options) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir_in(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let path = dir.path().join("epoch-1.bloom");
    let sizing =
        FilterSizing::compute(rate * o.epoch_s, 1e-6, 1 << 40).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let (f, _) = BloomFilter::open_file(&path, 1, sizing).map_err(|e| e.to_string())?;
    let create_ms = ms(t);
    let tags = rate * 60;
    let t = Instant::now();
    let mut tag = [0u8; 16];
    for _ in 0..tags {
        OsRng.fill_bytes(&mut tag);
        f.insert(&ReplayTag(tag));
    }
    let fill_ms = ms(t);
    let t = Instant::now();
    f.sync().map_err(|e| e.to_string())?;
    let sync_ms = ms(t);
    let fill = f.fill_ratio();
    drop(f);
    let t = Instant::now();
    let (back, resumed) = BloomFilter::open_file(&path, 1, sizing).map_err(|e| e.to_string())?;
    let resume_ms = ms(t);
    if !resumed || back.fill_ratio() != fill {
        return Err("the resumed filter differs from the one written".into());
    }
    Ok(json!({
        "rate_pps": rate, "filter_mib": sizing.memory_bytes() as f64 / f64::from(1u32 << 20),
        "create_ms": create_ms, "fill_tags": tags, "fill_ms": fill_ms, "sync_ms": sync_ms,
        "resume_ms": resume_ms,
    }))
}

fn main() -> ExitCode {
    let opts = parse_options(std::env::args_os(), options).unwrap_or_else(|e| e.exit());
    let mut rows = Vec::new();
    for &rate in &opts.rates {
        match measure(rate, &opts) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("restart-bench: rate {rate}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if opts.json {
        emit(&format!(
            "{}\n",
            json!({ "epoch_s": opts.epoch_s, "rows": rows })
        ));
        return ExitCode::SUCCESS;
    }
    let mut out = format!(
        "restart-bench: filters for one {} s epoch at fp 1e-6, in {}\n\
         {:>9} {:>10} {:>11} {:>14} {:>9} {:>10}\n",
        opts.epoch_s,
        opts.dir.display(),
        "rate_pps",
        "size_MiB",
        "create_ms",
        "fill_1min_ms",
        "sync_ms",
        "resume_ms"
    );
    for r in &rows {
        out += &format!(
            "{:>9} {:>10.1} {:>11.1} {:>14.1} {:>9.1} {:>10.1}\n",
            r["rate_pps"],
            r["filter_mib"].as_f64().unwrap_or(0.0),
            r["create_ms"].as_f64().unwrap_or(0.0),
            r["fill_ms"].as_f64().unwrap_or(0.0),
            r["sync_ms"].as_f64().unwrap_or(0.0),
            r["resume_ms"].as_f64().unwrap_or(0.0),
        );
    }
    emit(&out);
    ExitCode::SUCCESS
}
