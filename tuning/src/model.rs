//! The Poisson model of Loopix traffic and latency, and the statistics that
//! check measurements against it (used by the tests, `loopix testnet` and
//! the load generator).
//!
//! Latency model (paper section 4.1 and Figure 11): a packet waits an
//! independent `Exp(mean)` delay at each of the `hops` nodes that relay it,
//! so its network latency is Erlang (a Gamma with integer shape `hops`);
//! a message then waits in its recipient's inbox until the next pull, which
//! is uniform on `[0, pull_period]` when pulls are periodic and unrelated to
//! arrivals. [`LatencyModel`] is the sum of the two.
//!
//! Kolmogorov–Smirnov tests: [`ks_statistic`] against any CDF,
//! [`ks_two_sample`], and [`ks_p_value`] from the asymptotic Kolmogorov
//! distribution (with Stephens' small-sample correction).

/// CDF of the exponential distribution with this mean at `x`.
pub fn exp_cdf(mean: f64, x: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else {
        1.0 - (-x / mean).exp()
    }
}

/// CDF of the Erlang distribution (sum of `shape` independent `Exp(mean)`).
pub fn erlang_cdf(shape: u32, mean: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if shape == 0 {
        return 1.0;
    }
    let y = x / mean;
    // 1 - e^-y * sum_{i<shape} y^i / i!, summed in a stable way.
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..shape {
        term *= y / f64::from(i);
        sum += term;
    }
    (1.0 - (-y).exp() * sum).clamp(0.0, 1.0)
}

/// End-to-end latency: Erlang(`hops`, `mean_delay`) plus a uniform wait on
/// `[0, pull_period]` plus a constant `offset` (processing), all in one unit
/// (the caller's: seconds or microseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// Nodes that add an exponential delay.
    pub hops: u32,
    /// Mean delay per hop.
    pub mean_delay: f64,
    /// Pull period (0: the latency is taken at arrival, no inbox wait).
    pub pull_period: f64,
    /// Constant added to every sample.
    pub offset: f64,
}

impl LatencyModel {
    /// The model's CDF at `x`.
    pub fn cdf(&self, x: f64) -> f64 {
        let x = x - self.offset;
        if x <= 0.0 {
            return 0.0;
        }
        let f = |t: f64| erlang_cdf(self.hops, self.mean_delay, t);
        if self.pull_period <= 0.0 {
            return f(x);
        }
        // (1/T) * integral over u in [0, T] of F(x - u): Simpson's rule.
        let t = self.pull_period;
        const N: usize = 256;
        let h = t / N as f64;
        let mut acc = f(x) + f(x - t);
        for i in 1..N {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            acc += w * f(x - h * i as f64);
        }
        (acc * h / 3.0 / t).clamp(0.0, 1.0)
    }

    /// The mean.
    pub fn mean(&self) -> f64 {
        self.offset + f64::from(self.hops) * self.mean_delay + self.pull_period / 2.0
    }

    /// The `q` quantile (0 < q < 1), by bisection on the CDF.
    pub fn quantile(&self, q: f64) -> f64 {
        let q = q.clamp(1e-12, 1.0 - 1e-12);
        let mut lo = self.offset;
        let mut hi = self.offset + self.pull_period + self.mean_delay.max(1e-12);
        while self.cdf(hi) < q {
            hi = self.offset + (hi - self.offset) * 2.0;
        }
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if self.cdf(mid) < q {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }
}

/// The one-sample Kolmogorov–Smirnov statistic of `samples` against `cdf`.
/// Sorts `samples`. Zero for an empty sample.
pub fn ks_statistic(samples: &mut [f64], cdf: impl Fn(f64) -> f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as f64;
    let mut d: f64 = 0.0;
    for (i, &x) in samples.iter().enumerate() {
        let f = cdf(x);
        d = d
            .max(((i + 1) as f64 / n - f).abs())
            .max((f - i as f64 / n).abs());
    }
    d
}

/// The two-sample Kolmogorov–Smirnov statistic. Sorts both samples.
pub fn ks_two_sample(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// The p-value of a KS statistic `d` for an effective sample size `n`
/// (the sample size, or `na * nb / (na + nb)` for two samples).
pub fn ks_p_value(d: f64, n: f64) -> f64 {
    if n <= 0.0 {
        return 1.0;
    }
    let sn = n.sqrt();
    let lambda = (sn + 0.12 + 0.11 / sn) * d;
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.18 {
        // Small lambda: the theta-function form converges fast here.
        // P(K <= l) = sqrt(2 pi) / l * sum_k exp(-(2k-1)^2 pi^2 / (8 l^2)).
        let pi2 = std::f64::consts::PI * std::f64::consts::PI;
        let mut cdf = 0.0;
        for k in 1..=20 {
            let j = f64::from(2 * k - 1);
            cdf += (-j * j * pi2 / (8.0 * lambda * lambda)).exp();
        }
        cdf *= (2.0 * std::f64::consts::PI).sqrt() / lambda;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    let mut sum = 0.0;
    for k in 1..=100u32 {
        let kf = f64::from(k);
        let term = (-2.0 * kf * kf * lambda * lambda).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-16 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_matches_known_values() {
        assert!((erlang_cdf(1, 2.0, 2.0) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        // Erlang(2, 1) at 1: 1 - 2/e.
        assert!((erlang_cdf(2, 1.0, 1.0) - (1.0 - 2.0 / std::f64::consts::E)).abs() < 1e-12);
        assert_eq!(erlang_cdf(3, 1.0, -1.0), 0.0);
    }

    #[test]
    fn model_quantiles_and_mean() {
        let m = LatencyModel {
            hops: 4,
            mean_delay: 10.0,
            pull_period: 0.0,
            offset: 0.0,
        };
        // Median of Erlang(4, 10) is about 36.72.
        assert!(
            (m.quantile(0.5) - 36.72).abs() < 0.05,
            "{}",
            m.quantile(0.5)
        );
        let w = LatencyModel {
            pull_period: 20.0,
            offset: 1.0,
            ..m
        };
        assert!((w.mean() - 51.0).abs() < 1e-12);
        assert!(w.cdf(1.0) == 0.0 && w.cdf(1e6) > 0.999_999);
        // Adding the uniform wait moves every quantile up by at most T.
        for q in [0.1, 0.5, 0.9, 0.99] {
            let (a, b) = (m.quantile(q) + 1.0, w.quantile(q));
            assert!(b >= a - 1e-6 && b <= a + 20.0 + 1e-6, "q {q}: {a} {b}");
        }
    }

    #[test]
    fn ks_accepts_its_own_model_and_rejects_another() {
        // Deterministic quantile samples of Exp(1): the statistic is tiny.
        let n = 2000;
        let mut xs: Vec<f64> = (0..n)
            .map(|i| -(1.0 - (i as f64 + 0.5) / n as f64).ln())
            .collect();
        let d = ks_statistic(&mut xs, |x| exp_cdf(1.0, x));
        assert!(ks_p_value(d, n as f64) > 0.99, "d {d}");
        let d = ks_statistic(&mut xs, |x| exp_cdf(1.5, x));
        assert!(ks_p_value(d, n as f64) < 1e-6, "d {d}");
        let mut a = xs.clone();
        let mut b: Vec<f64> = xs.iter().map(|x| x * 1.5).collect();
        let d2 = ks_two_sample(&mut a, &mut b);
        assert!(ks_p_value(d2, n as f64 / 2.0) < 1e-6);
        let mut c = xs.clone();
        assert_eq!(ks_two_sample(&mut a, &mut c), 0.0);
        // Both branches of the p-value agree where they meet, and the
        // critical value at alpha = 0.01 is about 1.628 / sqrt(n).
        let n: f64 = 10_000.0;
        let l = 1.18 / (n.sqrt() + 0.12 + 0.11 / n.sqrt());
        assert!((ks_p_value(l - 1e-12, n) - ks_p_value(l + 1e-12, n)).abs() < 1e-6);
        let crit = 1.628 / n.sqrt();
        assert!(
            (ks_p_value(crit, n) - 0.01).abs() < 0.001,
            "{}",
            ks_p_value(crit, n)
        );
    }
}
