//! The parameters of the section 4.3 experiment and their validation. A
//! [`SimParams`] that passed [`SimParams::validate`] runs without panics;
//! every rejected field is named in the error.

use serde::Serialize;

use crate::error::{positive, ParamError};

/// How the network reaches the start of the measurement phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BurnIn {
    /// Simulate the burn-in event by event from an empty network, as the
    /// paper does.
    Simulated,
    /// Draw the network's state at the end of the burn-in from its exact
    /// distribution and start there. The burn-in carries only unlabelled
    /// messages, delays are memoryless and every message picks its mixes
    /// independently, so by the marking theorem the pool of a mix in layer
    /// `j` (0-based) is then `Pois(Λ/(W µ) · P(Gamma(j+1, µ) <= T))`,
    /// independently over mixes, each message with a fresh `Exp(µ)` delay
    /// left (`Λ` the burn-in senders' total rate, `T` the burn-in length).
    /// Same distribution as `Simulated`, at a fraction of the cost.
    Exact,
}

/// The section 4.3 experiment. Times are in seconds (the paper's "time
/// unit"); rates are per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimParams {
    /// `U`, all senders including the two challenge senders S0 and S1.
    pub senders: u32,
    /// `λ`, each sender's total sending rate (payload and cover).
    pub sender_rate_per_s: f64,
    /// `µ`, the delay parameter: each hop delays a message `Exp(µ)`.
    pub mu_per_s: f64,
    /// S0 and S1 each queue one payload message every this many seconds.
    pub payload_interval_s: f64,
    /// `L`, layers of mixes (stratified topology).
    pub layers: u32,
    /// `W`, mixes per layer.
    pub width: u32,
    /// Fraction of the mixes the adversary corrupts, in `[0, 1]`; the
    /// final mix where ε is measured is always honest.
    pub corrupt_fraction: f64,
    /// The burn-in, during which only the `U - 2` other senders send.
    pub burn_in_s: f64,
    /// The measurement phase after the burn-in, S0 and S1 sending too.
    pub measure_s: f64,
    /// How the burn-in is done.
    pub burn_in: BurnIn,
}

impl Default for SimParams {
    /// The paper's setting: `U = 100`, `λ = 2`, a 2500 s burn-in and
    /// 100 s of measurement, one payload per second from S0 and S1; three
    /// layers (its recommendation), `λ/µ = 2` and three mixes per layer
    /// (the paper does not state its width).
    fn default() -> Self {
        Self {
            senders: 100,
            sender_rate_per_s: 2.0,
            mu_per_s: 1.0,
            payload_interval_s: 1.0,
            layers: 3,
            width: 3,
            corrupt_fraction: 0.0,
            burn_in_s: 2500.0,
            measure_s: 100.0,
            burn_in: BurnIn::Exact,
        }
    }
}

/// Bounds that keep a run's memory and time finite (TIGER_STYLE: a limit
/// on everything).
pub const SENDERS_MAX: u32 = 1_000_000;
/// The most layers a run accepts.
pub const LAYERS_MAX: u32 = 1_000;
/// The most mixes per layer a run accepts.
pub const WIDTH_MAX: u32 = 100_000;
/// The most mixes in all (`layers * width`): each repetition holds one
/// pool per mix.
pub const MIXES_MAX: u32 = 1_000_000;

impl SimParams {
    /// `λ/µ`, the x axis of Figure 6.
    pub fn lambda_over_mu(&self) -> f64 {
        self.sender_rate_per_s / self.mu_per_s
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(2..=SENDERS_MAX).contains(&self.senders) {
            return Err(ParamError::new(
                "senders",
                self.senders,
                "must be from 2 (S0 and S1) to 1000000",
            ));
        }
        positive("sender_rate_per_s", self.sender_rate_per_s)?;
        positive("mu_per_s", self.mu_per_s)?;
        positive("payload_interval_s", self.payload_interval_s)?;
        if !(1..=LAYERS_MAX).contains(&self.layers) {
            return Err(ParamError::new(
                "layers",
                self.layers,
                "must be from 1 to 1000",
            ));
        }
        if !(1..=WIDTH_MAX).contains(&self.width) {
            return Err(ParamError::new(
                "width",
                self.width,
                "must be from 1 to 100000",
            ));
        }
        if self.layers * self.width > MIXES_MAX {
            return Err(ParamError::new(
                "width",
                self.width,
                "times layers must be at most 1000000 mixes",
            ));
        }
        let f = self.corrupt_fraction;
        if !(0.0..=1.0).contains(&f) {
            return Err(ParamError::new("corrupt_fraction", f, "must be in [0, 1]"));
        }
        crate::error::non_negative("burn_in_s", self.burn_in_s)?;
        positive("measure_s", self.measure_s)?;
        Ok(())
    }

    /// The number of corrupt mixes: `corrupt_fraction` of all `L W`
    /// mixes, rounded, at most all but the measured final mix.
    pub fn corrupt_mixes(&self) -> u32 {
        let total = self.layers * self.width;
        let want = (self.corrupt_fraction * f64::from(total)).round() as u32;
        want.min(total - 1)
    }
}
