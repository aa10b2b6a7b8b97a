//! Test kit for the whole repository: harnesses that tests, the testnet,
//! the load generator and the benches share, so that none of them is
//! written twice.
//!
//! - `sim`: the seeded whole-network simulation (real shards, inboxes and
//!   client cores on simulated time);
//! - `localnet`: a network of node processes on loopback (keys, configs,
//!   a signed topology) and a `Driver` that plays any node;
//! - `process`: one child node process (start, wait until up, metrics,
//!   signals, bounded stop, killed on drop);
//! - `metrics`: one reader of a node's `/metrics`, by the engine's names;
//! - `pool_meter`: a live node's λ, µ, pool and entropy against Lemma 1;
//! - `fake_provider`: a provider in a thread, for client and load generator
//!   tests (access links, routing, k-frame pull answers);
//! - `supervise`: the testnet's children, a dead one noticed, clean stop;
//! - `testnet`: `loopix testnet`, the whole network on loopback with
//!   in-process clients, measured against the Poisson model.
//!
//! Nothing here is used by a node: the engine never depends on this crate.

pub mod fake_provider;
pub mod localnet;
pub mod metrics;
pub mod pool_meter;
pub mod process;
pub mod proxy;
pub mod sim;
pub mod supervise;
pub mod testnet;
