//! Reproduces the sweeps of the paper's Figures 6, 7 and 8 and prints a
//! table per figure with the wall-clock time each took:
//! `CARGO_TARGET_DIR=/tmp/ttune cargo run --release -p loopix-tuning --example figures [fig6|fig7|fig8] [repetitions]`.

use std::time::Instant;

use loopix_tuning::sim::{linspace, sweep, SimParams, SweepParam};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let reps: u32 = match args.get(1) {
        Some(r) => r.parse()?,
        None => 100,
    };
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
