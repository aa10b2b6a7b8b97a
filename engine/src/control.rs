//! The control plane: one type, [`ControlPlane`], whose [`ControlPlane::tick`]
//! does a node's slow work on the control thread, between the shards'
//! batches and never on the packet path: key epochs (the next epoch's key
//! accepted ahead, the previous one kept for `epochs.grace_s`, the filters
//! of new epochs opened from their files and faulted in here, and retired
//! epochs' keys and filter files deleted) and topology reloads on SIGHUP
//! (verified, checked against the successor rule and this node's listing,
//! then sent to every shard as new links), and a provider's client registry
//! (rescanned when its directory changed, at once on SIGHUP, the new list
//! handed to the inbox writer), and the node's own loops (the paper's λM:
//! drawn and built here ahead of their departure by a
//! [`crate::loops::LoopMaker`], handed to the shards round-robin to leave
//! at their time), and the (n−1) detector on those loops (their ids come
//! back from the shards on a bounded channel; see [`crate::detector`]),
//! which logs an alarm once and responds with more cover, a halt or only
//! the log.
//!
//! `tick` takes the wall clock from its caller, so the same code runs under
//! a test's clock. It talks to shards only through their bounded control
//! channels.
//!
//! Invariants: nothing from a refused document is used (the node keeps
//! running on the old one, and the refusal is counted); a shard learns of
//! an epoch's key only with that epoch's filter; a reload is logged with
//! what it changed.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use loopix_crypto::{Geometry, NodeId, PublicKey, SecretKey};
use loopix_directory::descriptor::epoch_at;
use loopix_directory::routes::route_table;
use loopix_directory::topology::{Role, Topology};

use crate::config::MixConfig;
use crate::detector::{loop_timeout_us, Detector, DetectorSettings, Figures, Response, Transition};
use crate::keyfile::{self, unix_now_s, NodeSecrets};
use crate::loops::{LoopMaker, LoopPacket, LoopSettings};
use crate::metrics::{ControlMetrics, DropReason, ShardMetrics};
use crate::node::build_links;
use crate::provider::RegistryWatch;
use crate::shard::{Control, EpochKey, Links, LoopReturn};
use crate::state::ReplayFiles;

/// A node's control plane (see the module documentation).
pub(crate) struct ControlPlane<'a> {
    /// `mix` or `provider`, for log lines.
    pub(crate) name: &'static str,
    pub(crate) config: &'a MixConfig,
    pub(crate) own: Own<'a>,
    /// This node's index in `topology`.
    pub(crate) own_index: u32,
    pub(crate) topology: Topology,
    pub(crate) secrets: NodeSecrets,
    /// The epochs whose keys the shards accept now, current first.
    pub(crate) epochs: Vec<u64>,
    /// The replay filter files: later epochs' filters are opened there.
    pub(crate) replay: ReplayFiles,
    /// One bounded channel to each shard.
    pub(crate) controls: Vec<Sender<Control>>,
    pub(crate) control_metrics: Arc<ControlMetrics>,
    /// A provider's watch on its client registry.
    pub(crate) registry: Option<RegistryWatch>,
    /// The node's own loops.
    pub(crate) loops: LoopSender,
}

impl ControlPlane<'_> {
    /// Tick every 100 ms on the wall clock until `stop`; `reload` (set by
    /// SIGHUP) is taken and cleared at each tick.
    pub(crate) fn run(&mut self, stop: &AtomicBool, reload: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            self.tick(unix_now_s(), reload.swap(false, Ordering::Relaxed));
        }
    }

    /// One turn at `now_unix_s`: the reload asked for (by SIGHUP) if
    /// `reload`, then the key epochs due, then a provider's registry scan
    /// (forced by a reload).
    pub(crate) fn tick(&mut self, now_unix_s: u64, reload: bool) {
        if reload {
            self.reload(now_unix_s);
        }
        self.epochs_at(now_unix_s);
        if let Some(watch) = &mut self.registry {
            watch.tick(now_unix_s, reload);
        }
        self.loops.tick(
            &self.topology,
            now_unix_s,
            &self.controls,
            &self.control_metrics,
        );
    }

    fn reload(&mut self, now_unix_s: u64) {
        let name = self.name;
        match reload_topology(&self.topology, &self.own, &self.secrets.link, now_unix_s) {
            Ok((next, index, links)) => {
                eprintln!(
                    "loopix {name}: {}",
                    describe_change(&self.topology, &next, self.own_index, index)
                );
                let links = Arc::new(links);
                for tx in &self.controls {
                    let _ = tx.send(Control::Links(Arc::clone(&links)));
                }
                self.topology = next;
                self.own_index = index;
                let m = &self.control_metrics;
                m.serial.store(self.topology.serial, Ordering::Relaxed);
                let p = &self.topology.params;
                m.set_params(p.mean_delay_ms, p.lambda_m);
                m.reloads_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                eprintln!(
                    "loopix {name}: topology reload refused, keeping serial {}: {why}",
                    self.topology.serial
                );
                self.control_metrics
                    .reloads_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn epochs_at(&mut self, now_unix_s: u64) {
        let want = accepted_epochs(
            now_unix_s,
            self.topology.epoch_s,
            self.config.epochs.grace_s,
        );
        if want == self.epochs {
            return;
        }
        if want.iter().any(|e| !self.secrets.mix.contains_key(e)) {
            // Pick up keys added by `loopix keygen` since start.
            if let Ok(fresh) = keyfile::load_node_secrets(&self.config.node.key_dir, want[0]) {
                self.secrets = fresh;
            }
        }
        if !self.secrets.mix.contains_key(&want[0]) {
            eprintln!("loopix: no key for the current epoch {}; packets will be dropped (bad_mac) until one is added", want[0]);
        }
        // Open (resume or create) and fault in the new epochs' filters
        // here, on the control thread, so that no shard stalls on page
        // faults; retired epochs' files go.
        let (fresh, failed) = self.replay.open_epochs(&want);
        for (epoch, why) in failed {
            eprintln!("loopix: epoch {epoch}: {why}; its shards keep an in-memory filter, which a restart forgets");
        }
        for tx in &self.controls {
            let _ = tx.send(Control::Keys(
                epoch_keys(&self.secrets, &want),
                fresh.clone(),
            ));
        }
        self.epochs = want;
        self.key_hygiene();
    }

    /// Delete the mix keys of retired epochs (from the disk and from
    /// memory), count the keys left for later epochs and warn when fewer
    /// than `epochs.min_future_keys` remain. Run at start and at every
    /// change of the accepted epochs.
    pub(crate) fn key_hygiene(&mut self) {
        let (Some(&current), Some(&oldest)) = (self.epochs.first(), self.epochs.iter().min())
        else {
            return;
        };
        let dir = &self.config.node.key_dir;
        // One read of the directory: what goes, and what is left to count.
        let kept = match keyfile::remove_mix_keys_before(dir, oldest) {
            Ok((gone, kept)) => {
                if !gone.is_empty() {
                    eprintln!("loopix: deleted the retired mix keys of epochs {gone:?}");
                    self.control_metrics
                        .retired_keys_deleted
                        .fetch_add(gone.len() as u64, Ordering::Relaxed);
                }
                kept
            }
            Err(e) => {
                eprintln!("loopix: cannot delete retired mix keys: {e}");
                keyfile::read_mix_keys(dir)
                    .map(|k| k.into_keys().collect())
                    .unwrap_or_default()
            }
        };
        self.secrets.mix.retain(|&e, _| e >= oldest);
        let future = kept.iter().filter(|&&e| e > current).count() as u64;
        self.control_metrics
            .future_keys
            .store(future, Ordering::Relaxed);
        let min = self.config.epochs.min_future_keys;
        if future < min {
            eprintln!(
                "loopix: only {future} mix key(s) left after the current epoch {current} (warning below {min}); run `loopix keygen --dir {} --epochs N` and publish the new descriptor",
                dir.display()
            );
        }
    }
}

/// The node's loop stream as the control plane runs it: a [`LoopMaker`] on
/// the route table of the current epoch and topology (rebuilt when either
/// changes), the shards' control channels to hand loops to, and the (n−1)
/// [`Guard`] that watches them come back.
pub(crate) struct LoopSender {
    settings: LoopSettings,
    geometry: Geometry,
    own: NodeId,
    /// The node's clock: shards count from the same instant.
    start: Instant,
    /// `None` until a route table could be built (and with λM = 0).
    maker: Option<LoopMaker>,
    /// The epoch and topology serial the routes were built for.
    built_for: Option<(u64, u64)>,
    next_shard: usize,
    buf: Vec<LoopPacket>,
    /// The detector, when the node sends loops and its shards report them.
    guard: Option<Guard>,
}

/// The (n−1) detector with what it reads and how the node responds.
pub(crate) struct Guard {
    detector: Detector,
    response: Response,
    cover_multiple: f64,
    /// Loop ids the shards read on return.
    returns: Receiver<LoopReturn>,
    /// The shards' counters, for this node's own congestion drops.
    shards: Vec<Arc<ShardMetrics>>,
    /// (time, arrivals, congestion drops) samples over the window.
    congestion: VecDeque<(u64, u64, u64)>,
    /// For the time-out: the factor, the allowance and the mean hop delay.
    timeout_factor: f64,
    timeout_grace_us: u64,
    mean_delay_us: f64,
}

impl Guard {
    /// A guard from `[detector]`, reading returns from `returns` and drops
    /// from `shards`.
    pub(crate) fn new(
        config: &MixConfig,
        returns: Receiver<LoopReturn>,
        shards: Vec<Arc<ShardMetrics>>,
    ) -> Guard {
        let d = &config.detector;
        let mean_delay_us = config.loops.mean_delay_ms * 1000.0;
        let window_s = d.window_s_for(config.loops.lambda_m);
        Guard {
            detector: Detector::new(DetectorSettings {
                threshold: d.threshold,
                hysteresis: d.hysteresis,
                window_us: window_s.saturating_mul(1_000_000),
                // Set from the path length when the routes are known.
                timeout_us: loop_timeout_us(
                    3,
                    mean_delay_us,
                    d.timeout_factor,
                    d.timeout_grace_ms * 1000,
                ),
                min_loops: d.min_loops,
            }),
            response: d.response,
            cover_multiple: d.cover_multiple,
            returns,
            shards,
            congestion: VecDeque::new(),
            timeout_factor: d.timeout_factor,
            timeout_grace_us: d.timeout_grace_ms * 1000,
            mean_delay_us,
        }
    }

    /// The loops of the current routes have `relays` relaying hops.
    fn set_path_length(&mut self, relays: u32) {
        self.detector.set_timeout_us(loop_timeout_us(
            relays,
            self.mean_delay_us,
            self.timeout_factor,
            self.timeout_grace_us,
        ));
    }

    /// The fraction of arrivals this node's AQM and full pool dropped over
    /// the window (a sample per tick; the oldest inside the window is the
    /// base).
    fn congestion_at(&mut self, now_us: u64) -> f64 {
        let load =
            |f: &dyn Fn(&ShardMetrics) -> u64| -> u64 { self.shards.iter().map(|s| f(s)).sum() };
        let arrivals = load(&|s| s.received.load(Ordering::Relaxed));
        let drops = load(&|s| s.drops(DropReason::Aqm) + s.drops(DropReason::PoolFull));
        self.congestion.push_back((now_us, arrivals, drops));
        let since = now_us.saturating_sub(self.detector.settings().window_us);
        while self.congestion.len() > 1 && self.congestion[1].0 <= since {
            self.congestion.pop_front();
        }
        let (_, a0, d0) = self.congestion[0];
        let arrived = arrivals.saturating_sub(a0);
        if arrived == 0 {
            return 0.0;
        }
        drops.saturating_sub(d0) as f64 / arrived as f64
    }
}

impl LoopSender {
    /// A sender for node `own`, on the clock that starts at `start`.
    pub(crate) fn new(
        config: &MixConfig,
        geometry: Geometry,
        own: NodeId,
        start: Instant,
        guard: Option<Guard>,
    ) -> Self {
        let l = &config.loops;
        LoopSender {
            settings: LoopSettings {
                lambda_per_s: l.lambda_m,
                mean_delay_us: l.mean_delay_ms * 1000.0,
                lead_us: l.lead_ms * 1000,
            },
            geometry,
            own,
            start,
            maker: None,
            built_for: None,
            next_shard: 0,
            buf: Vec::new(),
            guard,
        }
    }

    /// Microseconds on the node's clock.
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Build the loops departing within the lead and hand them to the
    /// shards, round-robin (any shard can send to any neighbour); then let
    /// the detector read what came back and decide.
    fn tick(
        &mut self,
        topology: &Topology,
        now_unix_s: u64,
        controls: &[Sender<Control>],
        metrics: &ControlMetrics,
    ) {
        if self.settings.lambda_per_s <= 0.0 || controls.is_empty() {
            return;
        }
        self.follow(topology, now_unix_s);
        let now_us = self.now_us();
        let Some(maker) = self.maker.as_mut() else {
            return;
        };
        self.buf.clear();
        let made = maker.due(now_us, &mut self.buf);
        metrics
            .loops_unbuilt
            .fetch_add(made.failed, Ordering::Relaxed);
        let mut per_shard: Vec<Vec<LoopPacket>> = vec![Vec::new(); controls.len()];
        for p in self.buf.drain(..) {
            per_shard[self.next_shard % controls.len()].push(p);
            self.next_shard = self.next_shard.wrapping_add(1);
        }
        for (tx, batch) in controls.iter().zip(per_shard) {
            let n = batch.len() as u64;
            if n == 0 {
                continue;
            }
            let ids: Vec<([u8; 16], u64)> = batch.iter().map(|p| (p.id, p.depart_us)).collect();
            if tx.try_send(Control::Loops(batch)).is_err() {
                metrics.loops_queue_full.fetch_add(n, Ordering::Relaxed);
            } else if let Some(g) = self.guard.as_mut() {
                for (id, depart_us) in ids {
                    g.detector.sent(id, depart_us);
                }
            }
        }
        self.watch(now_us, controls, metrics);
    }

    /// The detector's turn: returns, congestion, time-outs, a decision and
    /// the response to it.
    fn watch(&mut self, now_us: u64, controls: &[Sender<Control>], metrics: &ControlMetrics) {
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        while let Ok(back) = g.returns.try_recv() {
            g.detector.returned(&back.id, back.at_us);
        }
        let congestion = g.congestion_at(now_us);
        g.detector.set_congestion(congestion);
        let transition = g.detector.tick(now_us);
        let base = self.settings.lambda_per_s;
        if let Some(t) = transition {
            let window_s = g.detector.settings().window_us / 1_000_000;
            let threshold = g.detector.settings().threshold;
            let (alarm, f) = match t {
                Transition::Alarm(f) => (true, f),
                Transition::Calm(f) => (false, f),
            };
            eprintln!(
                "loopix: {} {}",
                if alarm {
                    "(n-1) ALARM:"
                } else {
                    "(n-1) alarm over:"
                },
                describe_figures(&f, window_s, threshold, g.response)
            );
            match g.response {
                Response::Cover => {
                    if let Some(m) = self.maker.as_mut() {
                        m.set_rate(if alarm { base * g.cover_multiple } else { base });
                    }
                }
                Response::Halt => {
                    for tx in controls {
                        let _ = tx.send(Control::Halt(alarm));
                    }
                }
                Response::Log => {}
            }
        }
        let totals = g.detector.totals();
        let m = metrics;
        m.loops_returned.store(totals.returned, Ordering::Relaxed);
        m.loops_lost.store(totals.lost, Ordering::Relaxed);
        m.loops_unmatched.store(totals.unmatched, Ordering::Relaxed);
        m.alarms.store(totals.alarms, Ordering::Relaxed);
        m.alarm
            .store(u64::from(g.detector.in_alarm()), Ordering::Relaxed);
        let ratio = g.detector.figures().map_or(f64::NAN, |f| f.ratio);
        m.loops_ratio_bits.store(ratio.to_bits(), Ordering::Relaxed);
        m.congestion_bits
            .store(congestion.to_bits(), Ordering::Relaxed);
        let rate = self.maker.as_ref().map_or(base, |mk| mk.rate());
        m.loops_rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Keep the maker's routes on the current epoch's keys and topology.
    fn follow(&mut self, topology: &Topology, now_unix_s: u64) {
        let epoch = epoch_at(now_unix_s, topology.epoch_s);
        let want = (epoch, topology.serial);
        if self.built_for == Some(want) {
            return;
        }
        self.built_for = Some(want);
        let routes = match route_table(topology, epoch) {
            Ok(r) => Arc::new(r),
            Err(why) => {
                eprintln!(
                    "loopix: no loops in epoch {epoch} (serial {}): {why}",
                    topology.serial
                );
                return;
            }
        };
        if let Some(g) = self.guard.as_mut() {
            // Every hop of a loop but the last (the node itself) relays:
            // one per layer.
            g.set_path_length(routes.layers.len() as u32);
        }
        let result = match self.maker.as_mut() {
            Some(m) => m.set_routes(routes),
            None => LoopMaker::new(
                self.settings,
                self.geometry,
                routes,
                self.own,
                self.now_us(),
                Box::new(rand_core::OsRng),
            )
            .map(|m| self.maker = Some(m)),
        };
        if let Err(why) = result {
            eprintln!("loopix: no loops in epoch {epoch}: {why}");
        }
    }
}

/// The figures of an alarm or its end, for the one log line each.
fn describe_figures(f: &Figures, window_s: u64, threshold: f64, response: Response) -> String {
    format!(
        "{} of {} own loops came back in the last {window_s} s (fraction {:.3}; \
         own congestion drops {:.3} divided out: {:.3}; threshold r = {threshold}); response: {}",
        f.returned,
        f.returned + f.lost,
        f.ratio,
        f.congestion,
        f.effective,
        response.name()
    )
}

/// The epochs whose keys a node accepts at `unix_s`: the current one, the
/// next one (clients may build packets for it just before it starts), and
/// the previous one during `grace_s` after the change. Current first.
pub fn accepted_epochs(unix_s: u64, epoch_s: u64, grace_s: u64) -> Vec<u64> {
    let current = epoch_at(unix_s, epoch_s);
    let mut v = vec![current, current + 1];
    if current > 0 && unix_s - current * epoch_s < grace_s {
        v.push(current - 1);
    }
    v
}

pub(crate) fn epoch_keys(secrets: &NodeSecrets, epochs: &[u64]) -> Vec<EpochKey> {
    epochs
        .iter()
        .filter_map(|e| {
            secrets.mix.get(e).map(|k| EpochKey {
                epoch: *e,
                secret: k.clone(),
            })
        })
        .collect()
}

/// Who this node is, as its listing in a topology must say.
pub(crate) struct Own<'a> {
    pub(crate) id: NodeId,
    pub(crate) role: Role,
    pub(crate) listen: SocketAddr,
    pub(crate) link_public: PublicKey,
    pub(crate) config: &'a MixConfig,
}

impl Own<'_> {
    /// This node's index in `topology`, if the topology lists it with its
    /// link key, role and address; the error is phrased for the operator.
    pub(crate) fn find_in(&self, topology: &Topology) -> Result<u32, String> {
        let name = self.role.name();
        let own_id = self.id;
        let own = topology.index_of(&own_id).ok_or_else(|| {
            format!(
                "topology {}: this node ({own_id}, keys in {}) is not listed",
                self.config.node.topology.display(),
                self.config.node.key_dir.display()
            )
        })?;
        let me = &topology.nodes[own as usize];
        if me.role != self.role {
            return Err(format!(
                "topology lists node {own_id} as a {}, not a {name}; run it with `loopix {}`{}",
                me.role.name(),
                me.role.name(),
                if me.role == Role::Provider {
                    " (with a [provider] section)"
                } else {
                    " (without a [provider] section)"
                }
            ));
        }
        if me.address != self.listen {
            return Err(format!(
                "node.listen is {} but the topology lists this node at {}; make them agree",
                self.listen, me.address
            ));
        }
        if me.link_key != self.link_public {
            return Err("topology link_key differs from link.key in node.key_dir".into());
        }
        Ok(own)
    }
}

/// One line saying what a reload changed: serial, nodes added, removed and
/// moved (address, role or layer), and this node's index if it moved.
fn describe_change(old: &Topology, new: &Topology, old_own: u32, new_own: u32) -> String {
    let old_ids: HashSet<NodeId> = old.nodes.iter().map(|n| n.id).collect();
    let new_ids: HashSet<NodeId> = new.nodes.iter().map(|n| n.id).collect();
    let added: Vec<String> = new
        .nodes
        .iter()
        .filter(|n| !old_ids.contains(&n.id))
        .map(|n| format!("{} ({} layer {})", n.id, n.role.name(), n.layer))
        .collect();
    let removed: Vec<String> = old
        .nodes
        .iter()
        .filter(|n| !new_ids.contains(&n.id))
        .map(|n| n.id.to_string())
        .collect();
    let moved = new
        .nodes
        .iter()
        .filter(|n| {
            old.index_of(&n.id)
                .map(|i| &old.nodes[i as usize])
                .is_some_and(|o| (o.address, o.role, o.layer) != (n.address, n.role, n.layer))
        })
        .count();
    let list = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.join(", "))
        }
    };
    let index = if old_own == new_own {
        String::new()
    } else {
        format!("; this node's index {old_own} -> {new_own}")
    };
    format!(
        "topology reloaded: serial {} -> {}, {} node(s) added{}, {} removed{}, {moved} moved{index}",
        old.serial,
        new.serial,
        added.len(),
        list(&added),
        removed.len(),
        list(&removed),
    )
}

/// Reload `node.topology` on top of `current`: verify, check the successor
/// rule and this node's listing, and build its links. Nothing changes on
/// `Err`.
fn reload_topology(
    current: &Topology,
    own: &Own<'_>,
    link_secret: &SecretKey,
    now_unix_s: u64,
) -> Result<(Topology, u32, Links), String> {
    let next = current
        .reload(&own.config.node.topology, now_unix_s)
        .map_err(|e| e.to_string())?;
    let index = own.find_in(&next)?;
    let links = build_links(&next, index, link_secret)?;
    Ok((next, index, links))
}
