//! Error values for every way untrusted bytes or caller input can be wrong.
//!
//! Each variant names one reason, so that a node can count drops by reason.
//! Nothing in this crate panics on bytes that came from the network.

use thiserror::Error;

/// Why a Sphinx packet (or a request to build one) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SphinxError {
    /// The byte string is not exactly one packet long for this geometry.
    #[error("packet is {got} bytes, the geometry needs exactly {expected}")]
    WrongLength {
        /// Length the geometry requires.
        expected: usize,
        /// Length that was given.
        got: usize,
    },
    /// The group element is not a canonical X25519 u-coordinate (top bit set,
    /// or not reduced modulo 2^255 - 19).
    #[error("group element is not canonical")]
    NonCanonicalPoint,
    /// The group element has low order: the shared secret would be all zeros.
    #[error("group element has low order")]
    LowOrderPoint,
    /// The header MAC did not verify.
    #[error("header MAC does not verify")]
    BadMac,
    /// The routing command byte is not one this version knows.
    #[error("unknown routing command 0x{0:02x}")]
    UnknownCommand(u8),
    /// A known command with a malformed body (non-zero reserved bytes, or an
    /// unknown recipient kind).
    #[error("malformed routing command 0x{0:02x}")]
    MalformedCommand(u8),
    /// The recipient's plaintext does not carry the zero prefix or a valid
    /// length: the payload was tampered with or was not meant for this key.
    #[error("payload does not decode (tampered or not for this key)")]
    BadPayload,
    /// A path to build has no hops, or more than the geometry allows.
    #[error("path has {hops} hops, the geometry allows 1 to {max}")]
    PathLength {
        /// Hops asked for.
        hops: usize,
        /// The geometry's maximum.
        max: usize,
    },
    /// A path's commands are not in a valid order (see [`crate::sphinx::build`]).
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    /// The message does not fit one payload.
    #[error("message is {got} bytes, one payload carries at most {max}")]
    MessageTooLong {
        /// Message length given.
        got: usize,
        /// Capacity of one payload.
        max: usize,
    },
    /// A public key is not a usable X25519 key (low order, or not on the
    /// prime-order subgroup).
    #[error("public key is not a valid X25519 key")]
    BadPublicKey,
    /// A geometry value is out of range.
    #[error("invalid geometry: {0}")]
    BadGeometry(&'static str),
    /// A serialized SURB has the wrong length for this geometry.
    #[error("SURB is {got} bytes, the geometry needs exactly {expected}")]
    BadSurb {
        /// Length the geometry requires.
        expected: usize,
        /// Length given.
        got: usize,
    },
}

/// Why a link frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LinkError {
    /// Shorter than a frame header plus tag.
    #[error("frame is {0} bytes, shorter than the minimum")]
    TooShort(usize),
    /// A length that is not the one frame length of this link's geometry.
    #[error("frame is {got} bytes, expected {expected}")]
    WrongLength {
        /// Length the geometry requires.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The frame kind byte is unknown.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The authentication tag does not verify under this link's key.
    #[error("frame authentication failed")]
    BadTag,
    /// The counter was already accepted on this link.
    #[error("link counter {0} was already seen")]
    Replay(u64),
    /// The counter is older than the replay window.
    #[error("link counter {0} is older than the replay window")]
    TooOld(u64),
}
