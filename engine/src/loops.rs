//! A node's own loop cover traffic (the paper's λM): every mix and every
//! provider sends loop packets as a Poisson process, through the network
//! and back to itself, so that an idle network is not silent on the wire
//! and so that a node can tell (by the loops that do not come back) that
//! someone is starving it of traffic.
//!
//! [`LoopMaker`] is sans-IO: it draws the departure times (exponential
//! gaps on the node's clock), chooses each loop's path and builds its
//! Sphinx packet, ahead of the departure, on the control thread. The shard
//! that sends it only puts the finished packet on its timing wheel, so
//! building never shifts a departure and never costs the packet path.
//!
//! Paths, as in the paper: a mix of layer `i` sends its loop through one
//! random mix of each of the layers `i+1..=L`, one random provider, one
//! random mix of each of the layers `1..i`, and back to itself; a provider
//! through one random mix of every layer and back to itself. Every hop but
//! the last relays after a delay drawn from `Exp(mu)`, like a client's; the
//! last hop (the node itself) reads a `Recipient { Loop, id }` command.
//!
//! Invariants: the departure process is Poisson whatever the building
//! costs (times are drawn first, packets built after, never the other way
//! round); a loop that cannot be built is counted, never skipped silently
//! (its departure time still passes, so the process keeps its rate only if
//! nothing fails, and the metric says when something did).

use std::sync::Arc;

use loopix_crypto::sphinx::{self, Hop};
use loopix_crypto::{exp_sample, Delay, Geometry, NodeId, RecipientKind, RoutingCommand};
use loopix_directory::routes::{NodeInfo, RouteTable};
use rand_core::{CryptoRng, RngCore};

/// The loop stream's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopSettings {
    /// Loops per second (λM); zero sends none.
    pub lambda_per_s: f64,
    /// Mean per-hop delay (1/µ), microseconds.
    pub mean_delay_us: f64,
    /// How far ahead of its departure a loop is built, microseconds.
    pub lead_us: u64,
}

/// One built loop, to be sent at `depart_us` to `first_hop`.
#[derive(Debug, Clone)]
pub struct LoopPacket {
    /// The Sphinx packet (`geometry.packet_len()` bytes).
    pub packet: Vec<u8>,
    /// Where it goes first.
    pub first_hop: NodeId,
    /// Its departure time on the node's clock.
    pub depart_us: u64,
    /// The id its last hop (this node) will read.
    pub id: [u8; 16],
}

/// What one call of [`LoopMaker::due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Made {
    /// Loops built.
    pub built: u64,
    /// Departures that passed without a loop (it could not be built).
    pub failed: u64,
}

/// Where the node stands: a provider (layer 0) or a mix of layer `1..=L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    layer: usize,
}

/// Draws, routes and builds a node's loops (see the module documentation).
pub struct LoopMaker {
    settings: LoopSettings,
    geometry: Geometry,
    routes: Arc<RouteTable>,
    own: NodeInfo,
    position: Position,
    /// The next departure on the node's clock.
    next_us: u64,
    /// Departures up to here have been drawn (and built).
    drawn_until: u64,
    rng: Box<dyn RngSource>,
}

/// A cryptographic random source the maker owns.
pub trait RngSource: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> RngSource for T {}

impl LoopMaker {
    /// A maker for the node `own` of `routes`, its first departure drawn
    /// from `start_us`. Fails if the node is not in the table or the
    /// settings are unusable.
    pub fn new(
        settings: LoopSettings,
        geometry: Geometry,
        routes: Arc<RouteTable>,
        own: NodeId,
        start_us: u64,
        rng: Box<dyn RngSource>,
    ) -> Result<LoopMaker, String> {
        if !(settings.lambda_per_s.is_finite() && settings.lambda_per_s >= 0.0) {
            return Err(format!(
                "loops.lambda_m: {} is not a rate (a finite number of loops per second, 0 or more)",
                settings.lambda_per_s
            ));
        }
        if !(settings.mean_delay_us.is_finite() && settings.mean_delay_us >= 0.0) {
            return Err(format!(
                "loops.mean_delay_ms: {} ms is not a delay",
                settings.mean_delay_us / 1000.0
            ));
        }
        let (info, position) = locate(&routes, own)?;
        let mut m = LoopMaker {
            settings,
            geometry,
            routes,
            own: info,
            position,
            next_us: start_us,
            drawn_until: start_us,
            rng,
        };
        m.next_us = start_us.saturating_add(m.gap_us());
        Ok(m)
    }

    /// Use `routes` from now on (a reload or a new key epoch).
    pub fn set_routes(&mut self, routes: Arc<RouteTable>) -> Result<(), String> {
        let (info, position) = locate(&routes, self.own.id)?;
        self.routes = routes;
        self.own = info;
        self.position = position;
        Ok(())
    }

    /// Send loops at `lambda_per_s` from the departures not drawn yet on
    /// (the (n−1) detector's `cover` response, and its end). The pending
    /// next departure is drawn again at the new rate from the last time
    /// already drawn, which a Poisson process allows (it is memoryless), so
    /// the stream is Poisson at the old rate up to there and at the new
    /// one after.
    pub fn set_rate(&mut self, lambda_per_s: f64) {
        if !(lambda_per_s.is_finite() && lambda_per_s >= 0.0)
            || lambda_per_s == self.settings.lambda_per_s
        {
            return;
        }
        self.settings.lambda_per_s = lambda_per_s;
        self.next_us = self.drawn_until.saturating_add(self.gap_us());
    }

    /// The loop rate in use, per second.
    pub fn rate(&self) -> f64 {
        self.settings.lambda_per_s
    }

    /// The next departure, on the node's clock (`u64::MAX`: never).
    pub fn next_departure_us(&self) -> u64 {
        self.next_us
    }

    /// Build every loop departing by `now_us + lead`, into `out`, in
    /// departure order.
    pub fn due(&mut self, now_us: u64, out: &mut Vec<LoopPacket>) -> Made {
        let mut made = Made::default();
        let until = now_us.saturating_add(self.settings.lead_us);
        self.drawn_until = self.drawn_until.max(until);
        // `u64::MAX` is "never" (λM = 0), even when `until` saturates.
        while self.next_us != u64::MAX && self.next_us <= until {
            let depart_us = self.next_us;
            self.next_us = depart_us.saturating_add(self.gap_us());
            match self.build(depart_us) {
                Some(p) => {
                    made.built += 1;
                    out.push(p);
                }
                None => made.failed += 1,
            }
        }
        made
    }

    /// One loop departing at `depart_us`, or `None` if it cannot be built.
    fn build(&mut self, depart_us: u64) -> Option<LoopPacket> {
        let route = self.path();
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let n = route.len();
        let mut hops = Vec::with_capacity(n);
        for (k, node) in route.iter().enumerate() {
            let command = match route.get(k + 1) {
                Some(next) => RoutingCommand::Relay {
                    next: next.id,
                    delay: self.delay(),
                },
                None => RoutingCommand::Recipient {
                    kind: RecipientKind::Loop,
                    id,
                },
            };
            hops.push(Hop {
                key: &node.key,
                command,
            });
        }
        let mut packet = vec![0u8; self.geometry.packet_len()];
        let rng: &mut dyn RngSource = &mut *self.rng;
        sphinx::build(&self.geometry, &hops, &[], &mut RngRef(rng), &mut packet).ok()?;
        Some(LoopPacket {
            packet,
            first_hop: route.first()?.id,
            depart_us,
            id,
        })
    }

    /// The hops after this node, ending with itself.
    fn path(&mut self) -> Vec<NodeInfo> {
        let routes = Arc::clone(&self.routes);
        let layers = routes.layers.len();
        let i = self.position.layer;
        let mut route = Vec::with_capacity(layers + 2);
        // A provider (layer 0) goes through every layer; a mix of layer i
        // through the layers after it, then a provider.
        for l in i..layers {
            route.push(self.pick(&routes.layers[l]));
        }
        if i > 0 {
            route.push(self.pick(&routes.providers));
            for l in 0..i - 1 {
                route.push(self.pick(&routes.layers[l]));
            }
        }
        route.push(self.own.clone());
        route
    }

    fn pick(&mut self, nodes: &[NodeInfo]) -> NodeInfo {
        debug_assert!(!nodes.is_empty(), "a checked topology has no empty layer");
        nodes[(self.rng.next_u64() % nodes.len().max(1) as u64) as usize].clone()
    }

    fn delay(&mut self) -> Delay {
        Delay::sample_exp(&mut *self.rng, self.settings.mean_delay_us)
    }

    /// The gap to the next departure: `Exp(λM)`, or never for λM = 0.
    fn gap_us(&mut self) -> u64 {
        if self.settings.lambda_per_s <= 0.0 {
            return u64::MAX;
        }
        let gap = exp_sample(&mut *self.rng, 1e6 / self.settings.lambda_per_s);
        // At least 1 us, so that a loop of rounding never repeats a time.
        (gap.round() as u64).max(1)
    }
}

/// `nodes` entry and position of `own` in `routes`.
fn locate(routes: &RouteTable, own: NodeId) -> Result<(NodeInfo, Position), String> {
    if let Some(p) = routes.providers.iter().find(|n| n.id == own) {
        return Ok((p.clone(), Position { layer: 0 }));
    }
    for (l, layer) in routes.layers.iter().enumerate() {
        if let Some(m) = layer.iter().find(|n| n.id == own) {
            return Ok((m.clone(), Position { layer: l + 1 }));
        }
    }
    Err(format!("node {own} is not in the route table"))
}

/// A sized handle on a boxed random source, for APIs that take
/// `impl CryptoRngCore`.
struct RngRef<'a>(&'a mut dyn RngSource);

impl RngCore for RngRef<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl CryptoRng for RngRef<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use loopix_crypto::{RouteKey, SecretKey};
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::collections::HashMap;

    const G: Geometry = Geometry::DEFAULT;

    /// Two providers and `layers` layers of two mixes, with their secrets.
    fn net(layers: usize, rng: &mut ChaCha20Rng) -> (Arc<RouteTable>, HashMap<NodeId, SecretKey>) {
        let mut secrets = HashMap::new();
        let mut id = 0u8;
        let mut node = |rng: &mut ChaCha20Rng| {
            id += 1;
            let sk = SecretKey::generate(rng);
            let info = NodeInfo {
                id: NodeId([id; 16]),
                key: Arc::new(RouteKey::new(&sk.public_key()).expect("honest key")),
            };
            secrets.insert(info.id, sk);
            info
        };
        let providers = vec![node(rng), node(rng)];
        let layers = (0..layers).map(|_| vec![node(rng), node(rng)]).collect();
        (Arc::new(RouteTable { providers, layers }), secrets)
    }

    fn settings(lambda_per_s: f64) -> LoopSettings {
        LoopSettings {
            lambda_per_s,
            mean_delay_us: 2_000.0,
            lead_us: 500_000,
        }
    }

    fn maker(routes: &Arc<RouteTable>, own: NodeId, lambda: f64, seed: u64) -> LoopMaker {
        let rng = Box::new(ChaCha20Rng::seed_from_u64(seed));
        LoopMaker::new(settings(lambda), G, Arc::clone(routes), own, 0, rng).expect("maker")
    }

    /// Process `p` hop by hop with the nodes' secrets: the nodes visited
    /// after the sender, and the last command.
    fn walk(p: &LoopPacket, secrets: &HashMap<NodeId, SecretKey>) -> (Vec<NodeId>, RoutingCommand) {
        let mut packet = p.packet.clone();
        let mut at = p.first_hop;
        let mut visited = vec![at];
        for _ in 0..16 {
            let out = sphinx::process(&G, &secrets[&at], &mut packet).expect("valid hop");
            match out.command {
                RoutingCommand::Relay { next, delay } => {
                    assert!(u64::from(delay.as_micros()) < 200_000, "Exp(2 ms) delay");
                    at = next;
                    visited.push(at);
                }
                last => return (visited, last),
            }
        }
        panic!("no last hop");
    }

    fn layer_of(routes: &RouteTable, id: NodeId) -> usize {
        if routes.providers.iter().any(|n| n.id == id) {
            return 0;
        }
        1 + routes
            .layers
            .iter()
            .position(|l| l.iter().any(|n| n.id == id))
            .expect("in a layer")
    }

    #[test]
    fn loops_follow_the_papers_paths_and_come_back() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (routes, secrets) = net(3, &mut rng);
        let mut owners: Vec<NodeId> = vec![routes.providers[0].id];
        owners.extend(routes.layers.iter().map(|l| l[1].id));
        for (seed, own) in owners.into_iter().enumerate() {
            let mut m = maker(&routes, own, 50.0, seed as u64);
            let mut out = Vec::new();
            let made = m.due(2_000_000, &mut out);
            assert_eq!(made.failed, 0);
            assert_eq!(made.built as usize, out.len());
            assert!(out.len() > 50, "about 125 loops in 2.5 s at 50/s");
            let mine = layer_of(&routes, own);
            // Provider: 1, 2, 3, back. Mix of layer i: i+1..=3, a provider,
            // 1..i, back.
            let expected: Vec<usize> = if mine == 0 {
                vec![1, 2, 3, 0]
            } else {
                (mine + 1..=3)
                    .chain([0])
                    .chain(1..mine)
                    .chain([mine])
                    .collect()
            };
            for p in &out {
                let (visited, last) = walk(p, &secrets);
                let layers: Vec<usize> = visited.iter().map(|&n| layer_of(&routes, n)).collect();
                assert_eq!(layers, expected, "loop of the node in layer {mine}");
                assert_eq!(*visited.last().expect("hops"), own, "back to the sender");
                assert_eq!(
                    last,
                    RoutingCommand::Recipient {
                        kind: RecipientKind::Loop,
                        id: p.id
                    }
                );
                assert_eq!(p.packet.len(), G.packet_len(), "every loop one length");
            }
            assert!(out.windows(2).all(|w| w[0].depart_us < w[1].depart_us));
        }
    }

    #[test]
    fn departures_are_poisson_at_lambda_m() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (routes, _) = net(1, &mut rng);
        let own = routes.layers[0][0].id;
        let lambda = 200.0;
        let mut m = maker(&routes, own, lambda, 7);
        let mut times = vec![0u64];
        // Draw the schedule as the control plane would, 100 ms a tick.
        let mut now = 0u64;
        let mut out = Vec::new();
        while times.len() < 4_000 {
            out.clear();
            m.due(now, &mut out);
            times.extend(out.iter().map(|p| p.depart_us));
            now += 100_000;
        }
        let mut gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1e6)
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!(
            (mean * lambda - 1.0).abs() < 0.05,
            "mean gap {mean} s at {lambda}/s"
        );
        // Kolmogorov-Smirnov against Exp(lambda): D under the 1% critical
        // value 1.63 / sqrt(n).
        gaps.sort_by(f64::total_cmp);
        let n = gaps.len() as f64;
        let d = gaps
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = 1.0 - (-lambda * x).exp();
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max);
        assert!(d < 1.63 / n.sqrt(), "KS D = {d} over {n} gaps");
    }

    #[test]
    fn a_rate_change_takes_effect_after_what_is_drawn() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (routes, _) = net(1, &mut rng);
        let own = routes.layers[0][1].id;
        let mut m = maker(&routes, own, 100.0, 11);
        let mut out = Vec::new();
        let mut now = 0u64;
        while now < 20_000_000 {
            m.due(now, &mut out);
            now += 100_000;
        }
        let drawn = now - 100_000 + m.settings.lead_us;
        assert!(out.iter().all(|p| p.depart_us <= drawn));
        let before = out.len();
        m.set_rate(400.0);
        assert_eq!(m.rate(), 400.0);
        assert!(m.next_departure_us() > drawn, "nothing already drawn moves");
        while now < 40_000_000 {
            m.due(now, &mut out);
            now += 100_000;
        }
        let after = out.len() - before;
        // 20 s at 100/s then 20 s at 400/s: within 5 standard deviations.
        let near = |n: usize, mean: f64| (n as f64 - mean).abs() < 5.0 * mean.sqrt();
        assert!(near(before, 100.0 * drawn as f64 / 1e6), "{before}");
        let span = (now - 100_000 + m.settings.lead_us - drawn) as f64 / 1e6;
        assert!(near(after, 400.0 * span), "{after} in {span} s");
        assert!(out.windows(2).all(|w| w[0].depart_us < w[1].depart_us));
        // And back to zero: nothing more after what is drawn.
        m.set_rate(0.0);
        assert_eq!(m.next_departure_us(), u64::MAX);
    }

    #[test]
    fn lead_bounds_what_is_built_and_zero_rate_builds_nothing() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (routes, _) = net(2, &mut rng);
        let own = routes.providers[1].id;
        let mut m = maker(&routes, own, 100.0, 9);
        let mut out = Vec::new();
        m.due(1_000_000, &mut out);
        assert!(out.iter().all(|p| p.depart_us <= 1_500_000));
        assert!(m.next_departure_us() > 1_500_000);
        let mut idle = maker(&routes, own, 0.0, 9);
        assert_eq!(idle.due(u64::MAX - 1, &mut out), Made::default());
        assert_eq!(idle.next_departure_us(), u64::MAX);
    }

    #[test]
    fn bad_settings_and_strangers_are_refused_by_name() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (routes, _) = net(1, &mut rng);
        let own = routes.providers[0].id;
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let rng = Box::new(ChaCha20Rng::seed_from_u64(0));
            let e = LoopMaker::new(settings(bad), G, Arc::clone(&routes), own, 0, rng)
                .err()
                .expect("refused");
            assert!(e.contains("loops.lambda_m"), "{e}");
        }
        let rng = Box::new(ChaCha20Rng::seed_from_u64(0));
        let e = LoopMaker::new(settings(1.0), G, routes, NodeId([99; 16]), 0, rng)
            .err()
            .expect("refused");
        assert!(e.contains("not in the route table"), "{e}");
    }
}
