//! Sphinx packets with Loopix routing commands, single-use reply blocks,
//! per-hop replay tags and authenticated link frames.
//!
//! This crate is sans-IO: it owns no socket, clock or thread. Callers pass in
//! the randomness, own every buffer and decide what to do with each routing
//! command. `docs/packet-format.md` at the repository root draws every byte.
//!
//! [`identity`] holds the Ed25519 keys that sign topology documents and
//! nodes' mix keys.
//!
//! Invariants kept here, each with a test:
//! - a packet has the same length at every hop ([`Geometry::packet_len`]);
//! - no routing command, flag or position is visible in a packet's bytes;
//! - a flipped header bit fails the MAC at the next hop, a flipped payload bit
//!   turns the recipient's plaintext into noise that [`payload`] rejects;
//! - every parse of untrusted bytes returns a [`SphinxError`] or a
//!   [`LinkError`], never panics.
//!
//! Sender cost is linear in the hop count: the sender keeps the product of
//! blinding scalars modulo the group order and multiplies each hop's key once
//! (see [`keys::RouteKey`]). A hop costs two X25519 operations, the second one
//! only after the replay tag was looked up and the MAC verified.
#![deny(unsafe_code)] // the one exception is `x25519`, an audited FFI wrapper

pub mod access;
pub mod error;
pub mod geometry;
pub mod identity;
mod kdf;
pub mod keys;
pub mod link;
mod lioness;
pub mod payload;
pub mod routing;
pub mod sphinx;
pub mod surb;
mod x25519;

pub use error::{LinkError, SphinxError};
pub use geometry::Geometry;
pub use identity::{IdentityKey, IdentityPublic, Signature};
pub use keys::{MailboxId, NodeId, PublicKey, RouteKey, SecretKey};
pub use link::{FrameHeader, LinkKey, ReplayWindow};
pub use routing::{exp_sample, Delay, RecipientKind, RoutingCommand};
pub use sphinx::{Hop, Processed, ReplayTag, Unwrapped};
pub use surb::{Surb, SurbKeys};
