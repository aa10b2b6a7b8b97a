//! Single-use reply blocks.
//!
//! A client that wants a reply builds a SURB: a Sphinx header for a path that
//! ends at itself (last command `Recipient { kind: Reply, id }`), the node id
//! of that path's first hop (the replier's provider), and a fresh payload key.
//! It sends the SURB inside a message and keeps the [`SurbKeys`]. The replier
//! encrypts its reply under the SURB's key and sends header plus payload to
//! the first hop; it learns nothing of the path or of who will read the reply.
//! Each hop removes its payload layer as usual; the client undoes them all
//! with the keys it kept.
//!
//! Serialized SURB: first hop `NodeId` (16) | payload key seed (32) | header
//! (`geometry.header_len()`). Invariant: a SURB is used once; the client
//! forgets its keys after the reply arrives.

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::SphinxError;
use crate::geometry::Geometry;
use crate::keys::NodeId;
use crate::lioness::Lioness;
use crate::payload;
use crate::routing::{RecipientKind, RoutingCommand};
use crate::sphinx::{build_header, Hop, PayloadSeeds};

/// A reply block, as sent to the party who may reply.
#[derive(Clone, PartialEq, Eq)]
pub struct Surb {
    first_hop: NodeId,
    key_seed: [u8; 32],
    header: Vec<u8>,
}

impl core::fmt::Debug for Surb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Surb")
            .field("first_hop", &self.first_hop)
            .finish_non_exhaustive()
    }
}

/// What the creator of a SURB keeps to read the reply.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SurbKeys {
    id: [u8; 16],
    key_seed: [u8; 32],
    hop_seeds: PayloadSeeds,
}

impl core::fmt::Debug for SurbKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SurbKeys")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Serialized length of a SURB for `geometry`.
pub const fn surb_len(geometry: &Geometry) -> usize {
    16 + 32 + geometry.header_len()
}

impl Surb {
    /// Build a SURB for `hops`, whose first hop is `first_hop` and whose last
    /// command must be `Recipient { kind: Reply, .. }` at the creator itself.
    pub fn new(
        geometry: &Geometry,
        first_hop: NodeId,
        hops: &[Hop<'_>],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Surb, SurbKeys), SphinxError> {
        let id = match hops.last().map(|h| h.command) {
            Some(RoutingCommand::Recipient {
                kind: RecipientKind::Reply,
                id,
            }) => id,
            _ => {
                return Err(SphinxError::InvalidPath(
                    "a SURB path must end with Recipient { kind: Reply }",
                ))
            }
        };
        let mut header = vec![0u8; geometry.header_len()];
        let hop_seeds = build_header(geometry, hops, rng, &mut header)?;
        let mut key_seed = [0u8; 32];
        rng.fill_bytes(&mut key_seed);
        Ok((
            Surb {
                first_hop,
                key_seed,
                header,
            },
            SurbKeys {
                id,
                key_seed,
                hop_seeds,
            },
        ))
    }

    /// The node the reply must be sent to first.
    pub fn first_hop(&self) -> NodeId {
        self.first_hop
    }

    /// Write a reply packet carrying `message` into `out` (one packet).
    pub fn write_reply(
        &self,
        geometry: &Geometry,
        message: &[u8],
        out: &mut [u8],
    ) -> Result<(), SphinxError> {
        if out.len() != geometry.packet_len() || self.header.len() != geometry.header_len() {
            return Err(SphinxError::WrongLength {
                expected: geometry.packet_len(),
                got: out.len(),
            });
        }
        let (header, body) = out.split_at_mut(geometry.header_len());
        payload::encode(message, body)?;
        header.copy_from_slice(&self.header);
        Lioness::from_seed(&self.key_seed).encrypt(body);
        Ok(())
    }

    /// Serialize: first hop, key seed, header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48 + self.header.len());
        v.extend_from_slice(&self.first_hop.0);
        v.extend_from_slice(&self.key_seed);
        v.extend_from_slice(&self.header);
        v
    }

    /// Parse a serialized SURB for `geometry`.
    pub fn from_bytes(geometry: &Geometry, bytes: &[u8]) -> Result<Surb, SphinxError> {
        let expected = surb_len(geometry);
        if bytes.len() != expected {
            return Err(SphinxError::BadSurb {
                expected,
                got: bytes.len(),
            });
        }
        let mut first_hop = [0u8; 16];
        first_hop.copy_from_slice(&bytes[..16]);
        let mut key_seed = [0u8; 32];
        key_seed.copy_from_slice(&bytes[16..48]);
        Ok(Surb {
            first_hop: NodeId(first_hop),
            key_seed,
            header: bytes[48..].to_vec(),
        })
    }
}

impl SurbKeys {
    /// The id in the SURB's last routing command, to match a reply to these
    /// keys.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Recover the reply from `payload`, the payload of a packet this client
    /// processed as the `Recipient { kind: Reply, id }` hop. Decrypts in place.
    pub fn open_reply<'a>(&self, payload: &'a mut [u8]) -> Result<&'a [u8], SphinxError> {
        for seed in self.hop_seeds.0.iter().rev() {
            Lioness::from_seed(seed).encrypt(payload);
        }
        Lioness::from_seed(&self.key_seed).decrypt(payload);
        payload::decode(payload)
    }
}
