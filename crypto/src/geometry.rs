//! Packet geometry: hop count, payload size and the lengths that follow.
//!
//! Geometry is a value chosen once per network, not a constant. Every length
//! is derived here so that the header, the packet and the link frame always
//! agree. Invariant: `packet_len()` is the same at every hop, and the default
//! geometry's link frame fits a 1500-byte MTU without IP fragmentation
//! (1452 bytes of UDP payload over IPv6, the smaller of the two).

use crate::error::SphinxError;
use crate::lioness;

/// Bytes of the group element (an X25519 u-coordinate) at the packet start.
pub const ALPHA_LEN: usize = 32;
/// Bytes of the header MAC.
pub const MAC_LEN: usize = 16;
/// Bytes of one hop's routing command inside the header.
pub const COMMAND_LEN: usize = 24;
/// Bytes one hop consumes from the routing information: command plus the
/// next hop's MAC.
pub const SLOT_LEN: usize = COMMAND_LEN + MAC_LEN;
/// The most hops any geometry may have (bounds stack scratch space).
pub const MAX_HOPS_LIMIT: usize = 16;
/// Smallest payload: LIONESS's 32-byte left half, a non-empty right half,
/// the plaintext overhead and some room for a message.
pub const MIN_PAYLOAD_LEN: usize = 64;
/// Largest UDP payload that avoids IP fragmentation on a 1500-byte MTU path
/// (1500 - 40 bytes of IPv6 header - 8 bytes of UDP header).
pub const MTU_UDP_PAYLOAD: usize = 1452;

/// Hop count and payload size of a network's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    max_hops: usize,
    payload_len: usize,
}

impl Geometry {
    /// Six hops (provider, three mix layers, provider, recipient), 1056-byte
    /// payload: a 1344-byte packet in a 1373-byte link frame.
    pub const DEFAULT: Geometry = Geometry {
        max_hops: 6,
        payload_len: lioness::BLOCK_KEY_LEN + 1024,
    };
    /// Six hops, 2080-byte payload, for jumbo-frame links and loopback
    /// benchmarks.
    pub const JUMBO: Geometry = Geometry {
        max_hops: 6,
        payload_len: lioness::BLOCK_KEY_LEN + 2048,
    };

    /// A geometry with `max_hops` hops and `payload_len` payload bytes.
    pub fn new(max_hops: usize, payload_len: usize) -> Result<Self, SphinxError> {
        if !(2..=MAX_HOPS_LIMIT).contains(&max_hops) {
            return Err(SphinxError::BadGeometry("max_hops must be 2 to 16"));
        }
        if payload_len < MIN_PAYLOAD_LEN {
            // LIONESS needs a non-empty right half, or the payload is
            // malleable (bug found by property testing: 32 bytes let a
            // flipped bit through to the recipient).
            return Err(SphinxError::BadGeometry("payload_len must be at least 64"));
        }
        if payload_len > 65_535 {
            return Err(SphinxError::BadGeometry(
                "payload_len must be at most 65535",
            ));
        }
        Ok(Geometry {
            max_hops,
            payload_len,
        })
    }

    /// Most hops a path may have.
    pub const fn max_hops(&self) -> usize {
        self.max_hops
    }
    /// Bytes of the encrypted payload.
    pub const fn payload_len(&self) -> usize {
        self.payload_len
    }
    /// Bytes of routing information (`beta`).
    pub const fn beta_len(&self) -> usize {
        self.max_hops * SLOT_LEN
    }
    /// Bytes of the header: group element, MAC and routing information.
    pub const fn header_len(&self) -> usize {
        ALPHA_LEN + MAC_LEN + self.beta_len()
    }
    /// Bytes of a whole packet, the same at every hop.
    pub const fn packet_len(&self) -> usize {
        self.header_len() + self.payload_len
    }
    /// Bytes of a link frame carrying one packet.
    pub const fn frame_len(&self) -> usize {
        crate::link::FRAME_OVERHEAD + self.packet_len()
    }
    /// Largest message one packet carries end to end.
    pub const fn message_capacity(&self) -> usize {
        self.payload_len - crate::payload::OVERHEAD
    }
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry::DEFAULT
    }
}

const _: () = assert!(Geometry::DEFAULT.frame_len() <= MTU_UDP_PAYLOAD);
const _: () = assert!(Geometry::DEFAULT.max_hops >= 6);
const _: () = assert!(MIN_PAYLOAD_LEN > lioness::BLOCK_KEY_LEN + crate::payload::OVERHEAD);
const _: () = assert!(Geometry::JUMBO.payload_len >= 2048);
const _: () = assert!(Geometry::DEFAULT.packet_len() == 1344);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lengths() {
        let g = Geometry::DEFAULT;
        assert_eq!(g.header_len(), 32 + 16 + 6 * 40);
        assert_eq!(g.frame_len(), 1373);
        assert!(g.message_capacity() > 1000);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(Geometry::new(1, 1056).is_err());
        assert!(Geometry::new(17, 1056).is_err());
        assert!(Geometry::new(6, 10).is_err());
        assert!(Geometry::new(6, 63).is_err());
        assert!(Geometry::new(6, 64).is_ok());
        assert!(Geometry::new(6, 70_000).is_err());
        assert_eq!(Geometry::new(6, 1056), Ok(Geometry::DEFAULT));
    }
}
