//! `junk-bench`: what a flood of junk datagrams costs one real mix node,
//! with the kernel-side socket filter off and on, measured in one run.
//!
//! Usage: `cargo run --release -p loopix-bench --bin junk-bench -- [--json]
//! [--rate-pps N] [--seconds S] [--io auto|uring|portable] [--node-core N]
//! [--gen-core N]`.
//!
//! What it does, once with `engine.socket_filter = false` and once with
//! `true`, each against a fresh node process (this binary re-executed with
//! a hidden `--run-mix CONFIG`):
//! - lays out a loopback network with `LocalNet::create` and starts its
//!   layer-1 mix, one shard pinned to `--node-core` (default 0);
//! - measures the node's CPU time (`/proc/PID/task/*/schedstat`: user and
//!   system) while idle for `--seconds`, then while this process, pinned to
//!   `--gen-core`, sends junk at `--rate-pps` (default 100,000) for
//!   `--seconds` (default 2): half of it one byte short of a frame, half
//!   frame-long with a kind byte no node takes (what a cheap flooder sends;
//!   well-formed frames with bad tags cost a tag check either way);
//! - waits 300 ms, reads the node's metrics and reports the node's CPU per
//!   junk datagram (flood minus idle, over the datagrams sent), and what
//!   the node counted: `bad_length` and `bad_frame` with the filter off,
//!   `kernel` with it on (the two must add up to the datagrams sent).
//!
//! On loopback the kernel's receive path up to the socket's queue (and so
//! the filter itself) runs in the sender's context and is charged to the
//! sender; what the filter saves the node is the queueing, wake-ups, system
//! calls, copies into user space and its own checks. On a NIC the part
//! before the queue runs in softirq context on the receiving host either
//! way.

use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use loopix_bench::node::{pin, process_cpu_ns, run_mix_child, start_node, RUN_MIX};
use loopix_bench::{emit, parse_options, Io};
use loopix_crypto::Geometry;
use loopix_engine::config::IoChoice;
use loopix_engine::metrics::DropReason;
use loopix_testkit::localnet::{LocalNet, LocalNetSpec};
use loopix_testkit::metrics::Metrics;
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The target: node CPU per junk datagram with the filter on.
const TARGET_US: f64 = 1.0;

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "junk-bench",
    version,
    about = "What a flood of junk datagrams costs one real mix node, with \
             the kernel-side socket filter off and on, measured in one run."
)]
struct Cli {
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Junk datagrams per second during the flood (at least 1).
    #[arg(long, value_name = "N", default_value_t = 100_000.0, value_parser = number, allow_negative_numbers = true)]
    rate_pps: f64,
    /// Seconds of idle and of flood measurement each (0.1 to 600).
    #[arg(long, value_name = "S", default_value_t = 2.0, value_parser = number, allow_negative_numbers = true)]
    seconds: f64,
    /// The node's datagram backend.
    #[arg(long, value_name = "B", value_enum, default_value_t = Io::Auto)]
    io: Io,
    /// Core of the node's shard.
    #[arg(long, value_name = "N", default_value_t = 0)]
    node_core: usize,
    /// Core of this process, the sender.
    #[arg(long, value_name = "N", default_value_t = 1)]
    gen_core: usize,
}

/// A number flag's value.
fn number(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| !x.is_nan())
        .ok_or_else(|| "not a number".to_string())
}

struct Options {
    json: bool,
    rate_pps: u64,
    seconds: f64,
    io: IoChoice,
    node_core: usize,
    gen_core: usize,
}

fn options(c: Cli) -> Result<Options, String> {
    if c.node_core == c.gen_core {
        return Err("--node-core and --gen-core must differ".into());
    }
    Ok(Options {
        json: c.json,
        rate_pps: c.rate_pps.max(1.0) as u64,
        seconds: c.seconds.clamp(0.1, 600.0),
        io: c.io.into(),
        node_core: c.node_core,
        gen_core: c.gen_core,
    })
}

/// One run's figures.
struct Run {
    filter: bool,
    sent: u64,
    idle_ns: u64,
    flood_ns: u64,
    counted: f64,
    received: f64,
    /// This process's CPU while it sent: the send calls and, on loopback,
    /// the kernel's receive path up to the node's socket.
    sender_ns: u64,
}

impl Run {
    fn us_per_datagram(&self) -> f64 {
        self.flood_ns.saturating_sub(self.idle_ns) as f64 / 1e3 / self.sent as f64
    }

    /// What the idle node's own timers cost over the same time, per
    /// datagram sent: below this a difference is noise.
    fn noise_us(&self) -> f64 {
        self.idle_ns as f64 / 1e3 / self.sent as f64
    }

    fn sender_us(&self) -> f64 {
        self.sender_ns as f64 / 1e3 / self.sent as f64
    }
}

/// Send junk to `to` at `rate_pps` for `seconds`, in 1 ms slices.
fn flood(to: std::net::SocketAddr, rate_pps: u64, seconds: f64, frame_len: usize) -> u64 {
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    let short = vec![0x01u8; frame_len - 1];
    let mut wrong_kind = vec![0u8; frame_len];
    wrong_kind[0] = 0x77;
    let per_ms = (rate_pps / 1000).max(1);
    let slices = (seconds * 1000.0) as u64;
    let start = Instant::now();
    let mut sent = 0u64;
    for slice in 0..slices {
        let due = start + Duration::from_millis(slice);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for i in 0..per_ms {
            let d = if i % 2 == 0 { &short } else { &wrong_kind };
            if tx.send_to(d, to).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

fn run_one(opts: &Options, exe: &std::path::Path, filter: bool) -> Result<Run, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let spec = LocalNetSpec {
        io: opts.io,
        pin_cores: true,
        first_core: opts.node_core,
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(dir.path(), &spec)?;
    let node = &net.nodes[net.layer(1)[0]];
    let config = node.config.clone().ok_or("the mix has no config")?;
    let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    let text = text.replace(
        "[engine]\n",
        &format!("[engine]\nsocket_filter = {filter}\n"),
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let mut child = start_node(exe, &config, node.metrics)?;
    let pid = child.pid();
    let cpu = || process_cpu_ns(pid).ok_or("cannot read the node's schedstat");
    std::thread::sleep(Duration::from_millis(300));
    let idle_from = cpu()?;
    std::thread::sleep(Duration::from_secs_f64(opts.seconds));
    let idle_ns = cpu()? - idle_from;
    let flood_from = cpu()?;
    let me = std::process::id();
    let sender_from = process_cpu_ns(me).ok_or("cannot read this process's schedstat")?;
    let sent = flood(
        node.address,
        opts.rate_pps,
        opts.seconds,
        Geometry::DEFAULT.frame_len(),
    );
    let sender_ns = process_cpu_ns(me).unwrap_or(sender_from) - sender_from;
    // The node reads the kernel's count once a second.
    std::thread::sleep(Duration::from_millis(1300));
    let flood_ns = cpu()? - flood_from;
    let m = Metrics::scrape(node.metrics).ok_or("the node's metrics do not answer")?;
    let counted = if filter {
        m.drops(DropReason::Kernel)
    } else {
        m.drops(DropReason::BadLength) + m.drops(DropReason::BadFrame)
    };
    let received = m.received();
    let _ = child.terminate(Duration::from_secs(5));
    // Idle for as long as the flood and its tail were measured.
    let idle_ns = (idle_ns as f64 * (opts.seconds + 1.3) / opts.seconds) as u64;
    Ok(Run {
        filter,
        sent,
        idle_ns,
        flood_ns,
        counted,
        received,
        sender_ns,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(RUN_MIX) {
        return run_mix_child("junk-bench", args.get(1));
    }
    let opts = parse_options(std::env::args_os(), options).unwrap_or_else(|e| e.exit());
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("junk-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = pin(opts.gen_core) {
        eprintln!("junk-bench: {e}");
        return ExitCode::FAILURE;
    }
    let mut runs = Vec::new();
    for filter in [false, true] {
        match run_one(&opts, &exe, filter) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("junk-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (off, on) = (&runs[0], &runs[1]);
    // With the filter on the node may do nothing measurable: the ratio is
    // then a lower bound, taken against the idle noise.
    let on_bound = on.us_per_datagram().max(on.noise_us());
    let ratio = off.us_per_datagram() / on_bound;
    if opts.json {
        let one = |r: &Run| {
            json!({
                "socket_filter": r.filter, "sent": r.sent, "node_cpu_us_per_datagram": r.us_per_datagram(),
                "idle_ms": r.idle_ns as f64 / 1e6, "flood_ms": r.flood_ns as f64 / 1e6,
                "counted": r.counted, "received": r.received,
                "idle_noise_us_per_datagram": r.noise_us(), "sender_cpu_us_per_datagram": r.sender_us(),
            })
        };
        emit(&format!(
            "{}\n",
            json!({"runs": [one(off), one(on)], "ratio_off_over_on_at_least": ratio,
                   "target_us": TARGET_US, "met": on.us_per_datagram() < TARGET_US})
        ));
    } else {
        let mut out = format!(
            "junk-bench: {} junk datagrams/s for {} s (half one byte short, half a wrong kind)\n",
            opts.rate_pps, opts.seconds
        );
        for r in &runs {
            out += &format!(
                "  socket_filter = {:5}: node CPU {:.3} us per datagram (idle noise {:.3}; {:.1} ms flood, {:.1} ms idle); sender CPU {:.3} us; sent {}, counted {}, read by the node {}\n",
                r.filter,
                r.us_per_datagram(),
                r.noise_us(),
                r.flood_ns as f64 / 1e6,
                r.idle_ns as f64 / 1e6,
                r.sender_us(),
                r.sent,
                r.counted,
                r.received,
            );
        }
        out +=
            &format!(
            "  off / on: at least {ratio:.0}x; target under {TARGET_US} us with the filter: {}\n",
            if on.us_per_datagram() < TARGET_US { "met" } else { "missed" }
        );
        emit(&out);
    }
    ExitCode::SUCCESS
}
