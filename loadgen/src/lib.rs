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

use loopix_crypto::Geometry;

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
    let mut emu = Emulator::new(EmulatorSpec {
        geometry: Geometry::DEFAULT,
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
