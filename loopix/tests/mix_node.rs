//! Multi-process tests of `loopix mix` on loopback, each run against both
//! I/O backends (the io_uring runs are skipped, with a message, where the
//! host refuses io_uring).
//!
//! The test process plays the provider: it injects frames into layer 1 and
//! receives what layer 3 sends on. Every wait is bounded; every child is
//! killed when its guard drops.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use loopix_crypto::RoutingCommand;
use loopix_engine::config::IoChoice;
use loopix_engine::metrics::names;
use loopix_testkit::localnet::{Driver, LocalNet, LocalNetSpec};
use loopix_testkit::process::NodeProcess;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// `loopix mix` for node `index` of `net`, up when its metrics answer.
fn start_mix(net: &LocalNet, index: usize) -> NodeProcess {
    let node = &net.nodes[index];
    let config = node.config.as_ref().expect("mixes have configs");
    NodeProcess::start_node(
        Path::new(env!("CARGO_BIN_EXE_loopix")),
        "mix",
        config,
        node.metrics,
    )
    .unwrap_or_else(|e| panic!("mix {index}: {e}"))
}

fn backends() -> Vec<IoChoice> {
    let mut v = vec![IoChoice::Portable];
    match loopix_engine::io::uring::probe() {
        Ok(()) => v.push(IoChoice::Uring),
        Err(why) => eprintln!("skipping the io_uring runs: {why}"),
    }
    v
}

/// The network: one provider (this test), layers 1 to 3, one mix each.
struct Net {
    _dir: tempfile::TempDir,
    net: LocalNet,
    driver: Driver,
    provider_socket: UdpSocket,
    mixes: Vec<NodeProcess>,
    l: [usize; 3],
}

fn start_net(io: IoChoice, shards: usize) -> Net {
    start_net_with(LocalNetSpec {
        io,
        shards,
        ..LocalNetSpec::default()
    })
}

fn start_net_with(spec: LocalNetSpec) -> Net {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec).expect("lay out the network");
    let driver = Driver::new(&net, 0).expect("driver");
    let provider_socket = UdpSocket::bind(net.nodes[0].address).expect("bind provider address");
    provider_socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let l = [net.layer(1)[0], net.layer(2)[0], net.layer(3)[0]];
    let mixes = l.iter().map(|&i| start_mix(&net, i)).collect();
    Net {
        _dir: dir,
        net,
        driver,
        provider_socket,
        mixes,
        l,
    }
}

impl Net {
    /// A packet through layers 1, 2, 3 and back to the provider.
    fn packet(&self, delays_us: [u32; 3], seed: u64) -> Vec<u8> {
        let path = [self.l[0], self.l[1], self.l[2], 0];
        self.driver
            .build_drop_path(&path, &delays_us, &mut ChaCha20Rng::seed_from_u64(seed))
            .expect("build")
    }

    fn send_to_layer1(&self, frame: &[u8], from: &UdpSocket) {
        from.send_to(frame, self.net.nodes[self.l[0]].address)
            .expect("send");
    }

    /// Receive frames at the provider until `n` arrived or `within` passed.
    fn receive(&self, n: usize, within: Duration) -> Vec<(Instant, RoutingCommand)> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < n && Instant::now() < deadline {
            if let Ok((len, _)) = self.provider_socket.recv_from(&mut buf) {
                let cmd = self
                    .driver
                    .receive(&buf[..len])
                    .expect("authentic frame from layer 3");
                got.push((Instant::now(), cmd));
            }
        }
        got
    }
}

/// A chain of three mix processes forwards a packet, each hop holding it
/// for its encoded delay: the packet arrives no earlier than the sum of the
/// delays and within a stated tolerance after it.
#[test]
fn three_mix_chain_holds_each_hop_for_its_delay() {
    for io in backends() {
        let net = start_net(io, 1);
        let delays = [60_000u32, 120_000, 180_000]; // 360 ms in all
        let tolerance = Duration::from_millis(120);
        let pkt = net.packet(delays, 1);
        let mut driver = net.driver;
        let frame = driver.frame_for(net.l[0], &pkt);
        let net = Net { driver, ..net };
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sent = Instant::now();
        net.send_to_layer1(&frame, &tx);
        let got = net.receive(1, Duration::from_secs(5));
        assert_eq!(
            got.len(),
            1,
            "{io:?}: packet lost; layer-1 log: {}",
            net.mixes[0].log_text()
        );
        assert_eq!(got[0].1, RoutingCommand::Drop);
        let took = got[0].0 - sent;
        let total = Duration::from_micros(delays.iter().map(|&d| u64::from(d)).sum());
        assert!(
            took >= total,
            "{io:?}: arrived after {took:?}, before the {total:?} of delays"
        );
        assert!(
            took <= total + tolerance,
            "{io:?}: arrived after {took:?}, over {total:?} + {tolerance:?}"
        );
        // Each hop held it for its own delay: every mix forwarded one packet
        // and its scheduling lateness stayed small.
        for m in &net.mixes {
            assert_eq!(m.metric(names::FORWARDED_PACKETS, &[]), 1.0);
            let late = m.metric(names::SCHEDULING_LATENESS_US, &[("quantile", "0.99")]);
            assert!(late < 20_000.0, "{io:?}: lateness p99 {late} us");
        }
    }
}

/// The same Sphinx packet in two fresh frames (the second from another
/// source port) is forwarded once and counted once as a Sphinx replay; a
/// byte-identical frame sent again is counted as a link replay. Two shards,
/// so the replay is only caught if steering sends both copies to the same
/// shard.
#[test]
fn sphinx_and_link_replays_are_caught() {
    for io in backends() {
        let mut net = start_net(io, 2);
        let pkt = net.packet([1_000, 1_000, 1_000], 2);
        let first = net.driver.frame_for(net.l[0], &pkt);
        let second = net.driver.frame_for(net.l[0], &pkt);
        assert_ne!(first, second);
        let port_a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port_b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        net.send_to_layer1(&first, &port_a);
        net.send_to_layer1(&second, &port_b);
        let got = net.receive(2, Duration::from_secs(2));
        assert_eq!(got.len(), 1, "{io:?}: forwarded {} copies", got.len());
        let l1 = &net.mixes[0];
        assert_eq!(l1.dropped("sphinx_replay"), 1.0, "{io:?}");
        assert_eq!(l1.dropped("link_replay"), 0.0, "{io:?}");
        net.send_to_layer1(&second, &port_a);
        let deadline = Instant::now() + Duration::from_secs(2);
        while l1.dropped("link_replay") < 1.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(l1.dropped("link_replay"), 1.0, "{io:?}");
        assert_eq!(l1.dropped("sphinx_replay"), 1.0, "{io:?}");
        assert!(net.receive(1, Duration::from_millis(300)).is_empty());
    }
}

/// How a captured mix restarts in the test below.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// SIGTERM: the node writes its state as it stops.
    Clean,
    /// SIGKILL: only what is in the page cache and the last periodic write.
    Crash,
}

/// Frames captured on the wire into layer 1 before it restarts, replayed
/// after it is back (verbatim from another address, and re-sealed by the
/// neighbour under fresh counters): none is forwarded. Fresh traffic flows
/// through the restarted mix at once: layer 2 accepts its new counters.
/// Two shards, so the shared filter must catch a replay whichever shard
/// steering picks.
#[test]
fn replays_captured_before_a_restart_are_refused_after_it() {
    const N: usize = 40;
    for io in backends() {
        for how in [Restart::Clean, Restart::Crash] {
            let mut net = start_net(io, 2);
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let packets: Vec<Vec<u8>> = (0..N)
                .map(|i| net.packet([500; 3], 100 + i as u64))
                .collect();
            let captured: Vec<Vec<u8>> = packets
                .iter()
                .map(|p| net.driver.frame_for(net.l[0], p))
                .collect();
            for f in &captured {
                net.send_to_layer1(f, &tx);
            }
            assert_eq!(
                net.receive(N, Duration::from_secs(5)).len(),
                N,
                "{io:?} {how:?}"
            );
            match how {
                Restart::Clean => {
                    let status = net.mixes[0]
                        .terminate(Duration::from_secs(5))
                        .expect("exits");
                    assert!(status.success(), "{io:?}: {status}");
                }
                Restart::Crash => net.mixes[0].kill(),
            }
            let restarted = Instant::now();
            net.mixes[0] = start_mix(&net.net, net.l[0]);
            // Fresh traffic first: through the restarted mix within a second.
            let fresh = net.packet([500; 3], 999);
            let frame = net.driver.frame_for(net.l[0], &fresh);
            net.send_to_layer1(&frame, &tx);
            let got = net.receive(1, Duration::from_secs(1));
            assert_eq!(
                got.len(),
                1,
                "{io:?} {how:?}: fresh packet lost after the restart"
            );
            eprintln!(
                "{io:?} {how:?}: fresh packet through {:?} after the restart began",
                got[0].0 - restarted
            );
            // The observer's verbatim replays, from an address never used.
            let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
            for f in &captured {
                net.send_to_layer1(f, &other);
            }
            // The corrupt neighbour's re-sealed copies.
            for p in &packets {
                let f = net.driver.frame_for(net.l[0], p);
                net.send_to_layer1(&f, &tx);
            }
            let l1 = &net.mixes[0];
            let refused = || l1.dropped("link_replay") + l1.dropped("sphinx_replay");
            let deadline = Instant::now() + Duration::from_secs(5);
            while refused() < (2 * N) as f64 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                net.receive(1, Duration::from_millis(500)).is_empty(),
                "{io:?} {how:?}: a replay was forwarded"
            );
            assert_eq!(
                l1.metric(names::FORWARDED_PACKETS, &[]),
                1.0,
                "{io:?} {how:?}: only the fresh packet"
            );
            assert_eq!(
                refused(),
                (2 * N) as f64,
                "{io:?} {how:?}: {}",
                l1.log_tail(20)
            );
            assert!(
                l1.dropped("sphinx_replay") >= N as f64,
                "{io:?} {how:?}: every re-sealed copy"
            );
            if let Restart::Clean = how {
                // The windows were saved at shutdown: verbatim frames cost
                // no scalar multiplication.
                assert_eq!(l1.dropped("link_replay"), N as f64, "{io:?}");
            }
            // Layer 2 took every frame the restarted mix sealed.
            assert_eq!(net.mixes[1].dropped("link_replay"), 0.0, "{io:?} {how:?}");
        }
    }
}

/// Beyond a mix's capacity (25,000 packets/s, about twice what one shard
/// carries, into a small socket buffer and a small pool), every packet sent is accounted
/// for: received by the node or dropped by the kernel (counted), and every
/// received one forwarded or dropped under a reason.
#[test]
fn overload_loses_nothing_uncounted() {
    const N: usize = 3000;
    for io in backends() {
        let mut net = start_net_with(LocalNetSpec {
            io,
            shards: 1,
            socket_buffer_bytes: 64 << 10,
            pool_packets: 256,
            ..LocalNetSpec::default()
        });
        let frames: Vec<Vec<u8>> = (0..N as u64)
            .map(|i| {
                let p = net.packet([2_000, 500, 500], 10_000 + i);
                net.driver.frame_for(net.l[0], &p)
            })
            .collect();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // 25 frames a millisecond: about twice what one shard carries.
        let started = Instant::now();
        for (i, chunk) in frames.chunks(25).enumerate() {
            let due = started + Duration::from_millis(i as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            for f in chunk {
                net.send_to_layer1(f, &tx);
            }
        }
        let offered = N as f64 / started.elapsed().as_secs_f64();
        // Every delay has passed and the kernel's count was read (once a
        // second) when the pool is empty and the totals stop moving.
        let l1 = &net.mixes[0];
        let account = || {
            let m = l1.metrics();
            let drops: f64 = m.nonzero_drops().iter().map(|d| d.1).sum();
            let kernel = m.drops(loopix_engine::metrics::DropReason::Kernel);
            let pool = m.value(names::POOL_IN_USE, &[]).unwrap_or(0.0);
            (m.received(), kernel, m.forwarded(), drops - kernel, pool)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = account();
        loop {
            std::thread::sleep(Duration::from_millis(1500));
            let now = account();
            if (now == last && now.4 == 0.0) || Instant::now() > deadline {
                last = now;
                break;
            }
            last = now;
        }
        let (received, kernel, forwarded, dropped, pool) = last;
        eprintln!("{io:?}: offered {offered:.0}/s; received {received}, kernel {kernel}, forwarded {forwarded}, dropped {dropped}, pool {pool}");
        assert!(kernel > 0.0, "{io:?}: the burst did not overflow the queue");
        assert_eq!(
            received + kernel,
            N as f64,
            "{io:?}: sent = received + kernel drops"
        );
        assert_eq!(
            forwarded + dropped + pool,
            received,
            "{io:?}: received = forwarded + dropped + held: {:?}",
            l1.metrics().nonzero_drops()
        );
    }
}

/// A second `loopix mix` with the same configuration refuses to start,
/// naming the running one, before it binds anything: the first keeps every
/// datagram.
#[test]
fn a_second_instance_refuses_to_start_and_the_first_keeps_its_traffic() {
    let mut net = start_net(IoChoice::Portable, 2);
    let config = net.net.nodes[net.l[0]].config.clone().expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(["mix", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let pid = net.mixes[0].pid();
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    assert!(!err.contains("loopix mix: node"), "no start line: {err}");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..50u64 {
        let p = net.packet([500; 3], 200 + i);
        let f = net.driver.frame_for(net.l[0], &p);
        net.send_to_layer1(&f, &tx);
    }
    assert_eq!(net.receive(50, Duration::from_secs(5)).len(), 50);
    assert_eq!(net.mixes[0].metric(names::RECEIVED_DATAGRAMS, &[]), 50.0);
}

/// Junk of every kind is dropped and counted (in the kernel by the socket
/// filter, or by the node), and good traffic still flows.
#[test]
fn junk_is_dropped_and_counted_good_traffic_flows() {
    for io in backends() {
        let mut net = start_net(io, 1);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let frame_len = net.driver.geometry.frame_len();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut random = vec![0u8; frame_len];
        rand_chacha::rand_core::RngCore::fill_bytes(&mut rng, &mut random);
        let good = {
            let pkt = net.packet([500, 500, 500], 4);
            net.driver.frame_for(net.l[0], &pkt)
        };
        let junk: Vec<Vec<u8>> = vec![
            vec![0u8; 1],
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0u8; 1]].concat(),
            vec![0u8; 9000],
            random.clone(),
        ];
        for j in &junk {
            net.send_to_layer1(j, &tx);
        }
        // Well-formed frames from a non-neighbour: layer 2 may not send to
        // layer 1. Sealed with the real key of the layer-2 node.
        let l2_secrets = loopix_engine::keyfile::load_node_secrets(
            &net.net.nodes[net.l[1]].key_dir,
            net.driver.epoch,
        )
        .expect("keys");
        let l1_link = net.driver.topology.nodes[net.l[0]].link_key;
        let forged_link = loopix_crypto::LinkKey::derive(&l2_secrets.link, &l1_link).expect("key");
        let pkt = net.packet([500, 500, 500], 5);
        let mut forged = vec![0u8; frame_len];
        forged_link
            .seal(net.l[1] as u32, 1, &pkt, &mut forged)
            .expect("sized");
        net.send_to_layer1(&forged, &tx);
        // An unknown sender index, and a bad tag from a real neighbour.
        let mut unknown = good.clone();
        unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
        net.send_to_layer1(&unknown, &tx);
        let mut bad_tag = net.driver.frame_for(net.l[0], &pkt);
        let last = bad_tag.len() - 1;
        bad_tag[last] ^= 1;
        net.send_to_layer1(&bad_tag, &tx);
        // Now the good frame.
        net.send_to_layer1(&good, &tx);
        let got = net.receive(1, Duration::from_secs(3));
        assert_eq!(got.len(), 1, "{io:?}: good packet lost after junk");
        let l1 = &net.mixes[0];
        // The socket filter refuses the four wrong lengths, and the random
        // frame unless its kind byte happens to be a packet's; the kernel's
        // count is read once a second.
        let random_passes = random[0] == loopix_crypto::link::KIND_PACKET;
        let in_kernel = if random_passes { 4.0 } else { 5.0 };
        let deadline = Instant::now() + Duration::from_secs(3);
        while l1.dropped("kernel") < in_kernel && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(l1.dropped("kernel"), in_kernel, "{io:?}");
        assert_eq!(l1.dropped("bad_length") + l1.dropped("bad_frame"), 0.0);
        // Non-neighbour, unknown index, bad tag (and a random frame that
        // passed the filter): refused by the node.
        assert_eq!(
            l1.dropped("unauthenticated"),
            8.0 - in_kernel,
            "{io:?}: non-neighbour, unknown index, bad tag"
        );
        assert_eq!(l1.metric(names::FORWARDED_PACKETS, &[]), 1.0);
    }
}

/// SIGTERM: stops accepting, counts what is queued beyond the drain time,
/// exits 0 within the bound.
#[test]
fn sigterm_exits_zero_within_bound() {
    for io in backends() {
        let mut net = start_net(io, 1);
        // A packet held for 30 s at layer 1: still queued at SIGTERM.
        let pkt = net.packet([30_000_000, 1_000, 1_000], 6);
        let frame = net.driver.frame_for(net.l[0], &pkt);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        net.send_to_layer1(&frame, &tx);
        let l1 = &net.mixes[0];
        let deadline = Instant::now() + Duration::from_secs(2);
        while l1.metric(names::POOL_IN_USE, &[]) < 1.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        // drain_ms is 500: the bound leaves room for start-up noise only.
        let status = net.mixes[0]
            .terminate(Duration::from_secs(3))
            .expect("exits");
        assert!(status.success(), "{io:?}: exit status {status}");
        let log = net.mixes[0].log_text();
        assert!(log.contains("1 dropped at shutdown"), "{io:?}: {log}");
        eprintln!("{io:?}: exited {:?} after SIGTERM", started.elapsed());
        for m in net.mixes.iter_mut().skip(1) {
            assert!(m
                .terminate(Duration::from_secs(3))
                .expect("exits")
                .success());
        }
    }
}

/// Key epochs on a 4-second clock with 1 second of grace: just after a
/// change, the previous epoch's packets and the next epoch's are accepted;
/// once the grace has passed, the previous epoch's are refused (bad_mac)
/// and its filter is freed.
#[test]
fn key_epochs_rotate_with_grace() {
    let epoch_s = 4u64;
    let mut net = start_net_with(LocalNetSpec {
        io: IoChoice::Auto,
        epoch_s,
        grace_s: 1,
        key_epochs: 12,
        ..LocalNetSpec::default()
    });
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
    };
    let filter_bytes = |net: &Net| net.mixes[0].metric(names::REPLAY_FILTER_BYTES, &[]);
    // Wait for the next epoch boundary, plus 0.3 s for the control loop.
    let e1 = (now() / epoch_s as f64).floor() as u64 + 1;
    let boundary = (e1 * epoch_s) as f64;
    std::thread::sleep(Duration::from_secs_f64(boundary - now() + 0.3));
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let send_for = |net: &mut Net, epoch: u64, seed: u64| {
        net.driver.use_epoch(epoch);
        let pkt = net.packet([1_000, 1_000, 1_000], seed);
        let frame = net.driver.frame_for(net.l[0], &pkt);
        net.send_to_layer1(&frame, &tx);
    };
    // In grace: the previous epoch's packet passes; so does the next one's.
    send_for(&mut net, e1 - 1, 10);
    send_for(&mut net, e1 + 1, 11);
    assert_eq!(
        net.receive(2, Duration::from_secs(2)).len(),
        2,
        "previous and next accepted"
    );
    // In grace, three epochs are open: previous, current and next.
    let three_filters = filter_bytes(&net);
    // After the grace: the previous epoch is refused, the current one passes.
    let after_grace = boundary + 1.6;
    std::thread::sleep(Duration::from_secs_f64((after_grace - now()).max(0.0)));
    assert!(
        now() < boundary + epoch_s as f64 - 0.5,
        "test machine too slow for the epoch clock"
    );
    send_for(&mut net, e1 - 1, 12);
    send_for(&mut net, e1, 13);
    send_for(&mut net, e1 + 1, 14);
    let got = net.receive(3, Duration::from_secs(1));
    assert_eq!(got.len(), 2, "the current and next epochs' packets pass");
    let l1 = &net.mixes[0];
    assert_eq!(l1.dropped("bad_mac"), 1.0, "{}", l1.log_text());
    // The retired epoch's key and filter file are gone from the disk (a
    // later seizure decrypts nothing of it); the current and next stay.
    let keys = &net.net.nodes[net.l[0]].key_dir;
    let filter = |e: u64| {
        keys.join("state")
            .join("replay")
            .join(format!("epoch-{e}.bloom"))
    };
    assert!(!keys.join(format!("mix-{}.key", e1 - 1)).exists());
    assert!(!filter(e1 - 1).exists());
    for e in [e1, e1 + 1] {
        assert!(keys.join(format!("mix-{e}.key")).exists(), "key {e}");
        assert!(filter(e).exists(), "filter {e}");
    }
    assert_eq!(l1.metric(names::RETIRED_KEYS_DELETED, &[]), 1.0);
    assert!(l1.metric(names::FUTURE_KEYS, &[]) >= 3.0);
    // The previous epoch's filter was freed: current and next remain.
    let two_filters = filter_bytes(&net);
    assert!(two_filters > 0.0);
    assert_eq!(three_filters, two_filters * 1.5, "retired filter freed");
}
