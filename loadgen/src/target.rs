//! Targets: the thin part that needs a real network. A target is a
//! topology (the clients' view of it), the registrations of the emulated
//! clients, and optionally the nodes' metrics endpoints. Everything here
//! runs, and fails with an error naming the file or field, before any load
//! is sent.
//!
//! - [`from_registrations`]: a topology file and a directory of
//!   registration files, as `loopix provider register` prints them.
//! - [`from_testnet`]: a running `loopix testnet --clients 0 --keep DIR`:
//!   registers the clients at the testnet's providers (its manifest names
//!   their registries) and reads every node's metrics address.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loopix_client::client_topology;
use loopix_client::{ClientTopology, Registration};
use loopix_crypto::identity::IdentityPublic;
use loopix_directory::descriptor::epoch_at;
use loopix_directory::topology::Topology;
use loopix_engine::keyfile::unix_now_s;
use loopix_testkit::testnet::Manifest;

/// What the emulator needs to know about the network.
pub struct Target {
    /// The clients' view of the network in the current key epoch.
    pub topology: Arc<ClientTopology>,
    /// Mix layers (for the latency model: a message crosses layers + 2
    /// delays, the two providers' included).
    pub layers: u8,
    /// The network's parameters, from its signed document (the packet
    /// geometry, and whether clients may run at other rates).
    pub params: loopix_directory::NetworkParams,
    /// One registration per emulated client.
    pub registrations: Vec<Registration>,
    /// Node metrics endpoints, by name.
    pub metrics: Vec<(String, SocketAddr)>,
}

/// Read the topology file, check it was signed by `operator`, and convert
/// it for the current key epoch.
pub fn load_topology(
    path: &Path,
    operator: &IdentityPublic,
) -> Result<(Arc<ClientTopology>, Topology), String> {
    let topology = Topology::load(path, operator, unix_now_s()).map_err(|e| e.to_string())?;
    let epoch = epoch_at(unix_now_s(), topology.epoch_s);
    let view = client_topology(&topology, epoch).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((Arc::new(view), topology))
}

/// Read every `*.toml` registration file in `dir`, sorted by file name.
pub fn read_registrations(dir: &Path) -> Result<Vec<Registration>, String> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| format!("registrations = {}: cannot read: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            Registration::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

/// Check that each metrics endpoint accepts a TCP connection.
pub fn check_metrics(metrics: &[(String, SocketAddr)]) -> Result<(), String> {
    for (name, addr) in metrics {
        TcpStream::connect_timeout(addr, Duration::from_secs(2)).map_err(|e| {
            format!(
                "metrics endpoint {name} at {addr} does not answer ({e}); is the node \
                 running and metrics set to that address?"
            )
        })?;
    }
    Ok(())
}

/// A target from a topology file and a registrations directory: the first
/// `clients` registrations (by file name). Fails if there are fewer, if a
/// registration's provider is not a provider of the topology, or if a
/// metrics endpoint does not answer.
pub fn from_registrations(
    topology: &Path,
    registrations: &Path,
    clients: usize,
    metrics: Vec<(String, SocketAddr)>,
) -> Result<Target, String> {
    let mut regs = read_registrations(registrations)?;
    let Some(first) = regs.first() else {
        return Err(format!(
            "registrations = {}: no registration files",
            registrations.display()
        ));
    };
    // Every registration names the operator its provider trusts: the
    // topology must be signed by it, and they must agree.
    let operator = first.operator_key;
    if let Some((i, _)) = regs
        .iter()
        .enumerate()
        .find(|(_, r)| r.operator_key != operator)
    {
        return Err(format!(
            "registrations = {}: registration {i} trusts another operator key than the first",
            registrations.display()
        ));
    }
    let (view, topo) = load_topology(topology, &operator)?;
    if regs.len() < clients {
        return Err(format!(
            "registrations = {}: {} registration files, but clients = {clients}; register \
             more clients or lower clients",
            registrations.display(),
            regs.len()
        ));
    }
    regs.truncate(clients);
    check_registrations(&view, &topo, &regs)?;
    check_metrics(&metrics)?;
    Ok(Target {
        topology: view,
        layers: topo.layers,
        params: topo.params,
        registrations: regs,
        metrics,
    })
}

/// Each registration's provider must be a provider of the topology, at
/// the address the topology gives.
pub fn check_registrations(
    view: &ClientTopology,
    topo: &Topology,
    regs: &[Registration],
) -> Result<(), String> {
    for (i, r) in regs.iter().enumerate() {
        if !view.providers.iter().any(|p| p.id == r.provider_id) {
            return Err(format!(
                "registration {i}: provider_id {} is not a provider of the topology",
                r.provider_id
            ));
        }
        if let Some(n) = topo.nodes.iter().find(|n| n.id == r.provider_id) {
            if n.address != r.provider_address {
                return Err(format!(
                    "registration {i}: provider_address {} but the topology says {} for \
                     provider {}",
                    r.provider_address, n.address, r.provider_id
                ));
            }
        }
    }
    Ok(())
}

/// A running `loopix testnet --clients 0 --keep DIR`: register `clients`
/// clients at its providers (waiting until they have taken them) and
/// return the target with every node's metrics address.
pub fn from_testnet(dir: &Path, clients: usize) -> Result<Target, String> {
    let manifest = Manifest::read(dir).map_err(|e| format!("testnet = {}: {e}", dir.display()))?;
    let metrics: Vec<(String, SocketAddr)> = manifest
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.metrics))
        .collect();
    check_metrics(&metrics)?;
    let operator = IdentityPublic::from_hex(&manifest.operator_key)
        .map_err(|e| format!("testnet = {}: operator_key: {e}", dir.display()))?;
    let (view, topo) = load_topology(&manifest.topology, &operator)?;
    let registrations = manifest.register_clients(clients, "loadgen")?;
    check_registrations(&view, &topo, &registrations)?;
    Ok(Target {
        topology: view,
        layers: topo.layers,
        params: topo.params,
        registrations,
        metrics,
    })
}
