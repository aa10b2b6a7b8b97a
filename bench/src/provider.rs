//! The provider under test, for `provider-bench` and the provider capacity
//! test (`bench/tests/provider_capacity.rs`): one provider process with N
//! registered clients, emulated clients that pull from it open loop, and
//! one measured step at a given rate.
//!
//! Only the wire protocol and `/metrics` are used against the provider
//! (the pull frame a client seals, the delivery frames it opens, the drop
//! counters), so the same step measures whatever the provider does inside.
//!
//! - [`Provider::start`] lays out a loopback network with `LocalNet`
//!   (one provider; one mix that never runs, because a topology needs a
//!   layer), registers the clients in the provider's registry, and runs
//!   the provider as a child: the benchmark binary re-executed with
//!   [`RUN_PROVIDER`], which calls `loopix_engine::node::run_provider`
//!   (what `loopix provider --config` calls) under mimalloc, the whole
//!   process pinned to one core (every thread it starts inherits it).
//! - [`Provider::step`] sends pulls at Poisson times at the offered rate
//!   from one UDP socket, whatever comes back: each pull goes to the next
//!   client in turn, with that client's strictly increasing counter and a
//!   request id unique in the run. A receiver thread on the generator's
//!   core opens every delivery frame with its client's access key and
//!   matches it to its pull by (slot, request id). A pull is answered when
//!   its k frames arrived within the timeout after its send; late when
//!   they all arrived later; unanswered when they never all arrived. After
//!   the sender stops, the step waits for the timeout, then until no frame
//!   arrived for [`QUIET`] (so the provider is idle before the next step).
//!
//! Every wait is bounded; the child is killed when [`Provider`] drops.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loopix_crypto::access::{
    addressed_slot, delivery_frame_len, open_delivery, pull_frame_len, PullRequest,
};
use loopix_crypto::{FrameHeader, Geometry, LinkKey, MailboxId};
use loopix_engine::config::{IoChoice, MixConfig};
use loopix_engine::io::portable::Portable;
use loopix_engine::io::{socket, Backend};
use loopix_engine::metrics::names;
use loopix_engine::provider::registry::ClientLink;
use loopix_engine::provider::seal_answer;
use loopix_testkit::localnet::{LocalNet, LocalNetSpec, NetworkParams};
use loopix_testkit::metrics::Metrics;
use loopix_testkit::process::{NodeProcess, START_BOUND};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::OsRng;

use crate::node::{pin, process_cpu_ns, watch_parent};
use crate::{median, uniform_f64};

/// Hidden first argument: run a provider from the config that follows
/// (then, optionally, the core to pin the whole process to).
pub const RUN_PROVIDER: &str = "--run-provider";

/// The packet geometry of every node here.
const G: Geometry = Geometry::DEFAULT;
/// Socket buffers of the generator's socket (forced past `rmem_max` when
/// root, as the node does): a few thousand answer frames.
const SOCKET_BUFFER: usize = 32 << 20;
/// Datagrams per `sendmmsg`/`recvmmsg` at the generator.
const IO_BATCH: usize = 64;
/// After the timeout, a step ends once no frame arrived for this long.
pub const QUIET: Duration = Duration::from_millis(300);
/// ... or at the latest this long after the sender stopped.
const DRAIN_MAX: Duration = Duration::from_secs(20);
/// Longest wait for the provider to list every registered client.
const REGISTERED_BOUND: Duration = Duration::from_secs(30);

/// The provider side (call it from `main` when the first argument is
/// [`RUN_PROVIDER`]; `args` are the arguments after it): what
/// `loopix provider --config FILE` does, pinned to a core when one is
/// given, with a watchdog on the benchmark.
pub fn run_provider_child(bench: &'static str, args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("{bench} {RUN_PROVIDER}: needs a config file");
        return ExitCode::from(2);
    };
    let pinned = match args.get(1).map(|c| c.parse::<usize>()) {
        None => Ok(()),
        Some(Ok(core)) => pin(core),
        Some(Err(_)) => Err(format!("{bench} {RUN_PROVIDER}: bad core {:?}", args[1])),
    };
    if let Err(e) = pinned.and_then(|()| watch_parent(bench, RUN_PROVIDER)) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    match MixConfig::load(Path::new(path))
        .map_err(|e| e.to_string())
        .and_then(|c| loopix_engine::node::run_provider(&c))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("loopix: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// What provider to start.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// Registered clients (all pull).
    pub clients: usize,
    /// `provider.pull_frames`: frames in every answer.
    pub k: u16,
    /// Core the whole provider process is pinned to (`None`: not pinned).
    pub core: Option<usize>,
    /// The provider's datagram backend.
    pub io: IoChoice,
    /// The binary to re-execute with [`RUN_PROVIDER`].
    pub exe: PathBuf,
    /// Where the network's directory goes (`None`: `/dev/shm` when it
    /// exists, so that registering thousands of clients does not wait on
    /// thousands of disk syncs; else the system's temporary directory).
    pub dir: Option<PathBuf>,
}

/// One emulated client.
struct Client {
    slot: u32,
    mailbox: MailboxId,
    key: LinkKey,
}

/// The running provider and its emulated clients.
pub struct Provider {
    process: NodeProcess,
    /// The provider's UDP address.
    pub address: SocketAddr,
    /// Its metrics endpoint.
    pub metrics: SocketAddr,
    /// Frames per answer.
    pub k: u16,
    clients: Vec<Client>,
    /// Per client, the last counter it used (frames carry it, strictly
    /// increasing per client).
    counters: Vec<u64>,
    /// Client index by slot.
    by_slot: HashMap<u32, usize>,
    /// Request id of the next pull.
    next_request: u64,
    /// The generator's socket (pulls leave from it, answers come to it).
    socket: UdpSocket,
    /// The generator's kernel socket drops so far.
    gen_drops: u64,
    _net: LocalNet,
    _dir: tempfile::TempDir,
}

/// Lay out the network and register the clients.
fn lay_out(spec: &ProviderSpec) -> Result<(tempfile::TempDir, LocalNet, Vec<Client>), String> {
    let parent = spec.dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let dir = tempfile::Builder::new()
        .prefix("provider-bench-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let net_spec = LocalNetSpec {
        providers: 1,
        layers: 1,
        mixes_per_layer: 1,
        io: spec.io,
        pin_cores: spec.core.is_some(),
        first_core: spec.core.unwrap_or(0),
        params: NetworkParams {
            pull_frames: spec.k,
            ..LocalNetSpec::default().params
        },
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(dir.path(), &net_spec)?;
    let mut clients = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let reg = net.register_client(0, &format!("bench-{i}"))?;
        clients.push(Client {
            slot: reg.slot,
            mailbox: reg.mailbox,
            key: LinkKey::from_bytes(&reg.access_key),
        });
    }
    Ok((dir, net, clients))
}

impl Provider {
    /// Register the clients, start the provider, and wait until it lists
    /// every client.
    pub fn start(spec: &ProviderSpec) -> Result<Provider, String> {
        if spec.clients == 0 || spec.k == 0 {
            return Err("need at least one client and k >= 1".into());
        }
        let (dir, net, clients) = lay_out(spec)?;
        let node = &net.nodes[0];
        let config = node.config.clone().ok_or("the provider has no config")?;
        let log = config.with_extension("log");
        let config_arg = config.to_string_lossy().into_owned();
        let mut args = vec![RUN_PROVIDER.to_string(), config_arg];
        if let Some(core) = spec.core {
            args.push(core.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = NodeProcess::spawn("the provider", &spec.exe, &args, &log)?;
        process.wait_up(node.metrics, START_BOUND)?;
        let deadline = Instant::now() + REGISTERED_BOUND;
        loop {
            let listed = Metrics::scrape(node.metrics)
                .and_then(|m| m.value(names::REGISTERED_CLIENTS, &[]))
                .unwrap_or(0.0);
            if listed >= spec.clients as f64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the provider lists {listed} of {} clients after {REGISTERED_BOUND:?}: {}",
                    spec.clients,
                    process.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let socket = socket::bind_reuseport(
            "127.0.0.1:0".parse().map_err(|_| "loopback address")?,
            SOCKET_BUFFER,
        )
        .map_err(|e| format!("generator socket: {e}"))?;
        let by_slot = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.slot, i))
            .collect();
        Ok(Provider {
            address: node.address,
            metrics: node.metrics,
            k: spec.k,
            process,
            counters: vec![0; clients.len()],
            clients,
            by_slot,
            next_request: 1,
            socket,
            gen_drops: 0,
            _net: net,
            _dir: dir,
        })
    }

    /// The provider's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The tail of the provider's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// One step's load.
#[derive(Debug, Clone)]
pub struct Load {
    /// Offered pulls per second over all clients.
    pub rate: f64,
    /// Seconds of sending.
    pub secs: f64,
    /// A pull whose k frames did not all arrive within this is lost.
    pub timeout: Duration,
    /// Core of the sender and the receiver (`None`: not pinned).
    pub core: Option<usize>,
    /// When to take the early memory sample, after the step's start.
    pub rss_early: Duration,
}

/// What one step measured.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    /// Offered pulls per second.
    pub offered_pps: f64,
    /// Pulls sent.
    pub sent: u64,
    /// Pulls the generator's socket refused to send.
    pub send_failed: u64,
    /// Pulls whose k frames all arrived within the timeout.
    pub answered: u64,
    /// Pulls whose k frames all arrived, after the timeout.
    pub late: u64,
    /// Pulls whose k frames never all arrived.
    pub unanswered: u64,
    /// (late + unanswered + send_failed) / sent.
    pub loss: f64,
    /// Answered pulls per second of sending.
    pub answered_pps: f64,
    /// Send to last frame of answered pulls, microseconds.
    pub p50_us: f64,
    /// The 99th percentile of the same.
    pub p99_us: f64,
    /// Authentic frames of this step's pulls received.
    pub frames: u64,
    /// Frames that did not open, or belong to no pull of this step.
    pub bad_frames: u64,
    /// Provider CPU time over the step (sending and drain) per frame
    /// received, microseconds.
    pub cpu_us_per_frame: f64,
    /// Provider CPU time / wall time while the sender ran.
    pub cpu_share: f64,
    /// This process's (the generator's) CPU time / wall time over the step.
    pub gen_cpu_share: f64,
    /// Change of `loopix_dropped_total` by reason (those that moved).
    pub drops: BTreeMap<String, f64>,
    /// Their sum.
    pub dropped: f64,
    /// Change of the provider's `loopix_pulls_total` (answers it sent).
    pub pulls_counted: f64,
    /// Pulls the provider had neither answered nor dropped (by its
    /// metrics) when the sender stopped, as a fraction of those sent: what
    /// it still had queued. A step shorter than the queue takes to fill
    /// can pass on loss while the provider falls behind.
    pub behind: f64,
    /// The provider's VmRSS early in the step and when the sender stopped.
    pub rss_early_kib: Option<u64>,
    /// See `rss_early_kib`.
    pub rss_end_kib: Option<u64>,
    /// Datagrams the kernel dropped at the generator's socket.
    pub gen_kernel_drops: u64,
    /// Sender lateness (actual send minus due), 99th percentile, us.
    pub sender_late_p99_us: f64,
    /// Seconds of sending, and of the whole step.
    pub send_s: f64,
    /// See `send_s`.
    pub total_s: f64,
}

/// VmRSS of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of this whole process so far, threads that ended included
/// (`utime + stime` of `/proc/self/stat`, in ticks of 10 ms), ns. The
/// per-thread `schedstat` sum of [`process_cpu_ns`] loses the time of the
/// step's threads once they end.
fn own_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}

/// The `q` quantile (0 to 1) of sorted `v` (nearest rank); NaN if empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Due times (ns after the start) of a Poisson process at `rate` over
/// `secs`.
fn schedule(rate: f64, secs: f64) -> Vec<u64> {
    let mut rng = ChaCha20Rng::from_rng(OsRng).unwrap_or_else(|_| ChaCha20Rng::seed_from_u64(1));
    let mut due = Vec::with_capacity((rate * secs * 1.1) as usize + 16);
    let mut t = -(1.0 - uniform_f64(&mut rng)).ln() / rate;
    while t < secs {
        due.push((t * 1e9) as u64);
        t += -(1.0 - uniform_f64(&mut rng)).ln() / rate;
    }
    due
}

/// What the sender did.
struct Sent {
    /// Per pull: ns after the start when it left (after its `sendmmsg`).
    at_ns: Vec<u64>,
    /// Per pull: client index.
    client: Vec<u32>,
    failed: u64,
    late_us: Vec<f64>,
}

/// Send the pulls of `due` open loop: sleep until the next due time, then
/// seal and send everything due (in batches), keeping the schedule when
/// late.
fn send_pulls(
    clients: &[Client],
    counters: &mut [u64],
    mut backend: Portable,
    to: SocketAddr,
    due: &[u64],
    first_request: u64,
    t0: Instant,
) -> Sent {
    let n = due.len();
    let mut s = Sent {
        at_ns: vec![0; n],
        client: vec![0; n],
        failed: 0,
        late_us: Vec::with_capacity(n),
    };
    let mut frame = vec![0u8; pull_frame_len(&G)];
    // The network's rates, as every client of it announces.
    let rates = LocalNetSpec::default().params.client_rates().digest();
    let mut next = 0usize;
    let mut batch_start = 0usize;
    while next < n {
        let now = t0.elapsed().as_nanos() as u64;
        if due[next] > now {
            std::thread::sleep(Duration::from_nanos(due[next] - now));
            continue;
        }
        while next < n && due[next] <= now && next - batch_start < IO_BATCH {
            let ci = next % clients.len();
            let c = &clients[ci];
            counters[ci] += 1;
            let request = PullRequest {
                request_id: first_request + next as u64,
                mailbox: c.mailbox,
                rates,
                acks: Vec::new(),
            };
            if request
                .seal(&G, &c.key, c.slot, counters[ci], &mut frame)
                .is_err()
                || !backend.send(to, &frame)
            {
                s.failed += 1;
            }
            s.client[next] = ci as u32;
            s.late_us.push((now - due[next]) as f64 / 1e3);
            next += 1;
        }
        let (_, failed) = backend.flush();
        s.failed += failed as u64;
        let sent_at = t0.elapsed().as_nanos() as u64;
        s.at_ns[batch_start..next].fill(sent_at);
        batch_start = next;
    }
    s
}

/// What the receiver saw.
struct Received {
    /// Per pull: frames received and ns after the start of the last one.
    frames: Vec<u16>,
    last_ns: Vec<u64>,
    total: u64,
    bad: u64,
}

/// What the receiver needs to know.
struct ReceiverCtx<'a> {
    clients: &'a [Client],
    by_slot: &'a HashMap<u32, usize>,
    first_request: u64,
    n: usize,
    k: u16,
    t0: Instant,
    stop: &'a AtomicBool,
    /// Frames received so far (read by the step to see when it is quiet).
    count: &'a AtomicU64,
}

/// Open every delivery frame arriving at the generator's socket until
/// `stop`, and count it for its pull.
fn receive(ctx: &ReceiverCtx<'_>, mut backend: Portable) -> Received {
    let mut r = Received {
        frames: vec![0; ctx.n],
        last_ns: vec![0; ctx.n],
        total: 0,
        bad: 0,
    };
    let frame_len = delivery_frame_len(&G);
    let mut buf = vec![0u8; frame_len];
    while !ctx.stop.load(Ordering::Acquire) {
        let mut at_ns = None;
        let got = backend.recv(Some(Duration::from_millis(10)), &mut |d| {
            let now = *at_ns.get_or_insert_with(|| ctx.t0.elapsed().as_nanos() as u64);
            match open_frame(ctx, d.data, &mut buf) {
                Some(i) if !d.truncated => {
                    r.frames[i] = r.frames[i].saturating_add(1);
                    r.last_ns[i] = now;
                    r.total += 1;
                }
                _ => r.bad += 1,
            }
        });
        if let Ok(k) = got {
            ctx.count.fetch_add(k as u64, Ordering::Relaxed);
        }
    }
    r
}

/// The index of the pull `data` answers, if it is an authentic delivery
/// frame of this step's pulls sent to the client it names.
fn open_frame(ctx: &ReceiverCtx<'_>, data: &[u8], buf: &mut [u8]) -> Option<usize> {
    if data.len() != buf.len() {
        return None;
    }
    let slot = addressed_slot(FrameHeader::peek(data).ok()?.sender)?;
    let ci = *ctx.by_slot.get(&slot)?;
    buf.copy_from_slice(data);
    let (_, d) = open_delivery(&G, &ctx.clients[ci].key, slot, buf).ok()?;
    let i = usize::try_from(d.request_id.checked_sub(ctx.first_request)?).ok()?;
    // Pull i went to client i mod N (see `send_pulls`).
    (i < ctx.n && i % ctx.clients.len() == ci && d.k == ctx.k).then_some(i)
}

/// The provider's counters at one moment.
struct Counters {
    drops: BTreeMap<String, f64>,
    pulls: f64,
}

fn scrape_counters(addr: SocketAddr) -> Result<Counters, String> {
    let m = Metrics::scrape(addr).ok_or("the provider's metrics did not answer")?;
    Ok(Counters {
        drops: m.by_label(names::DROPPED, "reason"),
        pulls: m.sum(names::PULLS, &[]),
    })
}

/// Wait (after the sender stopped at `sent_end`) for the timeout, then
/// until `count` stood still for [`QUIET`], at most [`DRAIN_MAX`].
fn drain(count: &AtomicU64, sent_end: Instant, timeout: Duration) {
    let until = sent_end + timeout;
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let mut last = count.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while still_since.elapsed() < QUIET && sent_end.elapsed() < DRAIN_MAX {
        std::thread::sleep(Duration::from_millis(20));
        let now = count.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}

impl Provider {
    /// One step at `load`: send open loop, receive, drain, and measure.
    pub fn step(&mut self, load: &Load) -> Result<StepResult, String> {
        let due = schedule(load.rate, load.secs);
        let n = due.len();
        let first_request = self.next_request;
        self.next_request += n as u64;
        let (sender, receiver) = self.backends()?;
        let before = scrape_counters(self.metrics)?;
        let pid = self.pid();
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        let (to, core, metrics) = (self.address, load.core, self.metrics);
        let started = Instant::now();
        let cpu_before = process_cpu_ns(pid);
        let gen_before = own_cpu_ns();
        let t0 = Instant::now();
        let ctx = ReceiverCtx {
            clients: &self.clients,
            by_slot: &self.by_slot,
            first_request,
            n,
            k: self.k,
            t0,
            stop: &stop,
            count: &count,
        };
        let (clients, counters) = (&self.clients, &mut self.counters);
        let (sent, got, rss, cpu_send, at_stop, send_s) = std::thread::scope(|s| {
            let rx = s.spawn(|| {
                let _ = core.map(pin);
                receive(&ctx, receiver)
            });
            let tx = s.spawn(|| {
                let _ = core.map(pin);
                let _ = loopix_engine::io::set_timer_slack_ns(1_000);
                send_pulls(clients, counters, sender, to, &due, first_request, t0)
            });
            std::thread::sleep(load.rss_early.min(Duration::from_secs_f64(load.secs)));
            let rss_early = rss_kib(pid);
            let sent = tx.join();
            let sent_end = Instant::now();
            let cpu_send = process_cpu_ns(pid);
            let at_stop = scrape_counters(metrics).ok();
            let rss_end = rss_kib(pid);
            drain(&count, sent_end, load.timeout);
            stop.store(true, Ordering::Release);
            let got = rx.join();
            let rss = (rss_early, rss_end);
            (sent, got, rss, cpu_send, at_stop, sent_end - t0)
        });
        let (sent, got) = match (sent, got) {
            (Ok(s), Ok(g)) => (s, g),
            _ => return Err("a generator thread panicked".into()),
        };
        let cpu_ns = match (cpu_before, process_cpu_ns(pid)) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => f64::NAN,
        };
        let gen_ns = match (gen_before, own_cpu_ns()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => f64::NAN,
        };
        let after = scrape_counters(self.metrics)?;
        let gen_drops = u64::from(self.socket_drops());
        let mut r = summarize(load, self.k, &sent, &got, send_s);
        r.cpu_us_per_frame = cpu_ns / 1e3 / got.total as f64;
        r.total_s = started.elapsed().as_secs_f64();
        r.cpu_share = match (cpu_before, cpu_send) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9 / send_s.as_secs_f64(),
            _ => f64::NAN,
        };
        r.gen_cpu_share = gen_ns / 1e9 / r.total_s;
        for (reason, v) in &after.drops {
            let d = v - before.drops.get(reason).copied().unwrap_or(0.0);
            if d > 0.0 {
                r.drops.insert(reason.clone(), d);
            }
        }
        // An empty float sum is -0.0: start from +0.0.
        r.dropped = r.drops.values().fold(0.0, |a, b| a + b);
        r.pulls_counted = after.pulls - before.pulls;
        (r.rss_early_kib, r.rss_end_kib) = rss;
        r.behind = at_stop.map_or(f64::NAN, |c| {
            let dropped = |x: &Counters| x.drops.values().fold(0.0, |a, b| a + b);
            let done = c.pulls - before.pulls + dropped(&c) - dropped(&before);
            (r.sent as f64 - done).max(0.0) / r.sent.max(1) as f64
        });
        r.gen_kernel_drops = gen_drops.wrapping_sub(self.gen_drops);
        self.gen_drops = gen_drops;
        Ok(r)
    }

    /// The sender's and the receiver's backends over the generator's socket.
    fn backends(&self) -> Result<(Portable, Portable), String> {
        let backend = |len: usize| {
            self.socket
                .try_clone()
                .and_then(|s| Portable::new(s, IO_BATCH, len))
                .map_err(|e| format!("generator backend: {e}"))
        };
        Ok((
            backend(pull_frame_len(&G))?,
            backend(delivery_frame_len(&G) + 64)?,
        ))
    }

    /// The kernel's drop counter of the generator's socket.
    fn socket_drops(&self) -> u32 {
        socket::kernel_drops(&self.socket).unwrap_or(0)
    }
}

/// Count answered, late and unanswered pulls and the latency quantiles.
fn summarize(load: &Load, k: u16, sent: &Sent, got: &Received, send_s: Duration) -> StepResult {
    let n = sent.at_ns.len();
    let timeout_ns = load.timeout.as_nanos() as u64;
    let mut latencies = Vec::with_capacity(n);
    let (mut answered, mut late, mut unanswered) = (0u64, 0u64, 0u64);
    for i in 0..n {
        if got.frames[i] < k {
            unanswered += 1;
            continue;
        }
        let took = got.last_ns[i].saturating_sub(sent.at_ns[i]);
        if took <= timeout_ns {
            answered += 1;
            latencies.push(took as f64 / 1e3);
        } else {
            late += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let mut late_us = sent.late_us.clone();
    late_us.sort_by(f64::total_cmp);
    let send_s = send_s.as_secs_f64().max(load.secs);
    StepResult {
        offered_pps: load.rate,
        sent: n as u64,
        send_failed: sent.failed,
        answered,
        late,
        unanswered,
        loss: if n == 0 {
            0.0
        } else {
            1.0 - answered as f64 / n as f64
        },
        answered_pps: answered as f64 / send_s,
        p50_us: quantile(&latencies, 0.5),
        p99_us: quantile(&latencies, 0.99),
        frames: got.total,
        bad_frames: got.bad,
        sender_late_p99_us: quantile(&late_us, 0.99),
        send_s,
        ..StepResult::default()
    }
}

/// The median time to seal one pull answer of `k` dummy frames in this
/// process with the provider's own `seal_answer`, microseconds, over
/// `iters` timed iterations (after a tenth as many untimed).
pub fn seal_k_us(k: u16, iters: usize) -> f64 {
    let client = ClientLink {
        mailbox: MailboxId([1; 16]),
        link: LinkKey::from_bytes(&[7; 16]),
    };
    let mut out = Vec::with_capacity(delivery_frame_len(&G) * usize::from(k));
    let mut samples = Vec::with_capacity(iters);
    let warmup = iters / 10;
    for i in 0..(warmup + iters) as u64 {
        let t = Instant::now();
        let sealed = seal_answer(&G, &client, 3, i * u64::from(k), i, k, &[], &mut out);
        std::hint::black_box((&sealed, &out));
        let took = t.elapsed();
        if i >= warmup as u64 {
            samples.push(took.as_secs_f64() * 1e6);
        }
    }
    median(&mut samples)
}
