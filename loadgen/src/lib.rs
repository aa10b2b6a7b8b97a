//! `loopix-loadgen`: thousands of emulated Loopix clients in one process,
//! for capacity planning (issue 6).
//!
//! Each emulated client is a real [`loopix_client::Client`] core with its
//! own registration at a provider (slot, access key, mailbox) and its own
//! Poisson streams; all of them are driven by one timer heap per
//! preparing thread ([`emulator`]), packets are built ahead of time and
//! replayed open loop at their scheduled times, and deliveries are
//! received live on one socket per provider.
//!
//! - [`config`]: the TOML scenario and the flags, checked with errors that
//!   name the field and its range;
//! - [`target`]: the network part (topology, registrations, metrics
//!   endpoints), thin on purpose; [`target::from_testnet`] registers the
//!   clients at a running `loopix testnet --clients 0 --keep DIR`;
//! - [`run`]: fixed-load runs and sweeps to the knee, one [`run::StepResult`]
//!   per step;
//! - [`output`]: terminal table, `report.json`, `report.csv`, SVG plots.

pub mod config;
pub mod emulator;
pub mod output;
pub mod run;
pub mod target;

use std::path::Path;

use loopix_directory::NetworkParams;

use crate::config::Scenario;
use crate::emulator::{Emulator, EmulatorSpec};

/// Check everything that can be checked before any load is sent: the
/// target (topology verifies, registrations parse and match it, metrics
/// endpoints answer) and the output directory. Returns the target.
pub fn check(s: &Scenario) -> Result<target::Target, String> {
    let target = match (&s.testnet, &s.registrations, &s.topology) {
        (Some(dir), _, _) => target::from_testnet(dir, s.clients)?,
        (None, Some(regs), Some(topo)) => {
            target::from_registrations(topo, regs, s.clients, s.metrics.clone())?
        }
        _ => return Err("no target: give registrations and topology, or testnet".into()),
    };
    config::check_out_dir(&s.out)?;
    Ok(target)
}

/// The emulated clients run at the scenario's rates, which only a network
/// whose document allows overrides serves: its providers refuse clients at
/// other rates than the network's (`client_rates`). Refused here, before
/// any client exists, with the fix.
fn check_rates_allowed(s: &Scenario, params: &NetworkParams) -> Result<(), String> {
    if params.allow_rate_overrides {
        return Ok(());
    }
    let sweeps_rates = s.mode == config::Mode::Sweep && s.sweep_by == config::SweepBy::Rate;
    if !sweeps_rates && s.rates(1.0).announced() == params.client_rates() {
        return Ok(());
    }
    Err(format!(
        "the network's topology document forbids clients other rates than its own \
         (params.allow_rate_overrides = false: lambda_p {} lambda_l {} lambda_d {} /s, mean delay \
         {} ms, pull every {} ms), and the scenario's clients run at {}; their providers would \
         refuse them. Start the network with `loopix testnet --allow-rate-overrides`, or build \
         its document with `loopix topology build --allow-rate-overrides`",
        params.lambda_p,
        params.lambda_l,
        params.lambda_d,
        params.mean_delay_ms,
        params.pull_period_ms,
        if sweeps_rates {
            "rates that a rate sweep raises step by step".to_string()
        } else {
            let r = s.rates(1.0).announced();
            format!(
                "lambda_p {} lambda_l {} lambda_d {} /s, mean delay {} ms, pull every {} ms",
                r.lambda_p, r.lambda_l, r.lambda_d, r.mean_delay_ms, r.pull_period_ms
            )
        }
    ))
}

/// Run a checked scenario end to end: [`check`], then [`execute_on`].
pub fn execute(s: &Scenario) -> Result<run::Report, String> {
    let target = check(s)?;
    execute_on(s, target)
}

/// Create the clients on `target`, run the steps and write the report
/// (tests call this with a fake provider's target).
pub fn execute_on(s: &Scenario, target: target::Target) -> Result<run::Report, String> {
    config::check_out_dir(&s.out)?;
    let layers = target.layers;
    let metrics = target.metrics.clone();
    check_rates_allowed(s, &target.params)?;
    let mut emu = Emulator::new(EmulatorSpec {
        geometry: target.params.geometry()?,
        topology: target.topology,
        registrations: target.registrations,
        rates: s.rates(1.0),
        seed: s.seed,
        threads: s.threads,
    })?;
    let mut stopped = None;
    let steps = run::run_steps(s, &mut emu, &metrics, &mut stopped, |r| {
        if s.progress {
            eprintln!(
                "step {}: offered {:.1} pps, delivered {:.1} pps, loss {:.4}, p99 {:.1} ms",
                r.step, r.offered_pps_total, r.delivered_pps_total, r.loss, r.latency_p99_ms
            );
        }
    })?;
    let report = run::report(s, steps, layers, stopped);
    output::write_all(Path::new(&s.out), &report, &run::latency_model(s, layers))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn scenario(flags: &str) -> Scenario {
        let args = config::Args::try_parse_from(
            ["loopix-loadgen", "--registrations", "r", "--topology", "t"]
                .into_iter()
                .chain(flags.split_whitespace()),
        )
        .expect("flags parse");
        Scenario::resolve(args.scenario_file().expect("scenario")).expect("valid")
    }

    #[test]
    fn rates_other_than_the_networks_need_a_document_that_allows_them() {
        let p = NetworkParams::default();
        let same = format!(
            "--mode run --lambda-p {} --lambda-l {} --lambda-d {} --mean-delay-ms {} --pull-ms {}",
            p.lambda_p, p.lambda_l, p.lambda_d, p.mean_delay_ms, p.pull_period_ms
        );
        check_rates_allowed(&scenario(&same), &p).expect("the network's own rates");
        let faster = same.replace("--lambda-p 2", "--lambda-p 3");
        let e = check_rates_allowed(&scenario(&faster), &p).expect_err("other rates");
        assert!(e.contains("allow_rate_overrides = false") && e.contains("--allow-rate-overrides"));
        assert!(e.contains("lambda_p 3"), "{e}");
        let sweep = same.replace("--mode run", "--mode sweep --sweep-by rate");
        let e = check_rates_allowed(&scenario(&sweep), &p).expect_err("a rate sweep");
        assert!(e.contains("rate sweep"), "{e}");
        let open = NetworkParams {
            allow_rate_overrides: true,
            ..p
        };
        check_rates_allowed(&scenario(&faster), &open).expect("allowed");
        check_rates_allowed(&scenario(&sweep), &open).expect("allowed");
    }
}
