//! `loopix tune simulate` and `loopix tune sweep`: the paper's section 4.3
//! ε experiment (`loopix_tuning::sim`) from the command line, printing a
//! table, JSON (`--json`) or CSV (`--csv`). A parameter out of its domain
//! is a usage mistake: exit 2 with a message naming the flag.

use clap::{Args, Subcommand, ValueEnum};
use loopix_tuning::sim::{self, BurnIn, SimParams, Summary, SweepParam};
use loopix_tuning::ParamError;

use crate::CliError;

/// `loopix tune ...`.
#[derive(Debug, Subcommand)]
pub enum TuneCmd {
    /// Run the section 4.3 experiment at one point: ε = |ln(p0/p1)| at a
    /// final mix, mean and standard deviation over the repetitions, and the
    /// end-to-end entropy of a target message.
    Simulate(NetArgs),
    /// Run it over a range of one parameter (Figures 6, 7 and 8).
    Sweep(SweepArgs),
    /// Search layers, mixes per layer and delays for the sets that meet an
    /// ε and/or entropy target within a latency budget, sorted by latency,
    /// with the cover traffic's overhead and the load per mix.
    Recommend(crate::tune_recommend::RecommendArgs),
    /// Measure a running network: per node λ, µ, the pool Lemma 1
    /// expects against the measured one, and the model's entropy.
    Live(crate::tune_live::LiveArgs),
}

impl TuneCmd {
    /// The subcommand's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            TuneCmd::Simulate(_) => "simulate",
            TuneCmd::Sweep(_) => "sweep",
            TuneCmd::Recommend(_) => "recommend",
            TuneCmd::Live(_) => "live",
        }
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

/// The experiment's parameters (defaults: the paper's, three layers of
/// three mixes, λ/µ = 2).
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct NetArgs {
    /// Senders, including the challenge senders S0 and S1 (U).
    #[arg(long, default_value_t = 100)]
    senders: u32,
    /// Each sender's rate, messages per second (λ).
    #[arg(long, value_name = "PER_S", default_value_t = 2.0)]
    lambda: f64,
    /// The delay parameter µ per second (mean delay per hop 1/µ).
    #[arg(
        long,
        value_name = "PER_S",
        default_value_t = 1.0,
        conflicts_with = "lambda_over_mu"
    )]
    mu: f64,
    /// Set µ to λ divided by this instead of giving --mu.
    #[arg(long, value_name = "RATIO")]
    lambda_over_mu: Option<f64>,
    /// Layers of mixes (L).
    #[arg(long, default_value_t = 3)]
    layers: u32,
    /// Mixes per layer (W).
    #[arg(long, default_value_t = 3)]
    width: u32,
    /// Fraction of mixes corrupt, 0 to 1.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    corrupt: f64,
    /// Burn-in, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 2500.0)]
    burn_in_s: f64,
    /// Measurement phase, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 100.0)]
    measure_s: f64,
    /// Simulate the burn-in event by event instead of drawing its end
    /// state exactly (same distribution, much slower).
    #[arg(long)]
    simulate_burn_in: bool,
    /// Repetitions per point.
    #[arg(long, value_name = "N", default_value_t = 100)]
    repetitions: u32,
    /// The seed; the same seed gives the same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
}

/// The parameter a sweep varies.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Param {
    /// λ/µ (Figure 6).
    LambdaOverMu,
    /// Layers (Figure 7).
    Layers,
    /// Corrupt fraction (Figure 8).
    Corrupt,
}

/// `loopix tune sweep`'s options.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct SweepArgs {
    /// The parameter to vary.
    #[arg(long, value_enum)]
    param: Param,
    /// The first value.
    #[arg(long)]
    from: f64,
    /// The last value.
    #[arg(long)]
    to: f64,
    /// Values from --from to --to inclusive, evenly spaced.
    #[arg(long, default_value_t = 10)]
    steps: u32,
    #[command(flatten)]
    net: NetArgs,
}

/// The flag that sets a `SimParams` field, for error messages.
fn flag(param: &str) -> &str {
    match param {
        "sender_rate_per_s" => "--lambda",
        "mu_per_s" => "--mu",
        "corrupt_fraction" => "--corrupt",
        "lambda_over_mu" => "--lambda-over-mu",
        "burn_in_s" => "--burn-in-s",
        "measure_s" => "--measure-s",
        "senders" => "--senders",
        "layers" => "--layers",
        "width" => "--width",
        "repetitions" => "--repetitions",
        other => other,
    }
}

fn usage(e: ParamError) -> CliError {
    CliError::Usage(format!("{}: {e}", flag(e.param)))
}

impl NetArgs {
    fn params(&self) -> Result<SimParams, CliError> {
        let mu_per_s = match self.lambda_over_mu {
            Some(r) => {
                loopix_tuning::error::positive("lambda_over_mu", r).map_err(usage)?;
                self.lambda / r
            }
            None => self.mu,
        };
        let p = SimParams {
            senders: self.senders,
            sender_rate_per_s: self.lambda,
            mu_per_s,
            layers: self.layers,
            width: self.width,
            corrupt_fraction: self.corrupt,
            burn_in_s: self.burn_in_s,
            measure_s: self.measure_s,
            burn_in: if self.simulate_burn_in {
                BurnIn::Simulated
            } else {
                BurnIn::Exact
            },
            ..SimParams::default()
        };
        p.validate().map_err(usage)?;
        Ok(p)
    }

    fn format(&self) -> Format {
        match (self.json, self.csv) {
            (true, _) => Format::Json,
            (_, true) => Format::Csv,
            _ => Format::Table,
        }
    }
}

/// Runs a `tune` subcommand.
pub fn tune(cmd: &TuneCmd) -> Result<(), CliError> {
    match cmd {
        TuneCmd::Simulate(a) => {
            let p = a.params()?;
            let s = sim::simulate(&p, a.repetitions, a.seed).map_err(usage)?;
            print_points(a.format(), "lambda_over_mu", &[p.lambda_over_mu()], &[s])
        }
        TuneCmd::Sweep(a) => {
            let base = a.net.params()?;
            if a.steps == 0 {
                return Err(CliError::Usage("--steps: must be at least 1".into()));
            }
            let (param, name) = match a.param {
                Param::LambdaOverMu => (SweepParam::LambdaOverMu, "lambda_over_mu"),
                Param::Layers => (SweepParam::Layers, "layers"),
                Param::Corrupt => (SweepParam::Corrupt, "corrupt"),
            };
            let values = sim::linspace(a.from, a.to, a.steps);
            let points =
                sim::sweep(&base, param, &values, a.net.repetitions, a.net.seed).map_err(usage)?;
            print_points(a.net.format(), name, &values, &points)
        }
        TuneCmd::Recommend(a) => crate::tune_recommend::recommend(a),
        TuneCmd::Live(a) => crate::tune_live::live(a),
    }
}

fn print_points(
    format: Format,
    name: &str,
    values: &[f64],
    points: &[Summary],
) -> Result<(), CliError> {
    let mut out = String::new();
    match format {
        Format::Json => {
            let json = if points.len() == 1 {
                serde_json::to_string_pretty(&points[0])
            } else {
                serde_json::to_string_pretty(points)
            };
            out = json.map_err(|e| CliError::Failed(format!("json: {e}")))?;
            out.push('\n');
        }
        Format::Csv => {
            out.push_str(&format!(
                "{name},epsilon_mean,epsilon_std,epsilon_finite,repetitions,entropy_mean_bits,entropy_std_bits\n"
            ));
            for (v, s) in values.iter().zip(points) {
                out.push_str(&format!(
                    "{v},{},{},{},{},{},{}\n",
                    s.epsilon_mean,
                    s.epsilon_std,
                    s.epsilon_finite,
                    s.repetitions.len(),
                    s.entropy_mean_bits,
                    s.entropy_std_bits
                ));
            }
        }
        Format::Table => {
            out.push_str(&format!(
                "{name:>14} {:>10} {:>10} {:>8} {:>14}\n",
                "eps_mean", "eps_std", "finite", "entropy_bits"
            ));
            for (v, s) in values.iter().zip(points) {
                out.push_str(&format!(
                    "{v:>14.4} {:>10.4} {:>10.4} {:>4}/{:<3} {:>14.3}\n",
                    s.epsilon_mean,
                    s.epsilon_std,
                    s.epsilon_finite,
                    s.repetitions.len(),
                    s.entropy_mean_bits
                ));
            }
        }
    }
    print!("{out}");
    Ok(())
}
