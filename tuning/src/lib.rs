//! Tuning: what the network's parameters buy. Today the Poisson model of
//! Loopix traffic and latency and the statistics that check measurements
//! against it (`model`); the anonymity model and the paper's ε simulation
//! come next (the `tuning` issue). No I/O, no clock: every function is of
//! its arguments.

#![forbid(unsafe_code)]

pub mod model;
