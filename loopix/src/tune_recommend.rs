//! `loopix tune recommend`: search a grid of network shapes (layers, mixes
//! per layer, mean delay per hop) for those that meet an anonymity target
//! (ε from the section 4.3 simulator, and/or the target's entropy) within
//! a latency budget, and print them sorted by latency with the cover
//! traffic's bandwidth overhead and the load on each mix.
//!
//! The mapping to the simulator (documented in docs/tuning.md): its `U`
//! senders are our clients, its `λ` is each client's whole rate into the
//! mixnet (`λP + λL + λD`: payload, loops and drops all cross every
//! layer), `µ` is one over the mean delay per hop, and S0 and S1 queue a
//! real message every `1 / --message-rate` seconds. Mix loops (`λM`) are
//! not simulated, as in the paper: leaving them out can only raise ε.
//!
//! Invariants: the search is deterministic for a seed (every point uses
//! `sim::simulate` with the same seed), and bounded: at most
//! [`EVENTS_MAX`] simulated events in all, and it stops after `--top`
//! sets that meet the targets.

use clap::Args;
use loopix_tuning::model::LatencyModel;
use loopix_tuning::sim::{self, BurnIn, SimParams};
use serde::Serialize;

use crate::CliError;

/// The most simulated events (estimated) one search may cost; about a
/// minute on two cores.
pub const EVENTS_MAX: f64 = 4.0e8;

/// Burn-in and measurement length in mean delays per hop: the paper's
/// 2500 and 100 time units at µ = 1, shortened to 50 for the measurement
/// (longer than any path of at most 5 layers by a wide margin).
const BURN_IN_MEAN_DELAYS: f64 = 2500.0;
const MEASURE_MEAN_DELAYS: f64 = 50.0;

/// `loopix tune recommend`'s options.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct RecommendArgs {
    /// Largest acceptable ε (natural log, as `tune simulate`): a set meets it
    /// when the mean plus two standard errors is at most this.
    #[arg(long, value_name = "EPSILON")]
    max_epsilon: Option<f64>,
    /// Smallest acceptable mean entropy of the target message, bits.
    #[arg(long, value_name = "BITS")]
    min_entropy_bits: Option<f64>,
    /// End-to-end mean latency budget: (layers + 2) hops × mean delay plus
    /// half the pull period.
    #[arg(long, value_name = "MS")]
    latency_budget_ms: f64,
    /// Expected clients (the simulator's senders U).
    #[arg(long, value_name = "N", default_value_t = 100)]
    clients: u32,
    /// Each client's payload rate λP, per second.
    #[arg(long, value_name = "PER_S", default_value_t = 2.0)]
    lambda_p: f64,
    /// Each client's loop rate λL, per second.
    #[arg(long, value_name = "PER_S", default_value_t = 1.0)]
    lambda_l: f64,
    /// Each client's drop rate λD, per second.
    #[arg(long, value_name = "PER_S", default_value_t = 1.0)]
    lambda_d: f64,
    /// Each node's own loop rate λM, per second.
    #[arg(long, value_name = "PER_S", default_value_t = 1.0)]
    lambda_m: f64,
    /// Real messages each client sends per second (at most λP; the rest of
    /// λP goes out as drops).
    #[arg(long, value_name = "PER_S", default_value_t = 0.5)]
    message_rate: f64,
    /// Providers (they send λM loops too).
    #[arg(long, value_name = "N", default_value_t = 2)]
    providers: u32,
    /// Clients' pull period, ms (the inbox wait is half of it on average).
    #[arg(long, value_name = "MS", default_value_t = 1000.0)]
    pull_ms: f64,
    /// Most layers to try (1 to this).
    #[arg(long, value_name = "N", default_value_t = 5)]
    max_layers: u32,
    /// Mixes per layer to try.
    #[arg(
        long,
        value_name = "N,..",
        value_delimiter = ',',
        default_value = "2,3,4"
    )]
    widths: Vec<u32>,
    /// Mean delays per hop to try, ms.
    #[arg(
        long,
        value_name = "MS,..",
        value_delimiter = ',',
        default_value = "10,20,50,100,200,500,1000,2000"
    )]
    delays_ms: Vec<f64>,
    /// Stop after this many sets meet the targets.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: u32,
    /// Simulator repetitions per set.
    #[arg(long, value_name = "N", default_value_t = 30)]
    repetitions: u32,
    /// The seed; the same seed gives the same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One network shape, before simulation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shape {
    /// Layers of mixes.
    pub layers: u32,
    /// Mixes per layer.
    pub width: u32,
    /// Mean delay per hop, ms.
    pub mean_delay_ms: f64,
    /// End-to-end mean latency, ms.
    pub latency_ms: f64,
}

/// A shape that met the targets, with what it costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// The shape.
    #[serde(flatten)]
    pub shape: Shape,
    /// Mean ε over the finite repetitions.
    pub epsilon_mean: f64,
    /// Its standard deviation.
    pub epsilon_std: f64,
    /// The mean plus two standard errors (`2 sd / sqrt(repetitions)`), the
    /// value compared with `--max-epsilon`.
    pub epsilon_upper: f64,
    /// Mean entropy of the target message, bits.
    pub entropy_mean_bits: f64,
    /// Cover packets per real packet.
    pub cover_per_real: f64,
    /// Packets per second through each mix.
    pub load_pps_per_mix: f64,
    /// The simulator's inputs, so the ε can be checked with `sim::simulate`.
    pub sim: SimParams,
}

/// The whole answer (the JSON document).
#[derive(Debug, Serialize)]
pub struct Answer {
    /// Sets that met the targets, by latency then load.
    pub recommendations: Vec<Recommendation>,
    /// Shapes within the latency budget that were simulated.
    pub simulated: u32,
    /// Shapes within the latency budget.
    pub within_budget: u32,
    /// True when the event budget stopped the search early.
    pub truncated: bool,
    /// The seed.
    pub seed: u64,
    /// Repetitions per set.
    pub repetitions: u32,
}

fn usage(flag: &str, msg: &str) -> CliError {
    CliError::Usage(format!("{flag}: {msg}"))
}

fn positive(flag: &str, v: f64) -> Result<f64, CliError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(usage(
            flag,
            &format!("must be positive and finite, got {v}"),
        ))
    }
}

fn non_negative(flag: &str, v: f64) -> Result<f64, CliError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(usage(flag, &format!("must be zero or more, got {v}")))
    }
}

impl RecommendArgs {
    /// Checks every flag; the error names the first bad one.
    fn check(&self) -> Result<(), CliError> {
        if self.max_epsilon.is_none() && self.min_entropy_bits.is_none() {
            return Err(usage(
                "--max-epsilon",
                "give --max-epsilon and/or --min-entropy-bits",
            ));
        }
        if let Some(e) = self.max_epsilon {
            positive("--max-epsilon", e)?;
        }
        if let Some(h) = self.min_entropy_bits {
            non_negative("--min-entropy-bits", h)?;
        }
        positive("--latency-budget-ms", self.latency_budget_ms)?;
        if !(2..=sim::params::SENDERS_MAX).contains(&self.clients) {
            return Err(usage("--clients", "must be from 2 (S0 and S1) to 1000000"));
        }
        positive("--lambda-p", self.lambda_p)?;
        non_negative("--lambda-l", self.lambda_l)?;
        non_negative("--lambda-d", self.lambda_d)?;
        non_negative("--lambda-m", self.lambda_m)?;
        positive("--message-rate", self.message_rate)?;
        if self.message_rate > self.lambda_p {
            return Err(usage("--message-rate", "must be at most --lambda-p"));
        }
        non_negative("--pull-ms", self.pull_ms)?;
        if !(1..=20).contains(&self.max_layers) {
            return Err(usage("--max-layers", "must be from 1 to 20"));
        }
        if self.widths.is_empty() || self.widths.iter().any(|&w| !(1..=1000).contains(&w)) {
            return Err(usage("--widths", "each must be from 1 to 1000"));
        }
        if self.delays_ms.is_empty() {
            return Err(usage("--delays-ms", "give at least one delay"));
        }
        for &d in &self.delays_ms {
            positive("--delays-ms", d)?;
        }
        if self.top == 0 {
            return Err(usage("--top", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.repetitions) {
            return Err(usage("--repetitions", "must be from 1 to 10000"));
        }
        Ok(())
    }

    /// Each client's whole rate into the mixnet (the simulator's λ).
    fn client_rate_per_s(&self) -> f64 {
        self.lambda_p + self.lambda_l + self.lambda_d
    }

    /// Every shape of the grid within the latency budget, by latency then
    /// by width (wider first: less load per mix).
    fn shapes(&self) -> Vec<Shape> {
        let mut out = Vec::new();
        for layers in 1..=self.max_layers {
            for &width in &self.widths {
                for &mean_delay_ms in &self.delays_ms {
                    let latency_ms = latency_ms(layers, mean_delay_ms, self.pull_ms);
                    if latency_ms <= self.latency_budget_ms {
                        out.push(Shape {
                            layers,
                            width,
                            mean_delay_ms,
                            latency_ms,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            a.latency_ms
                .total_cmp(&b.latency_ms)
                .then(b.width.cmp(&a.width))
        });
        out.dedup();
        out
    }

    /// The simulator's inputs for `shape`.
    fn sim_params(&self, shape: &Shape) -> SimParams {
        let mean_delay_s = shape.mean_delay_ms / 1000.0;
        let payload_interval_s = 1.0 / self.message_rate;
        SimParams {
            senders: self.clients,
            sender_rate_per_s: self.client_rate_per_s(),
            mu_per_s: 1.0 / mean_delay_s,
            payload_interval_s,
            layers: shape.layers,
            width: shape.width,
            corrupt_fraction: 0.0,
            burn_in_s: BURN_IN_MEAN_DELAYS * mean_delay_s,
            measure_s: (MEASURE_MEAN_DELAYS * mean_delay_s).max(2.0 * payload_interval_s),
            burn_in: BurnIn::Exact,
        }
    }

    fn meets(&self, eps: f64, finite: bool, entropy_bits: f64) -> bool {
        let eps_ok = self.max_epsilon.is_none_or(|m| finite && eps <= m);
        let ent_ok = self.min_entropy_bits.is_none_or(|m| entropy_bits >= m);
        eps_ok && ent_ok
    }
}

/// End-to-end mean latency, ms: `(layers + 2)` exponential hops (the
/// layers and both providers) plus the mean inbox wait.
pub fn latency_ms(layers: u32, mean_delay_ms: f64, pull_ms: f64) -> f64 {
    LatencyModel {
        hops: layers + 2,
        mean_delay: mean_delay_ms,
        pull_period: pull_ms,
        offset: 0.0,
    }
    .mean()
}

/// Cover packets per real packet: each client's drops and loops, the part
/// of λP not carrying a real message, and every node's own loops, over
/// the clients' real messages.
pub fn cover_per_real(
    clients: u32,
    rates: [f64; 3],
    message_rate: f64,
    nodes: u32,
    lambda_m: f64,
) -> f64 {
    let [lambda_p, lambda_l, lambda_d] = rates;
    let clients = f64::from(clients);
    let cover =
        clients * ((lambda_p - message_rate) + lambda_l + lambda_d) + f64::from(nodes) * lambda_m;
    cover / (clients * message_rate)
}

/// Packets per second through one mix: every packet crosses one mix of
/// each layer, so a layer's `width` mixes share the clients' traffic and
/// every node's loops.
pub fn load_pps_per_mix(
    clients: u32,
    client_rate: f64,
    nodes: u32,
    lambda_m: f64,
    width: u32,
) -> f64 {
    (f64::from(clients) * client_rate + f64::from(nodes) * lambda_m) / f64::from(width)
}

/// Runs the search.
pub fn search(a: &RecommendArgs) -> Result<Answer, CliError> {
    a.check()?;
    let shapes = a.shapes();
    let mut answer = Answer {
        recommendations: Vec::new(),
        simulated: 0,
        within_budget: shapes.len() as u32,
        truncated: false,
        seed: a.seed,
        repetitions: a.repetitions,
    };
    let mut events = 0.0;
    for shape in &shapes {
        let p = a.sim_params(shape);
        events += estimated_events(&p, a.repetitions);
        if events > EVENTS_MAX {
            answer.truncated = true;
            break;
        }
        let s = sim::simulate(&p, a.repetitions, a.seed)
            .map_err(|e| CliError::Failed(format!("simulator: {e}")))?;
        answer.simulated += 1;
        let finite = s.epsilon_finite == a.repetitions;
        let upper = epsilon_upper(s.epsilon_mean, s.epsilon_std, a.repetitions);
        if !a.meets(upper, finite, s.entropy_mean_bits) {
            continue;
        }
        let nodes = shape.layers * shape.width + a.providers;
        answer.recommendations.push(Recommendation {
            shape: *shape,
            epsilon_mean: s.epsilon_mean,
            epsilon_std: s.epsilon_std,
            epsilon_upper: upper,
            entropy_mean_bits: s.entropy_mean_bits,
            cover_per_real: cover_per_real(
                a.clients,
                [a.lambda_p, a.lambda_l, a.lambda_d],
                a.message_rate,
                nodes,
                a.lambda_m,
            ),
            load_pps_per_mix: load_pps_per_mix(
                a.clients,
                a.client_rate_per_s(),
                nodes,
                a.lambda_m,
                shape.width,
            ),
            sim: p,
        });
        if answer.recommendations.len() >= a.top as usize {
            break;
        }
    }
    Ok(answer)
}

/// The mean ε plus two standard errors: the simulator's ε is noisy (its
/// sd is of the order of its mean), so a set is judged by the top of an
/// approximate 95 % confidence interval of its mean, not the mean alone.
pub fn epsilon_upper(mean: f64, sd: f64, repetitions: u32) -> f64 {
    mean + 2.0 * sd / f64::from(repetitions).sqrt()
}

/// Events one search point costs, roughly: every message sent in the
/// measurement phase makes a send and one departure per layer.
fn estimated_events(p: &SimParams, repetitions: u32) -> f64 {
    let messages = f64::from(p.senders) * p.sender_rate_per_s * p.measure_s;
    messages * f64::from(p.layers + 1) * f64::from(repetitions)
}

/// `loopix tune recommend`.
pub fn recommend(a: &RecommendArgs) -> Result<(), CliError> {
    let answer = search(a)?;
    if answer.truncated {
        eprintln!(
            "loopix: the search stopped after {} of {} sets at its bound of {EVENTS_MAX:e} \
             simulated events; fewer --clients, --repetitions or a narrower grid search further",
            answer.simulated, answer.within_budget
        );
    }
    if answer.recommendations.is_empty() {
        return Err(CliError::Failed(impossible(a, &answer)));
    }
    let out = if a.json {
        let mut s = serde_json::to_string_pretty(&answer)
            .map_err(|e| CliError::Failed(format!("json: {e}")))?;
        s.push('\n');
        s
    } else {
        table(&answer)
    };
    print!("{out}");
    Ok(())
}

/// The message when nothing met the targets.
fn impossible(a: &RecommendArgs, answer: &Answer) -> String {
    let mut target = Vec::new();
    if let Some(e) = a.max_epsilon {
        target.push(format!("ε <= {e}"));
    }
    if let Some(h) = a.min_entropy_bits {
        target.push(format!("entropy >= {h} bits"));
    }
    let target = target.join(" and ");
    if answer.within_budget == 0 {
        let fastest = latency_ms(
            1,
            a.delays_ms.iter().copied().fold(f64::INFINITY, f64::min),
            a.pull_ms,
        );
        return format!(
            "no parameter set fits a latency budget of {} ms: the fastest in the grid \
             (1 layer, the shortest delay, pull {} ms) takes {fastest} ms; raise \
             --latency-budget-ms or lower --pull-ms or --delays-ms",
            a.latency_budget_ms, a.pull_ms
        );
    }
    let stopped = if answer.truncated {
        " before the search stopped at its event bound"
    } else {
        ""
    };
    format!(
        "no parameter set meets {target} within {} ms{stopped} ({} of {} sets within the budget \
         simulated); raise --latency-budget-ms, --clients or the cover rates, or relax the target",
        a.latency_budget_ms, answer.simulated, answer.within_budget
    )
}

fn table(answer: &Answer) -> String {
    let mut out = format!(
        "{:>6} {:>5} {:>9} {:>11} {:>9} {:>8} {:>9} {:>12} {:>14} {:>12}\n",
        "layers",
        "width",
        "delay_ms",
        "latency_ms",
        "eps_mean",
        "eps_sd",
        "eps_upper",
        "entropy_bits",
        "cover_per_real",
        "pps_per_mix"
    );
    for r in &answer.recommendations {
        out.push_str(&format!(
            "{:>6} {:>5} {:>9.1} {:>11.1} {:>9.4} {:>8.4} {:>9.4} {:>12.3} {:>14.2} {:>12.1}\n",
            r.shape.layers,
            r.shape.width,
            r.shape.mean_delay_ms,
            r.shape.latency_ms,
            r.epsilon_mean,
            r.epsilon_std,
            r.epsilon_upper,
            r.entropy_mean_bits,
            r.cover_per_real,
            r.load_pps_per_mix
        ));
    }
    out.push_str(&format!(
        "{} of {} sets within the latency budget simulated, {} repetitions each, seed {}\n",
        answer.simulated, answer.within_budget, answer.repetitions, answer.seed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_layers_providers_and_half_the_pull() {
        assert_eq!(latency_ms(3, 100.0, 1000.0), 5.0 * 100.0 + 500.0);
    }

    #[test]
    fn cover_counts_drops_loops_and_spare_payload_slots() {
        // 10 clients, λP = 2 with 0.5 real, λL = λD = 1; 4 nodes at λM = 1.
        let c = cover_per_real(10, [2.0, 1.0, 1.0], 0.5, 4, 1.0);
        assert!((c - (10.0 * 3.5 + 4.0) / 5.0).abs() < 1e-12);
    }

    #[test]
    fn load_spreads_over_a_layer() {
        assert_eq!(load_pps_per_mix(10, 4.0, 4, 1.0, 2), 22.0);
    }
}
