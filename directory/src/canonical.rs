//! The canonical byte encodings that identity keys sign, and the context
//! string of each kind of signature. `docs/topology.md` describes the same
//! bytes for implementers elsewhere.
//!
//! Nothing signs TOML text: files are parsed into typed values and the
//! signature is checked over these encodings, so reformatting a file (key
//! order, whitespace, comments, hex case) never breaks a signature and two
//! different documents never share an encoding.
//!
//! Rules of the encoding: integers are big-endian and fixed width; keys and
//! signatures are their raw bytes; a list is a `u32` count then its items;
//! an address is a tag byte (4 or 6) then the IP's bytes and the port, plus
//! flow info and scope id for IPv6. Every item is self-delimiting, so the
//! encoding is injective.

use std::net::SocketAddr;

use loopix_crypto::{IdentityPublic, NodeId, PublicKey, Signature};

use crate::params::NetworkParams;

/// Context of a node's signature over one epoch's mix key.
pub const MIX_KEY_CONTEXT: &[u8] = b"loopix mix key v1";
/// Context of a node's signature over its descriptor.
pub const NODE_CONTEXT: &[u8] = b"loopix node descriptor v1";
/// Context of the operator's signature over a topology document.
pub const DOCUMENT_CONTEXT: &[u8] = b"loopix topology document v1";

/// A mix key with its signature by the node's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedKey {
    /// Key epoch.
    pub epoch: u64,
    /// X25519 Sphinx public key for that epoch.
    pub key: PublicKey,
    /// Identity signature over [`mix_key`] under [`MIX_KEY_CONTEXT`].
    pub signature: Signature,
}

/// What a node vouches for with its identity key (its descriptor, typed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClaims {
    /// Node id: by convention the hash of `link` (`keyfile::node_id_of`).
    pub id: NodeId,
    /// Ed25519 identity key.
    pub identity: IdentityPublic,
    /// Static X25519 link key.
    pub link: PublicKey,
    /// UDP address.
    pub address: SocketAddr,
    /// Key epoch length, seconds.
    pub epoch_s: u64,
    /// Mix keys by strictly increasing epoch.
    pub mix_keys: Vec<SignedKey>,
}

/// The header fields of a document, typed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocumentHeader {
    /// Format version.
    pub version: u32,
    /// Increases with every document the operator publishes.
    pub serial: u64,
    /// Not valid before (unix seconds).
    pub valid_from: u64,
    /// Not valid from this time on (unix seconds).
    pub valid_until: u64,
    /// Key epoch length, seconds.
    pub epoch_s: u64,
    /// Number of mix layers.
    pub layers: u8,
    /// The network's parameters.
    pub params: NetworkParams,
    /// The operator key that signs the document.
    pub operator: IdentityPublic,
}

/// One node of a document as the operator signs it.
#[derive(Debug, Clone)]
pub struct DocumentNode {
    /// What the node signed.
    pub claims: NodeClaims,
    /// 0 for a provider, 1 for a mix.
    pub role: u8,
    /// Layer (0 for providers).
    pub layer: u8,
    /// The node's signature over its claims.
    pub signature: Signature,
}

/// `id (16) || epoch (u64) || key (32)`: what a mix-key signature covers.
pub fn mix_key(id: &NodeId, epoch: u64, key: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn put_address(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_be_bytes());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.port().to_be_bytes());
            out.extend_from_slice(&v6.flowinfo().to_be_bytes());
            out.extend_from_slice(&v6.scope_id().to_be_bytes());
        }
    }
}

fn put_claims(out: &mut Vec<u8>, c: &NodeClaims) {
    out.extend_from_slice(&c.id.0);
    out.extend_from_slice(&c.identity.0);
    out.extend_from_slice(c.link.as_bytes());
    put_address(out, &c.address);
    out.extend_from_slice(&c.epoch_s.to_be_bytes());
    out.extend_from_slice(&(c.mix_keys.len() as u32).to_be_bytes());
    for k in &c.mix_keys {
        out.extend_from_slice(&k.epoch.to_be_bytes());
        out.extend_from_slice(k.key.as_bytes());
        out.extend_from_slice(&k.signature.0);
    }
}

/// What a node's descriptor signature covers: id, identity key, link key,
/// address, epoch length, then each mix key (epoch, key, its signature).
pub fn node(c: &NodeClaims) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + c.mix_keys.len() * 104);
    put_claims(&mut out, c);
    out
}

/// What the operator signs: the header, then each node in document order as
/// its claims, role, layer and node signature.
pub fn document(h: &DocumentHeader, nodes: &[DocumentNode]) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + nodes.len() * 256);
    out.extend_from_slice(&h.version.to_be_bytes());
    out.extend_from_slice(&h.serial.to_be_bytes());
    out.extend_from_slice(&h.valid_from.to_be_bytes());
    out.extend_from_slice(&h.valid_until.to_be_bytes());
    out.extend_from_slice(&h.epoch_s.to_be_bytes());
    out.push(h.layers);
    h.params.put_canonical(&mut out);
    out.extend_from_slice(&h.operator.0);
    out.extend_from_slice(&(nodes.len() as u32).to_be_bytes());
    for n in nodes {
        put_claims(&mut out, &n.claims);
        out.push(n.role);
        out.push(n.layer);
        out.extend_from_slice(&n.signature.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(address: &str) -> NodeClaims {
        NodeClaims {
            id: NodeId([1; 16]),
            identity: IdentityPublic([2; 32]),
            link: PublicKey::from_bytes([3; 32]),
            address: address.parse().expect("address"),
            epoch_s: 3600,
            mix_keys: vec![SignedKey {
                epoch: 0x0102,
                key: PublicKey::from_bytes([4; 32]),
                signature: Signature([5; 64]),
            }],
        }
    }

    /// The layout in docs/topology.md, byte for byte.
    #[test]
    fn node_encoding_layout() {
        let b = node(&claims("10.0.0.1:1789"));
        let mut want = vec![1u8; 16];
        want.extend([2u8; 32]);
        want.extend([3u8; 32]);
        want.extend([4, 10, 0, 0, 1, 0x06, 0xfd]);
        want.extend(3600u64.to_be_bytes());
        want.extend(1u32.to_be_bytes());
        want.extend(0x0102u64.to_be_bytes());
        want.extend([4u8; 32]);
        want.extend([5u8; 64]);
        assert_eq!(b, want);
        let v6 = node(&claims("[::1]:1789"));
        assert_eq!(v6.len(), want.len() + 12 + 8);
        assert_eq!(
            mix_key(&NodeId([1; 16]), 7, &PublicKey::from_bytes([9; 32])).len(),
            56
        );
    }
}
