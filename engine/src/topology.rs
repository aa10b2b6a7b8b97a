//! The topology file: every node's role, layer, address and keys, and the
//! neighbour rules of the stratified topology.
//!
//! This is the unsigned form; signed documents with identity keys come with
//! the topology issue and will wrap the same content. A node's index in
//! `nodes` is the sender index it puts in link frames.
//!
//! Invariants checked at load, each error naming the node: ids and addresses
//! are unique; mixes are in layers `1..=layers`, providers in layer 0; every
//! layer and the provider set is non-empty; keys parse. Neighbour rule (paper
//! section 2): a mix in layer `i` accepts from layer `i-1` (providers for
//! layer 1) and sends to layer `i+1` (providers from the last layer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use loopix_crypto::{NodeId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::keyfile::{parse_public, NodeDescriptor};

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Entry and exit: first and last layer, holds client inboxes.
    Provider,
    /// A mix in one of the layers.
    Mix,
}

/// One node as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id (hex).
    pub id: String,
    /// Role.
    pub role: Role,
    /// Layer: 0 for providers, 1..=layers for mixes.
    pub layer: u8,
    /// UDP address.
    pub address: SocketAddr,
    /// Static link public key (hex).
    pub link_key: String,
    /// Sphinx public key per epoch.
    #[serde(default)]
    pub mix_keys: BTreeMap<String, String>,
}

/// The file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Key epoch length, seconds.
    pub epoch_s: u64,
    /// Number of mix layers.
    pub layers: u8,
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
}

/// A checked topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Key epoch length, seconds.
    pub epoch_s: u64,
    /// Number of mix layers.
    pub layers: u8,
    /// Nodes; the index is the link-frame sender index.
    pub nodes: Vec<Node>,
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

impl Topology {
    /// Read and check a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
            origin: origin.clone(),
            problem: format!("cannot read: {e}"),
        })?;
        let file: TopologyFile = toml::from_str(&text).map_err(|e| TopologyError {
            origin: origin.clone(),
            problem: e.to_string().trim_end().to_owned(),
        })?;
        Self::from_file(&origin, file)
    }

    /// Check a parsed file.
    pub fn from_file(origin: &str, file: TopologyFile) -> Result<Topology, TopologyError> {
        let bad = |problem: String| TopologyError {
            origin: origin.to_owned(),
            problem,
        };
        if file.epoch_s == 0 {
            return Err(bad("epoch_s must be at least 1".into()));
        }
        if file.layers == 0 {
            return Err(bad("layers must be at least 1".into()));
        }
        let mut nodes = Vec::with_capacity(file.nodes.len());
        let mut by_id = HashMap::new();
        let mut addrs = HashSet::new();
        for (i, n) in file.nodes.iter().enumerate() {
            let who = format!("node {i} ({})", n.id);
            let id_bytes: [u8; 16] = hex::decode(&n.id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad(format!("{who}: id must be 32 hex digits")))?;
            let id = NodeId(id_bytes);
            match n.role {
                Role::Provider if n.layer != 0 => {
                    return Err(bad(format!(
                        "{who}: a provider must be in layer 0, not {}",
                        n.layer
                    )))
                }
                Role::Mix if n.layer == 0 || n.layer > file.layers => {
                    return Err(bad(format!(
                        "{who}: a mix must be in layer 1 to {}, not {}",
                        file.layers, n.layer
                    )))
                }
                _ => {}
            }
            if by_id.insert(id, i as u32).is_some() {
                return Err(bad(format!(
                    "{who}: id listed twice (a node may be in one layer only)"
                )));
            }
            if !addrs.insert(n.address) {
                return Err(bad(format!("{who}: address {} listed twice", n.address)));
            }
            let link_key = parse_public(&format!("{who} link_key"), &n.link_key).map_err(bad)?;
            let mut mix_keys = BTreeMap::new();
            for (e, k) in &n.mix_keys {
                let epoch: u64 = e
                    .parse()
                    .map_err(|_| bad(format!("{who}: mix_keys epoch {e:?} is not a number")))?;
                mix_keys.insert(
                    epoch,
                    parse_public(&format!("{who} mix key {e}"), k).map_err(bad)?,
                );
            }
            nodes.push(Node {
                id,
                role: n.role,
                layer: n.layer,
                address: n.address,
                link_key,
                mix_keys,
            });
        }
        if !nodes.iter().any(|n| n.role == Role::Provider) {
            return Err(bad(
                "no provider: providers are the first and last layer".into()
            ));
        }
        for l in 1..=file.layers {
            if !nodes.iter().any(|n| n.role == Role::Mix && n.layer == l) {
                return Err(bad(format!("layer {l} has no mix")));
            }
        }
        Ok(Topology {
            epoch_s: file.epoch_s,
            layers: file.layers,
            nodes,
            by_id,
        })
    }

    /// Build the file form from node descriptors and their placement.
    pub fn assemble(
        epoch_s: u64,
        layers: u8,
        placed: &[(NodeDescriptor, Role, u8, SocketAddr)],
    ) -> TopologyFile {
        TopologyFile {
            epoch_s,
            layers,
            nodes: placed
                .iter()
                .map(|(d, role, layer, address)| NodeEntry {
                    id: d.id.clone(),
                    role: *role,
                    layer: *layer,
                    address: *address,
                    link_key: d.link_key.clone(),
                    mix_keys: d.mix_keys.clone(),
                })
                .collect(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(i: u8, role: Role, layer: u8) -> NodeEntry {
        NodeEntry {
            id: hex::encode([i; 16]),
            role,
            layer,
            address: SocketAddr::from(([127, 0, 0, 1], 9000 + u16::from(i))),
            link_key: hex::encode([9u8; 32]),
            mix_keys: BTreeMap::from([("5".to_string(), hex::encode([9u8; 32]))]),
        }
    }

    fn file(nodes: Vec<NodeEntry>) -> TopologyFile {
        TopologyFile {
            epoch_s: 3600,
            layers: 2,
            nodes,
        }
    }

    fn good() -> Vec<NodeEntry> {
        vec![
            entry(1, Role::Provider, 0),
            entry(2, Role::Mix, 1),
            entry(3, Role::Mix, 2),
        ]
    }

    #[test]
    fn valid_topology_and_neighbour_rules() {
        let t = Topology::from_file("t", file(good())).expect("valid");
        let (p, m1, m2) = (&t.nodes[0], &t.nodes[1], &t.nodes[2]);
        assert!(t.accepts_from(m1, p));
        assert!(t.accepts_from(m2, m1));
        assert!(t.accepts_from(p, m2));
        assert!(!t.accepts_from(m2, p));
        assert!(!t.accepts_from(m1, m2));
        assert!(!t.accepts_from(m1, m1));
        assert!(t.sends_to(m1, m2));
        assert_eq!(t.index_of(&m2.id), Some(2));
    }

    #[test]
    fn faults_are_named() {
        let mut dup = good();
        dup.push(entry(2, Role::Mix, 2));
        let mut missing_layer = good();
        missing_layer.remove(2);
        let mut provider_layer = good();
        provider_layer[0].layer = 1;
        let mut bad_key = good();
        bad_key[1].link_key = "abc".into();
        for (nodes, needle) in [
            (dup, "listed twice"),
            (missing_layer, "layer 2 has no mix"),
            (provider_layer, "provider must be in layer 0"),
            (bad_key, "link_key"),
        ] {
            let err = Topology::from_file("t", file(nodes))
                .expect_err("invalid")
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
