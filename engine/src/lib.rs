//! The Loopix node engine: a thread-per-core sharded mix node.
//!
//! `node::run_mix` and `node::run_provider` assemble a node from its config,
//! key directory and topology (a provider adds `provider`'s inbox writer and
//! `registry`'s clients); each `shard::Shard` owns its socket backend, buffer pool,
//! timing wheel and counters, and shares the node's replay filters
//! (`replay`, kept across restarts by `state`); the control plane (the calling
//! thread) handles key epochs, signals and the metrics endpoint, and talks
//! to shards through bounded channels and one stop flag.
//!
//! System calls and `unsafe` live in `io/` only.
#![deny(unsafe_code)] // exceptions: io/ (sockets, io_uring), audited there

pub mod aqm;
pub mod config;
pub mod control;
pub mod detector;
pub mod io;
pub mod keyfile;
pub mod loops;
pub mod metrics;
pub mod node;
pub mod provider;
pub mod replay;
pub mod shard;
pub mod state;
pub mod wheel;
