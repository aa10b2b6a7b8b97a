//! Test kit for the whole repository: harnesses that tests, the testnet,
//! the load generator and the benches share, so that none of them is
//! written twice.
//!
//! - `sim`: the seeded whole-network simulation (real shards, inboxes and
//!   client cores on simulated time);
//! - `localnet`: a network of node processes on loopback (keys, configs,
//!   a signed topology) and a `Driver` that plays any node;
//! - `supervise`: child node processes, logs, clean stop;
//! - `testnet`: `loopix testnet`, the whole network on loopback with
//!   in-process clients, measured against the Poisson model.
//!
//! Nothing here is used by a node: the engine never depends on this crate.

pub mod localnet;
pub mod sim;
pub mod supervise;
pub mod testnet;
