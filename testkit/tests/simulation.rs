//! Seeded whole-network simulations (`loopix_testkit::sim`): real shards,
//! inboxes and client cores on simulated time, as an adversary and an
//! operator would try them. Each test runs a few fixed seeds and one fresh
//! seed per run; a failure prints its seed and the command that replays it
//! (`LOOPIX_SIM_SEED=N` runs that seed alone).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{SystemTime, UNIX_EPOCH};

use loopix_crypto::link::{FrameHeader, KIND_PACKET};
use loopix_crypto::LinkKey;
use loopix_engine::metrics::DropReason;
use loopix_testkit::sim::{SimConfig, SimNetwork};
use loopix_tuning::model::ks_statistic;

/// The seeds a test runs: `LOOPIX_SIM_SEED` alone if set, else three fixed
/// ones and one from the clock.
fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("LOOPIX_SIM_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return vec![s];
    }
    let fresh = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    vec![1, 2, 3, fresh]
}

/// Run `test` for every seed; a failure names its seed.
fn for_each_seed(name: &str, test: impl Fn(u64)) {
    for seed in seeds() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| test(seed))) {
            eprintln!(
                "simulation `{name}` failed with seed {seed}; replay it with\n  \
                 LOOPIX_SIM_SEED={seed} cargo test -p loopix-testkit --release --test simulation {name}"
            );
            resume_unwind(panic);
        }
    }
}

/// Every client sends `per_client` messages to the next one; returns what
/// each client must receive.
fn send_ring(sim: &mut SimNetwork, per_client: usize) -> Vec<Vec<Vec<u8>>> {
    let n = sim.clients.len();
    let mut want = vec![Vec::new(); n];
    for j in 0..n {
        for k in 0..per_client {
            let data = format!("seed {} message {k} from {j}", sim.seed()).into_bytes();
            sim.send(j, (j + 1) % n, &data);
            want[(j + 1) % n].push(data);
        }
    }
    want
}

fn assert_received_once(sim: &SimNetwork, want: &[Vec<Vec<u8>>]) {
    for (j, c) in sim.clients.iter().enumerate() {
        let mut got = c.received.clone();
        got.sort();
        let mut w = want[j].clone();
        w.sort();
        assert_eq!(
            got,
            w,
            "seed {}: client {j} received {} of {} messages, each exactly once",
            sim.seed(),
            c.received.len(),
            want[j].len()
        );
    }
}

fn assert_no_drops(sim: &SimNetwork) {
    for (i, node) in sim.nodes.iter().enumerate() {
        let drops: Vec<(&str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.label(), node.drops(*r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(
            drops.is_empty(),
            "seed {}: node {i} dropped {drops:?}",
            sim.seed()
        );
    }
    for (j, c) in sim.clients.iter().enumerate() {
        let s = c.session_stats();
        let refused = s.drop_wrong_length
            + s.drop_wrong_kind
            + s.drop_replayed
            + s.drop_bad_tag
            + s.drop_malformed
            + s.drop_unknown_request;
        assert_eq!(
            refused,
            0,
            "seed {}: client {j} refused frames: {s:?}",
            sim.seed()
        );
    }
}

#[test]
fn messages_arrive_once_and_loops_return() {
    for_each_seed("messages_arrive_once_and_loops_return", |seed| {
        let mut sim = SimNetwork::new(SimConfig::small(seed));
        sim.run_until(100_000);
        let want = send_ring(&mut sim, 3);
        sim.run_until(3_000_000);
        assert_received_once(&sim, &want);
        for (j, c) in sim.clients.iter().enumerate() {
            assert!(
                c.loops_returned > 0,
                "seed {seed}: client {j} got no loop back"
            );
        }
        assert_no_drops(&sim);
        let forwarded: u64 = sim
            .nodes
            .iter()
            .map(|n| {
                n.metrics
                    .forwarded
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        assert!(
            forwarded > 100,
            "seed {seed}: only {forwarded} frames forwarded"
        );
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeCounts {
    received: u64,
    forwarded: u64,
    to_inbox: u64,
    link_replay: u64,
    sphinx_replay: u64,
    drops: u64,
}

fn counts(sim: &SimNetwork) -> Vec<NodeCounts> {
    use std::sync::atomic::Ordering::Relaxed;
    sim.nodes
        .iter()
        .map(|n| NodeCounts {
            received: n.metrics.received.load(Relaxed),
            forwarded: n.metrics.forwarded.load(Relaxed),
            to_inbox: n.metrics.to_inbox.load(Relaxed),
            link_replay: n.drops(DropReason::LinkReplay),
            sphinx_replay: n.drops(DropReason::SphinxReplay),
            drops: n.drops_total(),
        })
        .collect()
}

type Captured = Vec<(SocketAddr, SocketAddr, Vec<u8>)>;

fn node_index(sim: &SimNetwork) -> HashMap<SocketAddr, usize> {
    sim.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.addr, i))
        .collect()
}

/// Replay every captured datagram byte for byte (to nodes from the
/// attacker's own address, to clients from their provider's, spoofed):
/// each is received, refused as a link replay, and nothing moves on.
fn replay_byte_for_byte(sim: &mut SimNetwork, captured: &Captured) {
    let seed = sim.seed();
    let attacker = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let index = node_index(sim);
    let before = counts(sim);
    let mut to_node = vec![0u64; sim.nodes.len()];
    for (from, to, bytes) in captured {
        match index.get(to) {
            Some(&i) => {
                to_node[i] += 1;
                sim.net.inject(attacker, *to, bytes);
            }
            None => {
                sim.net.inject(*from, *to, bytes);
            }
        }
    }
    let t = sim.now_us();
    sim.drain_until(t + 2_000_000);
    let after = counts(sim);
    for i in 0..sim.nodes.len() {
        let (b, a) = (before[i], after[i]);
        assert_eq!(a.received - b.received, to_node[i], "seed {seed}: node {i}");
        assert_eq!(
            (a.forwarded, a.to_inbox),
            (b.forwarded, b.to_inbox),
            "seed {seed}: node {i} forwarded or stored a replay"
        );
        assert_eq!(
            a.link_replay - b.link_replay,
            to_node[i],
            "seed {seed}: node {i}: every replayed frame is a link replay"
        );
        assert_eq!(a.drops - b.drops, to_node[i], "seed {seed}: node {i}");
    }
}

/// A corrupt neighbour re-seals each captured node-to-node packet under its
/// link key with a fresh counter: the link layer lets it through and the
/// Sphinx replay filter refuses it.
fn reseal_as_corrupt_neighbour(sim: &mut SimNetwork, captured: &Captured) {
    let seed = sim.seed();
    let index = node_index(sim);
    let before = counts(sim);
    let mut resealed = vec![0u64; sim.nodes.len()];
    for (from, to, bytes) in captured {
        let (Some(&s), Some(&r)) = (index.get(from), index.get(to)) else {
            continue;
        };
        let Ok(h) = FrameHeader::peek(bytes) else {
            continue;
        };
        if h.kind != KIND_PACKET {
            continue;
        }
        let receiver_public = sim.topology.nodes[r].link_key;
        let key = LinkKey::derive(sim.link_secret(s), &receiver_public).expect("valid keys");
        let mut frame = bytes.clone();
        // Far above any counter the sender used: the link window passes.
        key.seal_in_place(h.sender, h.counter | (1 << 55), &mut frame)
            .expect("sized");
        sim.net.inject(*from, *to, &frame);
        resealed[r] += 1;
    }
    let t = sim.now_us();
    sim.drain_until(t + 2_000_000);
    let after = counts(sim);
    let total: u64 = resealed.iter().sum();
    assert!(total > 50, "seed {seed}: re-sealed only {total}");
    for i in 0..sim.nodes.len() {
        let (b, a) = (before[i], after[i]);
        assert_eq!(
            (a.forwarded, a.to_inbox),
            (b.forwarded, b.to_inbox),
            "seed {seed}: node {i} forwarded or stored a re-sealed replay"
        );
        assert_eq!(
            a.sphinx_replay - b.sphinx_replay,
            resealed[i],
            "seed {seed}: node {i}: every re-sealed packet is a Sphinx replay"
        );
    }
}

/// A global passive adversary records every datagram, then replays all of
/// them byte for byte from its own address; then, as a corrupt mix holding
/// its link keys, re-seals every captured packet in fresh frames. Nothing
/// replayed is forwarded, stored or delivered again, and every replay is
/// counted under its reason.
#[test]
fn replays_are_refused_and_change_nothing() {
    for_each_seed("replays_are_refused_and_change_nothing", |seed| {
        let mut sim = SimNetwork::new(SimConfig::small(seed));
        sim.net.capture(200_000);
        sim.run_until(50_000);
        let want = send_ring(&mut sim, 2);
        sim.run_until(1_500_000);
        // Clients fall silent and everything in flight lands.
        sim.drain_until(3_000_000);
        let captured = sim.net.captured();
        sim.net.capture(0);
        assert!(
            captured.len() > 100,
            "seed {seed}: captured {}",
            captured.len()
        );
        let received_before: Vec<usize> = sim.clients.iter().map(|c| c.received.len()).collect();
        replay_byte_for_byte(&mut sim, &captured);
        reseal_as_corrupt_neighbour(&mut sim, &captured);
        let received_after: Vec<usize> = sim.clients.iter().map(|c| c.received.len()).collect();
        assert_eq!(
            received_before, received_after,
            "seed {seed}: a replay was delivered"
        );
        assert_received_once(&sim, &want);
    });
}

/// Every node reloads, a few milliseconds apart while traffic flows, onto a
/// topology that moves every node's index: nothing is lost or refused.
#[test]
fn reload_moves_indices_and_loses_nothing() {
    for_each_seed("reload_moves_indices_and_loses_nothing", |seed| {
        let mut sim = SimNetwork::new(SimConfig::small(seed));
        sim.run_until(100_000);
        let want = send_ring(&mut sim, 3);
        sim.run_until(150_000);
        sim.reload_reordered(3_000);
        sim.run_until(3_000_000);
        assert_received_once(&sim, &want);
        assert_no_drops(&sim);
    });
}

/// The issue's "a mix carrying no client traffic at all sends a Poisson
/// process": with no clients, a layer-1 mix of a one-mix-per-layer network
/// sends to the layer-2 mix its own loops (λM), the provider's loops it
/// relays and the layer-2 mix's loops on their last hop, each a Poisson
/// process delayed by independent Exp(µ) hops, so together a Poisson
/// process of rate 3λM. A global observer times the departures on that
/// wire; Kolmogorov-Smirnov at α = 0.01 against Exp(3λM), and the count
/// within five standard deviations. Fixed seeds only (a fresh seed would
/// fail one run in a hundred by design); `LOOPIX_SIM_SEED` replays one.
#[test]
fn an_idle_mix_departs_as_a_poisson_process_of_loops() {
    let seeds = match std::env::var("LOOPIX_SIM_SEED") {
        Ok(_) => seeds(),
        Err(_) => vec![11, 12],
    };
    for seed in seeds {
        let lambda_m = 5.0;
        let config = SimConfig {
            providers: 1,
            layers: 2,
            mixes_per_layer: 1,
            clients_per_provider: 0,
            step_us: 500,
            lambda_m,
            ..SimConfig::small(seed)
        };
        let mut sim = SimNetwork::new(config);
        let (mix1, mix2) = (sim.nodes[1].addr, sim.nodes[2].addr);
        assert_eq!((sim.nodes[1].layer, sim.nodes[2].layer), (1, 2));
        sim.net.capture(usize::MAX);
        // Let the loops of others reach their steady state first.
        sim.run_until(2_000_000);
        let _ = sim.net.captured();
        let (from_us, until_us) = (sim.now_us(), 162_000_000);
        let mut times = Vec::new();
        let mut held_seen = 0u64;
        while sim.now_us() < until_us {
            sim.run_until(sim.now_us() + config.step_us);
            // The pool gauge counts the node's own loops built ahead; the
            // part of it that is theirs is never more than the whole.
            for node in &sim.nodes {
                let load =
                    |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
                let own = load(&node.metrics.pool_own_loops);
                assert!(own <= load(&node.metrics.pool_in_use), "seed {seed}");
                held_seen = held_seen.max(own);
            }
            let now = sim.now_us() as f64 / 1e6;
            for (from, to, _) in sim.net.captured() {
                if (from, to) == (mix1, mix2) {
                    times.push(now);
                }
            }
        }
        assert!(held_seen > 0, "seed {seed}: no own loop ever held ahead");
        let rate = 3.0 * lambda_m;
        let span = (until_us - from_us) as f64 / 1e6;
        let expected = rate * span;
        let n = times.len() as f64;
        assert!(
            (n - expected).abs() < 5.0 * expected.sqrt(),
            "seed {seed}: {n} departures in {span} s, expected {expected}"
        );
        let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let m = gaps.len() as f64;
        let d = ks_statistic(&mut gaps, |x| 1.0 - (-rate * x).exp());
        // The departures are seen at step ends: a gap is off by at most one
        // step (0.5 ms against a mean of 67 ms), which moves D by < 0.01.
        let critical = 1.628 / m.sqrt() + 0.01;
        assert!(
            d < critical,
            "seed {seed}: KS D = {d:.4} over {m} gaps (critical {critical:.4})"
        );
        for node in &sim.nodes {
            let load =
                |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
            let (sent, back) = (
                load(&node.metrics.loops_sent),
                load(&node.metrics.loops_received),
            );
            assert!(
                sent > 0 && back + 5 >= sent,
                "seed {seed}: {back} of {sent} loops back"
            );
            assert_eq!(load(&node.metrics.loops_late), 0, "seed {seed}");
        }
    }
}

/// The (n−1) detector's `halt` response at the shard: a halted mix sends
/// its own loops and nothing else (what it would forward is counted as
/// `halted`), and after it resumes it forwards again with no more such
/// drops. Clients' traffic gives it packets to forward.
#[test]
fn a_halted_mix_sends_only_its_own_loops() {
    let config = SimConfig {
        lambda_m: 5.0,
        ..SimConfig::small(21)
    };
    let mut sim = SimNetwork::new(config);
    let m = sim
        .nodes
        .iter()
        .position(|n| n.layer == 1)
        .expect("a layer-1 mix");
    let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    sim.run_until(1_000_000);
    sim.halt(m, true);
    sim.run_until(1_050_000);
    let (fwd0, loops0) = (
        load(&sim.nodes[m].metrics.forwarded),
        load(&sim.nodes[m].metrics.loops_sent),
    );
    let halted0 = sim.nodes[m].drops(DropReason::Halted);
    sim.run_until(4_000_000);
    let node = &sim.nodes[m];
    let forwarded = load(&node.metrics.forwarded) - fwd0;
    let loops = load(&node.metrics.loops_sent) - loops0;
    let halted = node.drops(DropReason::Halted) - halted0;
    assert!(halted > 50, "too little traffic to mean anything: {halted}");
    assert!(loops > 0, "no own loop left while halted");
    assert_eq!(forwarded, loops, "a halted mix forwarded others' packets");
    sim.halt(m, false);
    sim.run_until(4_200_000);
    let (fwd1, halted1) = (
        load(&sim.nodes[m].metrics.forwarded),
        sim.nodes[m].drops(DropReason::Halted),
    );
    sim.run_until(6_000_000);
    let node = &sim.nodes[m];
    assert_eq!(
        node.drops(DropReason::Halted),
        halted1,
        "halted after resuming"
    );
    assert!(
        load(&node.metrics.forwarded) - fwd1 > 50,
        "nothing forwarded after resuming"
    );
}
