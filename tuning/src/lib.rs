//! Tuning: what the network's parameters buy. The Poisson model of Loopix
//! traffic and latency and the statistics that check measurements against
//! it (`model`), the anonymity of one Poisson mix (`anonymity`: Lemma 1,
//! Theorems 1 and 2, the entropy of Appendix A.1), and the paper's
//! section 4.3 simulation of ε over a whole network (`sim`). No I/O, no
//! clock: every function is of its arguments (randomness comes from a
//! seed or an RNG the caller passes).

#![forbid(unsafe_code)]

pub mod anonymity;
pub mod error;
pub mod model;
pub mod rng;
pub mod sim;
pub mod stats;

pub use error::ParamError;
