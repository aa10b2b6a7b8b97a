//! Signed topology documents: every node's role, layer, address and keys,
//! signed by each node's identity key and by the operator; and the neighbour
//! rules of the stratified topology.
//!
//! A node's index in `nodes` is the sender index it puts in link frames.
//! `docs/topology.md` describes the format and the canonical bytes that are
//! signed (`canonical.rs`).
//!
//! Invariants checked at load, each error naming the node and the fault, in
//! this order: the version is known; every node's fields parse, its id is
//! the hash of its link key, each mix key's signature and the node's
//! signature verify under its identity key; ids, identity keys and addresses
//! are unique (a mix listed in two layers is a duplicate id); mixes are in
//! layers `1..=layers`, providers in layer 0; every layer and the provider
//! set is non-empty; the document is signed by the trusted operator key and
//! the signature verifies; the current time is inside the validity window.
//! Structure is checked before the operator signature only so that the
//! message names the fault; nothing in an unverified document is used.
//!
//! Neighbour rule (paper section 2): a mix in layer `i` accepts from layer
//! `i-1` (providers for layer 1) and sends to layer `i+1` (providers from the
//! last layer).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use loopix_crypto::{IdentityKey, IdentityPublic, NodeId, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::canonical::{self, DocumentHeader, DocumentNode};
use crate::descriptor::{parse_claims, verify_claims, NodeDescriptor, SignedMixKey};
use crate::params::NetworkParams;

/// The document format this code writes and reads.
pub const VERSION: u32 = 2;

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Entry and exit: first and last layer, holds client inboxes.
    Provider,
    /// A mix in one of the layers.
    Mix,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Provider => 0,
            Role::Mix => 1,
        }
    }
}

impl Role {
    /// `"provider"` or `"mix"`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Mix => "mix",
        }
    }
}

/// One node as written in the document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id (hex): the hash of the link key.
    pub id: String,
    /// Role (placed by the operator).
    pub role: Role,
    /// Layer: 0 for providers, 1..=layers for mixes (placed by the operator).
    pub layer: u8,
    /// UDP address.
    pub address: SocketAddr,
    /// Ed25519 identity public key (hex).
    pub identity_key: String,
    /// Static link public key (hex).
    pub link_key: String,
    /// The node's descriptor signature (hex): over id, identity key, link
    /// key, address, epoch length and mix keys, not over role and layer.
    pub signature: String,
    /// Sphinx public keys by increasing epoch, each signed by the node.
    #[serde(default)]
    pub mix_keys: Vec<SignedMixKey>,
}

/// The document as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Increases with every document the operator publishes.
    pub serial: u64,
    /// Not valid before this time (unix seconds).
    pub valid_from: u64,
    /// Not valid from this time on (unix seconds).
    pub valid_until: u64,
    /// Key epoch length, seconds.
    pub epoch_s: u64,
    /// Number of mix layers.
    pub layers: u8,
    /// The operator's Ed25519 public key (hex).
    pub operator_key: String,
    /// The operator's signature over the canonical encoding (hex).
    pub signature: String,
    /// The network's parameters: every client and node uses these.
    pub params: NetworkParams,
    /// Every node.
    pub nodes: Vec<NodeEntry>,
}

/// A checked node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Id.
    pub id: NodeId,
    /// Role.
    pub role: Role,
    /// Layer.
    pub layer: u8,
    /// Address.
    pub address: SocketAddr,
    /// Link public key.
    pub link_key: PublicKey,
    /// Sphinx public keys by epoch.
    pub mix_keys: BTreeMap<u64, PublicKey>,
    /// Ed25519 identity key.
    pub identity_key: IdentityPublic,
}

/// A checked topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Key epoch length, seconds.
    pub epoch_s: u64,
    /// Number of mix layers.
    pub layers: u8,
    /// The network's parameters (checked: in range, and the geometry holds
    /// a path through every layer).
    pub params: NetworkParams,
    /// Nodes; the index is the link-frame sender index.
    pub nodes: Vec<Node>,
    /// Format version.
    pub version: u32,
    /// The document's serial number.
    pub serial: u64,
    /// Valid from (unix seconds).
    pub valid_from: u64,
    /// Valid until (unix seconds, exclusive).
    pub valid_until: u64,
    /// The operator key that signed it.
    pub operator: IdentityPublic,
    by_id: HashMap<NodeId, u32>,
}

/// What is wrong with a topology.
#[derive(Debug, thiserror::Error)]
#[error("topology {origin}: {problem}")]
pub struct TopologyError {
    /// File or description.
    pub origin: String,
    /// What and where.
    pub problem: String,
}

/// Serial, validity, layers and network parameters of a document to build.
#[derive(Debug, Clone, Copy)]
pub struct BuildParams {
    /// Serial number (higher than the previous document's).
    pub serial: u64,
    /// Valid from (unix seconds).
    pub valid_from: u64,
    /// Valid until (unix seconds).
    pub valid_until: u64,
    /// Number of mix layers.
    pub layers: u8,
    /// The network's parameters.
    pub network: NetworkParams,
}

impl TopologyFile {
    /// Read and parse a document without checking it.
    pub fn read(path: &Path) -> Result<TopologyFile, TopologyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
            origin: origin.clone(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse(&origin, &text)
    }

    /// Parse a document's text without checking it (`origin` names it in
    /// errors).
    pub fn parse(origin: &str, text: &str) -> Result<TopologyFile, TopologyError> {
        toml::from_str(text).map_err(|e| TopologyError {
            origin: origin.to_owned(),
            problem: e.to_string().trim_end().to_owned(),
        })
    }

    /// The document as TOML text.
    pub fn to_toml(&self) -> Result<String, TopologyError> {
        toml::to_string(self).map_err(|e| TopologyError {
            origin: "document".into(),
            problem: e.to_string(),
        })
    }

    fn header(&self, operator: IdentityPublic) -> DocumentHeader {
        DocumentHeader {
            version: self.version,
            serial: self.serial,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            epoch_s: self.epoch_s,
            layers: self.layers,
            params: self.params,
            operator,
        }
    }

    /// Every node parsed into the typed form the operator signs; errors
    /// name the node.
    fn document_nodes(&self) -> Result<Vec<DocumentNode>, String> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let who = format!("node {i} ({})", n.id);
                let claims = parse_claims(
                    &who,
                    &n.id,
                    &n.identity_key,
                    &n.link_key,
                    n.address,
                    self.epoch_s,
                    &n.mix_keys,
                )?;
                let signature = Signature::from_hex(&n.signature)
                    .map_err(|e| format!("{who}: signature: {e}"))?;
                Ok(DocumentNode {
                    claims,
                    role: n.role.code(),
                    layer: n.layer,
                    signature,
                })
            })
            .collect()
    }

    /// The bytes the operator signs (`docs/topology.md`), with
    /// `operator_key` as written.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, String> {
        let operator = IdentityPublic::from_hex(&self.operator_key)
            .map_err(|e| format!("operator_key: {e}"))?;
        Ok(canonical::document(
            &self.header(operator),
            &self.document_nodes()?,
        ))
    }

    /// Set `operator_key` and sign the document with `operator`.
    pub fn sign(&mut self, operator: &IdentityKey) -> Result<(), String> {
        self.operator_key = operator.public().to_hex();
        let bytes = self.canonical_bytes()?;
        self.signature = operator.sign(canonical::DOCUMENT_CONTEXT, &bytes).to_hex();
        Ok(())
    }

    /// Assemble a document from node descriptors (written by `loopix
    /// keygen --address`) placed by the operator, sign it, and check it as a
    /// node would at `params.valid_from`. Nodes are ordered providers first,
    /// then layer by layer, in the given order within a layer.
    pub fn build(
        params: BuildParams,
        placed: &[(NodeDescriptor, Role, u8)],
        operator: &IdentityKey,
    ) -> Result<TopologyFile, TopologyError> {
        let bad = |problem: String| TopologyError {
            origin: "build".into(),
            problem,
        };
        let Some((first, _, _)) = placed.first() else {
            return Err(bad("no node descriptors given".into()));
        };
        let epoch_s = first.epoch_s;
        let mut order: Vec<usize> = (0..placed.len()).collect();
        order.sort_by_key(|&i| placed[i].2);
        let mut nodes = Vec::with_capacity(placed.len());
        for i in order {
            let (d, role, layer) = &placed[i];
            let who = format!("descriptor {} ({})", i + 1, d.id);
            let claims = d.verify(&who).map_err(bad)?;
            if d.epoch_s != epoch_s {
                return Err(bad(format!(
                    "{who}: epoch_s is {} but descriptor 1 has {epoch_s}; every node must use the same key epoch length",
                    d.epoch_s
                )));
            }
            nodes.push(NodeEntry {
                id: d.id.clone(),
                role: *role,
                layer: *layer,
                address: claims.address,
                identity_key: d.identity_key.clone(),
                link_key: d.link_key.clone(),
                signature: d.signature.clone().unwrap_or_default(),
                mix_keys: d.mix_keys.clone(),
            });
        }
        let mut file = TopologyFile {
            version: VERSION,
            serial: params.serial,
            valid_from: params.valid_from,
            valid_until: params.valid_until,
            epoch_s,
            layers: params.layers,
            operator_key: String::new(),
            signature: String::new(),
            params: params.network,
            nodes,
        };
        file.sign(operator).map_err(bad)?;
        Topology::from_file("build", file.clone(), &operator.public(), params.valid_from)?;
        Ok(file)
    }
}

impl Topology {
    /// Read a document and check it against the trusted operator key at
    /// `now_s` (unix seconds; the caller reads the clock).
    pub fn load(
        path: &Path,
        trusted_operator: &IdentityPublic,
        now_s: u64,
    ) -> Result<Topology, TopologyError> {
        let file = TopologyFile::read(path)?;
        Self::from_file(&path.display().to_string(), file, trusted_operator, now_s)
    }

    /// Load a new document at `path` and check that it may replace this one
    /// (see [`Topology::check_successor`]) at `now_s`: for reloading on
    /// SIGHUP.
    pub fn reload(&self, path: &Path, now_s: u64) -> Result<Topology, TopologyError> {
        let next = Self::load(path, &self.operator, now_s)?;
        self.check_successor(&next, &path.display().to_string())?;
        Ok(next)
    }

    /// May `next` replace this document? Same operator, same key epoch
    /// length, same network parameters, and a serial not lower than this
    /// one's.
    pub fn check_successor(&self, next: &Topology, origin: &str) -> Result<(), TopologyError> {
        let bad = |problem: String| TopologyError {
            origin: origin.to_owned(),
            problem,
        };
        if next.operator != self.operator {
            return Err(bad(format!(
                "signed by operator {}, but the current document is signed by {}",
                next.operator.fingerprint(),
                self.operator.fingerprint()
            )));
        }
        if next.serial < self.serial {
            return Err(bad(format!(
                "serial {} is lower than the current document's {}; an old document is never reinstated",
                next.serial, self.serial
            )));
        }
        if next.epoch_s != self.epoch_s {
            return Err(bad(format!(
                "epoch_s {} differs from the running {}; key epochs cannot change while nodes run",
                next.epoch_s, self.epoch_s
            )));
        }
        if next.params != self.params || next.layers != self.layers {
            return Err(bad(
                "its layers or [params] differ from the running document's; the network's \
                 parameters cannot change while nodes run (restart every node and client with \
                 the new document)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Check a parsed document against `trusted_operator` at `now_s` (unix
    /// seconds).
    pub fn from_file(
        origin: &str,
        file: TopologyFile,
        trusted_operator: &IdentityPublic,
        now_s: u64,
    ) -> Result<Topology, TopologyError> {
        let bad = |problem: String| TopologyError {
            origin: origin.to_owned(),
            problem,
        };
        check_header(&file).map_err(bad)?;
        let doc_nodes = file.document_nodes().map_err(bad)?;
        let (nodes, by_id) = check_nodes(&file, &doc_nodes).map_err(bad)?;
        let operator = check_signature(&file, &doc_nodes, trusted_operator, now_s).map_err(bad)?;
        Ok(Topology {
            epoch_s: file.epoch_s,
            layers: file.layers,
            params: file.params,
            nodes,
            version: file.version,
            serial: file.serial,
            valid_from: file.valid_from,
            valid_until: file.valid_until,
            operator,
            by_id,
        })
    }

    /// Index of the node with `id`.
    pub fn index_of(&self, id: &NodeId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// May a node at `to` accept frames from the node at `from`? (Mixes
    /// only; providers' rules come with providers.)
    pub fn accepts_from(&self, to: &Node, from: &Node) -> bool {
        match (to.role, from.role) {
            (Role::Mix, Role::Provider) => to.layer == 1,
            (Role::Mix, Role::Mix) => from.layer + 1 == to.layer,
            (Role::Provider, Role::Mix) => from.layer == self.layers,
            (Role::Provider, Role::Provider) => false,
        }
    }

    /// May a node at `from` send to the node at `to`?
    pub fn sends_to(&self, from: &Node, to: &Node) -> bool {
        self.accepts_from(to, from)
    }
}

/// The document's version, epoch length and layer count are usable.
fn check_header(file: &TopologyFile) -> Result<(), String> {
    if file.version != VERSION {
        return Err(format!(
            "version {} is not supported (this loopix reads version {VERSION}; version 2 added \
             the network's [params]: rebuild the document with `loopix topology build`)",
            file.version
        ));
    }
    if file.epoch_s == 0 {
        return Err("epoch_s must be at least 1".into());
    }
    if file.layers == 0 {
        return Err("layers must be at least 1".into());
    }
    file.params.check(file.layers)
}

/// Every node's descriptor verifies, no node, identity key or address is
/// listed twice, every node sits in a layer its role allows, and there are
/// providers and a mix in every layer. Returns the nodes and their index by id.
fn check_nodes(
    file: &TopologyFile,
    doc_nodes: &[DocumentNode],
) -> Result<(Vec<Node>, HashMap<NodeId, u32>), String> {
    let mut nodes = Vec::with_capacity(doc_nodes.len());
    let mut by_id: HashMap<NodeId, u32> = HashMap::new();
    let mut by_identity: HashMap<IdentityPublic, usize> = HashMap::new();
    let mut by_addr: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, (n, d)) in file.nodes.iter().zip(doc_nodes).enumerate() {
        let who = format!("node {i} ({})", n.id);
        verify_claims(&who, &d.claims, &n.signature)?;
        if let Some(&j) = by_id.get(&d.claims.id) {
            let other = &file.nodes[j as usize];
            return Err(format!(
                "{who}: also listed as node {j} ({:?} in layer {}); a node may be listed once, in one layer",
                other.role, other.layer
            ));
        }
        by_id.insert(d.claims.id, i as u32);
        if let Some(j) = by_identity.insert(d.claims.identity, i) {
            return Err(format!(
                "{who}: identity key {} is also node {j}'s",
                d.claims.identity.fingerprint()
            ));
        }
        if let Some(j) = by_addr.insert(n.address, i) {
            return Err(format!("{who}: address {} is also node {j}'s", n.address));
        }
        match n.role {
            Role::Provider if n.layer != 0 => {
                return Err(format!(
                    "{who}: a provider must be in layer 0, not {}",
                    n.layer
                ))
            }
            Role::Mix if n.layer == 0 || n.layer > file.layers => {
                return Err(format!(
                    "{who}: a mix must be in layer 1 to {}, not {}",
                    file.layers, n.layer
                ))
            }
            _ => {}
        }
        nodes.push(Node {
            id: d.claims.id,
            role: n.role,
            layer: n.layer,
            address: n.address,
            link_key: d.claims.link,
            mix_keys: d.claims.mix_keys.iter().map(|k| (k.epoch, k.key)).collect(),
            identity_key: d.claims.identity,
        });
    }
    if !nodes.iter().any(|n| n.role == Role::Provider) {
        return Err("no provider: providers are the first and last layer".into());
    }
    for l in 1..=file.layers {
        if !nodes.iter().any(|n| n.role == Role::Mix && n.layer == l) {
            return Err(format!(
                "layer {l} has no mix (layers = {}; every layer needs at least one)",
                file.layers
            ));
        }
    }
    Ok((nodes, by_id))
}

/// The document is signed by `trusted_operator` and valid at `now_s`.
/// Returns the operator's key.
fn check_signature(
    file: &TopologyFile,
    doc_nodes: &[DocumentNode],
    trusted_operator: &IdentityPublic,
    now_s: u64,
) -> Result<IdentityPublic, String> {
    let operator =
        IdentityPublic::from_hex(&file.operator_key).map_err(|e| format!("operator_key: {e}"))?;
    if operator != *trusted_operator {
        return Err(format!(
            "signed by operator key {}, but the trusted operator key is {} (node.operator_key or --operator-pub)",
            operator.fingerprint(),
            trusted_operator.fingerprint()
        ));
    }
    let signature = Signature::from_hex(&file.signature).map_err(|e| format!("signature: {e}"))?;
    let bytes = canonical::document(&file.header(operator), doc_nodes);
    if !operator.verify(canonical::DOCUMENT_CONTEXT, &bytes, &signature) {
        return Err(format!(
            "operator signature by {} does not verify (the document was changed after signing)",
            operator.fingerprint()
        ));
    }
    if file.valid_until <= file.valid_from {
        return Err(format!(
            "valid_until {} is not after valid_from {}",
            file.valid_until, file.valid_from
        ));
    }
    if now_s < file.valid_from {
        return Err(format!(
            "not valid yet: valid_from is {}, {} s from now; check this host's clock",
            file.valid_from,
            file.valid_from - now_s
        ));
    }
    if now_s >= file.valid_until {
        return Err(format!(
            "expired: valid_until was {}, {} s ago; build a new document with `loopix topology build`",
            file.valid_until,
            now_s - file.valid_until
        ));
    }
    Ok(operator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::sign_descriptor;
    use loopix_crypto::SecretKey;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const NOW: u64 = 1_000_000;

    fn descriptor(rng: &mut ChaCha20Rng, i: u16) -> NodeDescriptor {
        let identity = IdentityKey::generate(rng);
        let link = SecretKey::generate(rng).public_key();
        let mix = BTreeMap::from([
            (5, SecretKey::generate(rng).public_key()),
            (6, SecretKey::generate(rng).public_key()),
        ]);
        let address = SocketAddr::from(([127, 0, 0, 1], 9000 + i));
        sign_descriptor(&identity, &link, &mix, Some(address), 3600)
    }

    fn params() -> BuildParams {
        BuildParams {
            serial: 1,
            valid_from: NOW - 10,
            valid_until: NOW + 100,
            layers: 2,
            network: NetworkParams::for_layers(2),
        }
    }

    /// Provider, mix in layer 1, mix in layer 2, and the operator key.
    fn good() -> (TopologyFile, IdentityKey) {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let operator = IdentityKey::generate(&mut rng);
        let placed = vec![
            (descriptor(&mut rng, 1), Role::Provider, 0),
            (descriptor(&mut rng, 2), Role::Mix, 1),
            (descriptor(&mut rng, 3), Role::Mix, 2),
        ];
        let file = TopologyFile::build(params(), &placed, &operator).expect("builds");
        (file, operator)
    }

    fn check(file: TopologyFile, operator: &IdentityKey) -> Result<Topology, String> {
        Topology::from_file("t", file, &operator.public(), NOW).map_err(|e| e.to_string())
    }

    /// Re-sign after a change, so that only the intended fault is present.
    fn resigned(mut file: TopologyFile, operator: &IdentityKey) -> TopologyFile {
        file.sign(operator).expect("sign");
        file
    }

    fn flip_hex(s: &mut String, at: usize) {
        let c = s.as_bytes()[at];
        let flipped = if c == b'0' { '1' } else { '0' };
        s.replace_range(at..at + 1, &flipped.to_string());
    }

    fn refused(file: TopologyFile, operator: &IdentityKey, needles: &[&str]) {
        let err = check(file, operator).expect_err("must be refused");
        for n in needles {
            assert!(err.contains(n), "{err:?} should contain {n:?}");
        }
    }

    #[test]
    fn valid_topology_and_neighbour_rules() {
        let (file, operator) = good();
        let text = file.to_toml().expect("toml");
        let reread: TopologyFile = toml::from_str(&text).expect("parse");
        let t = check(reread, &operator).expect("valid");
        let (p, m1, m2) = (&t.nodes[0], &t.nodes[1], &t.nodes[2]);
        assert!(t.accepts_from(m1, p));
        assert!(t.accepts_from(m2, m1));
        assert!(t.accepts_from(p, m2));
        assert!(!t.accepts_from(m2, p));
        assert!(!t.accepts_from(m1, m2));
        assert!(!t.accepts_from(m1, m1));
        assert!(t.sends_to(m1, m2));
        assert_eq!(t.index_of(&m2.id), Some(2));
        assert_eq!(m1.mix_keys.len(), 2);
        assert_eq!(t.operator, operator.public());
        assert_eq!((t.serial, t.version), (1, VERSION));
    }

    #[test]
    fn flipped_mix_key_signature_names_the_node_and_epoch() {
        let (mut file, operator) = good();
        flip_hex(&mut file.nodes[1].mix_keys[1].signature, 7);
        let id = file.nodes[1].id.clone();
        refused(
            file,
            &operator,
            &[
                &format!("node 1 ({id})"),
                "mix key for epoch 6",
                "does not verify",
            ],
        );
    }

    #[test]
    fn flipped_operator_signature_is_refused() {
        let (mut file, operator) = good();
        flip_hex(&mut file.signature, 20);
        refused(file, &operator, &["operator signature", "does not verify"]);
    }

    #[test]
    fn changed_field_breaks_the_operator_signature() {
        let (mut file, operator) = good();
        file.valid_until += 1_000_000;
        refused(file, &operator, &["operator signature", "does not verify"]);
    }

    #[test]
    fn moved_node_breaks_its_own_signature() {
        let (mut file, operator) = good();
        file.nodes[2].address = "127.0.0.1:1".parse().expect("addr");
        let file = resigned(file, &operator);
        refused(
            file,
            &operator,
            &["node 2", "node signature", "does not verify"],
        );
    }

    #[test]
    fn untrusted_operator_is_refused() {
        let (file, _) = good();
        let other = IdentityKey::from_seed([1; 32]).expect("seed");
        refused(
            file,
            &other,
            &["trusted operator key", &other.public().fingerprint()],
        );
    }

    #[test]
    fn mix_in_two_layers_is_refused() {
        let (mut file, operator) = good();
        let mut twice = file.nodes[1].clone();
        twice.layer = 2;
        file.nodes.push(twice);
        let id = file.nodes[1].id.clone();
        let file = resigned(file, &operator);
        refused(
            file,
            &operator,
            &[
                &format!("node 3 ({id})"),
                "also listed as node 1",
                "one layer",
            ],
        );
    }

    #[test]
    fn missing_layer_is_refused() {
        let (mut file, operator) = good();
        file.nodes.remove(2);
        let file = resigned(file, &operator);
        refused(file, &operator, &["layer 2 has no mix"]);
    }

    #[test]
    fn structure_faults_are_named() {
        let (good_file, operator) = good();
        let mut provider_layer = good_file.clone();
        provider_layer.nodes[0].layer = 1;
        let mut mix_layer = good_file.clone();
        mix_layer.nodes[1].layer = 3;
        let mut no_provider = good_file.clone();
        no_provider.nodes.remove(0);
        let mut dup_addr = good_file.clone();
        let mut extra = dup_addr.nodes[2].clone();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let d = descriptor(&mut rng, 3);
        extra.id = d.id;
        extra.identity_key = d.identity_key;
        extra.link_key = d.link_key;
        extra.signature = d.signature.expect("signed");
        extra.mix_keys = d.mix_keys;
        dup_addr.nodes.push(extra);
        let mut bad_key = good_file.clone();
        bad_key.nodes[1].link_key = "abc".into();
        let mut version = good_file.clone();
        version.version = 3;
        for (file, needle) in [
            (provider_layer, "provider must be in layer 0"),
            (mix_layer, "mix must be in layer 1 to 2, not 3"),
            (no_provider, "no provider"),
            (dup_addr, "address 127.0.0.1:9003 is also node 2's"),
            (bad_key, "node 1"),
            (version, "version 3 is not supported"),
        ] {
            let mut file = file;
            // A document that does not parse cannot be signed; it is refused
            // before its signature is looked at anyway.
            let _ = file.sign(&operator);
            refused(file, &operator, &[needle]);
        }
    }

    #[test]
    fn validity_window_is_enforced() {
        let (file, operator) = good();
        let err = Topology::from_file("t", file.clone(), &operator.public(), NOW + 100)
            .expect_err("expired")
            .to_string();
        assert!(err.contains("expired"), "{err}");
        let err = Topology::from_file("t", file, &operator.public(), NOW - 11)
            .expect_err("early")
            .to_string();
        assert!(err.contains("not valid yet"), "{err}");
    }

    #[test]
    fn changed_params_break_the_operator_signature() {
        let (mut file, operator) = good();
        file.params.lambda_p *= 2.0;
        refused(file, &operator, &["operator signature", "does not verify"]);
        let (mut file, operator) = good();
        file.params.allow_rate_overrides = true;
        refused(file, &operator, &["operator signature", "does not verify"]);
    }

    #[test]
    fn out_of_range_params_are_refused_naming_the_field() {
        let (mut file, operator) = good();
        file.params.lambda_l = -1.0;
        refused(
            resigned(file, &operator),
            &operator,
            &["params.lambda_l is -1"],
        );
        let (mut file, operator) = good();
        file.params.mtu = 1300;
        refused(
            resigned(file, &operator),
            &operator,
            &["params.payload_len", "over params.mtu 1300"],
        );
        // Two layers need five hops.
        let (mut file, operator) = good();
        file.params.max_hops = 5;
        let text = resigned(file, &operator).to_toml().expect("toml");
        assert!(text.contains("[params]"), "{text}");
        let file = TopologyFile::parse("t", &text).expect("parses");
        check(file, &operator).expect("five hops hold two layers");
        let (mut file, operator) = good();
        file.params.max_hops = 4;
        refused(
            resigned(file, &operator),
            &operator,
            &["params.max_hops is 4", "2 layers takes 5 hops"],
        );
    }

    #[test]
    fn a_version_1_document_is_refused_with_the_fix() {
        let (mut file, operator) = good();
        file.version = 1;
        refused(
            resigned(file, &operator),
            &operator,
            &["version 1 is not supported", "loopix topology build"],
        );
    }

    #[test]
    fn successor_rules() {
        let (file, operator) = good();
        let current = check(file.clone(), &operator).expect("valid");
        let mut next = file.clone();
        next.serial = 2;
        let next = check(resigned(next, &operator), &operator).expect("valid");
        current
            .check_successor(&next, "n")
            .expect("higher serial is fine");
        let err = next
            .check_successor(&current, "n")
            .expect_err("lower serial")
            .to_string();
        assert!(err.contains("serial 1 is lower"), "{err}");
        let other = IdentityKey::from_seed([2; 32]).expect("seed");
        let foreign = check(resigned(file, &other), &other).expect("valid for other");
        let err = current
            .check_successor(&foreign, "n")
            .expect_err("other operator")
            .to_string();
        assert!(err.contains("signed by operator"), "{err}");
        let mut changed = file_with_serial(&operator, 3);
        changed.params.lambda_d = 0.5;
        let changed = check(resigned(changed, &operator), &operator).expect("valid");
        let err = current
            .check_successor(&changed, "n")
            .expect_err("other params")
            .to_string();
        assert!(err.contains("[params] differ"), "{err}");
    }

    fn file_with_serial(operator: &IdentityKey, serial: u64) -> TopologyFile {
        let (mut file, same) = good();
        assert_eq!(same.public(), operator.public());
        file.serial = serial;
        file
    }

    #[test]
    fn build_refuses_bad_descriptors() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let operator = IdentityKey::generate(&mut rng);
        let mut tampered = descriptor(&mut rng, 2);
        tampered.address = Some("127.0.0.1:2".parse().expect("addr"));
        let placed = vec![
            (descriptor(&mut rng, 1), Role::Provider, 0),
            (tampered, Role::Mix, 1),
            (descriptor(&mut rng, 3), Role::Mix, 2),
        ];
        let err = TopologyFile::build(params(), &placed, &operator)
            .expect_err("tampered")
            .to_string();
        assert!(
            err.contains("descriptor 2") && err.contains("node signature"),
            "{err}"
        );
        let placed = vec![
            (descriptor(&mut rng, 1), Role::Provider, 0),
            (descriptor(&mut rng, 2), Role::Mix, 1),
        ];
        let err = TopologyFile::build(params(), &placed, &operator)
            .expect_err("layer 2 missing")
            .to_string();
        assert!(err.contains("layer 2 has no mix"), "{err}");
    }
}
