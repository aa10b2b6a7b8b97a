//! Small numerical helpers shared by the anonymity model and the simulator:
//! `ln k!`, the regularized incomplete gamma function, the chi-square
//! goodness-of-fit test, Shannon entropy, and mean / standard deviation.
//! Pure functions of their arguments.

/// `ln(k!)`: an exact sum below 32, Stirling's series (error below 1e-14)
/// above.
pub fn ln_factorial(k: u64) -> f64 {
    if k < 32 {
        return (2..=k).map(|i| (i as f64).ln()).sum();
    }
    let x = k as f64;
    let x2 = x * x;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x * x2)
        + 1.0 / (1260.0 * x * x2 * x2)
}

/// `ln Γ(a)` for `a > 0` (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub fn ln_gamma(a: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if a < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * a).sin()).ln() - ln_gamma(1.0 - a);
    }
    let x = a - 1.0;
    let mut s = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        s += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// The upper regularized incomplete gamma function `Q(a, x)`, `a > 0`:
/// a series below `x < a + 1`, a continued fraction (Lentz) above.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        return (1.0 - sum * front).clamp(0.0, 1.0);
    }
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..10_000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (front * h).clamp(0.0, 1.0)
}

/// The result of a chi-square goodness-of-fit test.
#[derive(Debug, Clone, PartialEq)]
pub struct ChiSquare {
    /// The statistic, sum of `(observed - expected)^2 / expected`.
    pub statistic: f64,
    /// Degrees of freedom (bins after merging, minus one).
    pub dof: u32,
    /// `Pr(X >= statistic)` for `X ~ chi2(dof)`.
    pub p_value: f64,
}

/// Chi-square goodness of fit of integer `samples` against the pmf `pmf`
/// on `0, 1, 2, ...`. Bins run from 0 upward and are merged until each
/// expects at least 5 samples; the last bin takes the whole upper tail, so
/// the expected counts sum to the sample size. `None` when fewer than two
/// bins remain (too few samples to test).
pub fn chi_square_discrete(samples: &[u64], pmf: impl Fn(u64) -> f64) -> Option<ChiSquare> {
    let n = samples.len() as f64;
    let max = samples.iter().copied().max()?;
    let mut observed = vec![0u64; max as usize + 1];
    for &s in samples {
        observed[s as usize] += 1;
    }
    // Merge adjacent values into bins expecting >= 5 samples each.
    let mut bins: Vec<(f64, f64)> = Vec::new(); // (expected, observed)
    let (mut e_acc, mut o_acc, mut e_total) = (0.0, 0.0, 0.0);
    for (k, &o) in observed.iter().enumerate() {
        let e = n * pmf(k as u64);
        e_acc += e;
        e_total += e;
        o_acc += o as f64;
        if e_acc >= 5.0 {
            bins.push((e_acc, o_acc));
            (e_acc, o_acc) = (0.0, 0.0);
        }
    }
    // The upper tail beyond the largest sample belongs to the last bin.
    let tail = (n - e_total).max(0.0);
    match bins.last_mut() {
        Some(last) if e_acc + tail < 5.0 => {
            last.0 += e_acc + tail;
            last.1 += o_acc;
        }
        _ => bins.push((e_acc + tail, o_acc)),
    }
    if bins.len() < 2 {
        return None;
    }
    let statistic: f64 = bins.iter().map(|(e, o)| (o - e) * (o - e) / e).sum();
    let dof = bins.len() as u32 - 1;
    let p_value = gamma_q(f64::from(dof) / 2.0, statistic / 2.0);
    Some(ChiSquare {
        statistic,
        dof,
        p_value,
    })
}

/// Shannon entropy in bits of the weights `w` normalised to sum to one
/// (zero weights contribute nothing). Zero for an empty or all-zero input.
pub fn entropy_bits(w: impl IntoIterator<Item = f64> + Clone) -> f64 {
    let total: f64 = w.clone().into_iter().filter(|x| *x > 0.0).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h = -w
        .into_iter()
        .filter(|x| *x > 0.0)
        .map(|x| {
            let p = x / total;
            p * p.log2()
        })
        .sum::<f64>();
    // One certain outcome sums to -0.0; rounding can leave a tiny negative.
    h.max(0.0)
}

/// Mean and (sample, n - 1) standard deviation; `(NaN, NaN)` when empty,
/// standard deviation 0 for one value.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_factorial_and_gamma_agree() {
        for k in [0u64, 1, 5, 31, 32, 33, 100, 1000] {
            let exact: f64 = (2..=k).map(|i| (i as f64).ln()).sum();
            assert!(
                (ln_factorial(k) - exact).abs() < 1e-9 * exact.max(1.0),
                "{k}"
            );
            assert!(
                (ln_gamma(k as f64 + 1.0) - exact).abs() < 1e-9 * exact.max(1.0),
                "{k}"
            );
        }
    }

    #[test]
    fn chi_square_tail_known_values() {
        // chi2(1) at 6.635 and chi2(10) at 23.209: upper tail 0.01.
        assert!((gamma_q(0.5, 6.635 / 2.0) - 0.01).abs() < 1e-4);
        assert!((gamma_q(5.0, 23.209 / 2.0) - 0.01).abs() < 1e-4);
        // Q(1, x) = e^-x.
        assert!((gamma_q(1.0, 2.0) - (-2.0f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn entropy_of_uniform_is_log2_n() {
        assert!((entropy_bits([1.0; 8]) - 3.0).abs() < 1e-12);
        assert_eq!(entropy_bits([0.0, 2.0]), 0.0);
        assert!(entropy_bits([0.0, 2.0]).is_sign_positive());
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }
}
