//! Tests of the section 4.3 simulator against the paper: Lemma 1 by a
//! chi-square test on pool sizes (and that test failing when the
//! simulator's µ is wrong), determinism per seed, the trends of Figures 6,
//! 7 and 8, and the errors for bad parameters. Seeds are fixed, so every
//! result here is deterministic; repetition counts are kept small enough
//! for a debug build.

#![allow(clippy::unwrap_used)] // reason: in a test a failed unwrap is the test failing, with the value printed

use loopix_tuning::anonymity::pool_pmf;
use loopix_tuning::sim::{pool_occupancy_samples, simulate, sweep, BurnIn, SimParams, SweepParam};
use loopix_tuning::stats::chi_square_discrete;

/// A small two-layer network whose second-layer mixes see Poisson input
/// at `U λ / W = 40` per second (Burke: an M/M/inf queue's departures are
/// Poisson), so with `µ = 4` Lemma 1 says their pools are `Pois(10)`.
fn lemma1_net(burn_in: BurnIn) -> SimParams {
    SimParams {
        senders: 40,
        sender_rate_per_s: 2.0,
        mu_per_s: 4.0,
        layers: 2,
        width: 2,
        burn_in_s: 20.0,
        measure_s: 2000.0,
        burn_in,
        ..SimParams::default()
    }
}

/// Pool sizes of mix 1 of layer 1 every 1 s (the autocorrelation at lag 1 s
/// is `e^-µ = e^-4`, small enough to treat the samples as independent).
fn lemma1_p_value(sim: &SimParams, assumed_mu_per_s: f64) -> f64 {
    let samples = pool_occupancy_samples(sim, 11, 0, 1, 1, 1.0).unwrap();
    assert!(samples.len() >= 1900, "{}", samples.len());
    let rate = f64::from(sim.senders) * sim.sender_rate_per_s / f64::from(sim.width);
    let chi =
        chi_square_discrete(&samples, |k| pool_pmf(rate, assumed_mu_per_s, k).unwrap()).unwrap();
    eprintln!("{chi:?}");
    chi.p_value
}

#[test]
fn lemma1_pool_sizes_fit_poisson_rate_over_mu() {
    for burn_in in [BurnIn::Simulated, BurnIn::Exact] {
        let sim = lemma1_net(burn_in);
        let p = lemma1_p_value(&sim, sim.mu_per_s);
        assert!(p > 0.01, "{burn_in:?}: rejected at alpha 0.01, p = {p}");
    }
}

#[test]
fn lemma1_test_rejects_a_simulator_with_the_wrong_mu() {
    // The simulator delays with 2µ (or 1.25µ) while the test assumes µ.
    let right = lemma1_net(BurnIn::Simulated);
    for factor in [2.0, 1.25] {
        let wrong = SimParams {
            mu_per_s: factor * right.mu_per_s,
            ..right.clone()
        };
        let p = lemma1_p_value(&wrong, right.mu_per_s);
        assert!(p < 0.01, "µ x {factor} not rejected, p = {p}");
    }
}

#[test]
fn same_seed_same_bytes_and_sweep_agrees_with_simulate() {
    let p = SimParams {
        measure_s: 30.0,
        ..SimParams::default()
    };
    let a = serde_json::to_string(&simulate(&p, 6, 42).unwrap()).unwrap();
    let b = serde_json::to_string(&simulate(&p, 6, 42).unwrap()).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&simulate(&p, 6, 43).unwrap()).unwrap();
    assert_ne!(a, c);
    // A sweep point is the same run as `simulate` at that point: results
    // depend on (seed, repetition) only, not on how jobs are scheduled.
    let s = sweep(
        &p,
        SweepParam::LambdaOverMu,
        &[1.0, p.lambda_over_mu()],
        6,
        42,
    )
    .unwrap();
    assert_eq!(serde_json::to_string(&s[1]).unwrap(), a);
    // The first repetitions of a longer run are the same repetitions.
    let long = simulate(&p, 9, 42).unwrap();
    let short = simulate(&p, 6, 42).unwrap();
    assert_eq!(long.repetitions[..6], short.repetitions[..]);
}

/// Each case breaks one field of the default parameters.
type Breaker = (&'static str, fn(&mut SimParams));

const BAD: [Breaker; 14] = [
    ("sender_rate_per_s", |p| p.sender_rate_per_s = 0.0),
    ("sender_rate_per_s", |p| p.sender_rate_per_s = -2.0),
    ("mu_per_s", |p| p.mu_per_s = f64::NAN),
    ("mu_per_s", |p| p.mu_per_s = 0.0),
    ("corrupt_fraction", |p| p.corrupt_fraction = 1.5),
    ("corrupt_fraction", |p| p.corrupt_fraction = -0.1),
    ("corrupt_fraction", |p| p.corrupt_fraction = f64::NAN),
    ("layers", |p| p.layers = 0),
    ("width", |p| p.width = 0),
    ("width", |p| {
        p.layers = 1000;
        p.width = 1001;
    }),
    ("senders", |p| p.senders = 1),
    ("measure_s", |p| p.measure_s = 0.0),
    ("burn_in_s", |p| p.burn_in_s = -1.0),
    ("payload_interval_s", |p| p.payload_interval_s = 0.0),
];

#[test]
fn bad_parameters_are_named() {
    let ok = SimParams::default();
    for (name, breaks) in BAD {
        let mut p = ok.clone();
        breaks(&mut p);
        let e = simulate(&p, 1, 1).unwrap_err();
        assert_eq!(e.param, name, "{e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    assert_eq!(simulate(&ok, 0, 1).unwrap_err().param, "repetitions");
    let e = sweep(&ok, SweepParam::LambdaOverMu, &[1.0, -1.0], 1, 1).unwrap_err();
    assert_eq!(e.param, "lambda_over_mu");
    let e = sweep(&ok, SweepParam::Layers, &[0.0], 1, 1).unwrap_err();
    assert_eq!(e.param, "layers");
    let e = sweep(&ok, SweepParam::Corrupt, &[2.0], 1, 1).unwrap_err();
    assert_eq!(e.param, "corrupt_fraction");
    let e = pool_occupancy_samples(&ok, 1, 0, 3, 0, 1.0).unwrap_err();
    assert_eq!(e.param, "layer");
}

/// Repetitions per point for the trend tests, as in the paper. ε per
/// repetition is heavy-tailed (its standard deviation is about its mean),
/// so with 100 the standard error of a mean is about a tenth of it, while
/// the points compared differ by a factor of two or more.
const TREND_REPS: u32 = 100;

fn means(param: SweepParam, values: &[f64]) -> Vec<f64> {
    let pts = sweep(&SimParams::default(), param, values, TREND_REPS, 2017).unwrap();
    for (v, s) in values.iter().zip(&pts) {
        eprintln!(
            "{param:?} {v}: eps {:.4} +- {:.4} ({} finite), entropy {:.3} bits",
            s.epsilon_mean, s.epsilon_std, s.epsilon_finite, s.entropy_mean_bits
        );
        assert_eq!(s.epsilon_finite, TREND_REPS, "{v}");
    }
    pts.iter().map(|s| s.epsilon_mean).collect()
}

#[test]
fn figure6_epsilon_falls_as_lambda_over_mu_grows() {
    let xs = [0.5, 1.0, 2.0, 4.0, 8.0];
    let eps = means(SweepParam::LambdaOverMu, &xs);
    for w in eps.windows(2) {
        assert!(w[1] < w[0], "{eps:?}");
    }
    // The paper: λ/µ = 1 is "a weak form of anonymity", λ/µ >= 2 "a good
    // choice", and ε grows "closer and closer to zero" beyond. Its plot
    // (µ from 0.2 to 2 with λ = 2, three layers of three) has a y axis up
    // to 1.0, so every mean with λ/µ >= 1 lies below 1. The bounds sit
    // three standard errors (100 repetitions) beyond our means over seeds
    // 1 to 7: 0.43 at λ/µ = 1 (sd 0.6), 0.19 at 2, 0.03 at 8.
    assert!(eps[1] > 0.25 && eps[1] < 1.0, "λ/µ = 1: {}", eps[1]);
    assert!(eps[2] < 0.3, "λ/µ = 2: {}", eps[2]);
    assert!(eps[4] < 0.06, "λ/µ = 8: {}", eps[4]);
}

#[test]
fn figure7_epsilon_falls_with_layers() {
    let eps = means(SweepParam::Layers, &[1.0, 2.0, 3.0, 10.0]);
    assert!(eps[0] > eps[2] && eps[2] > eps[3], "{eps:?}");
    assert!(eps[1] > eps[3], "{eps:?}");
    // One layer: "high values of adversary advantage"; three or more: "a
    // good choice". The paper's plot (2 to 19 layers) has a y axis up to
    // 1.0.
    assert!(eps[0] > 1.0, "{eps:?}");
    assert!(eps[1] < 1.0 && eps[2] < 0.35, "{eps:?}");
}

#[test]
fn figure8_epsilon_grows_with_corruption() {
    let eps = means(SweepParam::Corrupt, &[0.0, 0.3, 0.6]);
    assert!(eps[0] < eps[1] && eps[1] < eps[2], "{eps:?}");
}

/// The exact burn-in shortcut gives the same ε and entropy as simulating
/// the burn-in (a short one here, long enough for three layers at µ = 1 to
/// fill: `P(Gamma(3, 1) > 40)` is about `1e-14`), within four standard
/// errors of the difference.
#[test]
fn exact_burn_in_matches_simulated_burn_in() {
    let base = SimParams {
        burn_in_s: 40.0,
        ..SimParams::default()
    };
    let exact = simulate(&base, 100, 5).unwrap();
    let simulated = simulate(
        &SimParams {
            burn_in: BurnIn::Simulated,
            ..base
        },
        100,
        5,
    )
    .unwrap();
    let se = |a: f64, b: f64| ((a * a + b * b) / 100.0).sqrt();
    let (e, s) = (&exact, &simulated);
    eprintln!(
        "exact {} +- {}, simulated {} +- {}; entropy {} vs {}",
        e.epsilon_mean,
        e.epsilon_std,
        s.epsilon_mean,
        s.epsilon_std,
        e.entropy_mean_bits,
        s.entropy_mean_bits
    );
    let d = (e.epsilon_mean - s.epsilon_mean).abs();
    assert!(
        d < 4.0 * se(e.epsilon_std, s.epsilon_std),
        "ε differs by {d}"
    );
    let d = (e.entropy_mean_bits - s.entropy_mean_bits).abs();
    let lim = 4.0 * se(e.entropy_std_bits, s.entropy_std_bits);
    assert!(d < lim, "entropy differs by {d} (limit {lim})");
}
