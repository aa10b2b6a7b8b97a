//! Sampling on top of a caller's `RngCore`: uniform, exponential and
//! Poisson variates, written out so that the stream of draws (and so every
//! seeded result) depends on this file only, not on a distribution crate's
//! version. Also the derivation of one repetition's RNG from (seed, index).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// A uniform draw in `[0, 1)` with 53 random bits.
pub fn uniform(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// An `Exp(rate)` draw (mean `1 / rate`), by inversion. `rate > 0`.
pub fn exp_sample(rng: &mut impl RngCore, rate: f64) -> f64 {
    debug_assert!(rate > 0.0);
    // 1 - u is in (0, 1], so the log is finite.
    -(1.0 - uniform(rng)).ln() / rate
}

/// A uniform index in `0..n`, `n >= 1` (Lemire's multiply-shift; the bias
/// is below 2^-32 for the small `n` used here).
pub fn index(rng: &mut impl RngCore, n: usize) -> usize {
    debug_assert!(n >= 1);
    ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize
}

/// A `Pois(mean)` draw, `mean >= 0`. Large means are split into pieces of
/// at most 64 (a sum of independent Poissons is Poisson), each drawn by
/// inversion; the cost is linear in the mean.
pub fn poisson(rng: &mut impl RngCore, mean: f64) -> u64 {
    debug_assert!(mean >= 0.0 && mean.is_finite());
    let mut left = mean;
    let mut total = 0;
    while left > 0.0 {
        let m = left.min(64.0);
        left -= m;
        let u = uniform(rng);
        let (mut k, mut p) = (0u64, (-m).exp());
        let mut cdf = p;
        // The bound stops a u within rounding of 1 from running forever.
        while u >= cdf && k < 10_000 {
            k += 1;
            p *= m / k as f64;
            cdf += p;
        }
        total += k;
    }
    total
}

/// The RNG of repetition `rep` of a run seeded with `seed`: ChaCha8 keyed
/// by `seed`, stream `rep`. Repetitions are independent and each depends
/// only on (seed, rep), never on which thread runs it.
pub fn rep_rng(seed: u64, rep: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(rep);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_and_exp_means() {
        let mut rng = rep_rng(1, 0);
        for mean in [0.0, 0.5, 3.0, 150.0] {
            let n = 4000;
            let s: u64 = (0..n).map(|_| poisson(&mut rng, mean)).sum();
            let got = s as f64 / n as f64;
            assert!(
                (got - mean).abs() < 4.0 * (mean / n as f64).sqrt() + 1e-9,
                "{mean} {got}"
            );
        }
        let n = 20_000;
        let s: f64 = (0..n).map(|_| exp_sample(&mut rng, 4.0)).sum();
        assert!((s / n as f64 - 0.25).abs() < 0.01);
        assert_ne!(rep_rng(1, 0).next_u64(), rep_rng(1, 1).next_u64());
    }
}
