//! The anonymity of one Poisson mix (paper section 4.1.3 and Appendix A):
//! Lemma 1 (the pool of a mix with Poisson input at rate λ and `Exp(µ)`
//! delays holds `Pois(λ/µ)` messages in steady state), Theorem 1 and
//! Theorem 2 (the probability that an outgoing message is a given earlier
//! input, without and with the mix's own loops at rate `λM`), and the
//! incremental entropy `H_t` of Appendix A.1 (Figure 5), with a seeded
//! single-mix simulation of it.
//!
//! Rates are per second (the paper's "time unit"); entropies are in bits.
//! Every function checks its arguments and names the bad one in its error.

use rand_core::RngCore;

use crate::error::{positive, ParamError};
use crate::rng::{exp_sample, uniform};
use crate::stats::ln_factorial;

/// Lemma 1: the steady-state pool size of a Poisson mix with input rate
/// `rate_per_s` and delay parameter `mu_per_s` is `Pois(rate / mu)`. This
/// is its mean, `λ/µ` messages.
pub fn pool_mean(rate_per_s: f64, mu_per_s: f64) -> Result<f64, ParamError> {
    Ok(positive("rate_per_s", rate_per_s)? / positive("mu_per_s", mu_per_s)?)
}

/// The pmf of `Pois(mean)` at `k`, computed in log space so that large
/// means do not underflow. `mean` must be positive.
pub fn poisson_pmf(mean: f64, k: u64) -> Result<f64, ParamError> {
    let m = positive("mean", mean)?;
    Ok((k as f64 * m.ln() - m - ln_factorial(k)).exp())
}

/// Lemma 1: `Pr(pool holds k messages)` in steady state, `Pois(λ/µ)` at
/// `k`.
pub fn pool_pmf(rate_per_s: f64, mu_per_s: f64, k: u64) -> Result<f64, ParamError> {
    poisson_pmf(pool_mean(rate_per_s, mu_per_s)?, k)
}

/// The distribution of the number of other messages a target message is
/// mixed with, i.e. that share the pool with it at some time while it
/// waits (a consequence of Lemma 1). By PASTA the target finds
/// `N0 ~ Pois(λ/µ)` messages on arrival; while it waits `Exp(µ)`, `N1`
/// more arrive, geometric with `Pr(N1 = j) = (µ/(λ+µ)) (λ/(λ+µ))^j`.
/// The two are independent, so the pmf at `k` is their convolution.
pub fn mixed_with_target_pmf(rate_per_s: f64, mu_per_s: f64, k: u64) -> Result<f64, ParamError> {
    let mean = pool_mean(rate_per_s, mu_per_s)?;
    let q = rate_per_s / (rate_per_s + mu_per_s);
    let mut acc = 0.0;
    for i in 0..=k {
        let geometric = (1.0 - q) * q.powi((k - i) as i32);
        acc += poisson_pmf(mean, i)? * geometric;
    }
    Ok(acc)
}

/// The mean of [`mixed_with_target_pmf`]: `λ/µ` found on arrival plus
/// `λ/µ` arriving during the wait, `2λ/µ`.
pub fn mixed_with_target_mean(rate_per_s: f64, mu_per_s: f64) -> Result<f64, ParamError> {
    Ok(2.0 * pool_mean(rate_per_s, mu_per_s)?)
}

/// The adversary's observation `o(n, k, l)` of section 4.1.3: `n`
/// messages were mixed together, `n - k` of them left (so `k` remain),
/// then `l` more arrived before the next departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Messages mixed together initially (`n >= 1`).
    pub n: u64,
    /// Of those, still in the pool (`k <= n`).
    pub k: u64,
    /// Arrivals since (`k + l >= 1`: the pool is not empty).
    pub l: u64,
}

impl Observation {
    /// Checks `n >= 1`, `k <= n` and `k + l >= 1`.
    pub fn new(n: u64, k: u64, l: u64) -> Result<Self, ParamError> {
        if n == 0 {
            return Err(ParamError::new("n", n, "must be at least 1"));
        }
        if k > n {
            return Err(ParamError::new("k", k, "must be at most n"));
        }
        if k + l == 0 {
            return Err(ParamError::new("l", l, "must make k + l at least 1"));
        }
        Ok(Self { n, k, l })
    }
}

/// The probabilities that the next outgoing message is a given input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProbabilities {
    /// `Pr(m = m1)` for each one of the `n` initial messages.
    pub initial_each: f64,
    /// `Pr(m = m2)` for each one of the `l` later arrivals.
    pub later_each: f64,
    /// `Pr(m is the mix's own loop)` (zero in Theorem 1).
    pub loop_message: f64,
}

impl LinkProbabilities {
    /// Total over all `n + l` inputs and the loop: one.
    pub fn total(&self, o: Observation) -> f64 {
        self.initial_each * o.n as f64 + self.later_each * o.l as f64 + self.loop_message
    }
}

/// Theorem 1 (equations 1 and 2): `Pr(m = m1) = k / (n (l + k))` and
/// `Pr(m = m2) = 1 / (l + k)`. By the memoryless property every message in
/// the pool leaves next with equal probability.
pub fn theorem1(o: Observation) -> LinkProbabilities {
    let pool = (o.k + o.l) as f64;
    LinkProbabilities {
        initial_each: o.k as f64 / (o.n as f64 * pool),
        later_each: 1.0 / pool,
        loop_message: 0.0,
    }
}

/// Theorem 2 (and equation 8 of Appendix A.2): with the mix emitting its
/// own loops at rate `loop_rate_per_s` (`λM`, may be zero),
/// `Pr(m = m1) = (k/n) µ / ((l+k) µ + λM)`, `Pr(m = m2) = µ / ((l+k) µ +
/// λM)` and the output is a loop with `λM / ((l+k) µ + λM)`.
pub fn theorem2(
    o: Observation,
    mu_per_s: f64,
    loop_rate_per_s: f64,
) -> Result<LinkProbabilities, ParamError> {
    let mu = positive("mu_per_s", mu_per_s)?;
    let lm = crate::error::non_negative("loop_rate_per_s", loop_rate_per_s)?;
    let denom = (o.k + o.l) as f64 * mu + lm;
    Ok(LinkProbabilities {
        initial_each: o.k as f64 / o.n as f64 * mu / denom,
        later_each: mu / denom,
        loop_message: lm / denom,
    })
}

/// One step of the incremental entropy of Appendix A.1. The pool before a
/// departure holds `old` messages left from earlier rounds, each linked to
/// earlier inputs with a distribution of entropy `h_prev_bits`, and `new`
/// inputs that arrived since the last departure. The departing message is
/// each of the `old + new` with equal probability (Theorem 1), and the
/// supports are disjoint, so by the chain rule
/// `H_t = H2(old/(old+new)) + old/(old+new) H_{t-1} + new/(old+new) log2(new)`,
/// with `H_0 = 0`. An empty pool (nothing can depart) gives 0.
pub fn entropy_step(h_prev_bits: f64, old: u64, new: u64) -> f64 {
    let total = (old + new) as f64;
    if total == 0.0 {
        return 0.0;
    }
    let (po, pn) = (old as f64 / total, new as f64 / total);
    let h2 = crate::stats::entropy_bits([po, pn]);
    let h_new = if new > 0 { (new as f64).log2() } else { 0.0 };
    h2 + po * h_prev_bits + pn * h_new
}

/// Figure 5: the mean entropy `H_t` (bits) of the messages leaving one
/// Poisson mix with input rate `rate_per_s` and delay parameter
/// `mu_per_s`, over the departures in `(burn_in_s, burn_in_s +
/// duration_s]`, the mix starting empty at time 0. `rng` drives the
/// arrivals and delays; the same state gives the same answer.
pub fn single_mix_entropy_bits(
    rate_per_s: f64,
    mu_per_s: f64,
    burn_in_s: f64,
    duration_s: f64,
    rng: &mut impl RngCore,
) -> Result<f64, ParamError> {
    let lambda = positive("rate_per_s", rate_per_s)?;
    let mu = positive("mu_per_s", mu_per_s)?;
    crate::error::non_negative("burn_in_s", burn_in_s)?;
    let end = burn_in_s + positive("duration_s", duration_s)?;
    // The pool is an M/M/inf queue: with n messages, the next event is an
    // arrival with probability λ / (λ + nµ), else a departure.
    let (mut t, mut old, mut new, mut h) = (0.0, 0u64, 0u64, 0.0);
    let (mut sum, mut count) = (0.0, 0u64);
    loop {
        let n = old + new;
        let total_rate = lambda + n as f64 * mu;
        t += exp_sample(rng, total_rate);
        if t > end {
            break;
        }
        if uniform(rng) * total_rate < lambda {
            new += 1;
            continue;
        }
        h = entropy_step(h, old, new);
        if t > burn_in_s {
            sum += h;
            count += 1;
        }
        // All messages left in the pool now share the departed one's
        // belief: they become the next round's `old`.
        old = n - 1;
        new = 0;
    }
    Ok(if count == 0 { 0.0 } else { sum / count as f64 })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: in a test a failed unwrap is the test failing, with the value printed
mod tests {
    use super::*;
    use crate::rng::exp_sample;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn lemma1_pmf_sums_to_one_with_mean_rate_over_mu() {
        let (lambda, mu) = (6.0, 2.0);
        let pmf: Vec<f64> = (0..100).map(|k| pool_pmf(lambda, mu, k).unwrap()).collect();
        let total: f64 = pmf.iter().sum();
        let mean: f64 = pmf.iter().enumerate().map(|(k, p)| k as f64 * p).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        assert!((mean - 3.0).abs() < 1e-9 && (pool_mean(lambda, mu).unwrap() - 3.0).abs() < 1e-12);
        // Large means do not underflow.
        assert!(poisson_pmf(5000.0, 5000).unwrap() > 1e-3);
    }

    #[test]
    fn mixed_with_target_is_a_distribution_with_mean_two_rho() {
        let (lambda, mu) = (3.0, 2.0);
        let pmf: Vec<f64> = (0..200)
            .map(|k| mixed_with_target_pmf(lambda, mu, k).unwrap())
            .collect();
        let total: f64 = pmf.iter().sum();
        let mean: f64 = pmf.iter().enumerate().map(|(k, p)| k as f64 * p).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let want = mixed_with_target_mean(lambda, mu).unwrap();
        assert!((mean - want).abs() < 1e-6, "{mean} {want}");
    }

    /// For every 25th message of a simulated Poisson mix, the number of
    /// other messages whose stay overlaps its own, against the pmf.
    #[test]
    fn mixed_with_target_matches_a_simulated_mix() {
        let (lambda, mu) = (5.0, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut t, mut stays) = (0.0, Vec::new());
        while stays.len() < 30_000 {
            t += exp_sample(&mut rng, lambda);
            stays.push((t, t + exp_sample(&mut rng, mu)));
        }
        let longest = stays.iter().map(|(a, d)| d - a).fold(0.0, f64::max);
        let mut samples = Vec::new();
        // Skip the first and last stretches, where the mix is not in
        // steady state or the run ends.
        for i in (1000..stays.len() - 1000).step_by(25) {
            let (a, d) = stays[i];
            let overlapping = stays
                .iter()
                .enumerate()
                .filter(|&(j, &(aj, dj))| j != i && aj < d && dj > a && aj > a - longest)
                .count();
            samples.push(overlapping as u64);
        }
        let pmf = |k| mixed_with_target_pmf(lambda, mu, k).unwrap();
        let chi = crate::stats::chi_square_discrete(&samples, pmf).unwrap();
        assert!(chi.p_value > 0.01, "{chi:?}");
        // And the test can fail: the same samples are not Pois(λ/µ), the
        // pool a target finds on arrival only.
        let pool = |k| pool_pmf(lambda, mu, k).unwrap();
        let chi = crate::stats::chi_square_discrete(&samples, pool).unwrap();
        assert!(chi.p_value < 0.01, "{chi:?}");
    }

    #[test]
    fn theorem1_and_theorem2_sum_to_one() {
        for (n, k, l) in [(1, 1, 0), (5, 2, 3), (10, 0, 4), (7, 7, 0), (3, 1, 100)] {
            let o = Observation::new(n, k, l).unwrap();
            let p = theorem1(o);
            assert!((p.total(o) - 1.0).abs() < 1e-12, "{o:?}");
            assert!(p.later_each >= p.initial_each);
            for lm in [0.0, 0.5, 10.0] {
                let q = theorem2(o, 2.0, lm).unwrap();
                assert!((q.total(o) - 1.0).abs() < 1e-12, "{o:?} {lm}");
                // Loops only ever lower the adversary's odds (Theorem 2).
                assert!(q.later_each <= p.later_each + 1e-15);
            }
            // Without loops Theorem 2 is Theorem 1.
            let q = theorem2(o, 2.0, 0.0).unwrap();
            assert!((q.initial_each - p.initial_each).abs() < 1e-15);
            assert!((q.later_each - p.later_each).abs() < 1e-15 && q.loop_message == 0.0);
        }
    }

    #[test]
    fn entropy_step_known_values() {
        // First departure: uniform over the new arrivals.
        assert!((entropy_step(0.0, 0, 8) - 3.0).abs() < 1e-12);
        // One old (entropy 3) and one new: 1 + 0.5 * 3 + 0.
        assert!((entropy_step(3.0, 1, 1) - 2.5).abs() < 1e-12);
        assert_eq!(entropy_step(5.0, 0, 0), 0.0);
    }

    #[test]
    fn entropy_grows_with_rate_over_mu() {
        // Figure 5: for a fixed µ the entropy grows with λ.
        let mut last = -1.0;
        for lambda in [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let h = single_mix_entropy_bits(lambda, 1.0, 50.0, 500.0, &mut rng).unwrap();
            assert!(h > last, "λ {lambda}: {h} <= {last}");
            last = h;
        }
        assert!(last > 3.0, "{last}");
    }

    #[test]
    fn bad_input_names_the_parameter() {
        let e = pool_mean(0.0, 1.0).unwrap_err();
        assert_eq!(e.param, "rate_per_s");
        let e = pool_mean(1.0, f64::NAN).unwrap_err();
        assert_eq!(e.param, "mu_per_s");
        assert!(e.to_string().contains("mu_per_s"), "{e}");
        let o = Observation::new(2, 1, 1).unwrap();
        assert_eq!(theorem2(o, -1.0, 0.0).unwrap_err().param, "mu_per_s");
        assert_eq!(theorem2(o, 1.0, -1.0).unwrap_err().param, "loop_rate_per_s");
        assert_eq!(Observation::new(2, 3, 0).unwrap_err().param, "k");
        assert_eq!(Observation::new(0, 0, 1).unwrap_err().param, "n");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let e = single_mix_entropy_bits(1.0, 1.0, 0.0, 0.0, &mut rng).unwrap_err();
        assert_eq!(e.param, "duration_s");
    }
}
