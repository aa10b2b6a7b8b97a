//! Reproduces the paper's Figure 5 (a single mix's entropy against λ for
//! several µ) and the sweeps of its Figures 6, 7 and 8, printing a table
//! per figure with the wall-clock time each took:
//! `CARGO_TARGET_DIR=/tmp/ttune cargo run --release -p loopix-tuning --example figures [fig5|fig6|fig7|fig8] [repetitions]`.

use std::time::Instant;

use loopix_tuning::anonymity::single_mix_entropy_bits;
use loopix_tuning::rng::rep_rng;
use loopix_tuning::sim::{linspace, parallel_map, sweep, SimParams, SweepParam};
use loopix_tuning::ParamError;

/// Figure 5: the mean entropy of one Poisson mix's outputs for λ from 1 to
/// 20 per second and mean delays 1/µ of 0.5, 1 and 2 s, averaged over
/// `reps` runs of 1000 s after a 100 s burn-in (the paper averages 50).
fn figure5(reps: u32) -> Result<(), ParamError> {
    let mus = [2.0, 1.0, 0.5];
    let lambdas = linspace(1.0, 20.0, 20);
    let jobs = mus.len() * lambdas.len() * reps as usize;
    let per = reps as usize;
    let h = parallel_map(jobs, |j| {
        let (point, rep) = (j / per, (j % per) as u64);
        let (mu, lambda) = (mus[point / lambdas.len()], lambdas[point % lambdas.len()]);
        single_mix_entropy_bits(lambda, mu, 100.0, 1000.0, &mut rep_rng(5, rep))
    });
    let h: Vec<f64> = h.into_iter().collect::<Result<_, _>>()?;
    println!(
        "{:>8} {:>14} {:>14} {:>14}",
        "lambda", "H mu=2 (bits)", "H mu=1", "H mu=0.5"
    );
    for (i, lambda) in lambdas.iter().enumerate() {
        let mean = |m: usize| {
            let at = (m * lambdas.len() + i) * per;
            h[at..at + per].iter().sum::<f64>() / per as f64
        };
        println!(
            "{lambda:>8.1} {:>14.3} {:>14.3} {:>14.3}",
            mean(0),
            mean(1),
            mean(2)
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let reps: u32 = match args.get(1) {
        Some(r) => r.parse()?,
        None => 100,
    };
    if which == "all" || which == "fig5" {
        let t = Instant::now();
        figure5(reps.min(50))?;
        println!("fig5: {:.2} s", t.elapsed().as_secs_f64());
    }
    let base = SimParams::default();
    // The paper's axes (arXiv version, its Figures 5-7): µ from 0.2 to 2.0
    // with λ = 2 (so λ/µ from 10 down to 1), 2 to 19 layers, 0 to 100 %
    // corrupt; three layers of three mixes otherwise, µ = 1.
    let lambda_over_mu: Vec<f64> = linspace(0.2, 2.0, 10)
        .into_iter()
        .map(|mu| base.sender_rate_per_s / mu)
        .collect();
    let figs = [
        ("fig6", SweepParam::LambdaOverMu, lambda_over_mu),
        ("fig7", SweepParam::Layers, linspace(1.0, 19.0, 19)),
        ("fig8", SweepParam::Corrupt, linspace(0.0, 1.0, 11)),
    ];
    for (name, param, values) in figs {
        if which != "all" && which != name {
            continue;
        }
        let t = Instant::now();
        let points = sweep(&base, param, &values, reps, 1)?;
        let secs = t.elapsed().as_secs_f64();
        println!("{name}: {param:?}, {reps} repetitions per point, {secs:.2} s");
        println!(
            "{:>8} {:>10} {:>10} {:>6} {:>12}",
            "value", "eps_mean", "eps_std", "finite", "entropy_bits"
        );
        for (v, s) in values.iter().zip(&points) {
            println!(
                "{v:>8.3} {:>10.4} {:>10.4} {:>6} {:>12.3}",
                s.epsilon_mean, s.epsilon_std, s.epsilon_finite, s.entropy_mean_bits
            );
        }
    }
    Ok(())
}
