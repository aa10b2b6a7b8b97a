//! The signed documents every Loopix party reads, and nothing else: the
//! topology document (`topology`) with the canonical bytes each signature
//! covers (`canonical`), node descriptors (`descriptor`), and a client's
//! registration and public address (`registration`), and the route table
//! of one key epoch that packet builders use (`routes`).
//!
//! Nodes, clients, the load generator and the tools all read these; none
//! of them has to depend on the node crate to do so.
//!
//! Invariants: no sockets, threads or clock reads (the caller passes the
//! time a document is checked at); nothing from a document is used before
//! the whole of it has checked; every signature covers canonical bytes
//! under its own context string, never TOML text.

#![forbid(unsafe_code)]

pub mod canonical;
pub mod descriptor;
pub mod params;
pub mod registration;
pub mod routes;
pub mod topology;

pub use params::{ClientRates, NetworkParams};
pub use registration::{Address, AddressFile, Registration, RegistrationFile};
