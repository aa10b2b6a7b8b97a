//! Per-hop key derivation: one BLAKE3 `derive_key` call with output extension
//! turns a hop's shared secret into every key that hop needs.
//!
//! Invariant: keys for different purposes come from disjoint byte ranges of
//! one extendable output, so none can be computed from another; the struct
//! is zeroized on drop.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// BLAKE3 context for per-hop keys. Changing it changes every packet.
const HOP_CONTEXT: &str = "loopix-sphinx 2026-11 hop keys v1";

/// Every key one hop derives from its shared secret.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct HopKeys {
    /// AES-128 key of the routing-information stream.
    pub header_key: [u8; 16],
    /// AES-CTR initial counter block of the routing-information stream.
    pub header_iv: [u8; 16],
    /// BLAKE3 key of the header MAC.
    pub mac_key: [u8; 32],
    /// Seed of this hop's LIONESS payload key.
    pub payload_seed: [u8; 32],
    /// The replay tag: equal for equal shared secrets, unrelated otherwise.
    pub replay_tag: [u8; 16],
    /// Blinding scalar (clamped where used) for the next hop's group element.
    pub blinding: [u8; 32],
}

impl HopKeys {
    pub(crate) fn derive(shared_secret: &[u8; 32]) -> Self {
        let mut out = [0u8; 144];
        blake3::Hasher::new_derive_key(HOP_CONTEXT)
            .update(shared_secret)
            .finalize_xof()
            .fill(&mut out);
        let mut keys = HopKeys {
            header_key: [0; 16],
            header_iv: [0; 16],
            mac_key: [0; 32],
            payload_seed: [0; 32],
            replay_tag: [0; 16],
            blinding: [0; 32],
        };
        keys.header_key.copy_from_slice(&out[0..16]);
        keys.header_iv.copy_from_slice(&out[16..32]);
        keys.mac_key.copy_from_slice(&out[32..64]);
        keys.payload_seed.copy_from_slice(&out[64..96]);
        keys.replay_tag.copy_from_slice(&out[96..112]);
        // The blinding scalar takes the last 32 bytes; it is the one key that
        // is only needed for relaying hops.
        keys.blinding.copy_from_slice(&out[112..144]);
        out.zeroize();
        keys
    }
}
