//! The paper's section 4.3 experiment (Figures 6, 7 and 8): ε, the
//! adversary's advantage in telling which of two challenge senders S0 and
//! S1 a message at a final mix came from, over a stratified Loopix
//! network, by seeded discrete-event simulation (`engine`), repeated and
//! summarised here.
//!
//! Repetition `r` of a run seeded `seed` draws everything from
//! [`crate::rng::rep_rng`]`(seed, r)`, so results are byte-for-byte the same
//! for a seed whatever the number of threads; repetitions run in parallel
//! on all available cores (`std::thread::scope`).

pub mod engine;
pub mod params;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

pub use engine::{Outcome, Probe};
pub use params::{BurnIn, SimParams};

use crate::error::ParamError;
use crate::rng::rep_rng;
use crate::stats::{entropy_bits, mean_std};

/// One repetition's measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repetition {
    /// `ε = |ln(p0 / p1)|` (equation 3, natural log) at the final mix;
    /// infinite when exactly one of `p0`, `p1` is zero, NaN when both are
    /// (serialised as `null`).
    pub epsilon: f64,
    /// `Pr[S0]` summed over the final mix's pool.
    pub p0: f64,
    /// `Pr[S1]` summed over the final mix's pool.
    pub p1: f64,
    /// Entropy (bits) of the target message's distribution over the
    /// messages that left the last layer, normalised to the mass that left.
    pub target_entropy_bits: f64,
    /// The target's probability mass that left the network by the end.
    pub target_exit_mass: f64,
    /// Events simulated.
    pub events: u64,
}

impl Repetition {
    fn from_outcome(o: &Outcome) -> Self {
        let epsilon = (o.p0 / o.p1).ln().abs();
        Self {
            epsilon,
            p0: o.p0,
            p1: o.p1,
            target_entropy_bits: entropy_bits(o.target_out.iter().copied()),
            target_exit_mass: o.target_out.iter().sum(),
            events: o.events,
        }
    }
}

/// A run of repetitions at one parameter point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The parameters.
    pub params: SimParams,
    /// The seed.
    pub seed: u64,
    /// Mean ε over the repetitions where it is finite.
    pub epsilon_mean: f64,
    /// Standard deviation of those (the paper's error bars).
    pub epsilon_std: f64,
    /// Repetitions where ε was finite (the others had no S0 or no S1
    /// mass at the final mix).
    pub epsilon_finite: u32,
    /// Mean of the target's end-to-end entropy (bits).
    pub entropy_mean_bits: f64,
    /// Its standard deviation.
    pub entropy_std_bits: f64,
    /// Every repetition, in index order.
    pub repetitions: Vec<Repetition>,
}

impl Summary {
    fn new(params: SimParams, seed: u64, repetitions: Vec<Repetition>) -> Self {
        let eps: Vec<f64> = repetitions
            .iter()
            .map(|r| r.epsilon)
            .filter(|e| e.is_finite())
            .collect();
        let ent: Vec<f64> = repetitions.iter().map(|r| r.target_entropy_bits).collect();
        let (epsilon_mean, epsilon_std) = mean_std(&eps);
        let (entropy_mean_bits, entropy_std_bits) = mean_std(&ent);
        Self {
            params,
            seed,
            epsilon_mean,
            epsilon_std,
            epsilon_finite: eps.len() as u32,
            entropy_mean_bits,
            entropy_std_bits,
            repetitions,
        }
    }
}

/// The most repetitions one call accepts.
pub const REPETITIONS_MAX: u32 = 1_000_000;

fn check_repetitions(repetitions: u32) -> Result<(), ParamError> {
    if (1..=REPETITIONS_MAX).contains(&repetitions) {
        Ok(())
    } else {
        Err(ParamError::new(
            "repetitions",
            repetitions,
            "must be from 1 to 1000000",
        ))
    }
}

/// Runs `f(0..jobs)` on all available cores and returns the results in
/// index order. Jobs are handed out one at a time from a shared counter,
/// so the order of results never depends on the thread count.
pub fn parallel_map<T: Send>(jobs: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.max(1));
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(jobs));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        break;
                    }
                    mine.push((i, f(i)));
                }
                // A poisoned lock means another worker panicked; the scope
                // re-raises that panic, so the data here is never used.
                if let Ok(mut d) = done.lock() {
                    d.extend(mine);
                }
            });
        }
    });
    let mut out = done.into_inner().unwrap_or_else(|e| e.into_inner());
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}

/// Runs `repetitions` repetitions of the experiment in parallel.
pub fn simulate(params: &SimParams, repetitions: u32, seed: u64) -> Result<Summary, ParamError> {
    params.validate()?;
    check_repetitions(repetitions)?;
    let reps = parallel_map(repetitions as usize, |r| {
        let o = engine::run(params, rep_rng(seed, r as u64), None);
        Repetition::from_outcome(&o)
    });
    Ok(Summary::new(params.clone(), seed, reps))
}

/// The pool sizes of mix `index` of layer `layer` (both 0-based), sampled
/// every `period_s` through the measurement phase of repetition `rep`:
/// the samples Lemma 1 speaks of.
pub fn pool_occupancy_samples(
    params: &SimParams,
    seed: u64,
    rep: u64,
    layer: u32,
    index: u32,
    period_s: f64,
) -> Result<Vec<u64>, ParamError> {
    params.validate()?;
    if layer >= params.layers {
        return Err(ParamError::new("layer", layer, "must be below layers"));
    }
    if index >= params.width {
        return Err(ParamError::new("index", index, "must be below width"));
    }
    crate::error::positive("period_s", period_s)?;
    let probe = Probe {
        mix: layer * params.width + index,
        period_s,
    };
    Ok(engine::run(params, rep_rng(seed, rep), Some(probe)).probes)
}

/// The parameter a sweep varies (the x axes of Figures 6, 7 and 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepParam {
    /// `λ/µ` (Figure 6): `µ` is set to `λ / value`.
    LambdaOverMu,
    /// `L` (Figure 7): the value is rounded to a whole number of layers.
    Layers,
    /// The corrupt fraction (Figure 8).
    Corrupt,
}

impl SweepParam {
    /// `base` with this parameter set to `value`.
    pub fn apply(self, base: &SimParams, value: f64) -> Result<SimParams, ParamError> {
        let mut p = base.clone();
        match self {
            SweepParam::LambdaOverMu => {
                crate::error::positive("lambda_over_mu", value)?;
                p.mu_per_s = p.sender_rate_per_s / value;
            }
            SweepParam::Layers => {
                if !(value.is_finite() && value >= 1.0 && value <= params::LAYERS_MAX as f64) {
                    return Err(ParamError::new("layers", value, "must be from 1 to 1000"));
                }
                p.layers = value.round() as u32;
            }
            SweepParam::Corrupt => p.corrupt_fraction = value,
        }
        p.validate()?;
        Ok(p)
    }
}

/// Runs `repetitions` at each of `values` of `param` on top of `base`.
/// All (point, repetition) jobs share one pool of threads; repetition `r`
/// of every point uses `rep_rng(seed, r)` (common random numbers, which
/// makes differences between points less noisy).
pub fn sweep(
    base: &SimParams,
    param: SweepParam,
    values: &[f64],
    repetitions: u32,
    seed: u64,
) -> Result<Vec<Summary>, ParamError> {
    check_repetitions(repetitions)?;
    let points: Vec<SimParams> = values
        .iter()
        .map(|&v| param.apply(base, v))
        .collect::<Result<_, _>>()?;
    let per = repetitions as usize;
    let mut reps = parallel_map(points.len() * per, |j| {
        let o = engine::run(&points[j / per], rep_rng(seed, (j % per) as u64), None);
        Repetition::from_outcome(&o)
    })
    .into_iter();
    Ok(points
        .into_iter()
        .map(|p| Summary::new(p, seed, reps.by_ref().take(per).collect()))
        .collect())
}

/// `steps` values evenly spaced from `from` to `to` inclusive (one value,
/// `from`, when `steps` is 1).
pub fn linspace(from: f64, to: f64, steps: u32) -> Vec<f64> {
    match steps {
        0 => Vec::new(),
        1 => vec![from],
        _ => (0..steps)
            .map(|i| from + (to - from) * f64::from(i) / f64::from(steps - 1))
            .collect(),
    }
}
