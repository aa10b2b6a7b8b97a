//! Assembling and running a node, mix or provider: config, keys and
//! topology in; shards, the metrics endpoint and the key-epoch control loop
//! out. A provider adds its inbox (opened before any socket is bound), its
//! client table in every shard and its inbox writer thread (see `provider`).
//!
//! Start-up checks everything it can before binding a socket, and every
//! failure is a message naming the file or field. Shutdown: SIGTERM or
//! SIGINT set one stop flag; shards stop receiving, send what falls due
//! within `shutdown.drain_ms`, count the rest, the inbox writer commits what
//! is queued, and the process exits 0.
//!
//! SIGHUP reloads the topology (`node.topology`) and, at a provider, also
//! rescans the client registry at once. A reloaded document must verify
//! under `node.operator_key`, be an acceptable successor
//! (`Topology::check_successor`) and still list this node with the same
//! link key, role and address; otherwise the node logs why, counts
//! `loopix_topology_reloads_total{result="refused"}` and keeps the document
//! it has. An accepted one becomes new `Links` sent to every shard, which
//! carry the packets already on their wheels over to it (see `shard`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use loopix_crypto::link::{KIND_CLIENT_PACKET, KIND_PACKET, KIND_PULL};
use loopix_crypto::{Geometry, LinkKey, SecretKey};

use crate::aqm::AqmSettings;
use crate::config::{IoChoice, MixConfig};
use crate::control::{accepted_epochs, epoch_keys, ControlPlane, Guard, LoopSender, Own};
use crate::io::{self, socket, IoKind};
use crate::keyfile::{self, unix_now_s};
use crate::metrics::{self, ControlMetrics, ProviderMetrics, ShardMetrics};
use crate::provider::registry::ClientTable;
use crate::provider::{self, Answerer, InboxWriter, PullShared, RegistryWatch, WriterWork};
use crate::replay::{EpochFilters, FilterSizing};
use crate::shard::{Links, LoopReturn, Peer, ProviderHooks, Shard, ShardSettings};
use crate::state::{LinkState, ReplayFiles, StateDir, Syncer};
use loopix_directory::descriptor::{epoch_at, node_id_of};
use loopix_directory::topology::{Role, Topology};

/// Returned loops queued from the shards to the detector.
const LOOP_RETURNS_QUEUE: usize = 1 << 16;

/// Decide the backend for `choice`, logging why `auto` fell back.
pub fn choose_io(choice: IoChoice) -> Result<IoKind, String> {
    match choice {
        IoChoice::Portable => Ok(IoKind::Portable),
        IoChoice::Uring => io::uring::probe()
            .map(|_| IoKind::Uring)
            .map_err(|why| format!("engine.io = \"uring\" but io_uring is unavailable: {why}; use \"auto\" or \"portable\"")),
        IoChoice::Auto => match io::uring::probe() {
            Ok(()) => Ok(IoKind::Uring),
            Err(why) => {
                eprintln!("loopix: io_uring unavailable ({why}); using the portable backend");
                Ok(IoKind::Portable)
            }
        },
    }
}

/// Links of the node at `own` in `topology`.
pub fn build_links(
    topology: &Topology,
    own: u32,
    link_secret: &SecretKey,
) -> Result<Links, String> {
    let me = &topology.nodes[own as usize];
    let mut peers = Vec::with_capacity(topology.nodes.len());
    let mut next_hop = HashMap::new();
    for (j, n) in topology.nodes.iter().enumerate() {
        if j as u32 == own {
            peers.push(None);
            continue;
        }
        let inbound = topology.accepts_from(me, n);
        let outbound = topology.sends_to(me, n);
        if !inbound && !outbound {
            peers.push(None);
            continue;
        }
        let link = LinkKey::derive(link_secret, &n.link_key).ok_or_else(|| {
            format!(
                "topology: node {j} ({}) has an invalid link key (low order)",
                n.id
            )
        })?;
        if outbound {
            next_hop.insert(n.id, j as u32);
        }
        peers.push(Some(Peer {
            id: n.id,
            address: n.address,
            link,
            inbound,
            outbound,
        }));
    }
    Ok(Links {
        own_index: own,
        peers,
        next_hop,
    })
}

/// Run a mix node until SIGTERM or SIGINT. `Err` is a start-up failure,
/// already phrased for the operator.
pub fn run_mix(config: &MixConfig) -> Result<(), String> {
    if config.provider.is_some() {
        return Err(
            "the config has a [provider] section: run it with `loopix provider`, \
             or remove the section to run a mix"
                .into(),
        );
    }
    run_node(config, Role::Mix)
}

/// Run a provider until SIGTERM or SIGINT: a node like a mix, plus its
/// clients, inbox and pulls. `Err` is a start-up failure, already phrased
/// for the operator.
pub fn run_provider(config: &MixConfig) -> Result<(), String> {
    provider::section(config)?;
    run_node(config, Role::Provider)
}

/// What a provider adds at start-up, before its threads exist.
struct ProviderStart {
    inbox: crate::provider::inbox::Inbox,
    clients: Vec<crate::provider::registry::ClientEntry>,
    table: Arc<ClientTable>,
    work_tx: crossbeam_channel::Sender<WriterWork>,
    work_rx: crossbeam_channel::Receiver<WriterWork>,
    shared: Arc<PullShared>,
    metrics: Arc<ProviderMetrics>,
    problems: Vec<String>,
}

impl ProviderStart {
    /// A provider's inbox and registry, before any socket is bound: a
    /// corrupt inbox file fails the start here, naming the file.
    fn open(config: &MixConfig) -> Result<Option<ProviderStart>, String> {
        let Some(p) = &config.provider else {
            return Ok(None);
        };
        let mut inbox = provider::open_inbox(p)?;
        let mut problems = Vec::new();
        let clients = provider::sync_registry(&mut inbox, &p.data_dir, &mut problems)
            .map_err(|e| e.to_string())?;
        let table = Arc::new(ClientTable::new(&clients));
        let (work_tx, work_rx) = crossbeam_channel::bounded(p.store_queue);
        Ok(Some(ProviderStart {
            inbox,
            clients,
            table,
            work_tx,
            work_rx,
            shared: PullShared::new(crate::state::wall_us()),
            metrics: Arc::new(ProviderMetrics::default()),
            problems,
        }))
    }
}

impl ProviderStart {
    /// What one shard needs to be this provider's.
    fn hooks(
        &self,
        config: &MixConfig,
        geometry: Geometry,
        rates: Option<[u8; 8]>,
    ) -> Result<ProviderHooks, String> {
        let settings = provider::section(config)?;
        Ok(ProviderHooks {
            clients: Arc::clone(&self.table),
            writer: self.work_tx.clone(),
            answerer: Answerer::new(
                self.inbox.reader(),
                Arc::clone(&self.shared),
                self.work_tx.clone(),
                Arc::clone(&self.metrics),
                geometry,
                settings.pull_frames,
            ),
            answer_delay_us: settings.answer_delay_us,
            rates,
        })
    }
}

/// What makes a node one process and carries its replay state across
/// restarts (docs/restarts.md), all taken before any socket is bound:
/// exclusive locks on its key, state and (a provider's) data directories,
/// the replay filters of the accepted epochs resumed from their files, and
/// the saved link state.
struct Persist {
    /// Held until the process ends.
    _locks: Vec<io::lock::DirLock>,
    files: ReplayFiles,
    filters: EpochFilters,
    saved: LinkState,
    /// Tags a filter is sized for: `replay.rate_pps` over one epoch.
    items: u64,
}

impl Persist {
    fn open(config: &MixConfig, epoch_s: u64, accepted: &[u64]) -> Result<Persist, String> {
        let state_dir = StateDir::create(&config.node.state_dir())?;
        let mut dirs = vec![config.node.key_dir.clone(), state_dir.root().to_owned()];
        if let Some(p) = &config.provider {
            std::fs::create_dir_all(&p.data_dir).map_err(|e| {
                format!(
                    "provider.data_dir {}: cannot create: {e}",
                    p.data_dir.display()
                )
            })?;
            dirs.push(p.data_dir.clone());
        }
        let mut locks = Vec::new();
        for d in &dirs {
            locks.push(io::lock::DirLock::acquire(d).map_err(|e| e.to_string())?);
        }
        let r = &config.replay;
        let items = r.rate_pps.saturating_mul(epoch_s).max(1);
        let sizing =
            FilterSizing::compute(items, r.fp_rate, r.max_filter_mb << 20).map_err(|e| {
                format!("replay filter: {e}; lower replay.rate_pps or raise replay.max_filter_mb")
            })?;
        let files = ReplayFiles::new(state_dir, sizing);
        let (filters, failed) = files.open_epochs(accepted);
        if let Some((_, why)) = failed.into_iter().next() {
            return Err(why.to_string());
        }
        let saved = LinkState::load(&files.dir)?;
        Ok(Persist {
            _locks: locks,
            files,
            filters,
            saved,
            items,
        })
    }

    /// Start the thread that makes the replay state durable every
    /// `replay.sync_s`; returns the syncer too, for the last sync at stop.
    fn spawn_syncer(
        &self,
        config: &MixConfig,
        built: &Shards,
        metrics: &Arc<ControlMetrics>,
        stop: &Arc<AtomicBool>,
    ) -> Result<(Arc<Syncer>, std::thread::JoinHandle<()>), String> {
        let syncer = Arc::new(Syncer {
            dir: self.files.dir.clone(),
            shards: built.link_state.clone(),
            filters: Arc::clone(&self.files.open),
            interval: std::time::Duration::from_secs(config.replay.sync_s),
            metrics: Arc::clone(metrics),
        });
        let (run, stop) = (Arc::clone(&syncer), Arc::clone(stop));
        let thread = std::thread::Builder::new()
            .name("state-sync".into())
            .spawn(move || run.run(&stop))
            .map_err(|err| format!("cannot start the state sync thread: {err}"))?;
        Ok((syncer, thread))
    }
}

/// The process-wide flags the signals set.
struct Signals {
    /// SIGTERM or SIGINT: stop.
    stop: Arc<AtomicBool>,
    /// SIGHUP: the control plane reloads the topology and rescans a
    /// provider's client registry.
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> Result<Signals, String> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| format!("signal handler: {e}"))?;
        }
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
            .map_err(|e| format!("signal handler: {e}"))?;
        Ok(Signals { stop, reload })
    }
}

/// The shards, built and bound but not yet running.
struct Shards {
    shards: Vec<Shard>,
    controls: Vec<crossbeam_channel::Sender<crate::shard::Control>>,
    metrics: Vec<Arc<ShardMetrics>>,
    /// The first shard's socket, for steering and a provider's answers.
    first_socket: Option<std::net::UdpSocket>,
    /// Where the shards report returned loops (the detector reads it).
    loop_returns: crossbeam_channel::Receiver<LoopReturn>,
    /// Where each shard publishes its link state.
    link_state: Vec<Arc<std::sync::Mutex<LinkState>>>,
}

/// What building the shards needs.
struct ShardPlan<'a> {
    config: &'a MixConfig,
    io_kind: IoKind,
    geometry: Geometry,
    links: &'a Arc<Links>,
    secrets: &'a keyfile::NodeSecrets,
    accepted: &'a [u64],
    persist: &'a Persist,
    stop: &'a Arc<AtomicBool>,
    provider: Option<&'a ProviderStart>,
    /// The rates digest clients' pulls must announce (`None`: the document
    /// allows overrides).
    client_rates: Option<[u8; 8]>,
    /// The node's clock, shared by its shards and its control plane.
    start: Instant,
}

impl ShardPlan<'_> {
    /// Bind one socket per shard (`SO_REUSEPORT`) and build its shard.
    fn build(self) -> Result<Shards, String> {
        let config = self.config;
        let e = &config.engine;
        // Returned loops: seconds' worth at the highest loop rate a node may
        // run; the control plane drains it every 100 ms.
        let (returns_tx, loop_returns) = crossbeam_channel::bounded(LOOP_RETURNS_QUEUE);
        let mut out = Shards {
            shards: Vec::new(),
            controls: Vec::new(),
            metrics: Vec::new(),
            first_socket: None,
            loop_returns,
            link_state: Vec::new(),
        };
        for i in 0..e.shards {
            let sock = socket::bind_reuseport(config.node.listen, e.socket_buffer_bytes)
                .map_err(|err| format!("node.listen {}: cannot bind: {err}", config.node.listen))?;
            if i == 0 {
                out.first_socket = Some(sock.try_clone().map_err(|e| format!("socket: {e}"))?);
            }
            if e.socket_filter {
                let kinds: &[u8] = match self.provider {
                    Some(_) => &[KIND_PACKET, KIND_CLIENT_PACKET, KIND_PULL],
                    None => &[KIND_PACKET],
                };
                socket::attach_admission(&sock, self.geometry.frame_len() as u32, kinds)
                    .map_err(|err| {
                        format!("engine.socket_filter: cannot attach it: {err}; set it to false to run without")
                    })?;
            }
            // A provider's shards also send pull answers, whose frames are
            // longer than a packet's.
            let buf_len = match self.provider {
                Some(_) => loopix_crypto::access::delivery_frame_len(&self.geometry),
                None => self.geometry.frame_len(),
            };
            let backend = io::open(self.io_kind, sock, e.batch, buf_len)
                .map_err(|err| format!("{} backend: {err}", self.io_kind.name()))?;
            let (tx, rx) = crossbeam_channel::bounded(4);
            let m = Arc::new(ShardMetrics::default());
            let settings = ShardSettings {
                index: i as u32,
                geometry: self.geometry,
                pool_packets: e.pool_packets,
                batch: e.batch,
                delay_cap_us: e.delay_cap_ms * 1000,
                drain_us: config.shutdown.drain_ms * 1000,
                // Only for an epoch whose shared filter could not be
                // opened: the shard then builds one in memory.
                filter_items: self.persist.items,
                filter_fp: config.replay.fp_rate,
                filter_max_bytes: config.replay.max_filter_mb << 20,
                aqm: AqmSettings {
                    target_us: (config.aqm.target_ms * 1000.0).round() as u64,
                    interval_us: config.aqm.interval_ms * 1000,
                    max_drop: config.aqm.max_drop,
                },
            };
            let shard = Shard::new(
                settings,
                backend,
                Arc::clone(self.links),
                epoch_keys(self.secrets, self.accepted),
                self.persist.filters.clone(),
                rx,
                Arc::clone(self.stop),
                Arc::clone(&m),
            )
            .map_err(|err| format!("{err}; lower replay.rate_pps or raise replay.max_filter_mb"))?
            .with_start(self.start)
            .with_loop_returns(returns_tx.clone());
            let published = Arc::new(std::sync::Mutex::new(LinkState::default()));
            let shard = shard.with_link_state(&self.persist.saved, Arc::clone(&published));
            out.link_state.push(published);
            let shard = match self.provider {
                Some(p) => {
                    shard.with_provider(p.hooks(config, self.geometry, self.client_rates)?)
                }
                None => shard,
            };
            out.shards.push(shard);
            out.controls.push(tx);
            out.metrics.push(m);
        }
        if e.shards > 1 {
            if let Some(s) = &out.first_socket {
                socket::attach_steering(
                    s,
                    loopix_crypto::link::FRAME_ALPHA_OFFSET as u32,
                    e.shards as u32,
                )
                .map_err(|err| format!("cannot attach the steering program: {err}"))?;
            }
        }
        Ok(out)
    }
}

/// Start one thread per shard, pinned if asked.
fn spawn_shards(
    shards: Vec<Shard>,
    config: &MixConfig,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let e = &config.engine;
    let mut handles = Vec::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let core = e.pin_cores.then_some(e.first_core + i);
        let h = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        eprintln!("shard {i}: could not pin to core {c}; running unpinned");
                    }
                }
                let _ = io::set_timer_slack_ns(1_000);
                shard.run();
            })
            .map_err(|err| format!("cannot start shard thread: {err}"))?;
        handles.push(h);
    }
    Ok(handles)
}

/// Start a provider's inbox writer thread; returns it and the control
/// plane's watch on the registry.
fn spawn_writer(
    p: ProviderStart,
    config: &MixConfig,
    controls: &[crossbeam_channel::Sender<crate::shard::Control>],
    stop: &Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, RegistryWatch), String> {
    let settings = provider::section(config)?;
    // One list at a time: a watch that finds the writer behind sends again
    // on a later scan.
    let (registry_tx, registry_rx) = crossbeam_channel::bounded(1);
    let watch = RegistryWatch::new(
        &settings.data_dir,
        p.clients.clone(),
        p.problems,
        registry_tx,
    );
    let worker = InboxWriter {
        inbox: p.inbox,
        settings: settings.clone(),
        work: p.work_rx,
        shared: p.shared,
        controls: controls.to_vec(),
        clients: p.clients,
        metrics: p.metrics,
        stop: Arc::clone(stop),
        registry: registry_rx,
    };
    // Only the shards hold senders now: the channel disconnects when they
    // end.
    drop(p.work_tx);
    let h = std::thread::Builder::new()
        .name("inbox".into())
        .spawn(move || worker.run())
        .map_err(|err| format!("cannot start the inbox writer thread: {err}"))?;
    Ok((h, watch))
}

/// This node's keys for the epoch of `now_s`, who it is and its index in
/// the signed topology: everything checked before any socket is bound.
fn identify<'c>(
    config: &'c MixConfig,
    topology: &Topology,
    role: Role,
    now_s: u64,
) -> Result<(keyfile::NodeSecrets, Own<'c>, u32), String> {
    let epoch = epoch_at(now_s, topology.epoch_s);
    let secrets =
        keyfile::load_node_secrets(&config.node.key_dir, epoch).map_err(|e| e.to_string())?;
    let whoami = Own {
        id: node_id_of(&secrets.link.public_key()),
        role,
        listen: config.node.public_address.unwrap_or(config.node.listen),
        link_public: secrets.link.public_key(),
        config,
    };
    let own = whoami.find_in(topology)?;
    Ok((secrets, whoami, own))
}

/// The signed topology, and `config` with the network's parameters taken
/// from it (checked against the file's settings).
fn with_network(config: &MixConfig, now_s: u64) -> Result<(Topology, MixConfig), String> {
    let topology = Topology::load(&config.node.topology, &config.node.operator_key, now_s)
        .map_err(|e| e.to_string())?;
    let mut config = config.clone();
    config
        .take_network(&topology.params)
        .map_err(|e| e.to_string())?;
    Ok((topology, config))
}

fn run_node(config: &MixConfig, role: Role) -> Result<(), String> {
    let name = role.name();
    let now_s = unix_now_s();
    let (topology, config) = with_network(config, now_s)?;
    let config = &config;
    let (secrets, whoami, own) = identify(config, &topology, role, now_s)?;
    let own_id = whoami.id;
    let links = Arc::new(build_links(&topology, own, &secrets.link)?);
    let io_kind = choose_io(config.engine.io)?;
    let geometry = topology.params.geometry()?;
    let accepted = accepted_epochs(now_s, topology.epoch_s, config.epochs.grace_s);
    let persist = Persist::open(config, topology.epoch_s, &accepted)?;

    let prov = ProviderStart::open(config)?;
    let signals = Signals::register()?;
    let control_metrics = Arc::new(ControlMetrics::serving(topology.serial));
    control_metrics.set_params(topology.params.mean_delay_ms, topology.params.lambda_m);
    let start = Instant::now();
    let built = ShardPlan {
        config,
        io_kind,
        geometry,
        links: &links,
        secrets: &secrets,
        accepted: &accepted,
        persist: &persist,
        stop: &signals.stop,
        provider: prov.as_ref(),
        client_rates: (!topology.params.allow_rate_overrides)
            .then(|| topology.params.client_rates().digest()),
        start,
    }
    .build()?;
    // Every port is bound before the start line (the unit file's promise).
    let metrics_thread = spawn_metrics(
        config,
        own_id.to_string(),
        io_kind.name(),
        built.metrics.clone(),
        prov.as_ref().map(|p| Arc::clone(&p.metrics)),
        Arc::clone(&control_metrics),
        &signals.stop,
    )?;
    log_start(
        name,
        config,
        &topology,
        own,
        io_kind,
        &built,
        &accepted,
        prov.as_ref(),
    );

    let (syncer, sync_thread) =
        persist.spawn_syncer(config, &built, &control_metrics, &signals.stop)?;
    let handles = spawn_shards(built.shards, config)?;
    let (inbox_thread, registry) = match prov {
        Some(p) => {
            let (h, w) = spawn_writer(p, config, &built.controls, &signals.stop)?;
            (Some(h), Some(w))
        }
        None => (None, None),
    };

    // Control loop: key epochs, topology reloads and registry rescans until
    // told to stop.
    let guard = Guard::new(config, built.loop_returns.clone(), built.metrics.clone());
    let mut control = ControlPlane {
        name,
        config,
        own: whoami,
        own_index: own,
        topology,
        secrets,
        epochs: accepted,
        replay: persist.files.clone(),
        controls: built.controls,
        control_metrics,
        registry,
        loops: LoopSender::new(config, geometry, own_id, start, Some(guard)),
    };
    control.key_hygiene();
    control.run(&signals.stop, &signals.reload);
    let stopping = Instant::now();
    for h in handles
        .into_iter()
        .chain(inbox_thread)
        .chain(metrics_thread)
    {
        let _ = h.join();
    }
    let _ = sync_thread.join();
    // The shards published their last windows as they stopped.
    syncer.sync_once(false);
    log_stop(name, &built.metrics, stopping);
    Ok(())
}

/// Serve `/metrics` if `metrics.listen` is set.
fn spawn_metrics(
    config: &MixConfig,
    node: String,
    io_name: &'static str,
    shards: Vec<Arc<ShardMetrics>>,
    provider: Option<Arc<ProviderMetrics>>,
    control: Arc<ControlMetrics>,
    stop: &Arc<AtomicBool>,
) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let render = move || {
        let labels = [("node", node.as_str())];
        metrics::render_node(
            &labels,
            &shards,
            io_name,
            provider.as_deref(),
            Some(&control),
        )
    };
    metrics::serve(addr, render, Arc::clone(stop))
        .map(Some)
        .map_err(|err| format!("metrics.listen {addr}: {err}"))
}

/// The start line: who, where, how many shards, which backend, the filters'
/// memory, the epochs, a provider's clients.
#[allow(clippy::too_many_arguments)] // reason: each is one fact of the line, read once
fn log_start(
    name: &str,
    config: &MixConfig,
    topology: &Topology,
    own: u32,
    io_kind: IoKind,
    built: &Shards,
    accepted: &[u64],
    prov: Option<&ProviderStart>,
) {
    let me = &topology.nodes[own as usize];
    // The filters are the node's, shared: every shard reports all of them.
    let filter_mb = built
        .metrics
        .iter()
        .map(|m| m.filter_bytes.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0) as f64
        / (1u64 << 20) as f64;
    let clients_note = prov
        .map(|p| format!(", {} client(s)", p.clients.len()))
        .unwrap_or_default();
    eprintln!(
        "loopix {name}: node {} layer {} on {}, {} shard(s), io={}, replay filters {filter_mb:.1} MiB, epochs {accepted:?}{clients_note}",
        me.id,
        me.layer,
        config.node.listen,
        config.engine.shards,
        io_kind.name(),
    );
}

/// The stop line: how long the drain took, what was forwarded and dropped.
fn log_stop(name: &str, shards: &[Arc<ShardMetrics>], stopping: Instant) {
    let forwarded: u64 = shards
        .iter()
        .map(|m| m.forwarded.load(Ordering::Relaxed))
        .sum();
    let dropped: u64 = shards
        .iter()
        .map(|m| m.drops(crate::metrics::DropReason::ShuttingDown))
        .sum();
    eprintln!(
        "loopix {name}: stopped in {} ms; forwarded {forwarded} packets in all, {dropped} dropped at shutdown",
        stopping.elapsed().as_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_epochs_rules() {
        // 100 s into epoch 10 of 3600 s, grace 300: previous still accepted.
        assert_eq!(accepted_epochs(36_100, 3600, 300), vec![10, 11, 9]);
        // 400 s in: previous retired.
        assert_eq!(accepted_epochs(36_400, 3600, 300), vec![10, 11]);
        assert_eq!(accepted_epochs(5, 3600, 300), vec![0, 1]);
    }
}
