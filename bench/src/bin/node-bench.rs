//! `node-bench`: the throughput of one real mix node process, next to the
//! per-hop crypto floor measured in the same run.
//!
//! Usage: `cargo run --release -p loopix-bench --bin node-bench -- [--json]
//! [--quick] [--io auto|uring|portable] [--step-s S] [--mean-delay-us N]
//! [--start-pps N] [--growth F] [--precision F] [--budget-s N]
//! [--filter-rate-pps N] [--floor-iters N] [--node-core N] [--gen-core N]
//! [--sink-poll-us N] [--node-batch N] [--lambda-m R] [--aqm-target-ms MS]
//! [--sync-s S]`.
//!
//! What it does:
//! - lays out a loopback network with `LocalNet::create`: one provider and
//!   one layer of one mix, one shard pinned to `--node-core` (default 0).
//!   This process plays the provider: it sends packets with the path
//!   [mix, provider] (Relay with a delay drawn from Exp(`--mean-delay-us`),
//!   then Drop) and receives what the mix forwards on the provider's
//!   address;
//! - first looks at how busy both cores are for 1 s (other processes: on a
//!   shared machine they take the node's core too), then measures the crypto
//!   floor pinned to the node's core while no node runs: the median of
//!   per-iteration times of copying the first-hop packet of that path into a
//!   buffer, `sphinx::unwrap`, reading the replay tag and `finish` with the
//!   mix's key (a Relay: both scalar mults), as `peer-compare` does.
//!   `floor_pps = 1e6 / floor_us`. The node's other per-packet work (link
//!   open, link seal, replay filter lookup and insert on a filter of the
//!   node's size) is timed the same way and reported next to it, not added
//!   to the floor;
//! - then steps the offered rate. For each step it creates the packets
//!   ahead of time (fresh Sphinx packets on both cores, sealed in send order
//!   with increasing link counters), starts a fresh node process (this
//!   binary re-executed with a hidden `--run-mix CONFIG`, which calls
//!   `loopix_engine::node::run_mix` under mimalloc like `loopix mix`), waits
//!   for its `/metrics`, and sends open-loop from `--gen-core`: send times
//!   are a Poisson process at the offered rate, computed before the step;
//!   the sender sleeps until each due time and then sends everything due in
//!   one `sendmmsg`, keeping the schedule when late (its own lateness is
//!   reported). A sink thread on the same core counts the frames arriving at
//!   the provider's address, polling without blocking (`--sink-poll-us`) so
//!   that the node's sends do not have to wake it. For one packet in eight
//!   the sink knows the group element the packet carries after the mix
//!   (computed when the packet was made) and records its arrival, to measure
//!   the latency the node and loopback add beyond the packet's own delay.
//!   While the sender runs, the node's CPU time (`/proc/PID/task/*/schedstat`)
//!   and both cores' busy time (`/proc/stat`) are recorded, giving the node's
//!   CPU time per packet and how much of its core other work took. After the
//!   step it waits 20 x the mean delay + 200 ms, reads the node's metrics,
//!   sends SIGTERM, and checks that a few received frames authenticate and
//!   carry `Drop`;
//! - a rate passes when under 1% of its packets were lost (sent but never
//!   received by the sink) AND the node was less than 1% of the step's
//!   packets behind when the sender stopped (received by the node's shard,
//!   read from its metrics at that moment). The second condition matters:
//!   an 8 MiB socket buffer holds thousands of packets, so a node a few
//!   percent too slow would otherwise pass a short step by draining its
//!   socket afterwards;
//! - the node's replay filter is sized by `--filter-rate-pps` (default
//!   20,000: 247 MiB per epoch, a production size for this rate). The
//!   engine writes a filter's memory when it builds it (at start, and on
//!   the control thread for later epochs), so no page fault lands on the
//!   packet path; a fresh node per step pays it before it serves;
//! - the search starts at `--start-pps`, multiplies by `--growth` while
//!   rates pass, then bisects between the highest passing and the lowest
//!   failing rate until they are within `--precision`. `pps_max` is the
//!   highest passing rate. A last step at 0.7 x `pps_max` on a fresh node
//!   gives the latency figures: `overhead_p50_us`, `overhead_p99_us`
//!   (arrival to scheduled, from the node's histograms) and
//!   `lateness_p99_us` (deadline to send).
//!
//! - with `--lambda-m R` the mix sends its own loops at R per second (its
//!   `loops.lambda_m`; default 0, none), built on its control thread. In
//!   this one-mix network a loop's path is [provider, mix]: the loop goes
//!   to the sink, which does not send it on, so the sink counts the mix's
//!   loops (read from its metrics) apart from the generator's packets, and
//!   the mix's detector is set to `response = "log"` so that the loops it
//!   will count lost do not change its loop rate during the search. This
//!   measures what building and sending loops costs the forwarding path.
//!
//! Output: progress on stderr; on stdout a table of the steps and a
//! summary, and with `--json` one JSON object as the last line.
//!
//! Targets: `pps_max / floor_pps >= 0.85`, `overhead_p99_us <= 1000`,
//! `lateness_p99_us <= 500`. The paper's prototype did about 300 packets/s
//! per node; the ratio to that is printed too.
//!
//! Every wait is bounded. The node process is killed when its guard drops,
//! also when the benchmark fails; if the benchmark itself is killed, the
//! node sees it was re-parented and exits within 0.2 s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use loopix_bench::json_num as num;
use loopix_bench::node::{pin, process_cpu_ns, run_mix_child, start_node, RUN_MIX};
use loopix_bench::{emit, exp_delay, median, parse_options, positive, say, uniform_f64, Io};
use loopix_crypto::link::FRAME_ALPHA_OFFSET;
use loopix_crypto::{sphinx, Geometry, LinkKey, ReplayTag, RoutingCommand, SecretKey};
use loopix_engine::config::IoChoice;
use loopix_engine::io::portable::Portable;
use loopix_engine::io::{socket, Backend};
use loopix_engine::keyfile::load_node_secrets;
use loopix_engine::metrics::names;
use loopix_engine::replay::ReplayFilters;
use loopix_testkit::localnet::{Driver, LocalNet, LocalNetSpec, NetworkParams};
use loopix_testkit::metrics::Metrics;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

/// The same allocator as the `loopix` binary, for the node this binary
/// runs as a child.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Loss (and backlog) allowed for a rate to pass.
const LOSS_MAX: f64 = 0.01;
/// The rate of the latency step, as a fraction of `pps_max`.
const LATENCY_STEP_FRACTION: f64 = 0.7;
/// Packets per second per node of the Loopix paper's prototype.
const PAPER_BASELINE_PPS: f64 = 300.0;
/// Targets.
const TARGET_OVER_FLOOR_MIN: f64 = 0.85;
const TARGET_OVERHEAD_P99_MAX_US: f64 = 1000.0;
const TARGET_LATENESS_P99_MAX_US: f64 = 500.0;
/// One packet in this many is followed to the sink for latency.
const SAMPLE_EVERY: usize = 8;
/// Datagrams per `sendmmsg`/`recvmmsg` at the generator and the sink.
const IO_BATCH: usize = 64;
/// Socket buffers of the generator's sockets (forced past `rmem_max` when
/// root, as the node does).
const SOCKET_BUFFER: usize = 8 << 20;
/// Frames kept at the sink to check with `Driver::receive`.
const FRAMES_CHECKED: usize = 8;
/// Index of the provider this process plays in the `LocalNet`.
const PROVIDER: usize = 0;
/// Lowest rate tried when even the start rate fails.
const MIN_PPS: f64 = 50.0;
/// Highest rate tried (a guard against a runaway search).
const MAX_PPS: f64 = 2_000_000.0;

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "node-bench",
    version,
    about = "The throughput of one real mix node process, next to the \
             per-hop crypto floor measured in the same run."
)]
struct Cli {
    /// After the table, print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Smoke run: 1 s steps, growth 1.6, precision 10%, budget 60 s, 1000
    /// floor iterations (explicit flags win).
    #[arg(long)]
    quick: bool,
    /// The node's datagram backend.
    #[arg(long, value_name = "B", value_enum, default_value_t = Io::Auto)]
    io: Io,
    /// Seconds of sending per rate step (default 2; --quick: 1).
    #[arg(long, value_name = "S", value_parser = positive, allow_negative_numbers = true)]
    step_s: Option<f64>,
    /// Mean of the per-hop Exp delay, microseconds.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    mean_delay_us: u32,
    /// First offered rate.
    #[arg(long, value_name = "N", default_value_t = 2000.0, value_parser = positive, allow_negative_numbers = true)]
    start_pps: f64,
    /// Rate multiplier while steps pass, above 1 (default 1.3; --quick:
    /// 1.6).
    #[arg(long, value_name = "F", value_parser = growth, allow_negative_numbers = true)]
    growth: Option<f64>,
    /// Stop bisecting when fail/pass - 1 <= F (default 0.03; --quick:
    /// 0.1).
    #[arg(long, value_name = "F", value_parser = positive, allow_negative_numbers = true)]
    precision: Option<f64>,
    /// Start no search step after N seconds (default 240; --quick: 60);
    /// the first step and the 70% latency step always run.
    #[arg(long, value_name = "N", value_parser = positive, allow_negative_numbers = true)]
    budget_s: Option<f64>,
    /// replay.rate_pps of the node: sizes its replay filter (x 3600 s per
    /// epoch, fp 1e-6; 20000: 247 MiB per epoch, written before the node
    /// serves). At least 1.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    filter_rate_pps: u64,
    /// Timed iterations of each floor operation, at least 10 (default
    /// 3000; --quick: 1000).
    #[arg(long, value_name = "N")]
    floor_iters: Option<u64>,
    /// Core of the node's shard.
    #[arg(long, value_name = "N", default_value_t = 0)]
    node_core: usize,
    /// Core of the generator and the sink.
    #[arg(long, value_name = "N", default_value_t = 1)]
    gen_core: usize,
    /// The sink looks for frames every N us without blocking on its socket;
    /// 0: it blocks, and every send of the node may have to wake it.
    #[arg(long, value_name = "N", default_value_t = 200)]
    sink_poll_us: u64,
    /// Set engine.batch of the node (datagrams per receive or send call;
    /// default: the engine's default, 64).
    #[arg(long, value_name = "N")]
    node_batch: Option<u64>,
    /// The mix's own loops per second (loops.lambda_m; 0: none; the
    /// paper's rate is 0.1667), 0 to 100000.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = lambda_m)]
    lambda_m: f64,
    /// Set aqm.target_ms of the node, 0 to 60000 (0: AQM off; default: the
    /// engine's default). Near capacity the AQM drops arrivals, which
    /// counts as loss here.
    #[arg(long, value_name = "MS", value_parser = aqm_target_ms)]
    aqm_target_ms: Option<f64>,
    /// Set replay.sync_s of the node, 1 to 3600 (how often its replay
    /// filter is written to the disk; default: the engine's).
    #[arg(long, value_name = "S")]
    sync_s: Option<u64>,
}

/// `--growth`: above 1.
fn growth(v: &str) -> Result<f64, String> {
    match positive(v)? {
        g if g > 1.0 => Ok(g),
        _ => Err("must be above 1".into()),
    }
}

/// `--lambda-m`: 0 to 100000.
fn lambda_m(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=100_000.0).contains(&x) => Ok(x),
        _ => Err("needs a rate from 0 to 100000".into()),
    }
}

/// `--aqm-target-ms`: 0 to 60000.
fn aqm_target_ms(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=60_000.0).contains(&x) => Ok(x),
        _ => Err("needs 0 to 60000".into()),
    }
}

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    json: bool,
    io: IoChoice,
    step_s: f64,
    mean_delay_us: u32,
    start_pps: f64,
    growth: f64,
    precision: f64,
    budget_s: f64,
    filter_rate_pps: u64,
    floor_iters: usize,
    node_core: usize,
    gen_core: usize,
    sink_poll_us: u64,
    node_batch: Option<u64>,
    lambda_m: f64,
    aqm_target_ms: Option<f64>,
    sync_s: Option<u64>,
}

/// The options of a parsed command line: `--quick` changes the defaults
/// of the flags not given.
fn options(c: Cli) -> Result<Options, String> {
    let quick = c.quick;
    if c.node_core == c.gen_core {
        return Err("--node-core and --gen-core must differ".into());
    }
    Ok(Options {
        json: c.json,
        io: c.io.into(),
        step_s: c.step_s.unwrap_or(if quick { 1.0 } else { 2.0 }),
        mean_delay_us: c.mean_delay_us,
        start_pps: c.start_pps,
        growth: c.growth.unwrap_or(if quick { 1.6 } else { 1.3 }),
        precision: c.precision.unwrap_or(if quick { 0.10 } else { 0.03 }),
        budget_s: c.budget_s.unwrap_or(if quick { 60.0 } else { 240.0 }),
        filter_rate_pps: c.filter_rate_pps.max(1),
        floor_iters: c
            .floor_iters
            .unwrap_or(if quick { 1000 } else { 3000 })
            .max(10) as usize,
        node_core: c.node_core,
        gen_core: c.gen_core,
        sink_poll_us: c.sink_poll_us,
        node_batch: c.node_batch,
        lambda_m: c.lambda_m,
        aqm_target_ms: c.aqm_target_ms,
        sync_s: c.sync_s.map(|s| s.clamp(1, 3600)),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(RUN_MIX) {
        return run_mix_child("node-bench", args.get(1));
    }
    let opts = parse_options(std::env::args_os(), options).unwrap_or_else(|e| e.exit());
    match run(&opts) {
        Ok(out) => {
            emit(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("node-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Tick counters of one core from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
struct CoreTicks {
    /// user + nice + system + irq + softirq + steal.
    busy: u64,
    /// busy + idle + iowait.
    total: u64,
    steal: u64,
}

fn core_ticks(core: usize) -> Option<CoreTicks> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some(CoreTicks {
        busy,
        total: busy + get(3) + get(4),
        steal: get(7),
    })
}

/// Where the CPU time of the node's and the generator's cores went while
/// the sender ran.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    /// Node process on-CPU time / wall time.
    node: f64,
    /// Node process on-CPU time per packet its shard took in, microseconds.
    node_us_per_packet: f64,
    /// The node's core: busy / all ticks.
    node_core_busy: f64,
    /// The node's core: busy minus the node's own share (other processes,
    /// and interrupts it did not run itself).
    node_core_other: f64,
    /// The node's core: stolen by the hypervisor.
    node_core_steal: f64,
    /// The generator's core: busy / all ticks.
    gen_core_busy: f64,
}

/// A snapshot to diff against: node CPU, both cores' ticks, the time.
struct CpuMark {
    node_ns: Option<u64>,
    node_core: Option<CoreTicks>,
    gen_core: Option<CoreTicks>,
    at: Instant,
}

impl CpuMark {
    fn take(pid: u32, node_core: usize, gen_core: usize) -> CpuMark {
        CpuMark {
            node_ns: process_cpu_ns(pid),
            node_core: core_ticks(node_core),
            gen_core: core_ticks(gen_core),
            at: Instant::now(),
        }
    }

    /// The use between `self` and `later`, with `packets` taken in by the
    /// node in between.
    fn until(&self, later: &CpuMark, packets: f64) -> CpuUse {
        let wall_ns = later.at.duration_since(self.at).as_nanos() as f64;
        let node_ns = match (self.node_ns, later.node_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => f64::NAN,
        };
        let frac =
            |a: Option<CoreTicks>, b: Option<CoreTicks>, f: fn(&CoreTicks) -> u64| match (a, b) {
                (Some(a), Some(b)) if b.total > a.total => {
                    (f(&b) - f(&a)) as f64 / (b.total - a.total) as f64
                }
                _ => f64::NAN,
            };
        let node = node_ns / wall_ns;
        let node_core_busy = frac(self.node_core, later.node_core, |t| t.busy);
        CpuUse {
            node,
            node_us_per_packet: node_ns / 1e3 / packets,
            node_core_busy,
            node_core_other: (node_core_busy - node).max(0.0),
            node_core_steal: frac(self.node_core, later.node_core, |t| t.steal),
            gen_core_busy: frac(self.gen_core, later.gen_core, |t| t.busy),
        }
    }
}

/// The `q` quantile (0 to 1) of sorted `v` (nearest rank); NaN if empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------
// The node process.

// ---------------------------------------------------------------------------
// The crypto floor.

/// Medians of per-iteration times, microseconds.
struct Floor {
    /// copy + `sphinx::unwrap` + replay tag + `finish` (the floor).
    hop_us: f64,
    /// `LinkKey::open` of one frame.
    link_open_us: f64,
    /// `LinkKey::seal_in_place` of one frame.
    link_seal_us: f64,
    /// Replay filter `contains` + `insert` of a fresh tag on a filter sized
    /// like the node's, every page already touched.
    filter_us: f64,
    /// Clock reads alone.
    timer_us: f64,
    filter_mib: f64,
}

/// Time the per-packet work of the node, in this process, no I/O, pinned
/// to the node's core. Operations are interleaved per iteration.
fn measure_floor(
    opts: &Options,
    driver: &mut Driver,
    mix: usize,
    mix_secrets: &loopix_engine::keyfile::NodeSecrets,
) -> Result<Floor, String> {
    let g = driver.geometry;
    let mix_key = mix_secrets
        .mix
        .get(&driver.epoch)
        .ok_or("the mix has no key for the current epoch")?;
    let mut rng = ChaCha20Rng::from_rng(OsRng).map_err(|e| e.to_string())?;
    let packet = driver.build_drop_path(&[mix, PROVIDER], &[opts.mean_delay_us], &mut rng)?;
    // Check once: a Relay to the provider, as in the steps.
    let mut check = packet.clone();
    let provider_id = driver.id(PROVIDER);
    match sphinx::process(&g, mix_key, &mut check)
        .map_err(|e| e.to_string())?
        .command
    {
        RoutingCommand::Relay { next, .. } if next == provider_id => {}
        other => return Err(format!("first hop reads {other:?}, not a Relay")),
    }
    let frame = driver.frame_for(mix, &packet);
    let link = LinkKey::derive(&mix_secrets.link, &driver.topology.nodes[PROVIDER].link_key)
        .ok_or("bad provider link key")?;
    link.open(&frame).map_err(|e| format!("link open: {e}"))?;

    // A filter like the node's, every page touched first (a node that has
    // run for a while has touched them all).
    let epoch_s = driver.topology.epoch_s;
    let mut filters = ReplayFilters::new(opts.filter_rate_pps * epoch_s, 1e-6, 2048 << 20)
        .map_err(|e| format!("replay filter: {e}"))?;
    filters
        .open_epoch(driver.epoch)
        .map_err(|e| format!("replay filter: {e}"))?;
    let filter_mib = filters.memory_bytes() as f64 / f64::from(1u32 << 20);
    let mut tag = || {
        let mut t = [0u8; 16];
        rng.fill_bytes(&mut t);
        ReplayTag(t)
    };
    let touch = (filters.memory_bytes() / 4096).clamp(1000, 400_000);
    for _ in 0..touch {
        filters.insert(driver.epoch, &tag());
    }
    let tags: Vec<ReplayTag> = (0..opts.floor_iters).map(|_| tag()).collect();

    let mut buf = vec![0u8; g.packet_len()];
    let mut out_frame = frame.clone();
    let warmup = opts.floor_iters / 10;
    let mut hop = Vec::with_capacity(opts.floor_iters);
    let mut open = Vec::with_capacity(opts.floor_iters);
    let mut seal = Vec::with_capacity(opts.floor_iters);
    let mut filt = Vec::with_capacity(opts.floor_iters);
    let mut timer = Vec::with_capacity(opts.floor_iters);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for i in 0..warmup + opts.floor_iters {
        let t = Instant::now();
        buf.copy_from_slice(std::hint::black_box(&packet));
        let u = sphinx::unwrap(&g, mix_key, &buf).map_err(|e| e.to_string())?;
        std::hint::black_box(u.replay_tag());
        std::hint::black_box(u.finish(&mut buf).map_err(|e| e.to_string())?);
        let t_hop = t.elapsed();

        let t = Instant::now();
        std::hint::black_box(link.open(std::hint::black_box(&frame)).is_ok());
        let t_open = t.elapsed();

        let t = Instant::now();
        std::hint::black_box(link.seal_in_place(1, i as u64, &mut out_frame).is_ok());
        let t_seal = t.elapsed();

        let tg = &tags[i % tags.len()];
        let t = Instant::now();
        std::hint::black_box(filters.contains(driver.epoch, tg));
        std::hint::black_box(filters.insert(driver.epoch, tg));
        let t_filt = t.elapsed();

        let t = Instant::now();
        let t_timer = t.elapsed();
        if i >= warmup {
            hop.push(us(t_hop));
            open.push(us(t_open));
            seal.push(us(t_seal));
            filt.push(us(t_filt));
            timer.push(us(t_timer));
        }
    }
    Ok(Floor {
        hop_us: median(&mut hop),
        link_open_us: median(&mut open),
        link_seal_us: median(&mut seal),
        filter_us: median(&mut filt),
        timer_us: median(&mut timer),
        filter_mib,
    })
}

// ---------------------------------------------------------------------------
// One rate step.

/// What is sent in one step, made before it starts.
struct Workload {
    /// `n` frames of `frame_len` bytes, sealed in send order.
    frames: Vec<u8>,
    frame_len: usize,
    /// Due time of each packet, nanoseconds after the step's start.
    due_ns: Vec<u64>,
    /// Each packet's delay at the mix, microseconds.
    delays_us: Vec<u32>,
    /// Group element after the mix -> packet index, for one in
    /// `SAMPLE_EVERY` packets.
    sampled: HashMap<[u8; 32], u32>,
}

/// (group element after the mix, packet index) of sampled packets.
type Sampled = Vec<([u8; 32], u32)>;

/// Make `n` fresh packets for the path [mix, provider] on two threads (one
/// per core), with Poisson send times at `rate`, and seal them in order.
fn make_workload(
    opts: &Options,
    driver: &mut Driver,
    mix: usize,
    mix_key: &SecretKey,
    rate: f64,
    n: usize,
) -> Result<Workload, String> {
    let g = driver.geometry;
    let plen = g.packet_len();
    let mut rng = ChaCha20Rng::from_rng(OsRng).map_err(|e| e.to_string())?;
    let mean = Duration::from_micros(u64::from(opts.mean_delay_us));
    let delays_us: Vec<u32> = (0..n)
        .map(|_| exp_delay(&mut rng, mean).as_micros())
        .collect();
    let mut t = 0.0f64;
    let due_ns: Vec<u64> = (0..n)
        .map(|_| {
            let at = t;
            // Exponential gaps: -ln(1 - u) / rate seconds.
            t += -(1.0 - uniform_f64(&mut rng)).ln() / rate;
            (at * 1e9) as u64
        })
        .collect();

    let mut packets = vec![0u8; n * plen];
    let provider_id = driver.id(PROVIDER);
    let half = n.div_ceil(2);
    let cores = [opts.node_core, opts.gen_core];
    let shared: &Driver = driver;
    let sampled_parts: Vec<Result<Sampled, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = packets
            .chunks_mut(half * plen)
            .enumerate()
            .map(|(part, chunk)| {
                let delays = &delays_us;
                let core = cores[part % 2];
                s.spawn(move || -> Result<Sampled, String> {
                    pin(core)?;
                    let mut rng = ChaCha20Rng::from_rng(OsRng).map_err(|e| e.to_string())?;
                    let mut sampled = Vec::new();
                    for (k, slot) in chunk.chunks_mut(plen).enumerate() {
                        let i = part * half + k;
                        let pkt =
                            shared.build_drop_path(&[mix, PROVIDER], &[delays[i]], &mut rng)?;
                        slot.copy_from_slice(&pkt);
                        if i.is_multiple_of(SAMPLE_EVERY) {
                            let mut next = pkt;
                            let p = sphinx::process(&g, mix_key, &mut next)
                                .map_err(|e| format!("packet {i} at the mix: {e}"))?;
                            if !matches!(p.command, RoutingCommand::Relay { next, delay }
                                if next == provider_id && delay.as_micros() == delays[i])
                            {
                                return Err(format!("packet {i} reads {:?}", p.command));
                            }
                            let mut alpha = [0u8; 32];
                            alpha.copy_from_slice(&next[..32]);
                            sampled.push((alpha, i as u32));
                        }
                    }
                    Ok(sampled)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("generator thread panicked".into()))
            })
            .collect()
    });
    let mut sampled = HashMap::new();
    for part in sampled_parts {
        sampled.extend(part?);
    }
    let frame_len = g.frame_len();
    let mut frames = Vec::with_capacity(n * frame_len);
    for pkt in packets.chunks(plen) {
        frames.extend_from_slice(&driver.frame_for(mix, pkt));
    }
    Ok(Workload {
        frames,
        frame_len,
        due_ns,
        delays_us,
        sampled,
    })
}

/// What the sink saw in one step.
struct SinkReport {
    received: u64,
    wrong_length: u64,
    /// (packet index, arrival) of sampled packets.
    arrivals: Vec<(u32, Instant)>,
    /// The first few frames, to authenticate after the step.
    kept: Vec<Vec<u8>>,
}

/// Count frames at the provider's address until `stop`, then take what is
/// already queued and return (with the backend, for the next step).
///
/// With a non-zero `poll` the sink never blocks on its socket: it takes
/// what is queued, sleeps `poll`, and looks again. The node's sends then
/// never have to wake a thread on the other core, as sends to another
/// machine would not; arrival times are late by up to `poll` (plus the
/// sleep's overshoot). With a zero `poll` it blocks in `ppoll`.
fn sink(
    mut backend: Portable,
    stop: &AtomicBool,
    sampled: &HashMap<[u8; 32], u32>,
    frame_len: usize,
    core: usize,
    poll: Duration,
) -> (Portable, SinkReport) {
    let _ = pin(core);
    let mut r = SinkReport {
        received: 0,
        wrong_length: 0,
        arrivals: Vec::with_capacity(sampled.len()),
        kept: Vec::new(),
    };
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let timeout = if stopping || !poll.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(10)
        };
        let mut at = None;
        let got = backend.recv(Some(timeout), &mut |d| {
            let now = *at.get_or_insert_with(Instant::now);
            if d.truncated || d.data.len() != frame_len {
                r.wrong_length += 1;
                return;
            }
            r.received += 1;
            if r.kept.len() < FRAMES_CHECKED {
                r.kept.push(d.data.to_vec());
            }
            let mut alpha = [0u8; 32];
            alpha.copy_from_slice(&d.data[FRAME_ALPHA_OFFSET..FRAME_ALPHA_OFFSET + 32]);
            if let Some(&i) = sampled.get(&alpha) {
                r.arrivals.push((i, now));
            }
        });
        if matches!(got, Ok(0) | Err(_)) {
            if stopping {
                break;
            }
            if !poll.is_zero() {
                std::thread::sleep(poll);
            }
        }
    }
    (backend, r)
}

/// Throw away whatever waits at the sink (from an earlier step).
fn drain(backend: &mut Portable) -> u64 {
    let mut n = 0u64;
    for _ in 0..10_000 {
        match backend.recv(Some(Duration::ZERO), &mut |_| {}) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    n
}

/// The node's metrics at one moment.
struct NodeMetrics {
    received: f64,
    forwarded: f64,
    /// The mix's own loops that left (they reach the sink too).
    loops_sent: f64,
    drops: Vec<(&'static str, f64)>,
    overhead_p50_us: f64,
    overhead_p99_us: f64,
    overhead_p999_us: f64,
    lateness_p50_us: f64,
    lateness_p99_us: f64,
    lateness_p999_us: f64,
    io: String,
}

fn read_metrics(addr: SocketAddr) -> Option<NodeMetrics> {
    let m = Metrics::scrape(addr)?;
    let q = |name: &str, q: &str| m.value(name, &[("quantile", q)]).unwrap_or(f64::NAN);
    let (over, late) = (names::PROCESSING_OVERHEAD_US, names::SCHEDULING_LATENESS_US);
    Some(NodeMetrics {
        received: m.received(),
        forwarded: m.forwarded(),
        loops_sent: m.sum(names::LOOPS_SENT, &[]),
        drops: m.nonzero_drops(),
        overhead_p50_us: q(over, "0.5"),
        overhead_p99_us: q(over, "0.99"),
        overhead_p999_us: q(over, "0.999"),
        lateness_p50_us: q(late, "0.5"),
        lateness_p99_us: q(late, "0.99"),
        lateness_p999_us: q(late, "0.999"),
        io: m.io().unwrap_or("unknown").to_string(),
    })
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The result of one rate step.
struct Step {
    phase: &'static str,
    offered_pps: f64,
    sent: u64,
    send_failed: u64,
    received: u64,
    loss: f64,
    /// Packets the node had not yet taken from its socket when the sender
    /// stopped, as a fraction of those sent.
    behind: f64,
    pass: bool,
    /// Received at the sink over the sending time.
    delivered_pps: f64,
    /// Sent but never taken by the node (its socket overflowed).
    node_socket_drops: f64,
    node: NodeMetrics,
    sender_late_p50_us: f64,
    sender_late_p99_us: f64,
    sender_late_max_us: f64,
    /// Arrival at the sink minus (actual send + the packet's delay).
    sink_extra_p50_us: f64,
    sink_extra_p99_us: f64,
    sink_samples: usize,
    /// CPU use while the sender ran.
    cpu: CpuUse,
    make_s: f64,
    clean_exit: bool,
}

/// Everything the steps share.
struct Bench {
    opts: Options,
    net: LocalNet,
    mix: usize,
    exe: PathBuf,
    sink: Option<Portable>,
    sender: Portable,
}

impl Bench {
    fn step(&mut self, rate: f64, phase: &'static str) -> Result<Step, String> {
        let opts = self.opts.clone();
        let made = Instant::now();
        let mut driver = Driver::new(&self.net, PROVIDER)?;
        let mix_secrets = load_node_secrets(&self.net.nodes[self.mix].key_dir, driver.epoch)
            .map_err(|e| e.to_string())?;
        let mix_key = mix_secrets
            .mix
            .get(&driver.epoch)
            .ok_or("the mix has no key for the current epoch")?;
        let n = ((rate * opts.step_s).round() as usize).max(1);
        let w = make_workload(&opts, &mut driver, self.mix, mix_key, rate, n)?;
        let make_s = made.elapsed().as_secs_f64();

        let mut sink_backend = self.sink.take().ok_or("sink socket lost")?;
        drain(&mut sink_backend);
        let node_info = &self.net.nodes[self.mix];
        let config = node_info.config.clone().ok_or("the mix has no config")?;
        let mut node = start_node(&self.exe, &config, node_info.metrics)?;
        let to = node_info.address;

        let stop = AtomicBool::new(false);
        let frame_len = w.frame_len;
        let gen_core = opts.gen_core;
        let sink_poll = Duration::from_micros(opts.sink_poll_us);
        let mut sent_at_ns = vec![0u64; n];
        let mut send_failed = 0u64;
        let mut t0 = Instant::now();
        let mut behind_count = 0.0;
        let pid = node.pid();
        let mut cpu = None;
        let (sink_backend, report) = std::thread::scope(|s| -> Result<_, String> {
            let sink_thread = s.spawn(|| {
                sink(
                    sink_backend,
                    &stop,
                    &w.sampled,
                    frame_len,
                    gen_core,
                    sink_poll,
                )
            });
            // The sink stops however this closure ends (an error, a panic),
            // so that the scope's join cannot wait for ever.
            let _stop_sink = StopOnDrop(&stop);
            // Give the sink a moment to reach its first wait.
            std::thread::sleep(Duration::from_millis(20));
            let mark = CpuMark::take(pid, opts.node_core, opts.gen_core);
            t0 = Instant::now() + Duration::from_millis(5);
            let mut i = 0;
            while i < n {
                let now = Instant::now();
                let due = t0 + Duration::from_nanos(w.due_ns[i]);
                if now < due {
                    std::thread::sleep(due - now);
                    continue;
                }
                let now_ns = now.saturating_duration_since(t0).as_nanos() as u64;
                let first = i;
                while i < n && i - first < IO_BATCH && w.due_ns[i] <= now_ns {
                    let f = &w.frames[i * frame_len..(i + 1) * frame_len];
                    if !self.sender.send(to, f) {
                        break;
                    }
                    i += 1;
                }
                if i == first {
                    return Err("the generator's backend refused a frame".into());
                }
                let (_, failed) = self.sender.flush();
                send_failed += failed as u64;
                let done = t0.elapsed().as_nanos() as u64;
                sent_at_ns[first..i].fill(done);
            }
            let send_end = Instant::now();
            let end_mark = CpuMark::take(pid, opts.node_core, opts.gen_core);
            let taken_in = read_metrics(node_info.metrics).map_or(f64::NAN, |m| m.received);
            behind_count = n as f64 - taken_in;
            cpu = Some(mark.until(&end_mark, taken_in));
            let wait = Duration::from_micros(u64::from(opts.mean_delay_us) * 20)
                + Duration::from_millis(200);
            std::thread::sleep(wait.saturating_sub(send_end.elapsed()));
            stop.store(true, Ordering::Release);
            sink_thread
                .join()
                .map_err(|_| "the sink thread panicked".to_string())
        })?;
        let send_span_s = sent_at_ns.last().map_or(0.0, |&t| t as f64 / 1e9).max(1e-3);
        let metrics = read_metrics(node_info.metrics)
            .ok_or_else(|| format!("the node's metrics did not answer: {}", node.log_text()))?;
        let clean_exit = node
            .terminate(Duration::from_secs(3))
            .is_ok_and(|s| s.success());
        let log = node.log_text();
        drop(node);
        self.sink = Some(sink_backend);

        // The frames are real: they authenticate as from the mix and carry
        // Drop for this provider.
        if report.received > 0 && report.kept.is_empty() {
            return Err("the sink kept no frame to check".into());
        }
        let mix_id = self.net.nodes[self.mix].descriptor.id.clone();
        for f in &report.kept {
            match driver.receive(f) {
                Ok(RoutingCommand::Drop) => {}
                // One of the mix's own loops, on its way back to it.
                Ok(RoutingCommand::Relay { next, .. })
                    if opts.lambda_m > 0.0 && next.to_string() == mix_id => {}
                Ok(other) => return Err(format!("a forwarded frame reads {other:?}, not Drop")),
                Err(e) => return Err(format!("a forwarded frame does not check: {e}")),
            }
        }
        if report.wrong_length > 0 {
            eprintln!(
                "node-bench: {} datagrams of the wrong length at the sink",
                report.wrong_length
            );
        }

        let mut late: Vec<f64> = sent_at_ns
            .iter()
            .zip(&w.due_ns)
            .map(|(s, d)| s.saturating_sub(*d) as f64 / 1e3)
            .collect();
        late.sort_by(f64::total_cmp);
        let mut extra: Vec<f64> = report
            .arrivals
            .iter()
            .map(|&(i, at)| {
                let i = i as usize;
                let arrived_ns = at.saturating_duration_since(t0).as_nanos() as f64;
                (arrived_ns - sent_at_ns[i] as f64) / 1e3 - f64::from(w.delays_us[i])
            })
            .collect();
        extra.sort_by(f64::total_cmp);
        let sent = n as u64 - send_failed;
        // The sink also counted the mix's own loops.
        let received = (report.received as f64 - metrics.loops_sent).max(0.0) as u64;
        let report = SinkReport { received, ..report };
        let loss = 1.0 - report.received as f64 / n as f64;
        let behind = behind_count / n as f64;
        let pass = loss < LOSS_MAX && behind < LOSS_MAX && metrics.received > 0.0;
        if !clean_exit {
            eprintln!("node-bench: the node did not exit cleanly after SIGTERM: {log}");
        }
        Ok(Step {
            phase,
            offered_pps: rate,
            sent,
            send_failed,
            received: report.received,
            loss,
            behind,
            pass,
            delivered_pps: report.received as f64 / send_span_s,
            node_socket_drops: n as f64 - metrics.received,
            sender_late_p50_us: quantile(&late, 0.5),
            sender_late_p99_us: quantile(&late, 0.99),
            sender_late_max_us: late.last().copied().unwrap_or(f64::NAN),
            sink_extra_p50_us: quantile(&extra, 0.5),
            sink_extra_p99_us: quantile(&extra, 0.99),
            sink_samples: extra.len(),
            cpu: cpu.ok_or("no CPU figures")?,
            node: metrics,
            make_s,
            clean_exit,
        })
    }
}

fn drops_text(step: &Step) -> String {
    let mut parts: Vec<String> = step
        .node
        .drops
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if step.node_socket_drops > 0.0 {
        parts.push(format!("node_socket={}", step.node_socket_drops));
    }
    // `forwarded` counts the mix's own loops; `received` does not.
    let lost_after = step.node.forwarded - step.node.loops_sent - step.received as f64;
    if lost_after > 0.0 {
        parts.push(format!("fwd_not_received={lost_after}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn step_line(s: &Step) -> String {
    format!(
        "{:<6} {:>8.0} {:>7} {:>7} {:>6.2} {:>6.2} {:>4} {:>8.0} {:>6.0} {:>7.0} {:>7.0} {:>7.0} {:>5.0} {:>6.1} {:>5.0}  {}",
        s.phase,
        s.offered_pps,
        s.sent,
        s.received,
        s.loss * 100.0,
        s.behind * 100.0,
        if s.pass { "yes" } else { "no" },
        s.delivered_pps,
        s.sender_late_p99_us,
        s.node.overhead_p99_us,
        s.node.lateness_p99_us,
        s.sink_extra_p99_us,
        s.cpu.node * 100.0,
        s.cpu.node_us_per_packet,
        s.cpu.node_core_other * 100.0,
        drops_text(s),
    )
}

const STEP_HEADER: &str = "phase   offered    sent    recv  loss% behind pass delivered gen99  ovh99  late99  sink99  cpu% us/pkt oth%  drops";

/// The essentials of a step, for the `steps` array (drops include
/// `node_socket`: sent but never taken in by the node).
fn step_json(s: &Step) -> Value {
    let mut drops: serde_json::Map<String, Value> = s
        .node
        .drops
        .iter()
        .map(|(r, n)| ((*r).to_string(), json!(n)))
        .collect();
    if s.node_socket_drops > 0.0 {
        drops.insert("node_socket".into(), json!(s.node_socket_drops));
    }
    json!({
        "phase": s.phase,
        "offered_pps": num(s.offered_pps),
        "sent": s.sent,
        "received": s.received,
        "loss": num(s.loss),
        "behind": num(s.behind),
        "pass": s.pass,
        "delivered_pps": num(s.delivered_pps),
        "drops": drops,
        "sender_late_p99_us": num(s.sender_late_p99_us),
        "overhead_p99_us": num(s.node.overhead_p99_us),
        "lateness_p99_us": num(s.node.lateness_p99_us),
        "sink_extra_p99_us": num(s.sink_extra_p99_us),
        "node_cpu": num(s.cpu.node),
        "node_cpu_us_per_packet": num(s.cpu.node_us_per_packet),
        "node_core_other": num(s.cpu.node_core_other),
    })
}

/// Everything about a step (for the latency step).
fn step_json_full(s: &Step) -> Value {
    let mut v = step_json(s);
    let more = json!({
        "send_failed": s.send_failed,
        "node_received": s.node.received,
        "node_forwarded": s.node.forwarded,
        "sender_late_p50_us": num(s.sender_late_p50_us),
        "sender_late_max_us": num(s.sender_late_max_us),
        "overhead_p50_us": num(s.node.overhead_p50_us),
        "overhead_p999_us": num(s.node.overhead_p999_us),
        "lateness_p50_us": num(s.node.lateness_p50_us),
        "lateness_p999_us": num(s.node.lateness_p999_us),
        "sink_extra_p50_us": num(s.sink_extra_p50_us),
        "sink_samples": s.sink_samples,
        "node_core_busy": num(s.cpu.node_core_busy),
        "node_core_steal": num(s.cpu.node_core_steal),
        "gen_core_busy": num(s.cpu.gen_core_busy),
        "make_s": num(s.make_s),
        "clean_exit": s.clean_exit,
    });
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), more) {
        obj.extend(extra);
    }
    v
}

// ---------------------------------------------------------------------------
// The whole run.

fn run(opts: &Options) -> Result<String, String> {
    let started = Instant::now();
    let cores = core_affinity::get_core_ids().map_or(0, |c| c.len());
    if opts.node_core >= cores || opts.gen_core >= cores {
        return Err(format!(
            "--node-core {} and --gen-core {} need cores this host does not list ({cores})",
            opts.node_core, opts.gen_core
        ));
    }
    let load_before = load_average();
    // How busy the two cores are before anything of ours runs.
    let idle_mark = (core_ticks(opts.node_core), core_ticks(opts.gen_core));
    std::thread::sleep(Duration::from_secs(1));
    let busy = |a: Option<CoreTicks>, b: Option<CoreTicks>| match (a, b) {
        (Some(a), Some(b)) if b.total > a.total => {
            (b.busy - a.busy) as f64 / (b.total - a.total) as f64
        }
        _ => f64::NAN,
    };
    let busy_before = (
        busy(idle_mark.0, core_ticks(opts.node_core)),
        busy(idle_mark.1, core_ticks(opts.gen_core)),
    );
    if busy_before.0 > 0.05 || busy_before.1 > 0.05 {
        eprintln!(
            "node-bench: warning: before starting, other processes kept core {} {:.0}% and core {} {:.0}% busy; the node will share its core and the figures will be lower",
            opts.node_core,
            busy_before.0 * 100.0,
            opts.gen_core,
            busy_before.1 * 100.0
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("node-bench-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let spec = LocalNetSpec {
        providers: 1,
        layers: 1,
        mixes_per_layer: 1,
        shards: 1,
        io: opts.io,
        pin_cores: true,
        first_core: opts.node_core,
        pool_packets: 65_536,
        rate_pps: opts.filter_rate_pps,
        drain_ms: 200,
        delay_cap_ms: 60_000,
        params: NetworkParams {
            lambda_m: opts.lambda_m,
            ..LocalNetSpec::default().params
        },
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(dir.path(), &spec)?;
    let mix = *net.layer(1).first().ok_or("the network has no mix")?;
    // The mix's config: the loops go to the sink and never return, so keep
    // the detector from changing the loop rate (see the module
    // documentation); `LocalNetSpec` has no batch or AQM field.
    let path = net.nodes[mix]
        .config
        .clone()
        .ok_or("the mix has no config")?;
    let mut text =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text = text.replacen("[detector]\n", "[detector]\nresponse = \"log\"\n", 1);
    if let Some(batch) = opts.node_batch {
        text = text.replacen("[engine]\n", &format!("[engine]\nbatch = {batch}\n"), 1);
    }
    if let Some(t) = opts.aqm_target_ms {
        text.push_str(&format!("\n[aqm]\ntarget_ms = {t:?}\n"));
    }
    if let Some(sync) = opts.sync_s {
        text = text.replacen("[replay]\n", &format!("[replay]\nsync_s = {sync}\n"), 1);
    }
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;

    // The floor, on the node's core, before any node runs.
    let mut driver = Driver::new(&net, PROVIDER)?;
    let mix_secrets =
        load_node_secrets(&net.nodes[mix].key_dir, driver.epoch).map_err(|e| e.to_string())?;
    eprintln!(
        "node-bench: measuring the crypto floor on core {} ({} iterations)",
        opts.node_core, opts.floor_iters
    );
    let floor = std::thread::scope(|s| {
        s.spawn(|| {
            pin(opts.node_core)?;
            measure_floor(opts, &mut driver, mix, &mix_secrets)
        })
        .join()
        .unwrap_or_else(|_| Err("the floor thread panicked".into()))
    })?;
    let floor_pps = 1e6 / floor.hop_us;
    eprintln!(
        "node-bench: floor {:.2} us per hop = {floor_pps:.0} pps (link open {:.2} us, seal {:.2} us, filter {:.2} us)",
        floor.hop_us, floor.link_open_us, floor.link_seal_us, floor.filter_us
    );

    // The generator side: this thread sends, pinned to the generator core.
    pin(opts.gen_core)?;
    let _ = loopix_engine::io::set_timer_slack_ns(1_000);
    let sender_socket = socket::bind_reuseport(
        "127.0.0.1:0".parse().map_err(|_| "loopback address")?,
        SOCKET_BUFFER,
    )
    .map_err(|e| format!("generator socket: {e}"))?;
    let sink_socket = socket::bind_reuseport(net.nodes[PROVIDER].address, SOCKET_BUFFER)
        .map_err(|e| format!("provider address {}: {e}", net.nodes[PROVIDER].address))?;
    let frame_len = Geometry::DEFAULT.frame_len();
    let mut bench = Bench {
        opts: opts.clone(),
        mix,
        exe,
        sink: Some(
            Portable::new(sink_socket, IO_BATCH, frame_len + 64)
                .map_err(|e| format!("sink backend: {e}"))?,
        ),
        sender: Portable::new(sender_socket, IO_BATCH, frame_len)
            .map_err(|e| format!("generator backend: {e}"))?,
        net,
    };

    eprintln!("{STEP_HEADER}");
    let mut steps: Vec<Step> = Vec::new();
    let mut pass_at: Option<f64> = None;
    let mut fail_at: Option<f64> = None;
    let mut rate = opts.start_pps;
    let mut budget_hit = false;
    loop {
        if !steps.is_empty() && started.elapsed().as_secs_f64() > opts.budget_s {
            budget_hit = true;
            break;
        }
        let s = bench.step(rate.round(), "search")?;
        eprintln!("{}", step_line(&s));
        if s.pass {
            pass_at = Some(pass_at.map_or(rate, |p: f64| p.max(rate)));
        } else {
            fail_at = Some(fail_at.map_or(rate, |f: f64| f.min(rate)));
        }
        steps.push(s);
        rate = match (pass_at, fail_at) {
            (_, None) => rate * opts.growth,
            (None, Some(f)) => f / 2.0,
            (Some(p), Some(f)) => {
                if f / p - 1.0 <= opts.precision {
                    break;
                }
                (p + f) / 2.0
            }
        };
        if !(MIN_PPS..=MAX_PPS).contains(&rate) {
            break;
        }
    }
    let pps_max = pass_at.unwrap_or(0.0);
    let best = steps
        .iter()
        .filter(|s| s.pass && s.offered_pps == pps_max.round())
        .max_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps));
    let pps_max_delivered = best.map_or(0.0, |s| s.delivered_pps);
    let latency_step = if pps_max > 0.0 {
        let s = bench.step((pps_max * LATENCY_STEP_FRACTION).round(), "at70")?;
        eprintln!("{}", step_line(&s));
        Some(s)
    } else {
        None
    };
    let load_after = load_average();
    let io = latency_step
        .as_ref()
        .or(steps.last())
        .map_or("unknown".to_string(), |s| s.node.io.clone());

    let over_floor = pps_max / floor_pps;
    let (ovh50, ovh99, late99) =
        latency_step
            .as_ref()
            .map_or((f64::NAN, f64::NAN, f64::NAN), |s| {
                (
                    s.node.overhead_p50_us,
                    s.node.overhead_p99_us,
                    s.node.lateness_p99_us,
                )
            });
    let met_floor = over_floor >= TARGET_OVER_FLOOR_MIN;
    let met_overhead = ovh99 <= TARGET_OVERHEAD_P99_MAX_US;
    let met_lateness = late99 <= TARGET_LATENESS_P99_MAX_US;
    let node_path_us = floor.hop_us + floor.link_open_us + floor.link_seal_us + floor.filter_us;
    let per_packet_at_max_us = if pps_max > 0.0 {
        1e6 / pps_max
    } else {
        f64::NAN
    };
    // What the node's own CPU time says: its cost per packet at pps_max, and
    // the rate that cost allows on a core the node had to itself.
    let cpu_us_at_max = best.map_or(f64::NAN, |s| s.cpu.node_us_per_packet);
    let cpu_bound_pps = 1e6 / cpu_us_at_max;
    let first_fail = steps
        .iter()
        .filter(|s| !s.pass && s.offered_pps > pps_max)
        .min_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps));

    let mut out = String::new();
    say!(
        out,
        "node-bench: one mix node (1 shard, core {}), generator and sink on core {}, io {io}, {} s steps, mean delay {} us",
        opts.node_core,
        opts.gen_core,
        opts.step_s,
        opts.mean_delay_us
    );
    say!(
        out,
        "load average before / after: {} / {}",
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        load_after.map_or("?".into(), |l| format!("{l:.2}"))
    );
    say!(
        out,
        "before the run, other work kept core {} {:.0}% and core {} {:.0}% busy",
        opts.node_core,
        busy_before.0 * 100.0,
        opts.gen_core,
        busy_before.1 * 100.0
    );
    say!(out, "");
    say!(out, "{STEP_HEADER}");
    for s in steps.iter().chain(latency_step.iter()) {
        say!(out, "{}", step_line(s));
    }
    say!(
        out,
        "loss, behind: % of the packets sent; rates in packets/s; p99 latencies in us: gen99 = sender lateness, ovh99 = node arrival to scheduled, late99 = node deadline to send, sink99 = arrival at the sink minus send time minus the packet's delay; cpu% = node process CPU / wall time while sending, us/pkt = node CPU time per packet taken in, oth% = the node's core busy with anything else; drops: the node's own by reason, node_socket = sent but never taken in by the node, fwd_not_received = forwarded by the node but not at the sink by the end of the step"
    );
    say!(out, "");
    say!(
        out,
        "crypto floor (core {}): {:.2} us per hop -> floor_pps {floor_pps:.0}",
        opts.node_core,
        floor.hop_us
    );
    say!(
        out,
        "other per-packet work, in process: link open {:.2} us, link seal {:.2} us, replay filter {:.2} us ({:.0} MiB filter); all together {node_path_us:.2} us -> {:.0} pps",
        floor.link_open_us,
        floor.link_seal_us,
        floor.filter_us,
        floor.filter_mib,
        1e6 / node_path_us
    );
    say!(
        out,
        "pps_max {pps_max:.0} (delivered {pps_max_delivered:.0}/s) = {per_packet_at_max_us:.1} us per packet; pps_max / floor_pps = {over_floor:.3} (target >= {TARGET_OVER_FLOOR_MIN}: {})",
        if met_floor { "met" } else { "NOT met" }
    );
    say!(
        out,
        "node CPU time per packet at pps_max: {cpu_us_at_max:.1} us ({:.1} us above the floor): alone on its core the node would sustain about {cpu_bound_pps:.0} pps ({:.3} x floor_pps; an estimate, not the measured pps_max)",
        cpu_us_at_max - floor.hop_us,
        cpu_bound_pps / floor_pps
    );
    if let Some(f) = first_fail {
        say!(
            out,
            "at the first failing rate ({:.0} pps) the node ran {:.0}% of the time; its core was busy with other work {:.0}% (steal {:.0}%)",
            f.offered_pps,
            f.cpu.node * 100.0,
            f.cpu.node_core_other * 100.0,
            f.cpu.node_core_steal * 100.0
        );
        if f.cpu.node_core_other > 0.05 {
            say!(
                out,
                "note: other processes shared the node's core: pps_max is limited by them, not by the node alone"
            );
        }
    }
    if budget_hit {
        say!(
            out,
            "note: the search stopped on its time budget ({} s) before reaching {:.0}% precision",
            opts.budget_s,
            opts.precision * 100.0
        );
    }
    if let Some(s) = &latency_step {
        say!(
            out,
            "at {:.0} pps (70%): overhead p50 {:.0} us, p99 {:.0} us (target <= {TARGET_OVERHEAD_P99_MAX_US}: {}); lateness p99 {:.0} us (target <= {TARGET_LATENESS_P99_MAX_US}: {}); sink extra latency p50 {:.0} us, p99 {:.0} us; loss {:.3}%",
            s.offered_pps,
            ovh50,
            ovh99,
            if met_overhead { "met" } else { "NOT met" },
            late99,
            if met_lateness { "met" } else { "NOT met" },
            s.sink_extra_p50_us,
            s.sink_extra_p99_us,
            s.loss * 100.0
        );
    }
    say!(
        out,
        "against the paper's ~{PAPER_BASELINE_PPS:.0} packets/s per node: {:.1}x",
        pps_max / PAPER_BASELINE_PPS
    );
    say!(out, "total time {:.1} s", started.elapsed().as_secs_f64());

    if opts.json {
        let v = json!({
            "tool": "node-bench",
            "io": io,
            "node_core": opts.node_core,
            "gen_core": opts.gen_core,
            "step_s": opts.step_s,
            "mean_delay_us": opts.mean_delay_us,
            "filter_rate_pps": opts.filter_rate_pps,
            "sink_poll_us": opts.sink_poll_us,
            "node_batch": opts.node_batch,
            "lambda_m": opts.lambda_m,
            "aqm_target_ms": opts.aqm_target_ms,
            "sync_s": opts.sync_s,
            "load_avg_before": load_before.map_or(Value::Null, num),
            "load_avg_after": load_after.map_or(Value::Null, num),
            "pps_max": num(pps_max),
            "pps_max_delivered": num(pps_max_delivered),
            "floor_us": num(floor.hop_us),
            "floor_pps": num(floor_pps),
            "pps_max_over_floor": num(over_floor),
            "node_cpu_us_per_packet_at_max": num(cpu_us_at_max),
            "cpu_bound_pps": num(cpu_bound_pps),
            "cpu_bound_over_floor": num(cpu_bound_pps / floor_pps),
            "node_core_busy_before": num(busy_before.0),
            "gen_core_busy_before": num(busy_before.1),
            "first_fail": first_fail.map_or(Value::Null, |f| json!({
                "offered_pps": num(f.offered_pps),
                "node_cpu": num(f.cpu.node),
                "node_core_other": num(f.cpu.node_core_other),
                "node_core_steal": num(f.cpu.node_core_steal),
            })),
            "overhead_p50_us": num(ovh50),
            "overhead_p99_us": num(ovh99),
            "lateness_p99_us": num(late99),
            "latency_step": latency_step.as_ref().map_or(Value::Null, step_json_full),
            "paper_baseline_pps": PAPER_BASELINE_PPS,
            "pps_max_over_paper": num(pps_max / PAPER_BASELINE_PPS),
            "in_process_us": {
                "hop": num(floor.hop_us),
                "link_open": num(floor.link_open_us),
                "link_seal": num(floor.link_seal_us),
                "replay_filter": num(floor.filter_us),
                "sum": num(node_path_us),
                "timer": num(floor.timer_us),
                "filter_mib": num(floor.filter_mib),
            },
            "budget_hit": budget_hit,
            "targets": {
                "pps_max_over_floor_min": TARGET_OVER_FLOOR_MIN,
                "pps_max_over_floor_met": met_floor,
                "overhead_p99_us_max": TARGET_OVERHEAD_P99_MAX_US,
                "overhead_p99_us_met": met_overhead,
                "lateness_p99_us_max": TARGET_LATENESS_P99_MAX_US,
                "lateness_p99_us_met": met_lateness,
            },
            "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
            "total_s": num(started.elapsed().as_secs_f64()),
        });
        say!(out, "{v}");
    }
    drop(dir);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(v: &[&str]) -> Result<Options, clap::Error> {
        parse_options(
            std::iter::once("node-bench").chain(v.iter().copied()),
            options,
        )
    }

    #[test]
    fn options_defaults_quick_and_errors() {
        let o = parse_args(&[]).expect("no arguments are valid");
        assert_eq!((o.step_s, o.growth, o.precision), (2.0, 1.3, 0.03));
        assert_eq!((o.node_core, o.gen_core, o.filter_rate_pps), (0, 1, 20_000));
        assert_eq!(o.io, IoChoice::Auto);
        // --quick changes the defaults; an explicit flag wins, in any order.
        let q = parse_args(&["--step-s", "3", "--quick", "--io", "portable"]).expect("valid");
        assert_eq!((q.step_s, q.growth, q.io), (3.0, 1.6, IoChoice::Portable));
        for bad in [
            &["--io", "fast"][..],
            &["--growth", "1"],
            &["--step-s", "-1"],
            &["--node-core", "1"],
            &["--mean-delay-us"],
            &["--what"],
        ] {
            let e = parse_args(bad).expect_err("accepted");
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn quantiles_and_numbers() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 0.99), 4.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(num(1234.56), json!(1234.6));
        assert_eq!(num(0.12345), json!(0.123));
        assert_eq!(num(f64::NAN), Value::Null);
    }

    #[test]
    fn this_process_and_core_zero_are_accounted() {
        // schedstat advances at scheduler ticks, not continuously: burn CPU
        // until it moves, for at most 2 s.
        let before = process_cpu_ns(std::process::id()).expect("own schedstat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut x = 0u64;
        loop {
            for i in 0..2_000_000u64 {
                x = x.wrapping_add(std::hint::black_box(i));
            }
            let after = process_cpu_ns(std::process::id()).expect("own schedstat");
            if after > before {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "2 s of work did not show in schedstat"
            );
        }
        std::hint::black_box(x);
        let t = core_ticks(0).expect("cpu0 in /proc/stat");
        assert!(t.total >= t.busy && t.busy >= t.steal);
    }
}
