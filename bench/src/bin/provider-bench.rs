//! `provider-bench`: how many pulls one real provider process answers.
//!
//! Usage: `cargo run --release -p loopix-bench --bin provider-bench -- [--json]
//! [--quick] [--clients N] [--k K] [--start-rate R] [--factor F]
//! [--max-steps N] [--step-s S] [--timeout-ms MS] [--provider-core N]
//! [--gen-core N] [--io auto|uring|portable] [--seal-iters N]`.
//!
//! What it does (the pieces are in `loopix_bench::provider`):
//! - measures `seal_k_us`, the median time to seal one answer of k dummy
//!   frames with the provider's own `seal_answer`, pinned to the provider's
//!   core before the provider starts;
//! - starts one provider process (this binary re-executed as
//!   `loopix provider --config` would run it, pinned to `--provider-core`)
//!   with `--clients` registered clients and `provider.pull_frames = k`;
//! - steps the offered rate R (pulls/s over all clients, Poisson send
//!   times, sent open loop from one UDP socket on `--gen-core`, each pull
//!   from the next client in turn, with its own increasing counter) from
//!   `--start-rate`, times `--factor` per step, until a step loses 1% or
//!   more, or `--max-steps` ran. A receiver on the generator's core opens
//!   every delivery frame with its client's access key and matches it to
//!   its pull by (slot, request id); a pull is lost unless its k frames all
//!   arrived within `--timeout-ms` of its send. Mailboxes are empty: every
//!   answer is k dummies, sealed like real ones.
//!
//! Per step: offered and answered pulls/s, loss (late: all k frames, after
//! the timeout; unans: never all k), p50/p99 send to last frame, the
//! provider's CPU time (all its threads, `/proc/PID/task/*/schedstat`,
//! over sending and drain) per frame received, its drops
//! (`loopix_dropped_total` by reason, those that moved) and VmRSS.
//!
//! `pulls_per_s_max` is the highest offered rate with loss < 1%,
//! `frames_per_s_max = pulls_per_s_max * k`, `answer_p99_us` the p99 at
//! that step. The provider queues up to `store_queue` (8192) pulls, about
//! 0.6 s of its answers: a 3 s step a little above capacity fills that
//! queue but loses nothing within the 1 s timeout, so the step also reports
//! `behind`, the pulls still queued at the provider (sent, neither answered
//! nor dropped by its metrics) when the sender stopped, and
//! `pulls_per_s_sustained` is the highest rate with loss < 1% and behind
//! < 1% (as `node-bench` requires).
//!
//! Output: progress on stderr; a table and a summary on stdout; with
//! `--json` one JSON object as the last line.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use loopix_bench::json_num as num;
use loopix_bench::node::pin;
use loopix_bench::provider::{
    run_provider_child, seal_k_us, Load, Provider, ProviderSpec, StepResult, RUN_PROVIDER,
};
use loopix_bench::{emit, parse_options, positive, say, Io};
use loopix_engine::config::IoChoice;
use serde_json::{json, Value};

/// The same allocator as the `loopix` binary, for the provider this
/// binary runs as a child.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Loss allowed for a rate to pass.
const LOSS_MAX: f64 = 0.01;

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "provider-bench",
    version,
    about = "How many pulls one real provider process answers."
)]
struct Cli {
    /// After the table, print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Smoke run: 1 s steps, factor 2, 2000 seal iterations (explicit
    /// flags win).
    #[arg(long)]
    quick: bool,
    /// Registered clients, all pulling (1 to 1000000).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    clients: u64,
    /// provider.pull_frames: frames per answer (1 to 1024).
    #[arg(long, value_name = "K", default_value_t = 16)]
    k: u64,
    /// First offered rate, pulls/s.
    #[arg(long, value_name = "R", default_value_t = 500.0, value_parser = positive, allow_negative_numbers = true)]
    start_rate: f64,
    /// Rate multiplier per step, above 1 (default 1.5; --quick: 2).
    #[arg(long, value_name = "F", value_parser = positive, allow_negative_numbers = true)]
    factor: Option<f64>,
    /// At most N steps (1 to 100).
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_steps: u64,
    /// Seconds of sending per step (default 3; --quick: 1).
    #[arg(long, value_name = "S", value_parser = positive, allow_negative_numbers = true)]
    step_s: Option<f64>,
    /// A pull is lost unless all k frames arrive within MS of its send.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    timeout_ms: u64,
    /// Core of the whole provider process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    provider_core: usize,
    /// Core of the sender and the receiver.
    #[arg(long, value_name = "N", default_value_t = 1)]
    gen_core: usize,
    /// The provider's datagram backend.
    #[arg(long, value_name = "B", value_enum, default_value_t = Io::Auto)]
    io: Io,
    /// Timed iterations of seal_answer, at least 10 (default 20000;
    /// --quick: 2000).
    #[arg(long, value_name = "N")]
    seal_iters: Option<u64>,
}

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    json: bool,
    clients: usize,
    k: u16,
    start_rate: f64,
    factor: f64,
    max_steps: usize,
    step_s: f64,
    timeout_ms: u64,
    provider_core: usize,
    gen_core: usize,
    io: IoChoice,
    seal_iters: usize,
}

/// The options of a parsed command line: `--quick` changes the defaults
/// of the flags not given.
fn options(c: Cli) -> Result<Options, String> {
    let quick = c.quick;
    let o = Options {
        json: c.json,
        clients: c.clients.clamp(1, 1_000_000) as usize,
        k: c.k.clamp(1, 1024) as u16,
        start_rate: c.start_rate,
        factor: c.factor.unwrap_or(if quick { 2.0 } else { 1.5 }),
        max_steps: c.max_steps.clamp(1, 100) as usize,
        step_s: c.step_s.unwrap_or(if quick { 1.0 } else { 3.0 }),
        timeout_ms: c.timeout_ms.max(1),
        provider_core: c.provider_core,
        gen_core: c.gen_core,
        io: c.io.into(),
        seal_iters: c
            .seal_iters
            .unwrap_or(if quick { 2000 } else { 20_000 })
            .max(10) as usize,
    };
    if o.factor <= 1.0 {
        return Err("--factor must be above 1".into());
    }
    if o.provider_core == o.gen_core {
        return Err("--provider-core and --gen-core must differ".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(RUN_PROVIDER) {
        return run_provider_child("provider-bench", &args[1..]);
    }
    let opts = parse_options(std::env::args_os(), options).unwrap_or_else(|e| e.exit());
    match run(&opts) {
        Ok(out) => {
            emit(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("provider-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The CPU model from `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

const STEP_HEADER: &str = "  offered  answered   loss% behind%   late  unans    p50us    p99us  cpu%  gen%  us/frame   dropped  rss_MiB  gen99us  drops by reason";

fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

fn step_line(s: &StepResult) -> String {
    let reasons: Vec<String> = s.drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
    format!(
        "{:>9.0} {:>9.0} {:>7.2} {:>7.2} {:>6} {:>6} {:>8.0} {:>8.0} {:>5.0} {:>5.0} {:>9.2} {:>9.0} {:>8.1} {:>8.0}  {}{}",
        s.offered_pps,
        s.answered_pps,
        s.loss * 100.0,
        s.behind * 100.0,
        s.late,
        s.unanswered,
        s.p50_us,
        s.p99_us,
        s.cpu_share * 100.0,
        s.gen_cpu_share * 100.0,
        s.cpu_us_per_frame,
        s.dropped,
        mib(s.rss_end_kib),
        s.sender_late_p99_us,
        if reasons.is_empty() { "-".into() } else { reasons.join(" ") },
        if s.gen_kernel_drops > 0 || s.send_failed > 0 || s.bad_frames > 0 {
            format!(
                " [generator: {} kernel drops, {} send failures, {} bad frames]",
                s.gen_kernel_drops, s.send_failed, s.bad_frames
            )
        } else {
            String::new()
        }
    )
}

fn step_json(s: &StepResult) -> Value {
    json!({
        "offered_pps": num(s.offered_pps),
        "sent": s.sent,
        "answered_pps": num(s.answered_pps),
        "loss": num(s.loss),
        "behind": num(s.behind),
        "late": s.late,
        "unanswered": s.unanswered,
        "p50_us": num(s.p50_us),
        "p99_us": num(s.p99_us),
        "frames": s.frames,
        "provider_cpu_share": num(s.cpu_share),
        "provider_cpu_us_per_frame": num(s.cpu_us_per_frame),
        "generator_cpu_share": num(s.gen_cpu_share),
        "pulls_counted": num(s.pulls_counted),
        "dropped": num(s.dropped),
        "drops": s.drops,
        "rss_early_mib": num(mib(s.rss_early_kib)),
        "rss_end_mib": num(mib(s.rss_end_kib)),
        "gen_kernel_drops": s.gen_kernel_drops,
        "send_failed": s.send_failed,
        "bad_frames": s.bad_frames,
        "sender_late_p99_us": num(s.sender_late_p99_us),
    })
}

/// The highest passing step's figures.
struct Best {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    behind: f64,
    cpu_us_per_frame: f64,
}

impl Best {
    /// The highest offered rate with loss < 1% (and, if `kept_up`, less
    /// than 1% of its pulls still queued at the provider when the sender
    /// stopped); rate 0 and NaNs if none.
    fn of(steps: &[StepResult], kept_up: bool) -> Best {
        let best = steps
            .iter()
            .filter(|s| s.loss < LOSS_MAX && (!kept_up || s.behind < LOSS_MAX))
            .max_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps));
        Best {
            rate: best.map_or(0.0, |s| s.offered_pps),
            p50_us: best.map_or(f64::NAN, |s| s.p50_us),
            p99_us: best.map_or(f64::NAN, |s| s.p99_us),
            behind: best.map_or(f64::NAN, |s| s.behind),
            cpu_us_per_frame: best.map_or(f64::NAN, |s| s.cpu_us_per_frame),
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The steps: from the start rate, times the factor, until loss >= 1%.
fn run_steps(opts: &Options, provider: &mut Provider) -> Result<Vec<StepResult>, String> {
    let mut steps = Vec::new();
    let mut rate = opts.start_rate;
    eprintln!("{STEP_HEADER}");
    for _ in 0..opts.max_steps {
        let load = Load {
            rate: rate.round(),
            secs: opts.step_s,
            timeout: Duration::from_millis(opts.timeout_ms),
            core: Some(opts.gen_core),
            rss_early: Duration::from_secs_f64(opts.step_s / 4.0),
        };
        let s = provider.step(&load)?;
        eprintln!("{}", step_line(&s));
        let failed = s.loss >= LOSS_MAX;
        steps.push(s);
        if failed {
            break;
        }
        rate *= opts.factor;
    }
    Ok(steps)
}

fn run(opts: &Options) -> Result<String, String> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let core = opts.provider_core;
    let (k, iters) = (opts.k, opts.seal_iters);
    let seal_us = std::thread::scope(|s| {
        s.spawn(|| pin(core).map(|()| seal_k_us(k, iters)))
            .join()
            .unwrap_or_else(|_| Err("the seal thread panicked".into()))
    })?;
    eprintln!("provider-bench: seal_answer of k={k}: {seal_us:.2} us (median of {iters}); registering {} clients", opts.clients);
    let spec = ProviderSpec {
        clients: opts.clients,
        k: opts.k,
        core: Some(opts.provider_core),
        io: opts.io,
        exe,
        dir: None,
    };
    let mut provider = Provider::start(&spec)?;
    let steps = run_steps(opts, &mut provider)?;
    let max = Best::of(&steps, false);
    let sustained = Best::of(&steps, true);
    let frames_max = max.rate * f64::from(opts.k);
    let model = cpu_model();

    let mut out = String::new();
    say!(out, "provider-bench: one provider (core {}), {} clients, k = {}, generator on core {}, {} s steps, timeout {} ms; CPU {model}", opts.provider_core, opts.clients, opts.k, opts.gen_core, opts.step_s, opts.timeout_ms);
    say!(out, "");
    say!(out, "{STEP_HEADER}");
    for s in &steps {
        say!(out, "{}", step_line(s));
    }
    say!(out, "rates in pulls/s; loss = pulls not answered (all k frames) within the timeout; behind = sent but neither answered nor dropped by the provider (its metrics) when the sender stopped, i.e. still queued there; late = all k frames, after the timeout; unans = never all k; p50/p99: send to last frame of answered pulls; cpu%: provider process CPU time / wall time while sending; us/frame: its CPU time over the step (sending and drain) per frame received; gen%: this process (sender, and receiver opening every frame) CPU time / wall time over the step; dropped: loopix_dropped_total moved; rss: provider VmRSS when the sender stopped; gen99us: sender lateness p99");
    say!(out, "");
    say!(out, "seal_k_us {seal_us:.2} (seal_answer of {} frames in process) -> {:.0} answers/s per core for sealing alone", opts.k, 1e6 / seal_us);
    say!(out, "pulls_per_s_max {:.0} (loss < 1%) = frames_per_s_max {frames_max:.0}; at that rate answer p50 {:.0} us, p99 {:.0} us, provider {} behind when the sender stopped", max.rate, max.p50_us, max.p99_us, pct(max.behind));
    say!(out, "pulls_per_s_sustained {:.0} (loss < 1% and behind < 1%: the provider kept up, not its queue) = {:.0} frames/s; answer p50 {:.0} us, p99 {:.0} us", sustained.rate, sustained.rate * f64::from(opts.k), sustained.p50_us, sustained.p99_us);
    let per_answer = max.cpu_us_per_frame * f64::from(opts.k);
    say!(out, "provider CPU at pulls_per_s_max: {:.2} us per frame = {per_answer:.1} us per answer = {:.2} x seal_k_us", max.cpu_us_per_frame, per_answer / seal_us);
    say!(out, "total time {:.1} s", started.elapsed().as_secs_f64());
    if opts.json {
        let v = json!({
            "tool": "provider-bench",
            "cpu_model": model,
            "clients": opts.clients,
            "k": opts.k,
            "step_s": opts.step_s,
            "timeout_ms": opts.timeout_ms,
            "provider_core": opts.provider_core,
            "gen_core": opts.gen_core,
            "seal_k_us": num(seal_us),
            "pulls_per_s_max": num(max.rate),
            "frames_per_s_max": num(frames_max),
            "answer_p50_us": num(max.p50_us),
            "answer_p99_us": num(max.p99_us),
            "behind_at_max": num(max.behind),
            "cpu_us_per_frame_at_max": num(max.cpu_us_per_frame),
            "pulls_per_s_sustained": num(sustained.rate),
            "sustained_p99_us": num(sustained.p99_us),
            "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
            "total_s": num(started.elapsed().as_secs_f64()),
        });
        say!(out, "{v}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(v: &[&str]) -> Result<Options, clap::Error> {
        parse_options(
            std::iter::once("provider-bench").chain(v.iter().copied()),
            options,
        )
    }

    #[test]
    fn options_defaults_quick_and_errors() {
        let o = parse_args(&[]).expect("no arguments are valid");
        assert_eq!((o.clients, o.k, o.step_s, o.factor), (2000, 16, 3.0, 1.5));
        let q = parse_args(&["--step-s", "2", "--quick", "--k", "8"]).expect("valid");
        assert_eq!((q.step_s, q.factor, q.k), (2.0, 2.0, 8));
        for bad in [
            &["--factor", "1"][..],
            &["--gen-core", "0"],
            &["--io", "fast"],
            &["--clients"],
            &["--what"],
        ] {
            let e = parse_args(bad).expect_err("accepted");
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
