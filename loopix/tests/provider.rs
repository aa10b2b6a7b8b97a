//! Multi-process tests of `loopix provider` on loopback: constant-size pull
//! answers, acknowledgement semantics, durability across SIGKILL, bad input
//! (each counted by reason while good clients are still served), a corrupt
//! inbox at start, the register / unregister / clients commands, and that
//! a pull's answer time does not reveal what the previous answer held.
//!
//! The test plays the last-layer mix (it holds that mix's keys through
//! `localnet`) to put packets in the inbox, and the clients to pull them.
//! Every wait is bounded; every child is killed when its guard drops.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use loopix_client::Registration;
use loopix_crypto::access::{
    delivery_frame_len, open_delivery, pull_frame_len, seal_client_packet, PullRequest,
};
use loopix_crypto::{Delay, Geometry, LinkKey, MailboxId, RouteKey, SecretKey};
use loopix_engine::config::IoChoice;
use loopix_engine::metrics::names;
use loopix_testkit::localnet::{free_tcp_addr, Driver, LocalNet, LocalNetSpec, NetworkParams};
use loopix_testkit::process::{NodeProcess, START_BOUND};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const G: Geometry = Geometry::DEFAULT;
const K: u16 = 4;

/// `loopix provider --config config`, up when its metrics answer; each
/// start logs to a file of its own, so a restart keeps the first log.
fn start_provider(config: &Path, metrics: SocketAddr) -> NodeProcess {
    let log = config.with_extension(format!(
        "{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    ));
    let config = config.to_string_lossy();
    let bin = Path::new(env!("CARGO_BIN_EXE_loopix"));
    let args = ["provider", "--config", &config];
    let mut p = NodeProcess::spawn("provider", bin, &args, &log).expect("start loopix provider");
    p.wait_up(metrics, START_BOUND)
        .unwrap_or_else(|e| panic!("{e}"));
    p
}

/// Start the provider of `net` again on the same data directory, with a
/// fresh metrics port (the old one may linger).
fn restart_provider(net: &LocalNet, config: &Path) -> NodeProcess {
    let metrics = free_tcp_addr().expect("port");
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text.replace(
        &format!("[metrics]\nlisten = \"{}\"", net.nodes[0].metrics),
        &format!("[metrics]\nlisten = \"{metrics}\""),
    );
    std::fs::write(config, text).expect("write config");
    start_provider(config, metrics)
}

fn spec() -> LocalNetSpec {
    LocalNetSpec {
        providers: 1,
        layers: 1,
        mixes_per_layer: 1,
        io: IoChoice::Portable,
        params: NetworkParams {
            pull_frames: K,
            ..LocalNetSpec::default().params
        },
        ..LocalNetSpec::default()
    }
}

fn provider_config(net: &LocalNet) -> PathBuf {
    net.nodes[0].config.clone().expect("providers have configs")
}

fn loopix(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(args)
        .output()
        .expect("run loopix");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn register(config: &Path, name: &str) -> Registration {
    let (code, out, err) = loopix(&[
        "provider",
        "register",
        "--config",
        config.to_str().expect("utf-8"),
        "--name",
        name,
    ]);
    assert_eq!(code, 0, "{err}");
    Registration::parse(&out).expect("a registration")
}

/// The test as the last-layer mix: delivers packets to the provider.
struct LastMix {
    driver: Driver,
    socket: UdpSocket,
    provider: SocketAddr,
    recipient: RouteKey,
    rng: ChaCha20Rng,
}

impl LastMix {
    fn new(net: &LocalNet) -> LastMix {
        let mix = net.layer(1)[0];
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let recipient =
            RouteKey::new(&SecretKey::generate(&mut rng).public_key()).expect("a valid key");
        LastMix {
            recipient,
            driver: Driver::new(net, mix).expect("driver"),
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind"),
            provider: net.nodes[0].address,
            rng,
        }
    }

    fn deliver(&mut self, mailbox: MailboxId, n: usize) {
        for _ in 0..n {
            self.deliver_after(mailbox, Delay::ZERO);
        }
    }

    /// One packet whose `Deliver` hop asks the provider to hold it `delay`.
    fn deliver_after(&mut self, mailbox: MailboxId, delay: Delay) {
        {
            let packet = self
                .driver
                .build_delivery_after(0, mailbox, &self.recipient, b"hello", delay, &mut self.rng)
                .expect("build");
            let f = self.driver.frame_for(0, &packet);
            self.socket.send_to(&f, self.provider).expect("send");
        }
    }

    /// Cover traffic ending at the provider.
    fn send_cover(&mut self) {
        let packet = self
            .driver
            .build_drop_path(&[0], &[], &mut self.rng)
            .expect("build");
        let f = self.driver.frame_for(0, &packet);
        self.socket.send_to(&f, self.provider).expect("send");
    }
}

/// The test as a client pulling from its provider.
struct Client {
    reg: Registration,
    key: LinkKey,
    socket: UdpSocket,
    counter: u64,
    request_id: u64,
    /// The provider's counter on the first frame of the last answer.
    answer_counter: u64,
    /// The rates digest its pulls announce.
    rates: [u8; 8],
}

/// The rates digest of the network's clients.
fn network_rates() -> [u8; 8] {
    spec().network().client_rates().digest()
}

/// One answer: per frame, the message id and packet of a real one.
type Answer = Vec<Option<(u64, Vec<u8>)>>;

impl Client {
    fn new(reg: Registration) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        Client {
            key: LinkKey::from_bytes(&reg.access_key),
            reg,
            socket,
            counter: 1,
            request_id: 100,
            answer_counter: 0,
            rates: network_rates(),
        }
    }

    /// Send a pull for `mailbox` as `slot` under `key` (for bad input);
    /// returns the instant just before the sealed frame went to the socket.
    fn send_pull_as(
        &mut self,
        key: &LinkKey,
        slot: u32,
        mailbox: MailboxId,
        acks: &[u64],
    ) -> Instant {
        let mut frame = vec![0u8; pull_frame_len(&G)];
        self.request_id += 1;
        PullRequest {
            request_id: self.request_id,
            mailbox,
            rates: self.rates,
            acks: acks.to_vec(),
        }
        .seal(&G, key, slot, self.counter, &mut frame)
        .expect("seal");
        self.counter += 1;
        let sent = Instant::now();
        self.socket
            .send_to(&frame, self.reg.provider_address)
            .expect("send");
        sent
    }

    /// Pull with `acks`; the answer must be exactly K frames of one length,
    /// real ones first, and nothing more may follow it.
    fn pull(&mut self, acks: &[u64]) -> Answer {
        let (answer, _) = self.pull_timed(acks);
        // Nothing more arrives for this pull.
        let mut buf = vec![0u8; 4096];
        self.socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        assert!(
            self.socket.recv_from(&mut buf).is_err(),
            "more than K frames"
        );
        self.socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        answer
    }

    /// Pull with `acks`: the answer (exactly K frames of one length, real
    /// ones first) and the time from just before the pull went to the
    /// socket to the arrival of its K-th frame. It does not wait to see that
    /// nothing more follows ([`Client::pull`] does); a stray frame would
    /// fail the next pull's request-id check.
    fn pull_timed(&mut self, acks: &[u64]) -> (Answer, Duration) {
        let key = LinkKey::from_bytes(&self.reg.access_key);
        let sent = self.send_pull_as(&key, self.reg.slot, self.reg.mailbox, acks);
        let mut answer: Answer = Vec::new();
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = sent;
        while answer.len() < usize::from(K) {
            assert!(Instant::now() < deadline, "only {} frames", answer.len());
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            last = Instant::now();
            assert_eq!(from, self.reg.provider_address, "answer from the provider");
            assert_eq!(n, delivery_frame_len(&G), "every frame has one length");
            let (header, d) =
                open_delivery(&G, &self.key, self.reg.slot, &mut buf[..n]).expect("authentic");
            assert_eq!(d.request_id, self.request_id);
            assert_eq!((d.index as usize, d.k), (answer.len(), K));
            if d.index == 0 {
                self.answer_counter = header.counter;
            }
            answer.push(d.message.map(|(id, p)| (id, p.to_vec())));
        }
        let real = answer.iter().filter(|m| m.is_some()).count();
        assert!(
            answer[..real].iter().all(|m| m.is_some()),
            "real messages first"
        );
        (answer, last.duration_since(sent))
    }
}

fn ids(a: &Answer) -> Vec<u64> {
    a.iter().flatten().map(|(id, _)| *id).collect()
}

#[test]
fn constant_pulls_and_acknowledgements() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let reg = register(&config, "alice");
    let p = start_provider(&config, net.nodes[0].metrics);
    let mut mix = LastMix::new(&net);
    let mut alice = Client::new(reg.clone());

    // Empty inbox: K dummies.
    assert!(ids(&alice.pull(&[])).is_empty());

    // Some: real first, and again in the next answer until acknowledged.
    mix.deliver(reg.mailbox, 2);
    p.wait_metric(names::INBOX_STORED, &[], 2.0);
    let first = alice.pull(&[]);
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 2);
    assert_eq!(ids(&alice.pull(&[])), first_ids, "not acknowledged yet");
    let packets: HashSet<Vec<u8>> = first.iter().flatten().map(|(_, p)| p.clone()).collect();
    assert_eq!(packets.len(), 2);
    assert!(packets.iter().all(|p| p.len() == G.packet_len()));

    // More than K: every answer is K frames; acknowledged ones never return.
    mix.deliver(reg.mailbox, 5);
    p.wait_metric(names::INBOX_STORED, &[], 7.0);
    let mut acked: HashSet<u64> = HashSet::new();
    let mut to_ack = first_ids.clone();
    let mut seen = 0;
    for _ in 0..10 {
        let a = alice.pull(&to_ack);
        acked.extend(to_ack.iter().copied());
        let got = ids(&a);
        assert!(got.iter().all(|id| !acked.contains(id)), "acked came back");
        if got.is_empty() {
            break;
        }
        seen += got.len();
        to_ack = got;
    }
    assert_eq!(seen, 5, "each of the later 5 delivered, then none");
    // Acknowledgements reach the writer on the shard's 100 ms clock.
    assert_eq!(p.wait_metric(names::INBOX_ACKED, &[], 7.0), 7.0);
    assert_eq!(p.metric(names::INBOX_MESSAGES, &[]), 0.0);
    let pulls = p.metric(names::PULLS, &[]);
    assert_eq!(p.metric(names::PULL_FRAMES, &[]), pulls * f64::from(K));
}

/// The egress provider is a mixing hop: it holds a `Deliver` packet for the
/// delay its sender drew before storing it. And what a client sees tells it
/// nothing of other clients: its delivery counters advance by K per answer
/// to it alone, and message ids are not a sequence.
#[test]
fn deliveries_wait_their_delay_and_clients_see_only_their_own_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let alice_reg = register(&config, "alice");
    let bob_reg = register(&config, "bob");
    let p = start_provider(&config, net.nodes[0].metrics);
    let mut mix = LastMix::new(&net);
    let mut alice = Client::new(alice_reg.clone());
    let mut bob = Client::new(bob_reg.clone());

    let sent = Instant::now();
    mix.deliver_after(alice_reg.mailbox, Delay::from_micros(400_000));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        p.metric(names::INBOX_STORED, &[]),
        0.0,
        "stored before its delay"
    );
    p.wait_metric(names::INBOX_STORED, &[], 1.0);
    let held = sent.elapsed();
    assert!(held >= Duration::from_millis(390), "held {held:?}");

    // Alice pulls (her message), then Bob receives ten and pulls often.
    assert_eq!(ids(&alice.pull(&[])).len(), 1);
    let before = alice.answer_counter;
    mix.deliver(bob_reg.mailbox, 10);
    p.wait_metric(names::INBOX_STORED, &[], 11.0);
    let mut bob_ids = Vec::new();
    let mut acks = Vec::new();
    for _ in 0..6 {
        let got = ids(&bob.pull(&acks));
        bob_ids.extend(got.iter().copied());
        acks = got;
    }
    assert_eq!(bob_ids.len(), 10, "{bob_ids:?}");
    assert_eq!(ids(&alice.pull(&[])).len(), 1, "not acknowledged yet");
    assert_eq!(
        alice.answer_counter,
        before + u64::from(K),
        "Alice's counter moved by her own answer only, not by Bob's six"
    );
    // Ids stored one after another are not consecutive numbers.
    let consecutive = bob_ids
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    assert!(consecutive <= 1, "sequential ids: {bob_ids:?}");
}

#[test]
fn stored_packets_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let reg = register(&config, "bob");
    let p = start_provider(&config, net.nodes[0].metrics);

    // A stream of deliveries from another thread while we watch the count.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let mut mix = LastMix::new(&net);
        let mailbox = reg.mailbox;
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 20_000 {
                mix.deliver(mailbox, 1);
                sent += 1;
                if sent % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let stored = p.wait_metric(names::INBOX_STORED, &[], 300.0);
    let mut p = p;
    p.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    drop(p);

    let p = restart_provider(&net, &config);
    let mut bob = Client::new(reg);
    let mut acked: HashSet<u64> = HashSet::new();
    let mut packets: HashSet<Vec<u8>> = HashSet::new();
    let mut to_ack: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "inbox did not empty");
        let a = bob.pull(&to_ack);
        acked.extend(to_ack.iter().copied());
        if a.iter().all(|m| m.is_none()) {
            break;
        }
        to_ack.clear();
        for (id, packet) in a.into_iter().flatten() {
            assert!(!acked.contains(&id), "message {id} came back after its ack");
            assert!(packets.insert(packet), "a packet delivered twice");
            to_ack.push(id);
        }
    }
    assert!(
        packets.len() as f64 >= stored,
        "{} messages after restart, {stored} were counted stored before SIGKILL",
        packets.len()
    );
    // The last acknowledgements reach the writer within 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.metric(names::INBOX_MESSAGES, &[]) != 0.0 {
        assert!(Instant::now() < deadline, "acknowledged messages stay");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Acknowledgements are committed after the answer: a provider killed in
/// between offers those messages again after its restart, under the same
/// ids (the client drops a repeat by id), and loses none.
#[test]
fn acknowledgements_lost_in_a_crash_repeat_messages_under_their_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let reg = register(&config, "carol");
    let mut p = start_provider(&config, net.nodes[0].metrics);
    let mut mix = LastMix::new(&net);
    let mut carol = Client::new(reg.clone());
    mix.deliver(reg.mailbox, 3);
    p.wait_metric(names::INBOX_STORED, &[], 3.0);
    let first = carol.pull(&[]);
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 3);
    // Acknowledge them and kill the provider at once: the answer hides
    // them, their removal may not be durable yet.
    let (answer, _) = carol.pull_timed(&first_ids);
    assert!(
        ids(&answer).is_empty(),
        "acknowledged ids are hidden at once"
    );
    p.kill();
    drop(p);

    let p = restart_provider(&net, &config);
    let again = carol.pull(&[]);
    let again_ids = ids(&again);
    assert!(
        again_ids.is_empty() || again_ids == first_ids,
        "after the crash: nothing or the same messages under the same ids, got {again_ids:?} \
         for {first_ids:?}"
    );
    let same_bytes = again
        .iter()
        .flatten()
        .all(|m| first.contains(&Some(m.clone())));
    assert!(same_bytes, "a repeated id carries the same packet");
    if !again_ids.is_empty() {
        assert!(ids(&carol.pull(&again_ids)).is_empty());
    }
    p.wait_metric(names::INBOX_ACKED, &[], again_ids.len() as f64);
    assert_eq!(p.metric(names::INBOX_MESSAGES, &[]), 0.0);
    eprintln!(
        "after SIGKILL: {} of 3 acknowledged messages offered again",
        again_ids.len()
    );
}

/// A pull captured on the client's link before the provider restarts
/// (SIGTERM, same data directory) is refused after it, from any address:
/// the provider answers it with nothing and counts a link replay. The
/// client's next pull is answered at once.
#[test]
fn a_pull_captured_before_a_restart_is_refused_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let reg = register(&config, "carol");
    let mut p = start_provider(&config, net.nodes[0].metrics);
    let mut carol = Client::new(reg.clone());
    let mut captured = vec![0u8; pull_frame_len(&G)];
    PullRequest {
        request_id: 7,
        mailbox: reg.mailbox,
        rates: network_rates(),
        acks: vec![],
    }
    .seal(
        &G,
        &LinkKey::from_bytes(&reg.access_key),
        reg.slot,
        50,
        &mut captured,
    )
    .expect("seal");
    carol.counter = 51;
    let observer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    observer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = vec![0u8; 4096];
    observer
        .send_to(&captured, reg.provider_address)
        .expect("send");
    assert!(
        observer.recv_from(&mut buf).is_ok(),
        "the original is answered"
    );
    assert!(p
        .terminate(Duration::from_secs(5))
        .expect("exits")
        .success());

    let p = restart_provider(&net, &config);
    let replayer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    replayer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    replayer
        .send_to(&captured, reg.provider_address)
        .expect("send");
    assert!(
        replayer.recv_from(&mut buf).is_err(),
        "a replayed pull was answered"
    );
    p.wait_metric(names::DROPPED, &[("reason", "link_replay")], 1.0);
    assert_eq!(p.dropped("link_replay"), 1.0);
    assert_eq!(p.metric(names::PULLS, &[]), 0.0);
    assert_eq!(
        carol.pull(&[]).len(),
        usize::from(K),
        "a fresh pull is answered"
    );
}

#[test]
fn bad_input_is_counted_and_good_clients_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(
        dir.path(),
        &LocalNetSpec {
            max_messages_per_client: 3,
            ..spec()
        },
    )
    .expect("lay out");
    let config = provider_config(&net);
    let a_reg = register(&config, "a");
    let b_reg = register(&config, "b");
    let p = start_provider(&config, net.nodes[0].metrics);
    let mut a = Client::new(a_reg.clone());
    let mut b = Client::new(b_reg.clone());
    let wait_dropped = |reason: &str| p.wait_metric(names::DROPPED, &[("reason", reason)], 1.0);

    // Unknown slot.
    a.send_pull_as(&LinkKey::from_bytes(&[1; 16]), 999, a_reg.mailbox, &[]);
    wait_dropped("unknown_client");
    // Wrong access key for a registered slot.
    a.send_pull_as(
        &LinkKey::from_bytes(&[2; 16]),
        a_reg.slot,
        a_reg.mailbox,
        &[],
    );
    wait_dropped("client_unauthenticated");
    // Another client's mailbox.
    let key_a = LinkKey::from_bytes(&a_reg.access_key);
    a.send_pull_as(&key_a, a_reg.slot, b_reg.mailbox, &[]);
    wait_dropped("pull_wrong_mailbox");

    // Quota: 3 messages per client; 5 sent, 2 refused and counted.
    let mut mix = LastMix::new(&net);
    mix.deliver(a_reg.mailbox, 5);
    p.wait_metric(names::INBOX_REFUSED, &[("reason", "count_quota")], 2.0);
    assert_eq!(p.metric(names::INBOX_STORED, &[]), 3.0);
    // Cover is discarded and counted, not stored.
    mix.send_cover();
    p.wait_metric(names::COVER_DISCARDED, &[], 1.0);

    // Client packets: a Relay to the first layer is forwarded; anything
    // else from a client is a bad command; an unknown slot is dropped first.
    let relay = mix
        .driver
        .build_drop_path(&[0, 1], &[0], &mut mix.rng)
        .expect("build");
    let deliver = mix
        .driver
        .build_delivery(0, a_reg.mailbox, &mix.recipient, b"x", &mut mix.rng)
        .expect("build");
    let mut frame = vec![0u8; G.frame_len()];
    a.counter += 1;
    seal_client_packet(&key_a, a_reg.slot, a.counter - 1, &relay, &mut frame).expect("seal");
    a.socket
        .send_to(&frame, a_reg.provider_address)
        .expect("send");
    p.wait_metric(names::FORWARDED_PACKETS, &[], 1.0);
    a.counter += 1;
    seal_client_packet(&key_a, a_reg.slot, a.counter - 1, &deliver, &mut frame).expect("seal");
    a.socket
        .send_to(&frame, a_reg.provider_address)
        .expect("send");
    wait_dropped("bad_command");
    seal_client_packet(&key_a, 77, 1, &relay, &mut frame).expect("seal");
    a.socket
        .send_to(&frame, a_reg.provider_address)
        .expect("send");
    p.wait_metric(names::DROPPED, &[("reason", "unknown_client")], 2.0);

    // Everyone is still served.
    assert_eq!(ids(&a.pull(&[])).len(), 3);
    mix.deliver(b_reg.mailbox, 1);
    p.wait_metric(names::INBOX_STORED, &[], 4.0);
    assert_eq!(ids(&b.pull(&[])).len(), 1);
    assert_eq!(p.metric(names::REGISTERED_CLIENTS, &[]), 2.0);
}

/// A client that announces rates other than its network's is refused: the
/// pull, and its packets until a pull announces the network's rates. A
/// document that allows overrides serves it.
#[test]
fn a_client_with_altered_rates_is_refused_by_its_provider() {
    for allow in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec();
        spec.params.allow_rate_overrides = allow;
        let net = LocalNet::create(dir.path(), &spec).expect("lay out");
        let config = provider_config(&net);
        let reg = register(&config, "fast");
        let p = start_provider(&config, net.nodes[0].metrics);
        let mut fast = Client::new(reg.clone());
        let mut rates = spec.network().client_rates();
        rates.lambda_p *= 2.0;
        fast.rates = rates.digest();
        let mut mix = LastMix::new(&net);
        let relay = mix
            .driver
            .build_drop_path(&[0, 1], &[0], &mut mix.rng)
            .expect("build");
        let mut frame = vec![0u8; G.frame_len()];
        let mut send_relay = |c: &mut Client| {
            c.counter += 1;
            seal_client_packet(&c.key, c.reg.slot, c.counter - 1, &relay, &mut frame)
                .expect("seal");
            c.socket
                .send_to(&frame, c.reg.provider_address)
                .expect("send");
        };
        let refused = |n: f64| p.wait_metric(names::DROPPED, &[("reason", "client_rates")], n);
        if allow {
            assert_eq!(fast.pull(&[]).len(), usize::from(K), "allowed: answered");
            send_relay(&mut fast);
            p.wait_metric(names::FORWARDED_PACKETS, &[], 1.0);
            assert_eq!(p.metric(names::DROPPED, &[("reason", "client_rates")]), 0.0);
            continue;
        }
        let key = LinkKey::from_bytes(&reg.access_key);
        fast.send_pull_as(&key, reg.slot, reg.mailbox, &[]);
        refused(1.0);
        let mut buf = vec![0u8; 4096];
        assert!(fast.socket.recv_from(&mut buf).is_err(), "no answer");
        send_relay(&mut fast);
        refused(2.0);
        assert_eq!(p.metric(names::FORWARDED_PACKETS, &[]), 0.0);
        // Back to the network's rates: served again.
        fast.rates = network_rates();
        assert_eq!(fast.pull(&[]).len(), usize::from(K));
        send_relay(&mut fast);
        p.wait_metric(names::FORWARDED_PACKETS, &[], 1.0);
        assert_eq!(p.metric(names::DROPPED, &[("reason", "client_rates")]), 2.0);
    }
}

#[test]
fn start_up_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let cfg = config.to_str().expect("utf-8");

    // A provider config run as a mix, and a mix config run as a provider.
    let (code, _, err) = loopix(&["mix", "--config", cfg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("loopix provider"), "{err}");
    let mix_cfg = net.nodes[1].config.clone().expect("mix config");
    let (code, _, err) = loopix(&["provider", "--config", mix_cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("[provider]"), "{err}");
    // A provider section on a node the topology lists as a mix.
    let as_provider = dir.path().join("mix-as-provider.toml");
    let text = std::fs::read_to_string(&mix_cfg).expect("read");
    std::fs::write(
        &as_provider,
        format!("{text}\n[provider]\ndata_dir = \"x\"\n"),
    )
    .expect("write");
    let (code, _, err) = loopix(&["provider", "--config", as_provider.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a provider"), "{err}");

    // A corrupt inbox file: exit 1 naming the file.
    let data_dir = net.nodes[0].data_dir.clone().expect("data dir");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    let inbox = data_dir.join("inbox.redb");
    std::fs::write(&inbox, vec![0x5a; 8192]).expect("write garbage");
    let (code, _, err) = loopix(&["provider", "--config", cfg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&inbox.display().to_string()), "{err}");
}

#[test]
fn register_unregister_clients_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let cfg = config.to_str().expect("utf-8");
    let p = start_provider(&config, net.nodes[0].metrics);
    assert_eq!(p.metric(names::REGISTERED_CLIENTS, &[]), 0.0);

    let out = dir.path().join("carol.toml");
    let (code, stdout, err) = loopix(&[
        "provider",
        "register",
        "--config",
        cfg,
        "--name",
        "carol",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.is_empty(), "the registration went to --out");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let reg = Registration::parse(&std::fs::read_to_string(&out).expect("read")).expect("parse");
    assert_eq!(reg.slot, 0);
    assert_eq!(reg.provider_address, net.nodes[0].address);

    let (code, list, err) = loopix(&["provider", "clients", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list, format!("0\tcarol\t{}\n", reg.mailbox));

    // The running provider picks the client up within a couple of seconds.
    p.wait_metric(names::REGISTERED_CLIENTS, &[], 1.0);
    // The gauge moves when the inbox writer has sent the shards the new
    // table; they apply it between batches (within their 20 ms idle wait).
    std::thread::sleep(Duration::from_millis(200));
    let mut carol = Client::new(reg.clone());
    assert_eq!(carol.pull(&[]).len(), usize::from(K));

    let (code, _, err) = loopix(&["provider", "unregister", "--config", cfg, "--slot", "0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = loopix(&["provider", "unregister", "--config", cfg, "--slot", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("slot 0"), "{err}");
    let (_, list, _) = loopix(&["provider", "clients", "--config", cfg]);
    assert!(list.is_empty(), "{list}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.metric(names::REGISTERED_CLIENTS, &[]) != 0.0 {
        assert!(Instant::now() < deadline, "unregistration not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Its pulls are now unknown-client drops.
    let key = LinkKey::from_bytes(&reg.access_key);
    carol.send_pull_as(&key, reg.slot, reg.mailbox, &[]);
    p.wait_metric(names::DROPPED, &[("reason", "unknown_client")], 1.0);
}

/// The `q`-quantile (nearest rank) of sorted `xs`.
fn quantile(xs: &[f64], q: f64) -> f64 {
    let i = ((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len());
    xs[i - 1]
}

/// The time a provider takes to answer a pull must not tell an observer
/// (the client's network, or anyone timing its link) whether the previous
/// answer held real messages. Two conditions, in a shuffled order so that
/// machine noise hits both alike, each pull spaced so that nothing queues,
/// and each measured pull preceded by the same work at the provider (K
/// packets stored, an unmeasured pull), so that only the condition differs:
///
/// - A, "empty": the K packets went to another client; the inbox is empty
///   and the pull carries no acknowledgements;
/// - B, "full, previous acked": the K packets were this client's, handed
///   out by the unmeasured pull; the measured pull acknowledges them.
///
/// Both measured answers are K dummies, so only their timing can differ.
/// The pull-to-answer delay (from just before the pull is sent to the
/// arrival of the K-th frame) of the two must not be told apart by a
/// two-sample Kolmogorov–Smirnov test at α = 0.01.
#[test]
fn pull_answer_time_does_not_reveal_the_inbox() {
    const PAIRS: usize = 250;
    const GAP: Duration = Duration::from_millis(20);
    const ALPHA: f64 = 0.01;

    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &spec()).expect("lay out");
    let config = provider_config(&net);
    let reg = register(&config, "alice");
    let bob = register(&config, "bob");
    let p = start_provider(&config, net.nodes[0].metrics);
    let mut mix = LastMix::new(&net);
    let mut alice = Client::new(reg.clone());

    // Warm up both paths (first redb transactions, caches, the socket).
    for _ in 0..5 {
        alice.pull_timed(&[]);
        std::thread::sleep(GAP);
    }

    // Both conditions in a shuffled order, each measured pull preceded by
    // the same work at the provider: K packets delivered and stored (to
    // Alice before a "full" turn, to Bob before an "empty" one), then an
    // unmeasured pull by Alice, each a pause apart.
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut turns: Vec<bool> = (0..2 * PAIRS).map(|i| i % 2 == 0).collect();
    for i in (1..turns.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        turns.swap(i, j);
    }
    let mut empty: Vec<f64> = Vec::with_capacity(PAIRS);
    let mut full: Vec<f64> = Vec::with_capacity(PAIRS);
    let mut stored = 0.0;
    let started = Instant::now();
    for full_turn in turns {
        let mailbox = if full_turn { reg.mailbox } else { bob.mailbox };
        mix.deliver(mailbox, usize::from(K));
        stored += f64::from(K);
        p.wait_metric(names::INBOX_STORED, &[], stored);
        std::thread::sleep(GAP);
        let (held, _) = alice.pull_timed(&[]);
        let acks = ids(&held);
        let want = if full_turn { usize::from(K) } else { 0 };
        assert_eq!(acks.len(), want, "what Alice's inbox holds");
        std::thread::sleep(GAP);
        // Measured: "full" acknowledges what the last answer held; "empty"
        // pulls an empty inbox with nothing to acknowledge.
        let (answer, t) = alice.pull_timed(&acks);
        assert!(ids(&answer).is_empty(), "nothing left for Alice");
        let sample = t.as_secs_f64() * 1e6;
        if full_turn {
            full.push(sample);
        } else {
            empty.push(sample);
        }
        std::thread::sleep(GAP);
    }
    // Acknowledgements reach the writer on the shard's own clock (every
    // 100 ms), after the answers: wait for the last ones. Bob's stay.
    let acked = PAIRS as f64 * f64::from(K);
    assert_eq!(p.wait_metric(names::INBOX_ACKED, &[], acked), acked);
    assert_eq!(p.metric(names::INBOX_MESSAGES, &[]), stored - acked);

    let d = loopix_tuning::model::ks_two_sample(&mut empty, &mut full);
    let (na, nb) = (empty.len() as f64, full.len() as f64);
    let pv = loopix_tuning::model::ks_p_value(d, na * nb / (na + nb));
    let report = format!(
        "pull-to-answer delay, n = {} + {} in {:.1} s: KS D = {d:.3}, p = {pv:.3e}; \
         empty: median {:.0} us, p90 {:.0} us; full, previous acked: median {:.0} us, p90 {:.0} us",
        empty.len(),
        full.len(),
        started.elapsed().as_secs_f64(),
        quantile(&empty, 0.5),
        quantile(&empty, 0.9),
        quantile(&full, 0.5),
        quantile(&full, 0.9),
    );
    eprintln!("{report}");
    assert!(
        pv >= ALPHA,
        "the answer time tells an empty inbox from an acknowledged one: {report}"
    );
}
