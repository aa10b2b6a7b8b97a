//! The route table: the stratified topology of one key epoch as a packet
//! builder needs it (providers, then mix layers 1..=L, each node with its
//! prepared Sphinx key). Clients build their packets on it, and nodes
//! their own loop packets; one type and one constructor for both.
//!
//! Invariant: a table is built only from a whole, checked `Topology`, and
//! only if every node has a key for the epoch.

use std::sync::Arc;

use loopix_crypto::{NodeId, RouteKey};

use crate::topology::{Role, Topology};

/// A node as a packet builder sees it: id and prepared Sphinx key.
#[derive(Clone)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Prepared Sphinx key of the epoch (shared across builders).
    pub key: Arc<RouteKey>,
}

/// The stratified topology, as far as a packet builder needs it.
#[derive(Clone)]
pub struct RouteTable {
    /// Providers.
    pub providers: Vec<NodeInfo>,
    /// Mix layers 1..=L, each non-empty.
    pub layers: Vec<Vec<NodeInfo>>,
}

/// The builder's view of `topology` in key epoch `epoch`: providers, and
/// mix layers `1..=layers`, each node with its Sphinx key of that epoch.
/// Fails, naming the node, if a node has no key for the epoch.
pub fn route_table(topology: &Topology, epoch: u64) -> Result<RouteTable, String> {
    let mut providers = Vec::new();
    let mut layers: Vec<Vec<NodeInfo>> = vec![Vec::new(); usize::from(topology.layers)];
    for (i, n) in topology.nodes.iter().enumerate() {
        let who = format!("node {i} ({})", n.id);
        let key = n.mix_keys.get(&epoch).ok_or_else(|| {
            format!(
                "{who} has no mix key for epoch {epoch} (the current one); \
                 the topology needs every node's key for the current epoch"
            )
        })?;
        let key = RouteKey::new(key)
            .map_err(|e| format!("{who}: mix key for epoch {epoch} is not usable: {e}"))?;
        let info = NodeInfo {
            id: n.id,
            key: Arc::new(key),
        };
        match n.role {
            Role::Provider => providers.push(info),
            Role::Mix => {
                let layer = usize::from(n.layer)
                    .checked_sub(1)
                    .and_then(|l| layers.get_mut(l))
                    .ok_or_else(|| format!("{who}: layer {} out of range", n.layer))?;
                layer.push(info);
            }
        }
    }
    Ok(RouteTable { providers, layers })
}
