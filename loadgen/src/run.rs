//! The modes: [`run_steps`] prepares and replays one step after another,
//! computes a [`StepResult`] per step, and stops a sweep once a step passes
//! a bound; the knee is the last step within bounds.
//!
//! Definitions (also in README.md):
//! - offered: packets sent per second over the step's duration (total: every
//!   stream; real: packets carrying real messages);
//! - delivered real: real messages received once per second;
//! - loss: 1 - (loops back + real messages received) / (loops + real sent).
//!   Drops are never seen again by clients and loops and real messages look
//!   like drops to the network, so the loss of what comes back estimates
//!   the loss of everything; delivered total = offered total x (1 - loss);
//! - latencies count from the scheduled send time.

use std::net::SocketAddr;

use loopix_tuning::model::LatencyModel;
use serde::Serialize;

use crate::config::{Scenario, SweepBy};
use crate::emulator::{Emulator, Measured, ReplayOptions, StepSpec};

/// The paper's measured throughput of one node, packets per second
/// (section 6.1: about 300 messages a second per mix node).
pub const PAPER_NODE_PPS: f64 = 300.0;

/// One node's figures for a step, from its /metrics.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStep {
    /// Name given in `metrics`.
    pub name: String,
    /// Packets forwarded per second (`loopix_forwarded_packets_total`).
    pub pps: f64,
    /// Drops per second (`loopix_dropped_total`).
    pub drops_per_s: f64,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Step number.
    pub step: u32,
    /// Active clients.
    pub clients: usize,
    /// Per-client rates.
    pub lambda_p: f64,
    /// Per-client rates.
    pub lambda_l: f64,
    /// Per-client rates.
    pub lambda_d: f64,
    /// Sending time, seconds.
    pub duration_s: f64,
    /// Packets sent per second, every stream.
    pub offered_pps_total: f64,
    /// Real-message packets sent per second.
    pub offered_pps_real: f64,
    /// offered total x (1 - loss).
    pub delivered_pps_total: f64,
    /// Real messages received per second.
    pub delivered_pps_real: f64,
    /// Loss of what comes back (loops and real messages).
    pub loss: f64,
    /// Loss of real messages alone.
    pub loss_real: f64,
    /// End-to-end latency quantiles of real messages, ms.
    pub latency_p50_ms: f64,
    /// p90.
    pub latency_p90_ms: f64,
    /// p99.
    pub latency_p99_ms: f64,
    /// p99.9.
    pub latency_p999_ms: f64,
    /// Loop round trip p50, ms.
    pub loop_rtt_p50_ms: f64,
    /// Loop round trip p99, ms.
    pub loop_rtt_p99_ms: f64,
    /// Send time minus scheduled time, p99, ms.
    pub lateness_p99_ms: f64,
    /// Lateness maximum, ms.
    pub lateness_max_ms: f64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Real messages sent.
    pub real_sent: u64,
    /// Real messages received.
    pub real_received: u64,
    /// Loops sent.
    pub loops_sent: u64,
    /// Loops back.
    pub loops_received: u64,
    /// Pulls sent.
    pub pulls_sent: u64,
    /// Messages the cores refused (buffer full).
    pub real_refused: u64,
    /// Frames dropped at the emulator, all reasons.
    pub frames_dropped: u64,
    /// Per node, from /metrics (empty without metrics endpoints).
    pub nodes: Vec<NodeStep>,
    /// Highest node throughput / 300 (the paper's per-node figure).
    pub paper_ratio: Option<f64>,
    /// Loss and p99 within the bounds.
    pub within_bounds: bool,
    /// Every counter of the replay.
    pub counts: crate::emulator::ReplayCounts,
    /// Empirical latency CDF, (ms, fraction), for the plot.
    #[serde(skip)]
    pub latency_cdf: Vec<(f64, f64)>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario as run.
    pub scenario: Scenario,
    /// One row per step.
    pub steps: Vec<StepResult>,
    /// The last step within bounds (sweep), if any.
    pub knee_step: Option<u32>,
    /// Offered total at the knee.
    pub knee_offered_pps: Option<f64>,
    /// The latency model the CDF plot compares with.
    pub model_hops: u32,
    /// Highest node throughput seen over 300 packets/s, if node metrics
    /// were read.
    pub paper_ratio: Option<f64>,
    /// Why a sweep ended before a bound was passed, if it did.
    pub stopped: Option<String>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn node_counters(metrics: &[(String, SocketAddr)]) -> Vec<Option<(f64, f64)>> {
    metrics
        .iter()
        .map(|(_, a)| {
            let m = loopix_testkit::metrics::Metrics::scrape(*a)?;
            Some((
                m.forwarded(),
                m.sum(loopix_engine::metrics::names::DROPPED, &[]),
            ))
        })
        .collect()
}

/// Turn a replay's measurements into a row.
#[allow(clippy::too_many_arguments)] // reason: each is one distinct input of the row
pub fn step_result(
    s: &Scenario,
    spec: &StepSpec,
    m: &Measured,
    real_refused: u64,
    nodes: Vec<NodeStep>,
) -> StepResult {
    let d = spec.duration_us as f64 / 1e6;
    let c = &m.counts;
    let back = c.loops_received + c.real_received;
    let out = c.loops_sent + c.real_sent;
    let loss = if out == 0 {
        0.0
    } else {
        (1.0 - back as f64 / out as f64).clamp(0.0, 1.0)
    };
    let loss_real = if c.real_sent == 0 {
        0.0
    } else {
        (1.0 - c.real_received as f64 / c.real_sent as f64).clamp(0.0, 1.0)
    };
    let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            ms(h.value_at_quantile(q))
        }
    };
    let p99 = q(&m.latency, 0.99);
    let max_node = nodes
        .iter()
        .map(|n| n.pps)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let mut cdf = Vec::new();
    if !m.latency.is_empty() {
        for i in 0..=200 {
            let f = f64::from(i) / 200.0;
            cdf.push((ms(m.latency.value_at_quantile(f)), f));
        }
    }
    let frames_dropped = c.drop_wrong_source
        + c.drop_wrong_length
        + c.drop_wrong_kind
        + c.drop_unknown_slot
        + c.drop_replayed
        + c.drop_bad_tag
        + c.drop_malformed
        + c.drop_unknown_request;
    let offered_total = c.packets_sent as f64 / d;
    StepResult {
        step: spec.step,
        clients: spec.active,
        lambda_p: spec.rates.lambda_p,
        lambda_l: spec.rates.lambda_l,
        lambda_d: spec.rates.lambda_d,
        duration_s: d,
        offered_pps_total: offered_total,
        offered_pps_real: c.real_sent as f64 / d,
        delivered_pps_total: offered_total * (1.0 - loss),
        delivered_pps_real: (c.real_received.min(c.real_sent)) as f64 / d,
        loss,
        loss_real,
        latency_p50_ms: q(&m.latency, 0.5),
        latency_p90_ms: q(&m.latency, 0.9),
        latency_p99_ms: p99,
        latency_p999_ms: q(&m.latency, 0.999),
        loop_rtt_p50_ms: q(&m.loop_rtt, 0.5),
        loop_rtt_p99_ms: q(&m.loop_rtt, 0.99),
        lateness_p99_ms: q(&m.lateness, 0.99),
        lateness_max_ms: ms(m.lateness.max()),
        packets_sent: c.packets_sent,
        real_sent: c.real_sent,
        real_received: c.real_received,
        loops_sent: c.loops_sent,
        loops_received: c.loops_received,
        pulls_sent: c.pulls_sent,
        real_refused,
        frames_dropped,
        nodes,
        paper_ratio: max_node.map(|x| x / PAPER_NODE_PPS),
        within_bounds: loss <= s.loss_bound && p99 <= s.p99_bound_ms,
        counts: c.clone(),
        latency_cdf: cdf,
    }
}

/// Run the scenario's steps on `emu` (one for `run`, up to `max_steps` for
/// `sweep`), calling `on_step` after each. Errors are the emulator's (the
/// first step over the memory cap, a socket failure); a later sweep step
/// that cannot be prepared ends the sweep and its reason goes to `stopped`.
pub fn run_steps(
    s: &Scenario,
    emu: &mut Emulator,
    metrics: &[(String, SocketAddr)],
    stopped: &mut Option<String>,
    mut on_step: impl FnMut(&StepResult),
) -> Result<Vec<StepResult>, String> {
    let steps = match s.mode {
        crate::config::Mode::Run => 1,
        crate::config::Mode::Sweep => s.max_steps,
    };
    let mut results = Vec::new();
    let mut vstart = 0u64;
    let clients = s.clients.min(emu.len());
    for step in 0..steps {
        let k = s.factor.powi(step as i32);
        let (rate_k, active) = match (s.mode, s.sweep_by) {
            (crate::config::Mode::Sweep, SweepBy::Rate) => (k, clients),
            (crate::config::Mode::Sweep, SweepBy::Clients) => {
                // Start from clients / factor^(steps-1) so the last step
                // uses them all.
                let first = clients as f64 / s.factor.powi(steps as i32 - 1);
                (1.0, ((first * k).round() as usize).clamp(1, clients))
            }
            _ => (1.0, clients),
        };
        let spec = StepSpec {
            step,
            rates: s.rates(rate_k),
            active,
            duration_us: (s.duration_s * 1e6) as u64,
            drain_us: (s.drain_s * 1e6) as u64,
            real_share: s.real_share,
            memory_cap_bytes: s.memory_cap_mb << 20,
        };
        if s.progress {
            eprintln!(
                "step {step}: preparing {active} clients x {:.3} packets/s x {} s \
                 (about {} MB)",
                spec.rates.lambda_p + spec.rates.lambda_l + spec.rates.lambda_d,
                s.duration_s,
                spec.estimated_bytes(&loopix_crypto::Geometry::DEFAULT) >> 20
            );
        }
        let prepare_started = std::time::Instant::now();
        let schedule = match emu.prepare(vstart, &spec) {
            Ok(x) => x,
            // A later sweep step over the memory cap ends the sweep; the
            // steps so far are reported. The first step's refusal is an
            // error: nothing has been sent yet.
            Err(e) if step > 0 => {
                *stopped = Some(e);
                break;
            }
            Err(e) => return Err(e),
        };
        vstart = schedule.drain_end_us;
        if s.progress {
            eprintln!(
                "step {step}: prepared {} packets and {} pulls ({} MB) in {:.1} s; sending",
                schedule.packets(),
                schedule.pulls(),
                schedule.bytes() >> 20,
                prepare_started.elapsed().as_secs_f64()
            );
        }
        let before = node_counters(metrics);
        let m = emu
            .replay(
                &schedule,
                &ReplayOptions {
                    record_departures: false,
                    progress: s.progress,
                    label: format!("step {step}"),
                },
            )
            .map_err(|e| format!("step {step}: {e}"))?;
        let nodes = node_steps(metrics, &before, m.send_seconds);
        let r = step_result(s, &spec, &m, schedule.real_refused, nodes);
        drop(schedule);
        on_step(&r);
        let stop = s.mode == crate::config::Mode::Sweep && !r.within_bounds;
        results.push(r);
        if stop {
            break;
        }
    }
    Ok(results)
}

/// Each node's forwarding and drop rates over a step, from its counters
/// read before it and now (nodes whose metrics did not answer are left
/// out).
fn node_steps(
    metrics: &[(String, SocketAddr)],
    before: &[Option<(f64, f64)>],
    send_seconds: f64,
) -> Vec<NodeStep> {
    let after = node_counters(metrics);
    let secs = send_seconds.max(1e-3);
    metrics
        .iter()
        .zip(before.iter().zip(&after))
        .filter_map(|((name, _), (b, a))| {
            let (b, a) = ((*b)?, (*a)?);
            Some(NodeStep {
                name: name.clone(),
                pps: (a.0 - b.0) / secs,
                drops_per_s: (a.1 - b.1) / secs,
            })
        })
        .collect()
}

/// Assemble the report.
pub fn report(s: &Scenario, steps: Vec<StepResult>, layers: u8, stopped: Option<String>) -> Report {
    let knee = steps
        .iter()
        .take_while(|r| r.within_bounds)
        .last()
        .map(|r| (r.step, r.offered_pps_total));
    let paper_ratio = steps
        .iter()
        .filter_map(|r| r.paper_ratio)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    Report {
        scenario: s.clone(),
        knee_step: knee.map(|k| k.0),
        knee_offered_pps: knee.map(|k| k.1),
        steps,
        model_hops: u32::from(layers) + 2,
        paper_ratio,
        stopped,
    }
}

/// The latency model of a scenario, in milliseconds: `layers + 2`
/// exponential delays (the first provider, every layer, and the last
/// provider before it stores), a uniform wait for the pull, and the
/// provider's fixed answer delay (the nodes' default
/// `provider.answer_delay_us`).
pub fn latency_model(s: &Scenario, layers: u8) -> LatencyModel {
    LatencyModel {
        hops: u32::from(layers) + 2,
        mean_delay: s.mean_delay_ms,
        pull_period: s.pull_ms as f64,
        offset: loopix_engine::config::DEFAULT_ANSWER_DELAY_US as f64 / 1e3,
    }
}
