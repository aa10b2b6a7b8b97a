//! Keys and identifiers: X25519 secret and public keys, the sender-side
//! prepared key of a hop, node ids and mailbox ids.
//!
//! Invariants: a [`SecretKey`] is zeroized on drop; a [`PublicKey`] that can
//! be used as a hop ([`RouteKey`]) is canonical, of prime order and not of
//! low order; ids are opaque 16-byte values compared as bytes.

use core::fmt;

use curve25519_dalek::edwards::EdwardsBasepointTable;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::SphinxError;
use crate::x25519;

/// Clamp a scalar as RFC 7748 does before every X25519 multiplication.
pub(crate) fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 0xf8;
    k[31] &= 0x7f;
    k[31] |= 0x40;
    k
}

/// 2^255 - 19, little-endian: the field modulus.
const P_LE: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// True if `u` is a canonical field element: top bit clear and `u < p`.
/// X25519 ignores the top bit, so a non-canonical encoding would let a bit
/// flip through unnoticed; the packet path refuses such encodings.
pub(crate) fn is_canonical(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    // Compare little-endian numbers from the most significant byte down.
    for i in (0..32).rev() {
        if u[i] != P_LE[i] {
            return u[i] < P_LE[i];
        }
    }
    false // equal to p
}

/// An X25519 secret key (clamped on use). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        SecretKey(clamp(k))
    }
    /// A key from its 32 bytes (clamped here).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(clamp(bytes))
    }
    /// The key's 32 bytes (clamped), for storing in a key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::x25519_base(&self.0))
    }
    /// X25519 with a peer's public key; `None` if the peer key has low order.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> Option<[u8; 32]> {
        x25519::x25519(&self.0, &peer.0)
    }
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// An X25519 public key (a Montgomery u-coordinate, little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wrap 32 bytes; validity is checked where the key is used.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// A hop's public key prepared for the sender: a constant-time precomputed
/// multiplication table (about 30 KiB, about 1 ms to build).
///
/// Building a packet multiplies each hop's key by the running product of the
/// ephemeral scalar and the blinding scalars, all reduced modulo the group
/// order. With a table per key that costs about 16 us here, against 24 us for
/// an X25519 call that could not take an arbitrary scalar anyway (X25519
/// clamps). Clients build the tables once per topology and share them.
pub struct RouteKey {
    public: PublicKey,
    table: EdwardsBasepointTable,
}

impl RouteKey {
    /// Prepare `key`. Refuses keys that are not canonical, not on the curve,
    /// of low order, or not in the prime-order subgroup (every honest X25519
    /// public key is `clamp(k) * basepoint`, which is).
    pub fn new(key: &PublicKey) -> Result<Self, SphinxError> {
        if !is_canonical(&key.0) {
            return Err(SphinxError::BadPublicKey);
        }
        let point = MontgomeryPoint(key.0)
            .to_edwards(0)
            .ok_or(SphinxError::BadPublicKey)?;
        if point.is_small_order() || !point.is_torsion_free() {
            return Err(SphinxError::BadPublicKey);
        }
        Ok(RouteKey {
            public: *key,
            table: EdwardsBasepointTable::create(&point),
        })
    }
    /// The key this table was built from.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
    /// `scalar * key` as an X25519 u-coordinate (constant time in `scalar`).
    pub(crate) fn mul(&self, scalar: &Scalar) -> [u8; 32] {
        (&self.table * scalar).to_montgomery().0
    }
}

impl fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RouteKey").field(&self.public).finish()
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ")")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    };
}

id_type!(
    /// A node's identifier inside routing commands: 16 opaque bytes, assigned
    /// by the topology (by convention a hash of the node's link key, which
    /// the node's identity key signs).
    NodeId
);
id_type!(
    /// A provider-side mailbox of one client: 16 opaque bytes.
    MailboxId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bounds() {
        assert!(is_canonical(&[0u8; 32]));
        let mut p_minus_1 = P_LE;
        p_minus_1[0] -= 1;
        assert!(is_canonical(&p_minus_1));
        assert!(!is_canonical(&P_LE));
        assert!(!is_canonical(&[0xffu8; 32]));
        let mut top = [0u8; 32];
        top[31] = 0x80;
        assert!(!is_canonical(&top));
    }

    #[test]
    fn route_key_matches_x25519() {
        let a = SecretKey::from_bytes([3u8; 32]);
        let b = SecretKey::from_bytes([5u8; 32]);
        let rk = RouteKey::new(&b.public_key()).expect("valid key");
        let s = Scalar::from_bytes_mod_order(*a.as_bytes());
        assert_eq!(Some(rk.mul(&s)), a.diffie_hellman(&b.public_key()));
    }

    #[test]
    fn route_key_refuses_bad_keys() {
        for bad in [[0u8; 32], [0xffu8; 32]] {
            assert!(RouteKey::new(&PublicKey::from_bytes(bad)).is_err());
        }
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(RouteKey::new(&PublicKey::from_bytes(one)).is_err());
    }
}
