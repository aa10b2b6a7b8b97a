//! The driver against a fake provider on 127.0.0.1: a thread with a UDP
//! socket that authenticates the client's frames with its access key,
//! routes its packets hop by hop with real Sphinx keys (one provider, one
//! layer of one mix), stores what is delivered, and answers every pull with
//! exactly `K` delivery frames. Checked: a message of several fragments is
//! delivered whole once, acknowledged in the next pull and not handled
//! again when delivered again; loops come back; a SURB reply goes out
//! through the driver; counters are strictly increasing across packets and
//! pulls; bad frames (wrong key, wrong kind, replayed counter, wrong length,
//! wrong source) are counted and ignored. Every test is bounded in time and
//! stops its thread by itself.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loopix_client::driver::{self, Driver, Flow};
use loopix_client::{
    Address, Client, ClientLimits, ClientTopology, Event, NodeInfo, Rates, Registration,
};
use loopix_crypto::access::{self, PullRequest};
use loopix_crypto::link::{FrameHeader, KIND_CLIENT_PACKET, KIND_PACKET, KIND_PULL};
use loopix_crypto::{
    sphinx, Geometry, LinkKey, MailboxId, NodeId, RouteKey, RoutingCommand, SecretKey,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const G: Geometry = Geometry::DEFAULT;
/// Frames in every pull answer.
const K: u16 = 8;
const SLOT: u32 = 7;
const ACCESS_KEY: [u8; 16] = [5; 16];

/// One provider and one mix, with their secrets.
struct Net {
    topology: Arc<ClientTopology>,
    secrets: HashMap<NodeId, SecretKey>,
    provider: NodeId,
}

impl Net {
    fn new(rng: &mut ChaCha20Rng) -> Net {
        let mut secrets = HashMap::new();
        let mut node = |id: u8| {
            let sk = SecretKey::generate(rng);
            let info = NodeInfo {
                id: NodeId([id; 16]),
                key: Arc::new(RouteKey::new(&sk.public_key()).expect("honest key")),
            };
            secrets.insert(info.id, sk);
            info
        };
        let provider = node(1);
        let mix = node(2);
        Net {
            provider: provider.id,
            topology: Arc::new(ClientTopology {
                providers: vec![provider],
                layers: vec![vec![mix]],
            }),
            secrets,
        }
    }

    /// Route a packet from the provider, every hop for real and at once:
    /// the mailbox and packet it is delivered with, or `None` for a drop.
    fn route(&self, mut packet: Vec<u8>) -> Option<(MailboxId, Vec<u8>)> {
        let mut at = self.provider;
        for _ in 0..8 {
            let sk = self.secrets.get(&at)?;
            match sphinx::process(&G, sk, &mut packet).ok()?.command {
                RoutingCommand::Relay { next, .. } => at = next,
                RoutingCommand::Deliver { mailbox } => return Some((mailbox, packet)),
                _ => return None,
            }
        }
        None
    }
}

/// What the fake provider saw and holds.
#[derive(Default)]
struct State {
    /// Stored messages by mailbox, by message id.
    mailboxes: HashMap<MailboxId, BTreeMap<u64, Vec<u8>>>,
    next_id: u64,
    client_packets: u64,
    pulls: u64,
    acks: Vec<u64>,
    /// Frame counters of the client, in arrival order.
    counters: Vec<u64>,
    /// Frames that failed to authenticate or parse.
    bad_client_frames: u64,
    /// Answer this many first pulls without deleting acked messages (an
    /// ack lost on the way, as far as the client can tell).
    ignore_acks_pulls: u64,
    /// Send the bad frames after the answer to the first pull.
    inject_bad: bool,
}

impl State {
    fn store(&mut self, mailbox: MailboxId, packet: Vec<u8>) {
        self.next_id += 1;
        let id = self.next_id;
        self.mailboxes
            .entry(mailbox)
            .or_default()
            .insert(id, packet);
    }
}

struct FakeProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Stops and joins the thread, also when a test fails.
impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FakeProvider {
    fn start(net: Arc<Net>, state: State) -> FakeProvider {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || serve(&socket, &net, &state, &stop))
        };
        FakeProvider {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(socket: &UdpSocket, net: &Net, state: &Mutex<State>, stop: &AtomicBool) {
    let key = LinkKey::from_bytes(&ACCESS_KEY);
    let mut counter = 1u64;
    let mut buf = vec![0u8; 2048];
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // A failed test may have poisoned the lock: keep serving anyway.
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let frame = &mut buf[..n];
        let Ok(h) = FrameHeader::peek(frame) else {
            st.bad_client_frames += 1;
            continue;
        };
        if h.sender != SLOT {
            st.bad_client_frames += 1;
            continue;
        }
        match h.kind {
            KIND_CLIENT_PACKET => {
                let Ok((h, packet)) = key.open(frame) else {
                    st.bad_client_frames += 1;
                    continue;
                };
                st.counters.push(h.counter);
                st.client_packets += 1;
                if let Some((mailbox, p)) = net.route(packet.to_vec()) {
                    st.store(mailbox, p);
                }
            }
            KIND_PULL => {
                let Ok((h, body)) = key.open_in_place(frame) else {
                    st.bad_client_frames += 1;
                    continue;
                };
                let Ok(req) = PullRequest::parse(body) else {
                    st.bad_client_frames += 1;
                    continue;
                };
                st.counters.push(h.counter);
                st.pulls += 1;
                st.acks.extend(&req.acks);
                let ignore = st.pulls <= st.ignore_acks_pulls;
                let inbox = st.mailboxes.entry(req.mailbox).or_default();
                if !ignore {
                    for id in &req.acks {
                        inbox.remove(id);
                    }
                }
                let real: Vec<(u64, Vec<u8>)> = inbox
                    .iter()
                    .take(K as usize)
                    .map(|(id, p)| (*id, p.clone()))
                    .collect();
                let mut first = None;
                for i in 0..K {
                    let mut out = vec![0u8; access::delivery_frame_len(&G)];
                    let msg = real.get(i as usize).map(|(id, p)| (*id, &p[..]));
                    access::seal_delivery(
                        &G,
                        &key,
                        SLOT,
                        counter,
                        req.request_id,
                        i,
                        K,
                        msg,
                        &mut out,
                    )
                    .expect("sized");
                    counter += 1;
                    let _ = socket.send_to(&out, from);
                    first.get_or_insert(out);
                }
                if st.inject_bad && st.pulls == 1 {
                    let mut out = vec![0u8; access::delivery_frame_len(&G)];
                    // Wrong key, fresh counter.
                    let other = LinkKey::from_bytes(&[6; 16]);
                    access::seal_delivery(
                        &G,
                        &other,
                        SLOT,
                        counter,
                        req.request_id,
                        0,
                        K,
                        None,
                        &mut out,
                    )
                    .expect("sized");
                    counter += 1;
                    let _ = socket.send_to(&out, from);
                    // Right key, wrong kind.
                    key.seal_kind(
                        KIND_PACKET,
                        access::provider_sender(SLOT),
                        counter,
                        &mut out,
                    )
                    .expect("sized");
                    counter += 1;
                    let _ = socket.send_to(&out, from);
                    // A replay of the first frame of the answer.
                    let _ = socket.send_to(&first.expect("k > 0"), from);
                    // Too short.
                    let _ = socket.send_to(&[0x04; 10], from);
                    // A valid frame from the wrong address.
                    access::seal_delivery(
                        &G,
                        &key,
                        SLOT,
                        counter,
                        req.request_id,
                        0,
                        K,
                        None,
                        &mut out,
                    )
                    .expect("sized");
                    counter += 1;
                    let _ = stranger.send_to(&out, from);
                }
            }
            _ => st.bad_client_frames += 1,
        }
    }
}

/// Wait (at most 5 s) until the fake provider's state satisfies `done`:
/// the client's last frames may still be in flight when it returns.
fn wait_for(state: &Mutex<State>, done: impl Fn(&State) -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !done(&state.lock().expect("not poisoned")) {
        assert!(Instant::now() < end, "fake provider never caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn registration(provider: &FakeProvider, net: &Net, mailbox: MailboxId) -> Registration {
    Registration {
        provider_id: net.provider,
        provider_address: provider.addr,
        slot: SLOT,
        mailbox,
        access_key: ACCESS_KEY,
        operator_key: loopix_crypto::identity::IdentityKey::from_seed([4; 32])
            .expect("any seed")
            .public(),
    }
}

fn online_client(net: &Net, mailbox: MailboxId, rng: &mut ChaCha20Rng) -> Client {
    Client::new(
        G,
        Arc::clone(&net.topology),
        Rates {
            lambda_p: 20.0,
            lambda_l: 20.0,
            lambda_d: 5.0,
            mean_delay_us: 1_000.0,
            pull_period_us: 100_000,
        },
        ClientLimits::default(),
        SecretKey::generate(rng),
        mailbox,
        net.provider,
        driver::now_us(),
        rng,
    )
    .expect("valid client")
}

/// A client on simulated time whose packets are routed at once.
fn sim_client(net: &Net, mailbox: MailboxId, rng: &mut ChaCha20Rng) -> Client {
    Client::new(
        G,
        Arc::clone(&net.topology),
        Rates {
            lambda_p: 1000.0,
            lambda_l: 0.0,
            lambda_d: 0.0,
            mean_delay_us: 1_000.0,
            pull_period_us: 0,
        },
        ClientLimits::default(),
        SecretKey::generate(rng),
        mailbox,
        net.provider,
        0,
        rng,
    )
    .expect("valid client")
}

/// Run `c` on simulated time until its queue is empty, storing what its
/// packets deliver at the fake provider.
fn drain(c: &mut Client, net: &Net, state: &Mutex<State>, rng: &mut ChaCha20Rng) {
    for _ in 0..1000 {
        if c.queued() == 0 {
            break;
        }
        let t = c.poll_timeout().expect("lambda_p > 0");
        c.handle_timeout(t, rng);
        while let Some(tx) = c.poll_transmit() {
            if let Some((mb, p)) = net.route(tx.packet) {
                state.lock().expect("not poisoned").store(mb, p);
            }
        }
    }
    assert_eq!(c.queued(), 0, "sender drained");
}

#[test]
fn delivers_whole_acks_and_ignores_redelivery_and_bad_frames() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let net = Arc::new(Net::new(&mut rng));
    let (mb_a, mb_b) = (MailboxId([0xa; 16]), MailboxId([0xb; 16]));
    let fake = FakeProvider::start(
        Arc::clone(&net),
        State {
            ignore_acks_pulls: 2,
            inject_bad: true,
            ..State::default()
        },
    );
    let a = online_client(&net, mb_a, &mut rng);
    let to_a: Address = a.address();
    let mut b = sim_client(&net, mb_b, &mut rng);
    let text: Vec<u8> = (0..3 * b.fragment_capacity() - 10)
        .map(|i| (i % 251) as u8)
        .collect();
    b.send(to_a, &text, false, &mut rng).expect("queued");
    drain(&mut b, &net, &fake.state, &mut rng);
    let stored: Vec<u64> = fake.state.lock().expect("not poisoned").mailboxes[&mb_a]
        .keys()
        .copied()
        .collect();
    assert_eq!(stored.len(), 3, "three fragments stored");

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let reg = registration(&fake, &net, mb_a);
    let mut d = Driver::new(a, &reg, G, socket).expect("driver");
    let mut messages = Vec::new();
    let mut loops = 0u64;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        d.run_until(Instant::now() + Duration::from_millis(100), |_, e| {
            match e {
                Event::Message { data, surb, .. } => {
                    assert!(surb.is_none());
                    messages.push(data);
                }
                Event::LoopReturned { .. } => loops += 1,
                other => panic!("unexpected {other:?}"),
            }
            Flow::Continue
        })
        .expect("no socket error");
        let st = fake.state.lock().expect("not poisoned");
        let acked = stored.iter().all(|id| st.acks.contains(id));
        let gone = stored
            .iter()
            .all(|id| !st.mailboxes[&mb_a].contains_key(id));
        if acked && gone && loops >= 2 && st.pulls > 3 && d.stats().drop_wrong_source == 1 {
            break;
        }
    }
    let s = d.stats();
    wait_for(&fake.state, |st| {
        st.client_packets == s.packets_sent && st.pulls == s.pulls_sent
    });
    let st = fake.state.lock().expect("not poisoned");
    assert_eq!(messages, vec![text], "one whole message, once");
    assert!(loops >= 2, "loops come back: {loops}");
    assert!(
        stored.iter().all(|id| st.acks.contains(id)),
        "acked: {:?} of {stored:?}",
        st.acks
    );
    assert!(
        s.link.duplicates >= 3,
        "re-deliveries seen and ignored: {s:?}"
    );
    assert_eq!(st.bad_client_frames, 0, "every client frame authentic");
    assert!(st.client_packets > 5 && st.pulls > 3, "{s:?}");
    assert!(
        st.counters.windows(2).all(|w| w[0] < w[1]),
        "one strictly increasing counter sequence"
    );
    assert_eq!(
        (
            s.link.drop_bad_tag,
            s.link.drop_wrong_kind,
            s.link.drop_replayed,
            s.link.drop_wrong_length,
            s.drop_wrong_source,
            s.link.drop_malformed,
            s.link.drop_unknown_request
        ),
        (1, 1, 1, 1, 1, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.packets_sent, st.client_packets);
    assert_eq!(s.pulls_sent, st.pulls);
    assert_eq!(d.client().stats().bad_packets, 0);
}

#[test]
fn surb_reply_leaves_through_the_driver() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let net = Arc::new(Net::new(&mut rng));
    let (mb_a, mb_b) = (MailboxId([0xa; 16]), MailboxId([0xb; 16]));
    let fake = FakeProvider::start(Arc::clone(&net), State::default());
    let a = online_client(&net, mb_a, &mut rng);
    let to_a = a.address();
    let mut b = sim_client(&net, mb_b, &mut rng);
    b.send(to_a, b"ping", true, &mut rng).expect("queued");
    drain(&mut b, &net, &fake.state, &mut rng);

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut d = Driver::new(a, &registration(&fake, &net, mb_a), G, socket).expect("driver");
    let mut replied = false;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        d.run_until(Instant::now() + Duration::from_millis(100), |c, e| {
            if let Event::Message { data, surb, .. } = e {
                assert_eq!(data, b"ping");
                c.reply(surb.expect("SURB attached"), b"pong")
                    .expect("queued");
                replied = true;
            }
            Flow::Continue
        })
        .expect("no socket error");
        if replied && d.client().queued() == 0 && d.client().stats().sent_reply == 1 {
            break;
        }
    }
    assert!(replied && d.client().stats().sent_reply == 1);
    // The reply was routed by the fake provider into B's mailbox.
    wait_for(&fake.state, |st| st.mailboxes.contains_key(&mb_b));
    let inbox = fake
        .state
        .lock()
        .expect("not poisoned")
        .mailboxes
        .remove(&mb_b)
        .expect("reply stored");
    for (_, mut p) in inbox {
        b.handle_packet(0, &mut p);
    }
    match b.poll_event() {
        Some(Event::Reply { data, .. }) => assert_eq!(data, b"pong"),
        other => panic!("expected the reply, got {other:?}"),
    }
}

#[test]
fn registration_must_match_the_client() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let net = Arc::new(Net::new(&mut rng));
    let fake = FakeProvider::start(Arc::clone(&net), State::default());
    let a = online_client(&net, MailboxId([0xa; 16]), &mut rng);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let reg = registration(&fake, &net, MailboxId([0xc; 16]));
    assert!(Driver::new(a, &reg, G, socket).is_err());
}
