//! Node descriptors: the public half of a node's keys, as `loopix keygen`
//! writes it to `node.toml` and a topology document lists it: node id,
//! identity key, link key, address, and the mix key of each epoch, every
//! mix key and the whole descriptor signed by the identity key.
//!
//! The node id is the hash of the link public key ([`node_id_of`]), not of
//! the identity key: ids appear in Sphinx routing commands and other code
//! derives them from link keys, and the descriptor signature binds id, link
//! key and identity key together, so the identity key vouches for the id
//! either way.
//!
//! Invariants: nothing is trusted before [`NodeDescriptor::verify`] (or
//! [`verify_claims`]) checked every signature over the canonical bytes of
//! `canonical.rs`; every error names the node or file and what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use loopix_crypto::{IdentityKey, IdentityPublic, NodeId, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::canonical::{self, NodeClaims, SignedKey};

/// A file that cannot be read or does not parse, naming the file: the
/// errors of descriptor files here and of key files in the node, one type
/// for both.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// I/O on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not what `loopix keygen` writes.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl FileError {
    /// I/O on `path` failed with `source`.
    pub fn io(path: &Path, source: std::io::Error) -> FileError {
        FileError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// `path`'s content is wrong: `problem`.
    pub fn format(path: &Path, problem: impl Into<String>) -> FileError {
        FileError::Format {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A descriptor file that cannot be read or parsed.
pub type DescriptorError = FileError;

/// The node id convention: the first 16 bytes of a BLAKE3 derive-key over
/// the link public key.
pub fn node_id_of(link_public: &PublicKey) -> NodeId {
    let h = blake3::derive_key("loopix node id 2026-11 v1", link_public.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    NodeId(id)
}

/// The key epoch containing `unix_s`.
pub fn epoch_at(unix_s: u64, epoch_s: u64) -> u64 {
    unix_s / epoch_s.max(1)
}

/// One epoch's mix key as written in `node.toml` and topology documents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedMixKey {
    /// Key epoch.
    pub epoch: u64,
    /// X25519 public key (hex).
    pub key: String,
    /// The identity key's signature over (node id, epoch, key) (hex).
    pub signature: String,
}

/// The public descriptor a node publishes (`node.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeDescriptor {
    /// Node id (hex, 16 bytes): the hash of the link key.
    pub id: String,
    /// Ed25519 identity public key (hex).
    pub identity_key: String,
    /// Static X25519 link public key (hex).
    pub link_key: String,
    /// UDP address (from `keygen --address`); absent until one is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    /// Key epoch length in seconds.
    pub epoch_s: u64,
    /// The identity key's signature over the descriptor (hex); present
    /// exactly when `address` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Sphinx public keys by increasing epoch, each signed.
    pub mix_keys: Vec<SignedMixKey>,
}

impl NodeDescriptor {
    /// Read `node.toml` (or a key directory holding one).
    pub fn read(path: &Path) -> Result<NodeDescriptor, DescriptorError> {
        let path = if path.is_dir() {
            path.join("node.toml")
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| DescriptorError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text)
    }

    /// Parse a descriptor's text (`path` names it in errors); check it with
    /// [`NodeDescriptor::verify`].
    pub fn parse(path: &Path, text: &str) -> Result<NodeDescriptor, DescriptorError> {
        toml::from_str(text).map_err(|e| DescriptorError::Format {
            problem: format!(
                "{}; if this descriptor predates signed topologies, run `loopix keygen --dir DIR --address HOST:PORT` again",
                e.to_string().trim_end()
            ),
            path: path.to_owned(),
        })
    }

    /// Parse every field and check the id, each mix-key signature and the
    /// descriptor signature; errors start with `who`.
    pub fn verify(&self, who: &str) -> Result<NodeClaims, String> {
        let Some(address) = self.address else {
            return Err(format!(
                "{who}: no address; run `loopix keygen --dir DIR --address HOST:PORT` for this node"
            ));
        };
        let Some(signature) = &self.signature else {
            return Err(format!(
                "{who}: no descriptor signature; run `loopix keygen` again"
            ));
        };
        let claims = parse_claims(
            who,
            &self.id,
            &self.identity_key,
            &self.link_key,
            address,
            self.epoch_s,
            &self.mix_keys,
        )?;
        verify_claims(who, &claims, signature)?;
        Ok(claims)
    }
}

fn hex_field<T, E: std::fmt::Display>(
    who: &str,
    field: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, String> {
    parse(text).map_err(|e| format!("{who}: {field}: {e}"))
}

/// Parse a node's fields (from a descriptor or a topology entry) into typed
/// claims; mix keys must be listed by strictly increasing epoch.
pub fn parse_claims(
    who: &str,
    id: &str,
    identity_key: &str,
    link_key: &str,
    address: SocketAddr,
    epoch_s: u64,
    mix_keys: &[SignedMixKey],
) -> Result<NodeClaims, String> {
    let id_bytes: [u8; 16] = hex::decode(id.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("{who}: id must be 32 hex digits"))?;
    let identity = hex_field(who, "identity_key", identity_key, IdentityPublic::from_hex)?;
    let link = parse_public(&format!("{who}: link_key"), link_key)?;
    let mut keys = Vec::with_capacity(mix_keys.len());
    for k in mix_keys {
        if keys.last().is_some_and(|l: &SignedKey| l.epoch >= k.epoch) {
            return Err(format!(
                "{who}: mix key for epoch {} is out of order or listed twice; list epochs in increasing order, each once",
                k.epoch
            ));
        }
        let what = format!("{who}: mix key for epoch {}", k.epoch);
        keys.push(SignedKey {
            epoch: k.epoch,
            key: parse_public(&what, &k.key)?,
            signature: hex_field(&what, "signature", &k.signature, Signature::from_hex)?,
        });
    }
    Ok(NodeClaims {
        id: NodeId(id_bytes),
        identity,
        link,
        address,
        epoch_s,
        mix_keys: keys,
    })
}

/// Check that the id is the link key's hash, every mix key's signature and
/// the descriptor signature (hex) by the node's identity key.
pub fn verify_claims(who: &str, c: &NodeClaims, signature: &str) -> Result<(), String> {
    if c.id != node_id_of(&c.link) {
        return Err(format!(
            "{who}: id is not the hash of link_key (expected {})",
            node_id_of(&c.link)
        ));
    }
    for k in &c.mix_keys {
        let msg = canonical::mix_key(&c.id, k.epoch, &k.key);
        if !c
            .identity
            .verify(canonical::MIX_KEY_CONTEXT, &msg, &k.signature)
        {
            return Err(format!(
                "{who}: mix key for epoch {}: signature by identity key {} does not verify",
                k.epoch,
                c.identity.fingerprint()
            ));
        }
    }
    let sig = hex_field(who, "signature", signature, Signature::from_hex)?;
    if !c
        .identity
        .verify(canonical::NODE_CONTEXT, &canonical::node(c), &sig)
    {
        return Err(format!(
            "{who}: node signature by identity key {} does not verify (a field of the entry was changed)",
            c.identity.fingerprint()
        ));
    }
    Ok(())
}

/// Parse a 32-byte hex public key from a named place.
pub fn parse_public(what: &str, text: &str) -> Result<PublicKey, String> {
    let v = hex::decode(text.trim()).map_err(|e| format!("{what}: not hex: {e}"))?;
    let b: [u8; 32] = v
        .try_into()
        .map_err(|v: Vec<u8>| format!("{what}: {} bytes, expected 32", v.len()))?;
    Ok(PublicKey::from_bytes(b))
}

/// The descriptor of a node with these keys, every mix key signed by
/// `identity`, and the whole signed if there is an address.
pub fn sign_descriptor(
    identity: &IdentityKey,
    link: &PublicKey,
    mix_keys: &BTreeMap<u64, PublicKey>,
    address: Option<SocketAddr>,
    epoch_s: u64,
) -> NodeDescriptor {
    let id = node_id_of(link);
    let keys: Vec<SignedKey> = mix_keys
        .iter()
        .map(|(&epoch, key)| SignedKey {
            epoch,
            key: *key,
            signature: identity.sign(
                canonical::MIX_KEY_CONTEXT,
                &canonical::mix_key(&id, epoch, key),
            ),
        })
        .collect();
    let signature = address.map(|address| {
        let claims = NodeClaims {
            id,
            identity: identity.public(),
            link: *link,
            address,
            epoch_s,
            mix_keys: keys.clone(),
        };
        identity
            .sign(canonical::NODE_CONTEXT, &canonical::node(&claims))
            .to_hex()
    });
    NodeDescriptor {
        id: hex::encode(id.0),
        identity_key: identity.public().to_hex(),
        link_key: hex::encode(link.as_bytes()),
        address,
        epoch_s,
        signature,
        mix_keys: keys
            .iter()
            .map(|k| SignedMixKey {
                epoch: k.epoch,
                key: hex::encode(k.key.as_bytes()),
                signature: k.signature.to_hex(),
            })
            .collect(),
    }
}
