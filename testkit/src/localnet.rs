//! A network of nodes on loopback, for tests and benchmarks: key
//! directories, an operator key, a signed topology (serial 1, valid from
//! five minutes ago for 30 days) and one config file per node (a
//! provider's with a `[provider]` section and a data directory under the
//! net's directory, so it can run as `loopix provider`), written under one
//! directory; plus a `Driver` that plays any node (it holds that node's
//! keys), usually a provider, so that it can inject packets into the first
//! layer and receive what the last layer sends on, or the last layer, to
//! deliver packets to a provider.
//!
//! Invariant: everything is under the given directory and on 127.0.0.1.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use loopix_crypto::link::FRAME_OVERHEAD;
use loopix_crypto::sphinx::{self, Hop};
use loopix_crypto::{
    Delay, Geometry, IdentityPublic, LinkKey, NodeId, RouteKey, RoutingCommand, SecretKey,
};
use rand_core::CryptoRngCore;

use loopix_directory::descriptor::{epoch_at, NodeDescriptor};
use loopix_directory::topology::{BuildParams, Role, Topology, TopologyFile};
pub use loopix_directory::NetworkParams;
use loopix_engine::config::IoChoice;
use loopix_engine::keyfile::{self, unix_now_s, NodeSecrets};

/// What network to lay out.
#[derive(Debug, Clone)]
pub struct LocalNetSpec {
    /// Providers (layer 0).
    pub providers: usize,
    /// Mix layers.
    pub layers: u8,
    /// Mixes in each layer.
    pub mixes_per_layer: usize,
    /// Shards per mix.
    pub shards: usize,
    /// Backend for every mix.
    pub io: IoChoice,
    /// Pin shards to cores (off for tests that run many processes).
    pub pin_cores: bool,
    /// First core when pinning.
    pub first_core: usize,
    /// Pool per shard.
    pub pool_packets: u32,
    /// `replay.rate_pps` for every mix (sizes filters).
    pub rate_pps: u64,
    /// `shutdown.drain_ms`.
    pub drain_ms: u64,
    /// `engine.delay_cap_ms`.
    pub delay_cap_ms: u64,
    /// Key epoch length in the topology.
    pub epoch_s: u64,
    /// `epochs.grace_s`.
    pub grace_s: u64,
    /// Epoch keys to generate per node, from the current epoch on.
    pub key_epochs: u64,
    /// Providers: `provider.max_messages_per_client`.
    pub max_messages_per_client: u32,
    /// The network's parameters, signed into the topology document. The
    /// geometry is set from `layers` when the network is laid out. By
    /// default `lambda_m` is 0 (no node loops), so that tests counting
    /// packets see only their own; `loopix testnet` sets the node default.
    pub params: NetworkParams,
    /// `detector.window_s` of every node (0: the node default).
    pub detector_window_s: u64,
    /// Names of nodes (`mix-l2-0`) placed behind a front: the topology
    /// lists a front address (where a proxy listens), the node listens on
    /// another (`node.public_address` is the front).
    pub fronted: Vec<String>,
    /// `engine.socket_buffer_bytes` of every node.
    pub socket_buffer_bytes: usize,
}

impl LocalNetSpec {
    /// `params` with the geometry for `layers`: what the document carries.
    pub fn network(&self) -> NetworkParams {
        let mut p = self.params;
        p.set_geometry_for(self.layers);
        p
    }
}

impl Default for LocalNetSpec {
    fn default() -> Self {
        LocalNetSpec {
            providers: 1,
            layers: 3,
            mixes_per_layer: 1,
            shards: 1,
            io: IoChoice::Auto,
            pin_cores: false,
            first_core: 0,
            pool_packets: 4096,
            rate_pps: 1000,
            drain_ms: 500,
            delay_cap_ms: 60_000,
            epoch_s: 3600,
            grace_s: 300,
            key_epochs: 2,
            max_messages_per_client: 10_000,
            params: NetworkParams {
                lambda_m: 0.0,
                ..NetworkParams::default()
            },
            detector_window_s: 0,
            fronted: Vec::new(),
            socket_buffer_bytes: 8 << 20,
        }
    }
}

/// One node's files and addresses.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// Role.
    pub role: Role,
    /// Layer (0 for providers).
    pub layer: u8,
    /// Key directory.
    pub key_dir: PathBuf,
    /// Config file (`loopix mix` or `loopix provider --config`).
    pub config: Option<PathBuf>,
    /// A provider's `provider.data_dir` (`None` for mixes).
    pub data_dir: Option<PathBuf>,
    /// UDP address, as the topology lists it.
    pub address: SocketAddr,
    /// Where the node listens: `address`, unless it is fronted.
    pub listen: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// Public descriptor.
    pub descriptor: NodeDescriptor,
}

impl LocalNode {
    /// Its name: the key directory's (`provider-0`, `mix-l1-2`).
    pub fn name(&self) -> String {
        self.key_dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// A laid-out network.
#[derive(Debug, Clone)]
pub struct LocalNet {
    /// Its directory.
    pub dir: PathBuf,
    /// The topology file.
    pub topology_path: PathBuf,
    /// The operator's secret key file (`operator.key`; `.pub` beside it).
    pub operator_key_path: PathBuf,
    /// The operator's public key, trusted by every node's config.
    pub operator: IdentityPublic,
    /// The network's parameters, as signed into the first document.
    pub params: NetworkParams,
    /// Nodes, in topology order: providers first, then layer by layer.
    pub nodes: Vec<LocalNode>,
}

/// Register a client named `name` in the registry under `data_dir` of the
/// provider with hex id `id` at `address`, and return the client's
/// registration (what `loopix provider register` prints).
pub fn register_at(
    data_dir: &Path,
    id: &str,
    address: SocketAddr,
    operator: IdentityPublic,
    name: &str,
) -> Result<loopix_client::Registration, String> {
    let id: [u8; 16] = hex::decode(id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("provider id {id:?} is not 16 hex bytes"))?;
    let entry = loopix_engine::provider::registry::register(data_dir, name)?;
    Ok(loopix_client::Registration {
        provider_id: NodeId(id),
        provider_address: address,
        slot: entry.slot,
        mailbox: entry.mailbox,
        access_key: entry.access_key,
        operator_key: operator,
    })
}

/// A free UDP port on 127.0.0.1, for a node that binds it later (see [`free_port`]).
pub fn free_udp_addr() -> std::io::Result<SocketAddr> {
    free_port()
}

/// A free TCP port on 127.0.0.1, for a node that binds it later (see [`free_port`]).
pub fn free_tcp_addr() -> std::io::Result<SocketAddr> {
    free_port()
}

/// The lowest port [`free_port`] hands out.
const FREE_PORT_LOW: u16 = 10_000;

/// A port on 127.0.0.1 that is free for both TCP and UDP now and that no
/// other call in this process has handed out.
///
/// A port is released between this call and the node binding it, so
/// something else may take it in between. Asking the kernel for port 0 makes
/// that likely: the kernel gives out the same ephemeral range for every
/// outgoing connection, and the tests open thousands (a `/metrics` scrape
/// is one each), so a CI run once lost a node to "address already in use".
/// The ports here are drawn at random from below the ephemeral range
/// (`net.ipv4.ip_local_port_range`), which outgoing connections never use;
/// two processes collide only if both draw the same port in the moment
/// before the first binds it.
pub fn free_port() -> std::io::Result<SocketAddr> {
    use rand_core::{RngCore, SeedableRng};
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let high = ephemeral_low().unwrap_or(32_768);
    if high <= FREE_PORT_LOW + 1_000 {
        // No room below the ephemeral range: the kernel's choice it is.
        return UdpSocket::bind("127.0.0.1:0")?.local_addr();
    }
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut rng = rand_chacha::ChaCha8Rng::from_entropy();
    for _ in 0..1_000 {
        let port = FREE_PORT_LOW + (rng.next_u32() % u32::from(high - FREE_PORT_LOW)) as u16;
        if given.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let free = UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok();
        if free {
            given.insert(port);
            return Ok(addr);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port found in {FREE_PORT_LOW}..{high} after 1000 tries"),
    ))
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

impl LocalNet {
    /// Write keys, topology and configs under `dir`.
    pub fn create(dir: &Path, spec: &LocalNetSpec) -> Result<LocalNet, String> {
        let epoch_s = spec.epoch_s;
        let first = epoch_at(unix_now_s(), epoch_s);
        let mut placed = Vec::new();
        let mut nodes = Vec::new();
        let mut roles = vec![(Role::Provider, 0u8); spec.providers];
        for l in 1..=spec.layers {
            roles.extend(std::iter::repeat_n((Role::Mix, l), spec.mixes_per_layer));
        }
        for (i, (role, layer)) in roles.into_iter().enumerate() {
            let name = match role {
                Role::Provider => format!("provider-{i}"),
                Role::Mix => format!("mix-l{layer}-{i}"),
            };
            let key_dir = dir.join(&name);
            let address = free_udp_addr().map_err(|e| e.to_string())?;
            let metrics = free_tcp_addr().map_err(|e| e.to_string())?;
            let report =
                keyfile::keygen_at(&key_dir, Some(address), epoch_s, first, spec.key_epochs)
                    .map_err(|e| e.to_string())?;
            placed.push((report.descriptor.clone(), role, layer));
            nodes.push(LocalNode {
                role,
                layer,
                key_dir,
                config: None,
                data_dir: None,
                listen: if spec.fronted.contains(&name) {
                    free_udp_addr().map_err(|e| e.to_string())?
                } else {
                    address
                },
                address,
                metrics,
                descriptor: report.descriptor,
            });
        }
        let operator_key_path = dir.join("operator.key");
        let operator = keyfile::operator_keygen(&operator_key_path).map_err(|e| e.to_string())?;
        let operator_secret =
            keyfile::read_identity(&operator_key_path).map_err(|e| e.to_string())?;
        let now = unix_now_s();
        let params = BuildParams {
            serial: 1,
            valid_from: now.saturating_sub(300),
            valid_until: now + 30 * 86_400,
            layers: spec.layers,
            network: spec.network(),
        };
        let topology_path = dir.join("topology.toml");
        let file =
            TopologyFile::build(params, &placed, &operator_secret).map_err(|e| e.to_string())?;
        let text = file.to_toml().map_err(|e| e.to_string())?;
        std::fs::write(&topology_path, text)
            .map_err(|e| format!("{}: {e}", topology_path.display()))?;
        if let Some(unknown) = spec
            .fronted
            .iter()
            .find(|f| !nodes.iter().any(|n| &n.name() == *f))
        {
            let names: Vec<String> = nodes.iter().map(LocalNode::name).collect();
            return Err(format!(
                "no node named {unknown:?} to put behind a front; the nodes are {}",
                names.join(", ")
            ));
        }
        for n in nodes.iter_mut() {
            let path = n.key_dir.with_extension("toml");
            let config = config_text(n, spec, &topology_path, &operator);
            std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
            n.config = Some(path);
        }
        Ok(LocalNet {
            dir: dir.to_owned(),
            topology_path,
            operator_key_path,
            operator,
            params: spec.network(),
            nodes,
        })
    }

    /// The checked topology.
    pub fn topology(&self) -> Result<Topology, String> {
        Topology::load(&self.topology_path, &self.operator, unix_now_s()).map_err(|e| e.to_string())
    }

    /// Register a client named `name` at the provider at `index` (directly
    /// in its registry, as `loopix provider register` does; a running
    /// provider picks it up within about a second) and return what the
    /// client needs.
    pub fn register_client(
        &self,
        index: usize,
        name: &str,
    ) -> Result<loopix_client::Registration, String> {
        let node = &self.nodes[index];
        let data_dir = node
            .data_dir
            .as_ref()
            .ok_or_else(|| format!("node {index} is not a provider"))?;
        register_at(
            data_dir,
            &node.descriptor.id,
            node.address,
            self.operator,
            name,
        )
    }

    /// Indices of the mixes of `layer`.
    pub fn layer(&self, layer: u8) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].role == Role::Mix && self.nodes[i].layer == layer)
            .collect()
    }
}

/// Plays provider `index` of a `LocalNet`: holds its keys, derives link keys
/// to every node, prepares every node's current-epoch Sphinx key, and seals
/// frames as that provider.
pub struct Driver {
    /// The topology.
    pub topology: Topology,
    /// This provider's index.
    pub index: u32,
    /// This provider's secrets.
    pub secrets: NodeSecrets,
    /// The current epoch.
    pub epoch: u64,
    /// Link keys to every node by index (`None` for itself).
    pub links: Vec<Option<LinkKey>>,
    /// Prepared Sphinx keys of every node for `epoch`.
    pub route_keys: Vec<Option<RouteKey>>,
    /// Packet geometry.
    pub geometry: Geometry,
    counter: u64,
}

impl Driver {
    /// A driver for provider `index` of `net`.
    pub fn new(net: &LocalNet, index: usize) -> Result<Driver, String> {
        let topology = net.topology()?;
        let epoch = epoch_at(unix_now_s(), topology.epoch_s);
        let secrets = keyfile::load_node_secrets(&net.nodes[index].key_dir, epoch)
            .map_err(|e| e.to_string())?;
        let mut links = Vec::new();
        let mut route_keys = Vec::new();
        for (j, n) in topology.nodes.iter().enumerate() {
            links.push(if j == index {
                None
            } else {
                Some(LinkKey::derive(&secrets.link, &n.link_key).ok_or("bad link key")?)
            });
            route_keys.push(n.mix_keys.get(&epoch).and_then(|k| RouteKey::new(k).ok()));
        }
        let geometry = topology.params.geometry()?;
        Ok(Driver {
            topology,
            index: index as u32,
            secrets,
            epoch,
            links,
            route_keys,
            geometry,
            // From the wall clock in microseconds, as a node's shards count:
            // a node restarted between two drivers remembers the counters
            // the first one used and refuses them again (docs/restarts.md).
            counter: loopix_engine::state::wall_us(),
        })
    }

    /// Build packets for `epoch` from now on (it must be in every node's
    /// descriptor).
    pub fn use_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.route_keys = self
            .topology
            .nodes
            .iter()
            .map(|n| n.mix_keys.get(&epoch).and_then(|k| RouteKey::new(k).ok()))
            .collect();
    }

    /// Node id of the node at `index`.
    pub fn id(&self, index: usize) -> NodeId {
        self.topology.nodes[index].id
    }

    /// Build a packet that provider `provider` stores in `mailbox` (it reads
    /// `Deliver`) at once, for a recipient whose Sphinx key is `recipient`,
    /// carrying `payload`: what a last-layer mix hands a provider.
    pub fn build_delivery(
        &self,
        provider: usize,
        mailbox: loopix_crypto::MailboxId,
        recipient: &RouteKey,
        payload: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, String> {
        let now = loopix_crypto::Delay::ZERO;
        self.build_delivery_after(provider, mailbox, recipient, payload, now, rng)
    }

    /// [`Driver::build_delivery`] whose `Deliver` hop carries `delay`: the
    /// provider holds the packet that long before storing it.
    pub fn build_delivery_after(
        &self,
        provider: usize,
        mailbox: loopix_crypto::MailboxId,
        recipient: &RouteKey,
        payload: &[u8],
        delay: loopix_crypto::Delay,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, String> {
        let key = self.route_keys[provider]
            .as_ref()
            .ok_or_else(|| format!("node {provider} has no key for epoch {}", self.epoch))?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let hops = [
            Hop {
                key,
                command: RoutingCommand::Deliver { mailbox, delay },
            },
            Hop {
                key: recipient,
                command: RoutingCommand::Recipient {
                    kind: loopix_crypto::RecipientKind::Message,
                    id,
                },
            },
        ];
        let mut pkt = vec![0u8; self.geometry.packet_len()];
        sphinx::build(&self.geometry, &hops, payload, rng, &mut pkt).map_err(|e| e.to_string())?;
        Ok(pkt)
    }

    /// Build a packet along `path` (node indices) with the given per-hop
    /// delays, ending with `Drop` at the last node (which must be a provider
    /// for a real network; the driver itself, usually).
    pub fn build_drop_path(
        &self,
        path: &[usize],
        delays_us: &[u32],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, String> {
        let mut hops = Vec::with_capacity(path.len());
        for (k, &node) in path.iter().enumerate() {
            let key = self.route_keys[node]
                .as_ref()
                .ok_or_else(|| format!("node {node} has no key for epoch {}", self.epoch))?;
            let command = if k + 1 == path.len() {
                RoutingCommand::Drop
            } else {
                RoutingCommand::Relay {
                    next: self.id(path[k + 1]),
                    delay: Delay::from_micros(delays_us[k]),
                }
            };
            hops.push(Hop { key, command });
        }
        let mut pkt = vec![0u8; self.geometry.packet_len()];
        sphinx::build(&self.geometry, &hops, b"", rng, &mut pkt).map_err(|e| e.to_string())?;
        Ok(pkt)
    }

    /// Seal `packet` in a fresh frame for node `to` (new counter each call).
    pub fn frame_for(&mut self, to: usize, packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; FRAME_OVERHEAD + packet.len()];
        let counter = self.counter;
        self.counter += 1;
        self.links[to]
            .as_ref()
            .expect("no link to itself")
            .seal(self.index, counter, packet, &mut frame)
            .expect("frame sized for the packet");
        frame
    }

    /// Open a frame that arrived at this provider and process its packet
    /// with this provider's Sphinx key; returns the command it read.
    pub fn receive(&self, frame: &[u8]) -> Result<RoutingCommand, String> {
        let header = loopix_crypto::FrameHeader::peek(frame).map_err(|e| e.to_string())?;
        let link = self
            .links
            .get(header.sender as usize)
            .and_then(|l| l.as_ref())
            .ok_or("frame from an unknown sender")?;
        let (_, packet) = link.open(frame).map_err(|e| e.to_string())?;
        // The packet may have been built for any epoch this provider has a
        // key for: try the driver's epoch first, then the others.
        let keys = self.secrets.mix.get(&self.epoch).into_iter().chain(
            self.secrets
                .mix
                .iter()
                .filter(|(e, _)| **e != self.epoch)
                .map(|(_, k)| k),
        );
        let mut last = String::from("no key");
        for key in keys {
            let key: &SecretKey = key;
            let mut p = packet.to_vec();
            match sphinx::process(&self.geometry, key, &mut p) {
                Ok(x) => return Ok(x.command),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// The config file text of node `n` (a provider's `data_dir` is set here).
fn config_text(
    n: &mut LocalNode,
    spec: &LocalNetSpec,
    topology_path: &Path,
    operator: &IdentityPublic,
) -> String {
    let io = match spec.io {
        IoChoice::Auto => "auto",
        IoChoice::Uring => "uring",
        IoChoice::Portable => "portable",
    };
    // A fronted node listens on its own address behind the one listed.
    let public = if n.listen == n.address {
        String::new()
    } else {
        format!("public_address = \"{}\"\n", n.address)
    };
    let config = format!(
        "[node]\nkey_dir = {:?}\ntopology = {:?}\nlisten = \"{}\"\n{public}operator_key = \"{operator}\"\n\n\
         [engine]\nshards = {}\npin_cores = {}\nfirst_core = {}\nio = \"{io}\"\npool_packets = {}\ndelay_cap_ms = {}\nsocket_buffer_bytes = {}\n\n\
         [replay]\nrate_pps = {}\n\n[epochs]\ngrace_s = {}\n\n[metrics]\nlisten = \"{}\"\n\n[shutdown]\ndrain_ms = {}\n\n\
         [detector]\nwindow_s = {}\n",
        n.key_dir.display().to_string(),
        topology_path.display().to_string(),
        n.listen,
        spec.shards,
        spec.pin_cores,
        spec.first_core,
        spec.pool_packets,
        spec.delay_cap_ms,
        spec.socket_buffer_bytes,
        spec.rate_pps,
        spec.grace_s,
        n.metrics,
        spec.drain_ms,
        spec.detector_window_s,
    );
    if n.role != Role::Provider {
        return config;
    }
    let data_dir = n.key_dir.with_extension("data");
    let section = format!(
        "\n[provider]\ndata_dir = {:?}\nmax_messages_per_client = {}\n",
        data_dir.display().to_string(),
        spec.max_messages_per_client,
    );
    n.data_dir = Some(data_dir);
    config + &section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let high = ephemeral_low().unwrap_or(32_768);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let addr = free_port().expect("a free port");
            assert!(
                seen.insert(addr.port()),
                "port {} handed out twice",
                addr.port()
            );
            if high > FREE_PORT_LOW + 1_000 {
                assert!((FREE_PORT_LOW..high).contains(&addr.port()), "{addr}");
            }
            // Still free for both protocols a moment later. Retried
            // briefly: another test thread that forks a child holds a copy
            // of every open socket, the probe's too, until the child execs.
            let bound = (0..100).any(|_| {
                let ok = UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok();
                if !ok {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                ok
            });
            assert!(bound, "{addr} is not free for UDP and TCP");
        }
    }
}
