//! Fuzz bodies for everything outside the packet crate that parses bytes
//! from outside: a node's datagram dispatch (link frames, client packets,
//! pulls, reloads and replays, on a real shard over the simulated backend),
//! the client's access-link session, the provider's pull handling (acks,
//! pending messages, the exactly-k answer) and the files a node reads
//! (config, topology document, registrations, key files and descriptors).
//!
//! Each body is a plain function of the input bytes: the libFuzzer targets
//! in `libfuzzer/` call them, and `tests/corpus.rs` runs them on stable over
//! every checked-in seed under `corpus/<target>/`, so the corpus is a
//! regression suite in every `cargo test`. Structured inputs are read by
//! [`Input`], which never fails: a short input reads as zeros, so every byte
//! string is a valid program for a body. Bodies assert the promises of the
//! code they drive (no panic, every drop counted, bounded state, exactly-k
//! answers); a failed assertion is a bug, like a panic.
//!
//! The keys are fixed (`fixed`), so that seeds built once stay valid and
//! the fuzzer can reach the code behind authentication by mutating them.

#![allow(clippy::unwrap_used)] // reason: a harness's own set-up failing is a harness bug, and a panic is what the fuzzer reports

mod access;
mod files;
pub mod fixed;
mod node;
mod pull;
pub mod seeds;

pub use access::access_session;
pub use files::{config_file, key_files, registration_file, topology_file};
pub use node::{node_datagram, NodeOutcome};

/// [`node_datagram`], returning what the run did.
pub use node::run as node_datagram_outcome;
pub use pull::provider_pull;

/// A fuzz body: any bytes in, a panic on a bug.
pub type Body = fn(&[u8]);

/// The targets, by name: each name is a libFuzzer target in `libfuzzer/`
/// and a seed folder under `corpus/`.
pub const TARGETS: [(&str, Body); 7] = [
    ("node_datagram", node_datagram),
    ("access_session", access_session),
    ("provider_pull", provider_pull),
    ("config_file", config_file),
    ("topology_file", topology_file),
    ("registration_file", registration_file),
    ("key_files", key_files),
];

/// A reader over fuzz input that never fails: past the end it reads zeros
/// (and [`Input::is_done`] tells the caller to stop).
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }

    /// Every byte has been read.
    pub fn is_done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, or `None` at the end.
    pub fn next_byte(&mut self) -> Option<u8> {
        let b = self.data.get(self.pos).copied();
        self.pos += usize::from(b.is_some());
        b
    }

    /// The next byte, zero past the end.
    pub fn byte(&mut self) -> u8 {
        self.next_byte().unwrap_or(0)
    }

    /// Two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Eight bytes, big-endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_be_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end), as given.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let end = self.pos.saturating_add(n).min(self.data.len());
        let out = &self.data[self.pos.min(end)..end];
        self.pos = end;
        out
    }

    /// Exactly `n` bytes: what is left, padded with zeros.
    pub fn padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.take(n).to_vec();
        v.resize(n, 0);
        v
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}
