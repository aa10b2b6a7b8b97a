//! `loopix testnet`: a whole Loopix network on loopback with one command.
//!
//! It lays out keys, a signed topology and node configs in a directory
//! (temporary unless `--keep DIR`), starts every mix and provider as a real
//! `loopix` child process, registers and runs in-process clients with the
//! paper's three Poisson streams and pulls, has them send real messages to
//! each other for the run's duration, and then stops everything and prints
//! (and with `--json FILE` writes) a summary: messages sent, delivered and
//! lost; message and loop latency quantiles beside the Poisson model's
//! (per-hop `Exp(mu)` delays, the time in the sender's FIFO buffer, the
//! providers' measured time to store a delivery durably, and the wait for
//! the next pull); per-node packets per second and drops by reason.
//!
//! Invariants: every child is stopped and the directory removed (unless
//! kept) on every exit path, including Ctrl-C and a child that dies; a
//! child's death ends the run with an error naming it and its exit status.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::builder::{PossibleValuesParser, TypedValueParser};

use loopix_client::driver::{self, Driver, Flow, BUILD_AHEAD_US};
use loopix_client::{Address, Client, ClientLimits, ClientTopology, Event, Rates, Registration};
use loopix_crypto::SecretKey;
use loopix_tuning::model::{ks_p_value, ks_statistic, LatencyModel};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::localnet::{self, LocalNet, LocalNetSpec};
use crate::metrics::Metrics;
use crate::pool_meter::{node_load, render_loads, NodeLoad};
use crate::proxy::BlockingProxy;
use crate::supervise::Supervisor;
use loopix_directory::params::MAX_LAYERS;
use loopix_directory::topology::Role;
use loopix_directory::NetworkParams;
use loopix_engine::config::IoChoice;
use loopix_engine::metrics::names;

/// Everything a user can set; `Default` is the embedded default run.
///
/// The fields are also `loopix testnet`'s options (`clap::Args`): each
/// flag's name, default and help are defined here once, and `Default` is
/// what parsing no flags gives. Ranges are checked by [`Self::check`].
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct TestnetOptions {
    /// Mix layers (1 to 10).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub layers: u8,
    /// Mixes in each layer.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub mixes_per_layer: usize,
    /// Providers.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub providers: usize,
    /// In-process clients (spread over the providers); 0 serves the network
    /// alone (for `loopix-loadgen --testnet DIR`, with `--keep DIR`).
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub clients: usize,
    /// Mean per-hop delay, milliseconds (`1/mu`).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 20.0,
        allow_negative_numbers = true
    )]
    pub mu_ms: f64,
    /// `lambda_P`, per second per client.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 4.0,
        allow_negative_numbers = true
    )]
    pub lambda_p: f64,
    /// `lambda_L`, per second per client.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 2.0,
        allow_negative_numbers = true
    )]
    pub lambda_l: f64,
    /// `lambda_D`, per second per client.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 2.0,
        allow_negative_numbers = true
    )]
    pub lambda_d: f64,
    /// Pull period, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub pull_ms: u64,
    /// `lambda_M`, every node's own loops per second (default 10 per
    /// minute, the node default and the paper's).
    #[arg(
        long,
        value_name = "R",
        default_value_t = 10.0 / 60.0,
        hide_default_value = true,
        allow_negative_numbers = true
    )]
    pub lambda_m: f64,
    /// Every node's `detector.window_s` (0: the node default, long enough
    /// for 50 returns at `lambda_m`).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub detector_window_s: u64,
    /// An (n−1) attacker in front of one node: `n-1:mix-l2-0:0.9` puts a
    /// proxy before that node that blocks 90% of its input (default 0.9),
    /// and the summary shows which nodes raised the (n−1) alarm and when.
    #[arg(long, value_name = "n-1:NODE[:FRACTION]", value_parser = Attack::parse)]
    pub attack: Option<Attack>,
    /// Frames in a pull answer (`k`).
    #[arg(long, value_name = "K", default_value_t = 16)]
    pub pull_frames: u16,
    /// Let clients run at other rates than the network's (signed into the
    /// document: development only). `loopix-loadgen --testnet DIR` needs it
    /// for scenarios whose rates are not the testnet's.
    #[arg(long)]
    pub allow_rate_overrides: bool,
    /// Real messages each client writes per second (a Poisson process).
    #[arg(
        long,
        value_name = "R",
        default_value_t = 0.5,
        allow_negative_numbers = true
    )]
    pub message_rate: f64,
    /// Bytes of each real message.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub message_bytes: usize,
    /// Length of the run, seconds.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 30.0,
        allow_negative_numbers = true
    )]
    pub duration_s: f64,
    /// I/O backend of the nodes.
    #[arg(
        long,
        value_name = "IO",
        default_value = "auto",
        value_parser = PossibleValuesParser::new(["auto", "uring", "portable"]).map(io_choice)
    )]
    pub io: IoChoice,
    /// Keep the network's directory here instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print a progress line every second (`--quiet` turns it off).
    #[arg(
        long = "quiet",
        action = clap::ArgAction::SetFalse,
        help = "No progress line every second"
    )]
    pub progress: bool,
    /// The program (and its leading arguments) that runs a node, given
    /// `mix|provider --config FILE` after them; `None`: this executable.
    /// Lets another binary that embeds the node (the load generator's
    /// tests) start a testnet.
    #[serde(skip)]
    #[arg(skip)]
    pub node_program: Option<(PathBuf, Vec<String>)>,
}

/// `--io`'s value, already one of the possible values.
fn io_choice(v: String) -> IoChoice {
    match v.as_str() {
        "uring" => IoChoice::Uring,
        "portable" => IoChoice::Portable,
        _ => IoChoice::Auto,
    }
}

impl Default for TestnetOptions {
    /// The flags' defaults: what `loopix testnet` with no flags runs.
    fn default() -> Self {
        let cmd = <Self as clap::Args>::augment_args(clap::Command::new("testnet"));
        let matches = cmd.get_matches_from(["testnet"]);
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("no flags are a valid testnet")
    }
}

/// A blocking proxy in front of one node for the whole run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Attack {
    /// The node's name (`mix-l2-0`).
    pub node: String,
    /// Fraction of its incoming datagrams blocked.
    pub block: f64,
}

impl Attack {
    /// Parse `n-1:NODE` or `n-1:NODE:FRACTION` (default 0.9).
    pub fn parse(v: &str) -> Result<Attack, String> {
        let usage = "--attack takes n-1:NODE or n-1:NODE:FRACTION (e.g. n-1:mix-l2-0:0.9)";
        let rest = v
            .strip_prefix("n-1:")
            .ok_or_else(|| format!("{usage}, not {v:?}"))?;
        let (node, block) = match rest.rsplit_once(':') {
            Some((node, f)) => (
                node,
                f.parse::<f64>()
                    .map_err(|_| format!("{usage}; {f:?} is not a fraction"))?,
            ),
            None => (rest, 0.9),
        };
        if node.is_empty() {
            return Err(format!("{usage}; the node name is missing"));
        }
        if !(0.0..=1.0).contains(&block) {
            return Err(format!("{usage}; the fraction {block} is not in [0, 1]"));
        }
        Ok(Attack {
            node: node.to_string(),
            block,
        })
    }
}

impl Quantiles {
    /// Every quantile `d` later.
    fn shifted(self, d: f64) -> Quantiles {
        Quantiles {
            p50: self.p50 + d,
            p90: self.p90 + d,
            p99: self.p99 + d,
            max: self.max + d,
        }
    }
}

impl TestnetOptions {
    /// Refuse values that cannot make a network, naming the option.
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: &str, why: &str| Err(format!("--{what} {why}"));
        if self.layers == 0 || self.layers > MAX_LAYERS {
            return Err(format!("--layers must be 1 to {MAX_LAYERS}"));
        }
        if self.mixes_per_layer == 0 || self.mixes_per_layer > 16 {
            return bad("mixes-per-layer", "must be 1 to 16");
        }
        if self.providers == 0 || self.providers > 16 {
            return bad("providers", "must be 1 to 16");
        }
        if self.clients == 1 || self.clients > 1000 {
            return bad(
                "clients",
                "must be 0 (the network alone, for loopix-loadgen --testnet) or 2 to 1000",
            );
        }
        for (name, v) in [
            ("lambda-p", self.lambda_p),
            ("lambda-l", self.lambda_l),
            ("lambda-d", self.lambda_d),
            ("lambda-m", self.lambda_m),
            ("message-rate", self.message_rate),
        ] {
            if !(0.0..=1000.0).contains(&v) || v.is_nan() {
                return bad(name, "must be between 0 and 1000 per second");
            }
        }
        if self.message_rate > 0.0 && self.lambda_p <= self.message_rate {
            return bad(
                "message-rate",
                "must be below --lambda-p, or messages queue without bound",
            );
        }
        if !(0.0..=10_000.0).contains(&self.mu_ms) || self.mu_ms.is_nan() {
            return bad("mu-ms", "must be between 0 and 10000");
        }
        if self.pull_ms == 0 || self.pull_ms > 60_000 {
            return bad("pull-ms", "must be 1 to 60000");
        }
        // What every node and client would refuse in the document.
        self.network()
            .check(self.layers)
            .map_err(|e| format!("the network's parameters: {e}"))?;
        if !(1.0..=86_400.0).contains(&self.duration_s) {
            return bad("duration-s", "must be 1 to 86400");
        }
        if self.message_bytes == 0 || self.message_bytes > 100_000 {
            return bad("message-bytes", "must be 1 to 100000");
        }
        if self.detector_window_s > 86_400 {
            return bad("detector-window-s", "must be 0 (the node default) to 86400");
        }
        if self.detector_window_s > 0 && self.lambda_m * (self.detector_window_s as f64) < 20.0 {
            return bad(
                "detector-window-s",
                "must leave room for 20 loops at --lambda-m (window × rate ≥ 20)",
            );
        }
        Ok(())
    }

    /// The parameters the network's signed document carries: these rates,
    /// and the geometry for `layers`.
    pub fn network(&self) -> NetworkParams {
        let mut p = NetworkParams {
            mean_delay_ms: self.mu_ms,
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            lambda_m: self.lambda_m,
            pull_period_ms: self.pull_ms,
            pull_frames: self.pull_frames,
            allow_rate_overrides: self.allow_rate_overrides,
            ..NetworkParams::default()
        };
        p.set_geometry_for(self.layers);
        p
    }

    /// Hops that add an `Exp(mu)` delay on a path: the first provider,
    /// every layer, and the last provider (it holds a delivery for the delay
    /// its sender drew before storing it).
    pub fn delayed_hops(&self) -> u32 {
        u32::from(self.layers) + 2
    }

    /// The model of a loop's round trip, seconds: per-hop delays plus the
    /// wait for the next pull and the provider's fixed answer delay.
    pub fn loop_model(&self) -> LatencyModel {
        LatencyModel {
            hops: self.delayed_hops(),
            mean_delay: self.mu_ms / 1000.0,
            pull_period: self.pull_ms as f64 / 1000.0,
            // The provider holds every pull answer this long (the nodes
            // run with the default).
            offset: loopix_engine::config::DEFAULT_ANSWER_DELAY_US as f64 / 1e6,
        }
    }
}

/// Latency quantiles, seconds, measured and modelled.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Samples.
    pub samples: usize,
    /// Measured quantiles (p50, p90, p99, max); `None` without samples.
    pub measured: Option<Quantiles>,
    /// The model's quantiles.
    pub model: Quantiles,
    /// Kolmogorov–Smirnov statistic against the model.
    pub ks_d: Option<f64>,
    /// Its p-value.
    pub ks_p: Option<f64>,
}

/// p50, p90, p99 and the maximum (the model's p99.9 in its place).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample (for the model: the 99.9th percentile).
    pub max: f64,
}

/// One node's traffic over the run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Name (`provider-0`, `mix-l1-2`).
    pub name: String,
    /// `provider` or `mix`.
    pub role: String,
    /// Layer (0 for providers).
    pub layer: u8,
    /// Datagrams received.
    pub received: u64,
    /// Packets forwarded.
    pub forwarded: u64,
    /// Datagrams received per second over the run.
    pub pps: f64,
    /// Drops by reason (only reasons with drops).
    pub drops: BTreeMap<String, u64>,
    /// The node's own loops sent (`lambda_M`).
    pub loops_sent: u64,
    /// Of its own loops, those that came back.
    pub loops_returned: u64,
    /// `loops_returned / loops_sent` (loops still in flight at the end
    /// count as not returned), or `None` before the first loop.
    pub loops_ratio: Option<f64>,
    /// Loop departures that passed without a loop (any reason).
    pub loops_missed: u64,
    /// Of its own loops, those the detector counted lost (time-out passed).
    pub loops_lost: u64,
    /// (n−1) alarms the node raised.
    pub alarms: u64,
    /// Seconds from the start of the run to its first alarm.
    pub first_alarm_s: Option<f64>,
    /// Mixes: the anonymity meter over the run (`loopix tune live`'s
    /// figures: λ is the run's mean arrival rate, the measured pool the
    /// gauge at the end); `None` for providers or a node without the
    /// params gauge.
    pub pool: Option<NodeLoad>,
}

/// What the (n−1) attacker did.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// The attacked node and the fraction blocked.
    pub attack: Attack,
    /// Datagrams the proxy passed on.
    pub forwarded: u64,
    /// Datagrams it blocked.
    pub blocked: u64,
}

/// What `loopix testnet` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The options of the run.
    pub options: TestnetOptions,
    /// Wall time from the first client packet to the stop, seconds.
    pub elapsed_s: f64,
    /// Real messages handed to clients to send.
    pub messages_sent: u64,
    /// Delivered whole to their recipient.
    pub messages_delivered: u64,
    /// Sent but not delivered by the end.
    pub messages_lost: u64,
    /// Delivered more than once (should be 0).
    pub messages_duplicated: u64,
    /// Still queued at a sender at the end (never left; not counted sent).
    pub messages_unsent: u64,
    /// Packets the clients sent, by kind.
    pub client_packets: BTreeMap<String, u64>,
    /// Loops that came back.
    pub loops_returned: u64,
    /// Message latency (from the send call to delivery), seconds; the
    /// model adds the time in the sender's FIFO buffer (M/M/1).
    pub message_latency: LatencyReport,
    /// Loop round trip, seconds.
    pub loop_latency: LatencyReport,
    /// The providers' mean time from a delivery's handover to its durable
    /// commit (group commit and fsync), milliseconds, measured over the
    /// run: a delivery is visible to pulls only after it, so both models
    /// add it. `None` when nothing was stored.
    pub store_wait_ms: Option<f64>,
    /// Per node.
    pub nodes: Vec<NodeReport>,
    /// The (n−1) attacker's counts, if there was one.
    pub attack: Option<AttackReport>,
}

/// Shared between client threads and the main loop.
#[derive(Default)]
struct Ledger {
    sent: HashMap<u64, Instant>,
    delivered: HashMap<u64, u32>,
    message_latency_s: Vec<f64>,
    loop_latency_s: Vec<f64>,
    unsent: u64,
    packets: BTreeMap<String, u64>,
}

fn quantiles(xs: &mut [f64]) -> Option<Quantiles> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    Some(Quantiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: xs[xs.len() - 1],
    })
}

fn model_quantiles(q: impl Fn(f64) -> f64) -> Quantiles {
    Quantiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: q(0.999),
    }
}

/// Samples of the message model: the time in the sender's FIFO buffer plus
/// the loop model. The buffer is an M/M/1 queue: one-fragment messages
/// arrive at `message_rate` and leave at `lambda_P` events, so a message's
/// time in it is `Exp(lambda_P - message_rate)`; the driver decides each
/// payload event [`BUILD_AHEAD_US`] before it, which adds that much. Seeded,
/// so the reported figures are reproducible.
fn message_model_samples(opts: &TestnetOptions, n: usize) -> Vec<f64> {
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0x6c6f6f706978);
    let mut u = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mean = opts.mu_ms / 1000.0;
    let pull = opts.pull_ms as f64 / 1000.0;
    let loop_offset = opts.loop_model().offset;
    let mut xs: Vec<f64> = (0..n)
        .map(|_| {
            let mut t = -u().ln() / (opts.lambda_p - opts.message_rate)
                + BUILD_AHEAD_US as f64 / 1e6
                + pull * u()
                + loop_offset;
            for _ in 0..opts.delayed_hops() {
                t += -u().ln() * mean;
            }
            t
        })
        .collect();
    xs.sort_by(f64::total_cmp);
    xs
}

fn report(mut xs: Vec<f64>, model: Quantiles, cdf: Option<&dyn Fn(f64) -> f64>) -> LatencyReport {
    let samples = xs.len();
    let (ks_d, ks_p) = match cdf {
        Some(f) if samples > 0 => {
            let d = ks_statistic(&mut xs, f);
            (Some(d), Some(ks_p_value(d, samples as f64)))
        }
        _ => (None, None),
    };
    LatencyReport {
        samples,
        measured: quantiles(&mut xs),
        model,
        ks_d,
        ks_p,
    }
}

const MESSAGE_TAG: &[u8] = b"loopix-testnet ";

/// A message body: the tag, the id, padding to `len`.
fn message_body(id: u64, len: usize) -> Vec<u8> {
    let mut v = MESSAGE_TAG.to_vec();
    v.extend_from_slice(id.to_string().as_bytes());
    v.push(b' ');
    while v.len() < len {
        v.push(b'.');
    }
    v
}

fn parse_body(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(MESSAGE_TAG)?;
    let end = rest.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// One client's thread: online until `stop`, writing messages to random
/// other clients at `message_rate` until `send_until`.
#[allow(clippy::too_many_arguments)] // reason: the run's parts, each needed once
fn client_thread(
    mut drv: Driver,
    me: usize,
    peers: Arc<Vec<Address>>,
    opts: TestnetOptions,
    send_until: Instant,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut rng = OsRng;
    let exp = |rng: &mut OsRng, rate: f64| {
        let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        Duration::from_secs_f64(-u.ln() / rate)
    };
    let mut next_message =
        (opts.message_rate > 0.0).then(|| Instant::now() + exp(&mut rng, opts.message_rate));
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(at) = next_message {
            if now >= at {
                if now < send_until {
                    let mut to = (rng.next_u64() % (peers.len() as u64 - 1)) as usize;
                    if to >= me {
                        to += 1;
                    }
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let body = message_body(id, opts.message_bytes);
                    drv.client_mut()
                        .send(peers[to], &body, false, &mut rng)
                        .map_err(|e| format!("client {me}: send: {e}"))?;
                    ledger
                        .lock()
                        .expect("ledger lock")
                        .sent
                        .insert(id, Instant::now());
                    next_message = Some(at + exp(&mut rng, opts.message_rate));
                } else {
                    next_message = None;
                }
            }
        }
        let slice = Instant::now() + Duration::from_millis(20);
        let until = next_message.map_or(slice, |t| t.min(slice));
        let led = &ledger;
        drv.run_until(until, |_, ev| {
            match ev {
                Event::Message { data, .. } => {
                    if let Some(id) = parse_body(&data) {
                        let mut l = led.lock().expect("ledger lock");
                        let n = l.delivered.entry(id).or_insert(0);
                        *n += 1;
                        if *n == 1 {
                            if let Some(t) = l.sent.get(&id).copied() {
                                l.message_latency_s.push(t.elapsed().as_secs_f64());
                            }
                        }
                    }
                }
                Event::LoopReturned { rtt_us } => {
                    // Only loops sent before the drain: a loop sent later
                    // might not be back by the end, and leaving out just
                    // the slow ones would bias the sample.
                    let rtt = Duration::from_micros(rtt_us);
                    if Instant::now()
                        .checked_sub(rtt)
                        .is_some_and(|t| t <= send_until)
                    {
                        led.lock()
                            .expect("ledger lock")
                            .loop_latency_s
                            .push(rtt.as_secs_f64());
                    }
                }
                _ => {}
            }
            Flow::Continue
        })
        .map_err(|e| format!("client {me}: socket: {e}"))?;
    }
    let s = drv.client().stats();
    let mut l = ledger.lock().expect("ledger lock");
    l.unsent += drv.queued() as u64;
    for (k, v) in [
        ("real", s.sent_real),
        ("reply", s.sent_reply),
        ("drop", s.sent_drop),
        ("loop", s.sent_loop),
    ] {
        *l.packets.entry(k.to_string()).or_insert(0) += v;
    }
    Ok(())
}

/// A node's datagrams received, packets forwarded and non-zero drops by
/// reason; `None` if it does not answer.
fn scrape_node(addr: SocketAddr) -> Option<(u64, u64, BTreeMap<String, u64>)> {
    let m = Metrics::scrape(addr)?;
    Some((m.received() as u64, m.forwarded() as u64, drops_of(&m)))
}

fn drops_of(m: &Metrics) -> BTreeMap<String, u64> {
    m.nonzero_drops()
        .into_iter()
        .map(|(reason, n)| (reason.to_string(), n as u64))
        .collect()
}

/// The file `loopix testnet` writes in its directory, so that other tools
/// (the load generator) can find a running testnet's nodes.
pub const MANIFEST: &str = "testnet.toml";

/// A testnet's nodes, as written to [`MANIFEST`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The signed topology document.
    pub topology: PathBuf,
    /// The operator key that signed it (hex).
    pub operator_key: String,
    /// Every node.
    pub nodes: Vec<ManifestNode>,
}

/// One node of a [`Manifest`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestNode {
    /// Name (`provider-0`, `mix-l1-2`).
    pub name: String,
    /// Node id (hex).
    pub id: String,
    /// `provider` or `mix`.
    pub role: String,
    /// UDP address.
    pub address: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// A provider's data directory (its client registry).
    pub data_dir: Option<PathBuf>,
}

impl Manifest {
    fn of(net: &LocalNet) -> Manifest {
        Manifest {
            topology: net.topology_path.clone(),
            operator_key: net.operator.to_hex(),
            nodes: net
                .nodes
                .iter()
                .map(|n| ManifestNode {
                    name: n.name(),
                    id: n.descriptor.id.clone(),
                    role: n.role.name().into(),
                    address: n.address,
                    metrics: n.metrics,
                    data_dir: n.data_dir.clone(),
                })
                .collect(),
        }
    }

    /// Read the manifest of the testnet kept in `dir`.
    pub fn read(dir: &std::path::Path) -> Result<Manifest, String> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: cannot read ({e}); is a `loopix testnet --keep {}` running?",
                path.display(),
                dir.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Register `clients` new clients, round-robin over the providers, and
    /// wait (at most 10 s) until the running providers have taken them.
    pub fn register_clients(
        &self,
        clients: usize,
        prefix: &str,
    ) -> Result<Vec<Registration>, String> {
        let operator = loopix_crypto::identity::IdentityPublic::from_hex(&self.operator_key)
            .map_err(|e| format!("{MANIFEST}: operator_key: {e}"))?;
        let providers: Vec<&ManifestNode> =
            self.nodes.iter().filter(|n| n.data_dir.is_some()).collect();
        if providers.is_empty() {
            return Err(format!("{MANIFEST}: no provider"));
        }
        let mut before = 0.0;
        for p in &providers {
            before += Metrics::scrape(p.metrics)
                .map(|m| m.sum(names::REGISTERED_CLIENTS, &[]))
                .ok_or_else(|| format!("provider {} at {} does not answer", p.name, p.metrics))?;
        }
        let mut regs = Vec::with_capacity(clients);
        for c in 0..clients {
            let p = providers[c % providers.len()];
            let data_dir = p.data_dir.as_ref().expect("filtered on data_dir");
            regs.push(localnet::register_at(
                data_dir,
                &p.id,
                p.address,
                operator,
                &format!("{prefix}-{c}"),
            )?);
        }
        let metrics: Vec<SocketAddr> = providers.iter().map(|p| p.metrics).collect();
        let timeout = Duration::from_secs(10 + clients as u64 / 500);
        wait_registered(
            &metrics,
            before as usize + clients,
            timeout,
            &AtomicBool::new(false),
        )?;
        Ok(regs)
    }
}

/// Wait until the providers (metrics at `providers`) report `clients`
/// registered clients in all, at most `timeout`.
fn wait_registered(
    providers: &[SocketAddr],
    clients: usize,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<(), String> {
    let by = Instant::now() + timeout;
    loop {
        let n: f64 = providers
            .iter()
            .filter_map(|&p| Metrics::scrape(p))
            .map(|m| m.sum(names::REGISTERED_CLIENTS, &[]))
            .sum();
        if n as usize >= clients {
            // Shards take the new client table between batches.
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if Instant::now() > by {
            return Err(format!(
                "the providers registered {n} of {clients} clients within 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a testnet; `stop` (set by Ctrl-C) ends it early.
pub fn run(opts: &TestnetOptions, stop: Arc<AtomicBool>) -> Result<Summary, String> {
    opts.check()?;
    let (dir, _tmp) = prepare_dir(opts)?;
    let spec = LocalNetSpec {
        providers: opts.providers,
        layers: opts.layers,
        mixes_per_layer: opts.mixes_per_layer,
        io: opts.io,
        params: opts.network(),
        detector_window_s: opts.detector_window_s,
        fronted: opts.attack.iter().map(|a| a.node.clone()).collect(),
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(&dir, &spec)?;
    // The attacker is in place before the nodes start.
    let proxy = start_attack(opts, &net)?;
    let manifest = toml::to_string(&Manifest::of(&net)).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(MANIFEST), manifest)
        .map_err(|e| format!("{}: {e}", dir.join(MANIFEST).display()))?;
    let mut sup = start_nodes(opts, &net, &stop)?;
    let (drivers, addresses) = start_clients(opts, &net, &stop)?;

    let message_model = message_model_samples(opts, 200_000);
    let mq = |q: f64| message_model[((message_model.len() - 1) as f64 * q) as usize];
    // Stop writing messages (and counting loops) early enough that nearly
    // all of them are back before the end.
    let message_tail = if opts.message_rate > 0.0 {
        mq(0.99999)
    } else {
        0.0
    };
    let drain_s =
        (message_tail.max(opts.loop_model().quantile(0.99999)) + 1.0).min(opts.duration_s / 2.0);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(opts.duration_s);
    let send_until = end - Duration::from_secs_f64(drain_s);
    let peers = Arc::new(addresses);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients_stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut threads = Vec::new();
    for (i, drv) in drivers.into_iter().enumerate() {
        let (peers, ledger, st, next_id) = (
            Arc::clone(&peers),
            Arc::clone(&ledger),
            Arc::clone(&clients_stop),
            Arc::clone(&next_id),
        );
        let o = opts.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn(move || client_thread(drv, i, peers, o, send_until, next_id, ledger, st))
                .map_err(|e| format!("client thread: {e}"))?,
        );
    }

    let (mut outcome, first_alarm) = watch(opts, &net, &mut sup, &stop, &ledger, (started, end));
    let elapsed_s = started.elapsed().as_secs_f64();
    clients_stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => outcome = outcome.and(Err(e)),
            Err(_) => outcome = outcome.and(Err("a client thread panicked".into())),
        }
    }
    let nodes = node_reports(&net, elapsed_s, &first_alarm);
    let store_wait_s = store_wait_s(&net);
    let attack = finish_attack(opts, proxy);
    for (name, status) in sup.stop_all(Duration::from_secs(10)) {
        match status {
            Some(s) if s.success() => {}
            Some(s) => outcome = outcome.and(Err(format!("node {name} exited with {s} at stop"))),
            None => outcome = outcome.and(Err(format!("node {name} ignored SIGTERM; killed"))),
        }
    }
    outcome?;

    let l = Arc::try_unwrap(ledger)
        .map_err(|_| "client threads still hold the ledger")?
        .into_inner()
        .map_err(|_| "ledger lock poisoned")?;
    let mut summary = summarize(
        opts,
        l,
        elapsed_s,
        nodes,
        (model_quantiles(mq), store_wait_s),
    );
    summary.attack = attack;
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(summary)
}

/// The blocking proxy of `--attack`, in front of its node.
fn start_attack(opts: &TestnetOptions, net: &LocalNet) -> Result<Option<BlockingProxy>, String> {
    let Some(a) = &opts.attack else {
        return Ok(None);
    };
    let n = net
        .nodes
        .iter()
        .find(|n| n.name() == a.node)
        .ok_or_else(|| format!("--attack: no node {:?}", a.node))?;
    BlockingProxy::start(n.address, n.listen, a.block).map(Some)
}

/// Stop the proxy and report what it did.
fn finish_attack(opts: &TestnetOptions, proxy: Option<BlockingProxy>) -> Option<AttackReport> {
    let (attack, p) = opts.attack.clone().zip(proxy)?;
    let (forwarded, blocked) = p.stop();
    Some(AttackReport {
        attack,
        forwarded,
        blocked,
    })
}

/// The testnet's directory: `--keep`'s (which must be empty) or a fresh
/// temporary one (removed when the returned guard drops).
fn prepare_dir(opts: &TestnetOptions) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    match &opts.keep {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("--keep {}: {e}", d.display()))?;
            if std::fs::read_dir(d).is_ok_and(|mut r| r.next().is_some()) {
                return Err(format!(
                    "--keep {}: the directory is not empty",
                    d.display()
                ));
            }
            Ok((d.clone(), None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("loopix-testnet-")
                .tempdir()
                .map_err(|e| format!("temporary directory: {e}"))?;
            Ok((tmp.path().to_owned(), Some(tmp)))
        }
    }
}

/// An error naming the first node found dead, with its log's tail.
fn died(sup: &mut Supervisor) -> Result<(), String> {
    match sup.check_exited() {
        Some((name, status, tail)) => Err(format!(
            "node {name} exited ({status}); its log ends:\n{tail}"
        )),
        None => Ok(()),
    }
}

/// Start every node of `net` as a child process; ready when every node
/// serves its metrics (at most 20 s).
fn start_nodes(
    opts: &TestnetOptions,
    net: &LocalNet,
    stop: &AtomicBool,
) -> Result<Supervisor, String> {
    let (exe, prefix) = match &opts.node_program {
        Some((program, args)) => (program.clone(), args.clone()),
        None => (
            std::env::current_exe().map_err(|e| format!("own executable: {e}"))?,
            Vec::new(),
        ),
    };
    let mut sup = Supervisor::new();
    for n in &net.nodes {
        let config = n.config.as_ref().ok_or("a node without a config")?;
        let cmd = match n.role {
            Role::Provider => "provider",
            Role::Mix => "mix",
        };
        let config = config.display().to_string();
        let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
        args.extend([cmd, "--config", &config]);
        sup.spawn(&n.name(), &exe, &args, &n.key_dir.with_extension("log"))?;
    }
    let ready_by = Instant::now() + Duration::from_secs(20);
    for n in &net.nodes {
        while Metrics::scrape(n.metrics).is_none() {
            died(&mut sup)?;
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            if Instant::now() > ready_by {
                return Err(format!("node {} did not start within 20 s", n.name()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(sup)
}

/// Register `opts.clients` clients round-robin at the providers, wait until
/// the providers have them, then build each client's driver; returns the
/// drivers and the clients' addresses.
fn start_clients(
    opts: &TestnetOptions,
    net: &LocalNet,
    stop: &AtomicBool,
) -> Result<(Vec<Driver>, Vec<Address>), String> {
    let topology = net.topology()?;
    // The client's rates and geometry are the network's, from the signed
    // document, as `loopix client` takes them.
    let geometry = topology.params.geometry()?;
    let rates = Rates::of_network(&topology.params);
    let providers: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| net.nodes[i].role == Role::Provider)
        .collect();
    let client_topology: Arc<ClientTopology> = Arc::new(loopix_client::client_topology(
        &topology,
        loopix_directory::descriptor::epoch_at(
            loopix_engine::keyfile::unix_now_s(),
            topology.epoch_s,
        ),
    )?);
    let mut registrations = Vec::new();
    let mut secrets = Vec::new();
    let mut addresses = Vec::new();
    for c in 0..opts.clients {
        let p = providers[c % providers.len()];
        let reg: Registration = net.register_client(p, &format!("testnet-{c}"))?;
        let secret = SecretKey::generate(&mut OsRng);
        addresses.push(Address {
            provider: reg.provider_id,
            mailbox: reg.mailbox,
            key: secret.public_key(),
        });
        registrations.push(reg);
        secrets.push(secret);
    }
    // The providers pick up new registrations within about a second.
    let provider_metrics: Vec<SocketAddr> =
        providers.iter().map(|&p| net.nodes[p].metrics).collect();
    wait_registered(
        &provider_metrics,
        opts.clients,
        Duration::from_secs(10),
        stop,
    )?;
    // Clients start their Poisson clocks now, not before the wait: a core
    // created earlier would owe a burst of overdue packets.
    let mut drivers = Vec::new();
    for (c, (reg, secret)) in registrations.iter().zip(secrets).enumerate() {
        let client = Client::new(
            geometry,
            Arc::clone(&client_topology),
            rates,
            ClientLimits::default(),
            secret,
            reg.mailbox,
            reg.provider_id,
            driver::now_us(),
            &mut OsRng,
        )
        .map_err(|e| format!("client {c}: {e}"))?;
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("client socket: {e}"))?;
        drivers.push(
            Driver::new(client, reg, geometry, socket).map_err(|e| format!("client {c}: {e}"))?,
        );
    }
    Ok((drivers, addresses))
}

/// Until `end`: notice a dead node or an interrupt, note each node's first
/// (n−1) alarm (seconds after `started`, read every half second), and print
/// progress every second if asked. Returns the outcome and the first alarms.
fn watch(
    opts: &TestnetOptions,
    net: &LocalNet,
    sup: &mut Supervisor,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
    (started, end): (Instant, Instant),
) -> (Result<(), String>, Vec<Option<f64>>) {
    let mut first_alarm = vec![None; net.nodes.len()];
    let mut last: Vec<u64> = vec![0; net.nodes.len()];
    let mut tick = Instant::now();
    let mut alarm_tick = Instant::now();
    let outcome = loop {
        if alarm_tick.elapsed() >= Duration::from_millis(500) {
            alarm_tick = Instant::now();
            for (i, n) in net.nodes.iter().enumerate() {
                if first_alarm[i].is_some() {
                    continue;
                }
                let alarms =
                    Metrics::scrape(n.metrics).map_or(0.0, |m| m.sum(names::NMINUS1_ALARMS, &[]));
                if alarms > 0.0 {
                    first_alarm[i] = Some(started.elapsed().as_secs_f64());
                }
            }
        }
        if let Err(e) = died(sup) {
            break Err(e);
        }
        if stop.load(Ordering::Relaxed) {
            break Err("interrupted".into());
        }
        let now = Instant::now();
        if now >= end {
            break Ok(());
        }
        if opts.progress && now >= tick + Duration::from_secs(1) {
            tick = now;
            let (sent, delivered) = {
                let l = ledger.lock().expect("ledger lock");
                (l.sent.len(), l.delivered.len())
            };
            let mut rates = Vec::new();
            for (i, n) in net.nodes.iter().enumerate() {
                if let Some((r, _, _)) = scrape_node(n.metrics) {
                    rates.push(format!("{} {}", n.name(), r.saturating_sub(last[i])));
                    last[i] = r;
                }
            }
            eprintln!(
                "testnet: {:>3.0} s left  sent {sent}  delivered {delivered}  pps {}",
                end.saturating_duration_since(now).as_secs_f64(),
                rates.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (outcome, first_alarm)
}

/// Every node's counters at the end.
fn node_reports(net: &LocalNet, elapsed_s: f64, first_alarm: &[Option<f64>]) -> Vec<NodeReport> {
    net.nodes
        .iter()
        .zip(first_alarm)
        .map(|(n, &first_alarm_s)| {
            let m = Metrics::scrape(n.metrics).unwrap_or_default();
            let received = m.received() as u64;
            let sum = |name: &str| m.sum(name, &[]) as u64;
            let loops_sent = sum(names::LOOPS_SENT);
            let loops_returned = sum(names::LOOPS_RETURNED);
            // The counters started at zero with the node, so the empty page
            // is the first scrape.
            let pool = (n.role == Role::Mix)
                .then(|| node_load(&n.name(), &Metrics::default(), &m, elapsed_s, &[]).ok())
                .flatten();
            NodeReport {
                name: n.name(),
                role: n.role.name().into(),
                layer: n.layer,
                received,
                forwarded: m.forwarded() as u64,
                pps: received as f64 / elapsed_s,
                drops: drops_of(&m),
                loops_sent,
                loops_returned,
                loops_ratio: (loops_sent > 0).then(|| loops_returned as f64 / loops_sent as f64),
                loops_missed: sum(names::LOOPS_MISSED),
                loops_lost: sum(names::LOOPS_LOST),
                alarms: sum(names::NMINUS1_ALARMS),
                first_alarm_s,
                pool,
            }
        })
        .collect()
}

/// The providers' mean wait for a durable store over the run, seconds.
fn store_wait_s(net: &LocalNet) -> Option<f64> {
    let (mut us, mut n) = (0.0, 0.0);
    for p in net.nodes.iter().filter(|n| n.role == Role::Provider) {
        let m = Metrics::scrape(p.metrics)?;
        us += m.sum(names::INBOX_STORE_WAIT_US, &[]);
        n += m.sum(names::INBOX_STORE_WAITS, &[]);
    }
    (n > 0.0).then(|| us / n / 1e6)
}

/// The run's summary from the clients' ledger and the nodes' counters;
/// the models add the providers' measured store wait (`store_wait_s`).
fn summarize(
    opts: &TestnetOptions,
    l: Ledger,
    elapsed_s: f64,
    nodes: Vec<NodeReport>,
    (message_model, store_wait_s): (Quantiles, Option<f64>),
) -> Summary {
    let sent = l.sent.len() as u64;
    let delivered = l.delivered.len() as u64;
    let duplicated = l.delivered.values().filter(|&&n| n > 1).count() as u64;
    let store = store_wait_s.unwrap_or(0.0);
    let mut lm = opts.loop_model();
    lm.offset += store;
    let message_model = message_model.shifted(store);
    let loop_cdf = |x: f64| lm.cdf(x);
    Summary {
        options: opts.clone(),
        elapsed_s,
        messages_sent: sent,
        messages_delivered: delivered,
        messages_lost: sent.saturating_sub(delivered),
        messages_duplicated: duplicated,
        messages_unsent: l.unsent,
        client_packets: l.packets,
        loops_returned: l.loop_latency_s.len() as u64,
        message_latency: report(l.message_latency_s, message_model, None),
        loop_latency: report(
            l.loop_latency_s,
            model_quantiles(|q| lm.quantile(q)),
            Some(&loop_cdf),
        ),
        store_wait_ms: store_wait_s.map(|s| s * 1e3),
        nodes,
        attack: None,
    }
}

/// The summary as text for the terminal.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let o = &s.options;
    let _ = writeln!(
        out,
        "loopix testnet: {} providers, {} layers x {} mixes, {} clients, {:.1} s",
        o.providers, o.layers, o.mixes_per_layer, o.clients, s.elapsed_s
    );
    let _ = writeln!(
        out,
        "  rates per client: lambda_P {} lambda_L {} lambda_D {} /s, messages {} /s; mean delay {} ms per hop; pull every {} ms; node loops lambda_M {:.4} /s",
        o.lambda_p, o.lambda_l, o.lambda_d, o.message_rate, o.mu_ms, o.pull_ms, o.lambda_m
    );
    if let Some(w) = s.store_wait_ms {
        let _ = writeln!(
            out,
            "  providers' measured store wait (handover to durable commit): {w:.2} ms on average, in both models"
        );
    }
    let _ = writeln!(
        out,
        "messages: sent {}  delivered {}  lost {}  duplicated {}  never left {}",
        s.messages_sent,
        s.messages_delivered,
        s.messages_lost,
        s.messages_duplicated,
        s.messages_unsent
    );
    let _ = writeln!(
        out,
        "client packets: {:?}; loops returned {}",
        s.client_packets, s.loops_returned
    );
    for (name, r) in [
        ("message latency", &s.message_latency),
        ("loop round trip", &s.loop_latency),
    ] {
        let _ = writeln!(
            out,
            "{name} (s, {} samples):        p50      p90      p99      max",
            r.samples
        );
        if let Some(m) = r.measured {
            let _ = writeln!(
                out,
                "  measured            {:8.3} {:8.3} {:8.3} {:8.3}",
                m.p50, m.p90, m.p99, m.max
            );
        }
        let m = r.model;
        let _ = writeln!(
            out,
            "  model               {:8.3} {:8.3} {:8.3} {:8.3} (p99.9)",
            m.p50, m.p90, m.p99, m.max
        );
        if let (Some(d), Some(p)) = (r.ks_d, r.ks_p) {
            let _ = writeln!(
                out,
                "  Kolmogorov-Smirnov against the model: D = {d:.4}, p = {p:.3}"
            );
        }
        if let Some(m) = r.measured {
            let _ = writeln!(
                out,
                "  measured median {:+.1} ms against the model's",
                (m.p50 - r.model.p50) * 1e3
            );
        }
    }
    render_nodes(&mut out, s);
    out
}

/// The per-node table, the nodes in alarm and the attack's counts.
fn render_nodes(out: &mut String, s: &Summary) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "nodes:{:>22} {:>10} {:>10}  {:>17}  {:>6}  drops",
        "pps", "received", "forwarded", "loops sent/back", "alarms"
    );
    for n in &s.nodes {
        let ratio = n
            .loops_ratio
            .map_or("-".to_string(), |r| format!("{:.2}", r));
        let _ = writeln!(
            out,
            "  {:<20} {:>7.1} {:>10} {:>10}  {:>6}/{:<5} {:>4}  {:>6}  {}",
            n.name,
            n.pps,
            n.received,
            n.forwarded,
            n.loops_sent,
            n.loops_returned,
            ratio,
            match n.first_alarm_s {
                Some(t) => format!("{}@{t:.0}s", n.alarms),
                None => n.alarms.to_string(),
            },
            if n.drops.is_empty() {
                "none".to_string()
            } else {
                n.drops
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let loads: Vec<NodeLoad> = s.nodes.iter().filter_map(|n| n.pool.clone()).collect();
    if !loads.is_empty() {
        let _ = writeln!(out, "mix pools (Lemma 1: model pool = lambda/mu):");
        out.push_str(&render_loads(&loads));
    }
    let alarmed: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| n.alarms > 0)
        .map(|n| n.name.clone())
        .collect();
    let _ = writeln!(
        out,
        "(n-1) alarms: {}",
        if alarmed.is_empty() {
            "none".to_string()
        } else {
            alarmed.join(", ")
        }
    );
    if let Some(a) = &s.attack {
        let _ = writeln!(
            out,
            "attack: n-1 on {} blocking {:.0}% of its input: {} datagrams blocked, {} passed",
            a.attack.node,
            a.attack.block * 100.0,
            a.blocked,
            a.forwarded
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_options_are_checked() {
        let b = message_body(42, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_body(&b), Some(42));
        assert_eq!(parse_body(b"other"), None);
        let d = TestnetOptions::default();
        assert!(d.check().is_ok());
        assert_eq!((d.layers, d.clients, d.io), (3, 24, IoChoice::Auto));
        assert!((d.lambda_m - 10.0 / 60.0).abs() < 1e-12 && d.progress);
        let e = TestnetOptions {
            clients: 1,
            ..TestnetOptions::default()
        }
        .check()
        .expect_err("one client");
        assert!(e.contains("--clients"), "{e}");
        let e = TestnetOptions {
            message_rate: 5.0,
            ..TestnetOptions::default()
        }
        .check()
        .expect_err("rate above lambda_p");
        assert!(e.contains("--message-rate"), "{e}");
    }

    #[test]
    fn every_layer_count_to_ten_gets_a_geometry_that_holds_it() {
        for layers in 1..=10 {
            let o = TestnetOptions {
                layers,
                ..TestnetOptions::default()
            };
            assert!(o.check().is_ok(), "{layers} layers");
            let g = o.network().geometry().expect("valid");
            assert!(
                g.max_hops() >= usize::from(layers) + 3,
                "{layers} layers: {g:?}"
            );
        }
        for layers in [0, 11] {
            let e = TestnetOptions {
                layers,
                ..TestnetOptions::default()
            }
            .check()
            .expect_err("out of range");
            assert!(e.contains("--layers must be 1 to 10"), "{e}");
        }
        // A parameter every node would refuse in the document is refused
        // here, naming it.
        let e = TestnetOptions {
            pull_frames: 0,
            ..TestnetOptions::default()
        }
        .check()
        .expect_err("k = 0");
        assert!(e.contains("params.pull_frames"), "{e}");
    }

    #[test]
    fn message_model_is_above_the_loop_model() {
        let o = TestnetOptions::default();
        let xs = message_model_samples(&o, 50_000);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let expect = 1.0 / (o.lambda_p - o.message_rate)
            + BUILD_AHEAD_US as f64 / 1e6
            + o.loop_model().mean();
        assert!((mean - expect).abs() < 0.02 * expect, "{mean} vs {expect}");
    }
}
