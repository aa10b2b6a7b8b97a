//! The driver against the test kit's fake provider on 127.0.0.1: a thread
//! with a UDP socket that authenticates the client's frames with its access
//! key, routes its packets hop by hop with real Sphinx keys (one provider,
//! one layer of one mix), stores what is delivered, and answers every pull
//! with exactly `K` delivery frames. Checked: a message of several fragments is
//! delivered whole once, acknowledged in the next pull and not handled
//! again when delivered again; loops come back; a SURB reply goes out
//! through the driver; counters are strictly increasing across packets and
//! pulls; bad frames (wrong key, wrong kind, replayed counter, wrong length,
//! wrong source) are counted and ignored. Every test is bounded in time and
//! stops its thread by itself.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopix_client::driver::{self, Driver, Flow};
use loopix_client::{Address, Client, ClientLimits, Event, Rates, Registration};
use loopix_crypto::{MailboxId, SecretKey};
use loopix_testkit::fake_provider::{Access, Behaviour, FakeNet as Net, FakeProvider, State, G};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Frames in every pull answer.
const K: u16 = 8;
const SLOT: u32 = 7;
const ACCESS_KEY: [u8; 16] = [5; 16];

/// The one client's credentials, for `mailbox`.
fn access(mailbox: MailboxId) -> Access {
    Access {
        slot: SLOT,
        key: ACCESS_KEY,
        mailbox,
    }
}

/// The fake provider for one client pulling `mailbox`.
fn start(net: &Arc<Net>, mailbox: MailboxId, behaviour: Behaviour) -> FakeProvider {
    let behaviour = Behaviour { k: K, ..behaviour };
    FakeProvider::start(
        Arc::clone(net),
        &[access(mailbox)],
        behaviour,
        State::default(),
    )
}

fn registration(provider: &FakeProvider, net: &Net, mailbox: MailboxId) -> Registration {
    net.registration(provider.addr, &access(mailbox))
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
fn drain(c: &mut Client, net: &Net, fake: &FakeProvider, rng: &mut ChaCha20Rng) {
    for _ in 0..1000 {
        if c.queued() == 0 {
            break;
        }
        let t = c.poll_timeout().expect("lambda_p > 0");
        c.handle_timeout(t, rng);
        while let Some(tx) = c.poll_transmit() {
            if let Some((mb, p)) = net.route(tx.packet) {
                fake.state().store(mb, p);
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
    let fake = start(
        &net,
        mb_a,
        Behaviour {
            ignore_acks_pulls: 2,
            inject_bad: true,
            ..Behaviour::default()
        },
    );
    let a = online_client(&net, mb_a, &mut rng);
    let to_a: Address = a.address();
    let mut b = sim_client(&net, mb_b, &mut rng);
    let text: Vec<u8> = (0..3 * b.fragment_capacity() - 10)
        .map(|i| (i % 251) as u8)
        .collect();
    b.send(to_a, &text, false, &mut rng).expect("queued");
    drain(&mut b, &net, &fake, &mut rng);
    let stored: Vec<u64> = fake.state().mailboxes[&mb_a].keys().copied().collect();
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
        let st = fake.state();
        let acked = stored.iter().all(|id| st.acks.contains(id));
        let gone = stored
            .iter()
            .all(|id| !st.mailboxes[&mb_a].contains_key(id));
        if acked && gone && loops >= 2 && st.pulls > 3 && d.stats().drop_wrong_source == 1 {
            break;
        }
    }
    let s = d.stats();
    fake.wait_for(|st| st.client_packets == s.packets_sent && st.pulls == s.pulls_sent);
    let st = fake.state();
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
    let fake = start(&net, mb_a, Behaviour::default());
    let a = online_client(&net, mb_a, &mut rng);
    let to_a = a.address();
    let mut b = sim_client(&net, mb_b, &mut rng);
    b.send(to_a, b"ping", true, &mut rng).expect("queued");
    drain(&mut b, &net, &fake, &mut rng);

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
        if replied && d.queued() == 0 && d.client().stats().sent_reply == 1 {
            break;
        }
    }
    assert!(replied && d.client().stats().sent_reply == 1);
    // The reply was routed by the fake provider into B's mailbox.
    fake.wait_for(|st| st.mailboxes.contains_key(&mb_b));
    let inbox = fake.state().mailboxes.remove(&mb_b).expect("reply stored");
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
    let fake = start(&net, MailboxId([0xa; 16]), Behaviour::default());
    let a = online_client(&net, MailboxId([0xa; 16]), &mut rng);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let reg = registration(&fake, &net, MailboxId([0xc; 16]));
    assert!(Driver::new(a, &reg, G, socket).is_err());
}

/// Total packet rate of the departure tests, per second: three streams of 100.
const WIRE_RATE: f64 = 300.0;
/// Seconds each departure capture lasts (about 2,400 gaps).
const WIRE_SECONDS: u64 = 8;

/// Run a client sending [`WIRE_RATE`] packets/s for [`WIRE_SECONDS`] through
/// a driver to a socket that stands where the provider would and only
/// timestamps arrivals. A `busy` client has a message with a SURB queued for
/// every `lambda_p` event, so its payload stream carries real packets; an
/// idle one sends drops there. Returns the inter-departure gaps seen on
/// the wire (us), the real packets sent and the driver's lateness count.
fn wire_gaps(seed: u64, busy: bool) -> (Vec<f64>, u64, u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let net = Arc::new(Net::new(&mut rng));
    let mailbox = MailboxId([0xd; 16]);
    let mut client = Client::new(
        G,
        Arc::clone(&net.topology),
        Rates {
            lambda_p: WIRE_RATE / 3.0,
            lambda_l: WIRE_RATE / 3.0,
            lambda_d: WIRE_RATE / 3.0,
            mean_delay_us: 1_000.0,
            pull_period_us: 0,
        },
        ClientLimits::default(),
        SecretKey::generate(&mut rng),
        mailbox,
        net.provider,
        driver::now_us(),
        &mut rng,
    )
    .expect("valid client");
    if busy {
        let me = client.address();
        for i in 0..1_000u32 {
            client
                .send(me, &i.to_le_bytes(), true, &mut rng)
                .expect("queued");
        }
    }
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let reg = net.registration(sink.local_addr().expect("addr"), &access(mailbox));
    let end = Instant::now() + Duration::from_secs(WIRE_SECONDS);
    let capture = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let mut times = Vec::new();
        while Instant::now() < end + Duration::from_millis(100) {
            if let Ok((n, _)) = sink.recv_from(&mut buf) {
                if n == G.frame_len() {
                    times.push(Instant::now());
                }
            }
        }
        times
    });
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut d = Driver::new(client, &reg, G, socket).expect("driver");
    d.run_until(end, |_, _| Flow::Continue)
        .expect("no socket error");
    let times = capture.join().expect("capture thread");
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6)
        .collect();
    assert!(
        gaps.len() >= 2_000,
        "only {} gaps captured in {WIRE_SECONDS} s at {WIRE_RATE}/s",
        gaps.len()
    );
    (gaps, d.client().stats().sent_real, d.stats().packets_late)
}

/// The driver's departures, captured on the wire, are Poisson and do not
/// depend on what the packets are. An idle client's ~2,400 gaps must pass
/// a one-sample KS test against Exp(1/300 s) at α = 0.01; a busy client's
/// (a real message with a SURB at every payload event, built ahead like a
/// drop) must pass a two-sample KS test against the idle client's at
/// α = 0.01. The driver before this test waited on a socket receive
/// time-out, which put its departures on the kernel's millisecond ticks,
/// and built each packet at its departure time: in release, on a 2-core
/// machine also running builds, it failed both in all three attempts
/// (against Exp D = 0.63 to 0.64; busy against idle D = 0.09 to 0.29; over
/// 90% of its packets more than 1 ms late), where this driver passed with
/// D = 0.018 and 0.017.
///
/// The machine may be busy with other tests: a driver starved of CPU
/// bunches its departures, which the wire truthfully shows. So up to three
/// attempts are made and one must pass both checks (an ideal driver fails
/// all three about once in 10^5 runs).
#[test]
fn departures_leave_at_their_poisson_times_whatever_they_carry() {
    use loopix_tuning::model::{exp_cdf, ks_p_value, ks_statistic, ks_two_sample};
    let mut failures = Vec::new();
    for attempt in 0..3 {
        let (mut idle, _, idle_late) = wire_gaps(20 + attempt, false);
        let n = idle.len() as f64;
        let d = ks_statistic(&mut idle, |x| exp_cdf(1e6 / WIRE_RATE, x));
        let p = ks_p_value(d, n);
        let (mut busy, real, busy_late) = wire_gaps(40 + attempt, true);
        assert!(real >= 600, "the busy client sent only {real} real packets");
        let m = busy.len() as f64;
        let d2 = ks_two_sample(&mut busy, &mut idle);
        let p2 = ks_p_value(d2, n * m / (n + m));
        eprintln!(
            "attempt {attempt}: idle {n} gaps, KS against Exp: D = {d:.4}, p = {p:.3}; busy \
             ({real} real) against idle: D = {d2:.4}, p = {p2:.3}; sent over {} us late: \
             idle {idle_late}, busy {busy_late}",
            driver::LATE_US
        );
        if p > 0.01 && p2 > 0.01 {
            return;
        }
        failures.push(format!("Exp p {p:.2e}, busy/idle p {p2:.2e}"));
    }
    panic!("departures on the wire are not Poisson in any attempt: {failures:?}");
}
