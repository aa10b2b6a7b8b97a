//! Assembling and running a node, mix or provider: config, keys and
//! topology in; shards, the metrics endpoint and the key-epoch control loop
//! out. A provider adds its inbox (opened before any socket is bound), its
//! client table in every shard and its inbox thread (see `provider`).
//!
//! Start-up checks everything it can before binding a socket, and every
//! failure is a message naming the file or field. Shutdown: SIGTERM or
//! SIGINT set one stop flag; shards stop receiving, send what falls due
//! within `shutdown.drain_ms`, count the rest, the inbox thread commits what
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
use std::time::{Duration, Instant};

use loopix_crypto::{Geometry, LinkKey, SecretKey};

use crate::config::{IoChoice, MixConfig};
use crate::control::{accepted_epochs, epoch_keys, ControlPlane, Own};
use crate::io::{self, socket, IoKind};
use crate::keyfile::{self, unix_now_s};
use crate::metrics::{self, ProviderMetrics, ShardMetrics, TopologyMetrics};
use crate::provider::registry::ClientTable;
use crate::provider::{self, InboxThread};
use crate::replay::FilterSizing;
use crate::shard::{Links, Peer, ProviderHooks, Shard, ShardSettings};
use loopix_directory::descriptor::{epoch_at, node_id_of};
use loopix_directory::topology::{Role, Topology};

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
    work_tx: crossbeam_channel::Sender<crate::shard::InboxWork>,
    work_rx: crossbeam_channel::Receiver<crate::shard::InboxWork>,
    metrics: Arc<ProviderMetrics>,
    problems: Vec<String>,
}

fn run_node(config: &MixConfig, role: Role) -> Result<(), String> {
    let name = role.name();
    let topology = Topology::load(
        &config.node.topology,
        &config.node.operator_key,
        unix_now_s(),
    )
    .map_err(|e| e.to_string())?;
    let now_s = unix_now_s();
    let epoch = epoch_at(now_s, topology.epoch_s);
    let secrets =
        keyfile::load_node_secrets(&config.node.key_dir, epoch).map_err(|e| e.to_string())?;
    let own_id = node_id_of(&secrets.link.public_key());
    let whoami = Own {
        id: own_id,
        role,
        listen: config.node.listen,
        link_public: secrets.link.public_key(),
        config,
    };
    let own = whoami.find_in(&topology)?;
    let me = &topology.nodes[own as usize];
    let links = Arc::new(build_links(&topology, own, &secrets.link)?);
    let io_kind = choose_io(config.engine.io)?;
    let e = &config.engine;
    let geometry = Geometry::DEFAULT;
    let per_shard_items = (config.replay.rate_pps * topology.epoch_s)
        .div_ceil(e.shards as u64)
        .max(1);

    // A provider's inbox and registry, before any socket is bound: a
    // corrupt inbox file fails the start here, naming the file.
    let mut prov = match &config.provider {
        Some(p) => {
            let mut inbox = provider::open_inbox(p)?;
            let mut problems = Vec::new();
            let clients = provider::sync_registry(&mut inbox, &p.data_dir, &mut problems)
                .map_err(|e| e.to_string())?;
            let table = Arc::new(ClientTable::new(&clients));
            let (work_tx, work_rx) = crossbeam_channel::bounded(p.store_queue);
            Some(ProviderStart {
                inbox,
                clients,
                table,
                work_tx,
                work_rx,
                metrics: Arc::new(ProviderMetrics::default()),
                problems,
            })
        }
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    // SIGHUP sets both: the control loop reloads the topology, a
    // provider's inbox thread rescans its registry.
    let rescan = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for flag in [&rescan, &reload] {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(flag))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let topology_metrics = Arc::new(TopologyMetrics::default());
    topology_metrics
        .serial
        .store(topology.serial, Ordering::Relaxed);

    let mut shards = Vec::new();
    let mut controls = Vec::new();
    let mut all_metrics = Vec::new();
    let mut first_socket = None;
    let accepted = accepted_epochs(now_s, topology.epoch_s, config.epochs.grace_s);
    for i in 0..e.shards {
        let sock = socket::bind_reuseport(config.node.listen, e.socket_buffer_bytes)
            .map_err(|err| format!("node.listen {}: cannot bind: {err}", config.node.listen))?;
        if i == 0 {
            first_socket = Some(sock.try_clone().map_err(|e| format!("socket: {e}"))?);
        }
        let backend = io::open(io_kind, sock, e.batch, geometry.frame_len())
            .map_err(|err| format!("{} backend: {err}", io_kind.name()))?;
        let (tx, rx) = crossbeam_channel::bounded(4);
        let m = Arc::new(ShardMetrics::default());
        let settings = ShardSettings {
            index: i as u32,
            geometry,
            pool_packets: e.pool_packets,
            batch: e.batch,
            delay_cap_us: e.delay_cap_ms * 1000,
            drain_us: config.shutdown.drain_ms * 1000,
            filter_items: per_shard_items,
            filter_fp: config.replay.fp_rate,
            filter_max_bytes: config.replay.max_filter_mb << 20,
        };
        let shard = Shard::new(
            settings,
            backend,
            Arc::clone(&links),
            epoch_keys(&secrets, &accepted),
            rx,
            Arc::clone(&stop),
            Arc::clone(&m),
        )
        .map_err(|err| format!("{err}; lower replay.rate_pps or raise replay.max_filter_mb"))?;
        let shard = match &prov {
            Some(p) => shard.with_provider(ProviderHooks {
                clients: Arc::clone(&p.table),
                inbox: p.work_tx.clone(),
            }),
            None => shard,
        };
        shards.push(shard);
        controls.push(tx);
        all_metrics.push(m);
    }
    if e.shards > 1 {
        if let Some(s) = &first_socket {
            socket::attach_steering(
                s,
                loopix_crypto::link::FRAME_ALPHA_OFFSET as u32,
                e.shards as u32,
            )
            .map_err(|err| format!("cannot attach the steering program: {err}"))?;
        }
    }
    // A provider answers pulls from its listening socket (so from its own
    // address); a mix needs no handle on it here.
    let answer_socket = match &prov {
        Some(_) => Some(
            first_socket
                .take()
                .ok_or("no shard socket to answer pulls from")?,
        ),
        None => None,
    };
    drop(first_socket);

    let filter_mb = all_metrics
        .iter()
        .map(|m| m.filter_bytes.load(Ordering::Relaxed))
        .sum::<u64>() as f64
        / (1u64 << 20) as f64;
    let clients_note = prov
        .as_ref()
        .map(|p| format!(", {} client(s)", p.clients.len()))
        .unwrap_or_default();
    eprintln!(
        "loopix {name}: node {own_id} layer {} on {}, {} shard(s), io={}, replay filters {filter_mb:.1} MiB, epochs {:?}{clients_note}",
        me.layer,
        config.node.listen,
        e.shards,
        io_kind.name(),
        accepted
    );

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

    let provider_metrics = prov.as_ref().map(|p| Arc::clone(&p.metrics));
    let inbox_thread = match (prov.take(), answer_socket, &config.provider) {
        (Some(p), Some(socket), Some(settings)) => {
            // The portable backend whatever the shards run: the inbox
            // thread only sends, and sendmmsg needs no ring of its own.
            let answers = io::open(
                IoKind::Portable,
                socket,
                e.batch.max(usize::from(settings.pull_frames)),
                loopix_crypto::access::delivery_frame_len(&geometry),
            )
            .map_err(|err| format!("pull answer backend: {err}"))?;
            let worker = InboxThread {
                inbox: p.inbox,
                settings: settings.clone(),
                geometry,
                work: p.work_rx,
                answers,
                controls: controls.clone(),
                clients: p.clients,
                table: p.table,
                metrics: p.metrics,
                stop: Arc::clone(&stop),
                rescan: Arc::clone(&rescan),
                problems: p.problems,
            };
            // Only the shards hold senders now: the channel disconnects
            // when they end.
            drop(p.work_tx);
            Some(
                std::thread::Builder::new()
                    .name("inbox".into())
                    .spawn(move || worker.run())
                    .map_err(|err| format!("cannot start the inbox thread: {err}"))?,
            )
        }
        _ => None,
    };

    let metrics_thread = match config.metrics.listen {
        Some(addr) => {
            let ms = all_metrics.clone();
            let node = own_id.to_string();
            let io_name = io_kind.name();
            let pm = provider_metrics.clone();
            let tm = Arc::clone(&topology_metrics);
            let render = move || {
                metrics::render_node(&[("node", &node)], &ms, io_name, pm.as_deref(), Some(&tm))
            };
            Some(
                metrics::serve(addr, render, Arc::clone(&stop))
                    .map_err(|err| format!("metrics.listen {addr}: {err}"))?,
            )
        }
        None => None,
    };

    // The shards' filter sizing (already checked when they were built), for
    // the filters of later epochs.
    let sizing = FilterSizing::compute(
        per_shard_items,
        config.replay.fp_rate,
        config.replay.max_filter_mb << 20,
    )
    .map_err(|e| format!("replay filter: {e}"))?;

    // Control loop: key epochs and topology reloads until told to stop.
    let mut control = ControlPlane {
        name,
        config,
        own: whoami,
        own_index: own,
        topology,
        secrets,
        epochs: accepted,
        sizing,
        controls,
        topology_metrics,
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        control.tick(unix_now_s(), reload.swap(false, Ordering::Relaxed));
    }
    let stopping = Instant::now();
    for h in handles {
        let _ = h.join();
    }
    if let Some(h) = inbox_thread {
        let _ = h.join();
    }
    if let Some(h) = metrics_thread {
        let _ = h.join();
    }
    let forwarded: u64 = all_metrics
        .iter()
        .map(|m| m.forwarded.load(Ordering::Relaxed))
        .sum();
    let dropped: u64 = all_metrics
        .iter()
        .map(|m| m.drops(crate::metrics::DropReason::ShuttingDown))
        .sum();
    eprintln!(
        "loopix {name}: stopped in {} ms; forwarded {forwarded} packets in all, {dropped} dropped at shutdown",
        stopping.elapsed().as_millis()
    );
    Ok(())
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
