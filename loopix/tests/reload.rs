//! Topology reload on SIGHUP, through the `loopix` binary: three mixes (one
//! per layer) hold packets for seconds while the operator publishes a new
//! document and every node gets SIGHUP; every packet still arrives, the
//! serial gauge moves, a packet whose next hop left the topology is counted
//! as `next_hop_removed`, and documents that must be refused (a flipped
//! signature byte, a lower serial) are refused while traffic flows on. A
//! provider process reloads too and keeps rescanning its registry.
//!
//! The test process plays provider 0: it injects frames into layer 1 and
//! receives what layer 3 sends on. Every wait is bounded; every child is
//! killed when its guard drops.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use loopix_crypto::RoutingCommand;
use loopix_directory::descriptor::{epoch_at, NodeDescriptor};
use loopix_directory::topology::{BuildParams, Role, TopologyFile};
use loopix_engine::keyfile::{self, unix_now_s};
use loopix_engine::metrics::names;
use loopix_testkit::localnet::{free_udp_addr, Driver, LocalNet, LocalNetSpec};
use loopix_testkit::process::NodeProcess;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// `loopix <command> --config` for node `index`, up when its metrics
/// endpoint answers.
fn start_node(net: &LocalNet, index: usize, command: &str) -> NodeProcess {
    let node = &net.nodes[index];
    let config = node.config.as_ref().expect("nodes have configs");
    NodeProcess::start_node(
        Path::new(env!("CARGO_BIN_EXE_loopix")),
        command,
        config,
        node.metrics,
    )
    .unwrap_or_else(|e| panic!("node {index}: {e}"))
}

/// Reload counters, read through the test kit's node process.
trait Reloads {
    /// `loopix_topology_reloads_total{result}`.
    fn reloads(&self, result: &str) -> f64;
    /// Wait (bounded) until [`Reloads::reloads`] reaches `n`.
    fn await_reloads(&self, result: &str, n: f64);
}

impl Reloads for NodeProcess {
    fn reloads(&self, result: &str) -> f64 {
        self.metric(names::TOPOLOGY_RELOADS, &[("result", result)])
    }

    fn await_reloads(&self, result: &str, n: f64) {
        self.wait_metric(names::TOPOLOGY_RELOADS, &[("result", result)], n);
    }
}

/// The network: providers (0 is this test), layers 1 to 3, one mix each.
struct Net {
    dir: tempfile::TempDir,
    net: LocalNet,
    /// Drivers for provider 0, one per document seen (frames from layer 3
    /// may carry its index under any of them while nodes reload).
    drivers: Vec<Driver>,
    provider_socket: UdpSocket,
    mixes: Vec<NodeProcess>,
    l: [usize; 3],
}

fn start_net(providers: usize) -> Net {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = LocalNetSpec {
        providers,
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(dir.path(), &spec).expect("lay out the network");
    let driver = Driver::new(&net, 0).expect("driver");
    let provider_socket = UdpSocket::bind(net.nodes[0].address).expect("bind provider address");
    provider_socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let l = [net.layer(1)[0], net.layer(2)[0], net.layer(3)[0]];
    let mixes = l.iter().map(|&i| start_node(&net, i, "mix")).collect();
    Net {
        dir,
        net,
        drivers: vec![driver],
        provider_socket,
        mixes,
        l,
    }
}

impl Net {
    /// Send a packet along `path` (node indices of the latest document,
    /// starting at layer 1, ending at provider 0) with per-hop `delays_us`.
    /// Built with the latest document's keys; framed by the first driver,
    /// whose link counters layer 1 has followed from the start (layer 1's
    /// index is the same in every document here).
    fn send(&mut self, path: &[usize], delays_us: &[u32], seed: u64) {
        let latest = self.drivers.last().expect("one driver at least");
        let pkt = latest
            .build_drop_path(path, delays_us, &mut ChaCha20Rng::seed_from_u64(seed))
            .expect("build");
        let first = path[0];
        let to = latest.topology.nodes[first].address;
        assert_eq!(first, self.l[0], "frames go to layer 1");
        let frame = self.drivers[0].frame_for(first, &pkt);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(&frame, to).expect("send");
    }

    /// A packet through the started mixes of layers 1, 2, 3 and back to
    /// provider 0 (indices of the latest document).
    fn send_chain(&mut self, delays_us: [u32; 3], seed: u64) {
        let path = [
            self.now(self.l[0]),
            self.now(self.l[1]),
            self.now(self.l[2]),
            0,
        ];
        self.send(&path, &delays_us, seed);
    }

    /// The index in the latest document of the node at `first` in the
    /// first one.
    fn now(&self, first: usize) -> usize {
        let id = self.drivers[0].id(first);
        let latest = &self.drivers.last().expect("one driver at least").topology;
        latest.index_of(&id).expect("still listed") as usize
    }

    /// Receive frames at provider 0 until `n` arrived or `within` passed.
    fn receive(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut got = 0;
        let mut buf = vec![0u8; 4096];
        while got < n && Instant::now() < deadline {
            if let Ok((len, _)) = self.provider_socket.recv_from(&mut buf) {
                let cmd = self
                    .drivers
                    .iter()
                    .rev()
                    .find_map(|d| d.receive(&buf[..len]).ok())
                    .expect("authentic frame from layer 3 under some document");
                assert_eq!(cmd, RoutingCommand::Drop);
                got += 1;
            }
        }
        got
    }

    /// Sign and write (atomically) a document with `serial` listing the
    /// network's nodes plus `extra`.
    fn publish(&self, serial: u64, extra: &[(NodeDescriptor, Role, u8)]) -> TopologyFile {
        let mut placed: Vec<(NodeDescriptor, Role, u8)> = self
            .net
            .nodes
            .iter()
            .map(|n| (n.descriptor.clone(), n.role, n.layer))
            .collect();
        placed.extend_from_slice(extra);
        let operator = keyfile::read_identity(&self.net.operator_key_path).expect("operator key");
        let now = unix_now_s();
        let params = BuildParams {
            serial,
            valid_from: now - 300,
            valid_until: now + 86_400,
            layers: 3,
            network: self.net.params,
        };
        let file = TopologyFile::build(params, &placed, &operator).expect("build");
        write_document(&self.net.topology_path, &file);
        file
    }

    /// A fresh mix's descriptor (keys under the net's directory); the mix
    /// is never started.
    fn new_mix(&self, name: &str) -> NodeDescriptor {
        let epoch_s = LocalNetSpec::default().epoch_s;
        let first = epoch_at(unix_now_s(), epoch_s);
        let addr = free_udp_addr().expect("port");
        keyfile::keygen_at(&self.dir.path().join(name), Some(addr), epoch_s, first, 2)
            .expect("keygen")
            .descriptor
    }

    fn sighup_all(&self) {
        for m in &self.mixes {
            m.sighup();
        }
    }

    fn total_dropped(&self, reason: &str) -> f64 {
        self.mixes.iter().map(|m| m.dropped(reason)).sum()
    }
}

fn write_document(path: &Path, file: &TopologyFile) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, file.to_toml().expect("toml")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Packets waiting at every layer survive two reloads (same nodes with a
/// higher serial, then a new mix in layer 2, which moves layer 3's index);
/// a third reload that removes the new mix drops the packet waiting for it
/// as `next_hop_removed`, and nothing else is lost.
#[test]
fn reload_keeps_packets_in_flight() {
    let mut net = start_net(1);
    let hold = 2_000_000u32;
    let short = 100_000u32;
    let mut sent = 0;
    let send_round = |net: &mut Net, seed: u64| {
        // One packet waiting at each layer when the SIGHUP comes.
        net.send_chain([hold, short, short], seed);
        net.send_chain([short, hold, short], seed + 1);
        net.send_chain([short, short, hold], seed + 2);
        net.send_chain([hold, hold, short], seed + 3);
        4
    };

    // Round 1: same nodes, serial 2.
    sent += send_round(&mut net, 10);
    std::thread::sleep(Duration::from_millis(500));
    net.publish(2, &[]);
    net.sighup_all();
    for m in &net.mixes {
        m.await_reloads("ok", 1.0);
        assert_eq!(m.metric(names::TOPOLOGY_SERIAL, &[]), 2.0);
        assert!(
            m.log_text().contains("serial 1 -> 2, 0 node(s) added"),
            "{}",
            m.log_text()
        );
    }
    // Round 2: a new mix in layer 2 (never started, no traffic to it).
    sent += send_round(&mut net, 20);
    std::thread::sleep(Duration::from_millis(500));
    let extra = net.new_mix("mix-l2-new");
    net.publish(3, &[(extra.clone(), Role::Mix, 2)]);
    net.sighup_all();
    for m in &net.mixes {
        m.await_reloads("ok", 2.0);
        assert_eq!(m.metric(names::TOPOLOGY_SERIAL, &[]), 3.0);
        assert!(
            m.log_text().contains("serial 2 -> 3, 1 node(s) added"),
            "{}",
            m.log_text()
        );
    }
    assert!(net.mixes[2].log_text().contains("this node's index 3 -> 4"));
    net.drivers
        .push(Driver::new(&net.net, 0).expect("driver for serial 3"));
    let got = net.receive(sent, Duration::from_secs(10));
    assert_eq!(got, sent, "packets lost across reloads");

    // Round 3: a packet waits at layer 1 for the new mix, which the next
    // document removes again.
    let new_mix = net.drivers[1]
        .topology
        .nodes
        .iter()
        .position(|n| n.id.to_string() == extra.id)
        .expect("new mix listed");
    let l3_now = net.now(net.l[2]);
    net.send(&[net.l[0], new_mix, l3_now, 0], &[hold, short, short], 30);
    net.send_chain([hold, short, short], 31);
    std::thread::sleep(Duration::from_millis(500));
    net.publish(4, &[]);
    net.sighup_all();
    for m in &net.mixes {
        m.await_reloads("ok", 3.0);
        assert!(m
            .log_text()
            .contains("serial 3 -> 4, 0 node(s) added, 1 removed"));
    }
    net.drivers
        .push(Driver::new(&net.net, 0).expect("driver for serial 4"));
    assert_eq!(net.receive(1, Duration::from_secs(5)), 1);
    assert!(net.receive(1, Duration::from_millis(500)) == 0);
    assert_eq!(net.mixes[0].dropped("next_hop_removed"), 1.0);
    for reason in [
        "unauthenticated",
        "unknown_next_hop",
        "link_replay",
        "bad_mac",
    ] {
        assert_eq!(net.total_dropped(reason), 0.0, "{reason}");
    }
    for m in &net.mixes {
        assert_eq!(m.reloads("refused"), 0.0);
    }
}

/// A document with a flipped signature byte and one with a lower serial
/// are refused on SIGHUP: each node logs why, counts `result="refused"`,
/// keeps its serial, and a packet sent after (and one waiting during) the
/// refusals still arrives. A real provider process reloads on SIGHUP too
/// and still picks up a client registered meanwhile.
#[test]
fn bad_documents_are_refused_and_traffic_flows() {
    let mut net = start_net(2);
    let provider = start_node(&net.net, 1, "provider");
    let good = net.publish(5, &[]);
    net.sighup_all();
    provider.sighup();
    for m in net.mixes.iter().chain([&provider]) {
        m.await_reloads("ok", 1.0);
        assert_eq!(m.metric(names::TOPOLOGY_SERIAL, &[]), 5.0);
    }

    // A packet waits at layer 1 through both refusals.
    net.send_chain([1_500_000, 1_000, 1_000], 40);
    let mut tampered = good.clone();
    let c = tampered.signature.as_bytes()[10];
    let flipped = if c == b'0' { "1" } else { "0" };
    tampered.signature.replace_range(10..11, flipped);
    write_document(&net.net.topology_path, &tampered);
    net.sighup_all();
    provider.sighup();
    for m in net.mixes.iter().chain([&provider]) {
        m.await_reloads("refused", 1.0);
        assert!(
            m.log_text()
                .contains("topology reload refused, keeping serial 5")
                && m.log_text().contains("does not verify"),
            "{}",
            m.log_text()
        );
    }
    net.publish(4, &[]);
    net.net
        .register_client(1, "alice")
        .expect("register a client");
    net.sighup_all();
    provider.sighup();
    for m in net.mixes.iter().chain([&provider]) {
        m.await_reloads("refused", 2.0);
        assert!(
            m.log_text().contains("serial 4 is lower"),
            "{}",
            m.log_text()
        );
        assert_eq!(m.metric(names::TOPOLOGY_SERIAL, &[]), 5.0);
        assert_eq!(m.reloads("ok"), 1.0);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while provider.metric(names::REGISTERED_CLIENTS, &[]) < 1.0 {
        assert!(Instant::now() < deadline, "{}", provider.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    net.send_chain([1_000, 1_000, 1_000], 41);
    assert_eq!(net.receive(2, Duration::from_secs(5)), 2, "traffic stopped");
    for m in &mut net.mixes {
        assert!(m.try_exited().is_none(), "node exited");
    }
}

/// Nodes reload at different times while a new layer-1 mix moves the
/// indices of layers 2 and 3: first layer 3 (it accepts layer 2's frames
/// under the previous indices), then, when the mix is removed again, layer
/// 2 first (it keeps sealing with its previous index until layer 3 follows).
/// Packets cross from layer 2 to layer 3 all the while; none is lost and
/// none is refused as unauthenticated.
#[test]
fn staggered_reloads_lose_nothing() {
    let mut net = start_net(1);
    let gap = Duration::from_millis(1500);
    let mut sent = 0;
    let spread = |net: &mut Net, seed: u64| {
        // Layer 2 sends these on over about 3 s.
        for k in 0..12u32 {
            net.send_chain([50_000, 300_000 + k * 250_000, 50_000], seed + u64::from(k));
        }
        12
    };

    sent += spread(&mut net, 100);
    let extra = net.new_mix("mix-l1-new");
    net.publish(2, &[(extra, Role::Mix, 1)]);
    net.mixes[2].sighup();
    net.mixes[2].await_reloads("ok", 1.0);
    std::thread::sleep(gap);
    net.mixes[1].sighup();
    net.mixes[0].sighup();
    for m in &net.mixes {
        m.await_reloads("ok", 1.0);
    }
    assert!(net.mixes[1].log_text().contains("this node's index 2 -> 3"));
    net.drivers
        .push(Driver::new(&net.net, 0).expect("driver for serial 2"));
    assert_eq!(net.receive(sent, Duration::from_secs(8)), sent);

    sent += spread(&mut net, 200);
    net.publish(3, &[]);
    net.mixes[1].sighup();
    net.mixes[1].await_reloads("ok", 2.0);
    std::thread::sleep(gap);
    net.mixes[2].sighup();
    net.mixes[0].sighup();
    for m in &net.mixes {
        m.await_reloads("ok", 2.0);
    }
    net.drivers
        .push(Driver::new(&net.net, 0).expect("driver for serial 3"));
    assert_eq!(net.receive(12, Duration::from_secs(8)), 12);
    for reason in ["unauthenticated", "link_replay", "next_hop_removed"] {
        assert_eq!(net.total_dropped(reason), 0.0, "{reason}");
    }
    assert_eq!(sent, 24);
}
