//! Test kit for the whole repository: harnesses that tests, the testnet,
//! the load generator and the benches share, so that none of them is
//! written twice. Today it holds the seeded whole-network simulation
//! (`sim`): real shards, inboxes and client cores on simulated time.
//!
//! Nothing here is used by a node: the engine never depends on this crate.

pub mod sim;
