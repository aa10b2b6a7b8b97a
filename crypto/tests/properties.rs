//! Property tests (proptest) of the crate's promises on random inputs:
//! parsing untrusted bytes never panics and never resizes or (on error)
//! modifies the buffer; random valid paths round-trip hop by hop in both
//! geometries; a single flipped bit is caught by the MAC (header) or by the
//! recipient (payload); link frames round-trip and reject every flipped bit;
//! the replay window agrees with a simple set-based model; SURB and payload
//! parsing never panics.
//!
//! Owns: this file only. Keys are prepared once ([`net`]) because
//! `RouteKey::new` costs about a millisecond; 256 cases per property keep the
//! whole file well under a second in release.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;

use common::{nodes, rng, TestNode};
use loopix_crypto::link::{FRAME_HEADER_LEN, FRAME_OVERHEAD, REPLAY_WINDOW, TAG_LEN};
use loopix_crypto::surb::surb_len;
use loopix_crypto::{
    payload, sphinx, Delay, FrameHeader, Geometry, LinkError, LinkKey, MailboxId, NodeId,
    RecipientKind, ReplayWindow, RoutingCommand, SphinxError, Surb,
};
use proptest::prelude::*;

/// Nodes a random path picks its hops from (with repetition).
const NET_SIZE: usize = 8;

/// The test network, built once for every property in this binary.
fn net() -> &'static [TestNode] {
    static NET: OnceLock<Vec<TestNode>> = OnceLock::new();
    NET.get_or_init(|| nodes(0x5eed_0001, NET_SIZE))
}

/// Both geometries the network may use.
fn geometry() -> impl Strategy<Value = Geometry> {
    prop_oneof![Just(Geometry::DEFAULT), Just(Geometry::JUMBO)]
}

fn recipient_kind() -> impl Strategy<Value = RecipientKind> {
    prop_oneof![
        Just(RecipientKind::Message),
        Just(RecipientKind::Loop),
        Just(RecipientKind::Reply),
    ]
}

fn relay() -> impl Strategy<Value = RoutingCommand> {
    (any::<[u8; 16]>(), any::<u32>()).prop_map(|(id, us)| RoutingCommand::Relay {
        next: NodeId(id),
        delay: Delay::from_micros(us),
    })
}

/// How a random path ends.
#[derive(Debug, Clone)]
enum Ending {
    /// Last hop `Drop` (cover traffic).
    Drop,
    /// Last hop `Recipient`.
    Recipient(RecipientKind, [u8; 16]),
    /// `Deliver` second to last, then `Recipient` (needs two hops).
    DeliverThenRecipient(MailboxId, RecipientKind, [u8; 16]),
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::Drop),
        (recipient_kind(), any::<[u8; 16]>()).prop_map(|(k, id)| Ending::Recipient(k, id)),
        (any::<[u8; 16]>(), recipient_kind(), any::<[u8; 16]>())
            .prop_map(|(m, k, id)| Ending::DeliverThenRecipient(MailboxId(m), k, id)),
    ]
}

/// A random valid path: which node each hop is, and the command it reads.
#[derive(Debug, Clone)]
struct Path {
    nodes: Vec<usize>,
    commands: Vec<RoutingCommand>,
}

impl Path {
    /// True if the last hop is a `Recipient` (so a message arrives).
    fn recipient(&self) -> bool {
        matches!(self.commands.last(), Some(RoutingCommand::Recipient { .. }))
    }
}

/// Paths of 1 to 6 hops with a valid command order.
fn path() -> impl Strategy<Value = Path> {
    (
        1usize..=6,
        ending(),
        proptest::collection::vec(relay(), 6),
        proptest::collection::vec(0..NET_SIZE, 6),
    )
        .prop_map(|(n, end, relays, picks)| {
            let mut commands: Vec<RoutingCommand> = relays[..n].to_vec();
            match end {
                Ending::Drop => commands[n - 1] = RoutingCommand::Drop,
                Ending::Recipient(kind, id) => {
                    commands[n - 1] = RoutingCommand::Recipient { kind, id }
                }
                Ending::DeliverThenRecipient(mailbox, kind, id) => {
                    commands[n - 1] = RoutingCommand::Recipient { kind, id };
                    if n >= 2 {
                        let delay = match commands[n - 2] {
                            RoutingCommand::Relay { delay, .. } => delay,
                            _ => Delay::ZERO,
                        };
                        commands[n - 2] = RoutingCommand::Deliver { mailbox, delay };
                    }
                }
            }
            Path {
                nodes: picks[..n].to_vec(),
                commands,
            }
        })
}

/// A geometry, a path and a message that fits one payload of that geometry.
fn scenario() -> impl Strategy<Value = (Geometry, Path, Vec<u8>, u64)> {
    (geometry(), path(), any::<u64>()).prop_flat_map(|(g, p, seed)| {
        let msg = proptest::collection::vec(any::<u8>(), 0..=g.message_capacity());
        (Just(g), Just(p), msg, Just(seed))
    })
}

/// The hops of a path, keys from the shared network.
fn hop_list(path: &Path) -> Vec<sphinx::Hop<'static>> {
    let net = net();
    path.nodes
        .iter()
        .zip(&path.commands)
        .map(|(&i, c)| sphinx::Hop {
            key: &net[i].route,
            command: *c,
        })
        .collect()
}

/// Build the packet of a scenario with a seeded RNG.
fn build(g: &Geometry, path: &Path, msg: &[u8], seed: u64) -> Vec<u8> {
    let hop_list = hop_list(path);
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(g, &hop_list, msg, &mut rng(seed), &mut pkt).expect("valid path and message");
    pkt
}

/// Any byte string, of any length up to a few packets.
fn junk(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Process `bytes` as a packet with node 0's key, checking the promises that
/// hold for any input; returns the result.
fn process_untrusted(g: &Geometry, bytes: &[u8]) -> Result<sphinx::Processed, SphinxError> {
    let secret = &net()[0].secret;
    let unwrapped = sphinx::unwrap(g, secret, bytes);
    if bytes.len() != g.packet_len() {
        assert_eq!(
            unwrapped.as_ref().err(),
            Some(&SphinxError::WrongLength {
                expected: g.packet_len(),
                got: bytes.len()
            })
        );
    }
    let mut buf = bytes.to_vec();
    let out = sphinx::process(g, secret, &mut buf);
    assert_eq!(buf.len(), bytes.len(), "processing changed the length");
    if out.is_err() {
        assert_eq!(buf, bytes, "a refused packet was modified");
    }
    // `unwrap` fails exactly when `process` fails before the MAC check.
    if let Err(e) = &unwrapped {
        assert_eq!(out.as_ref().err(), Some(e));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Bytes of any length: an error or a result, never a panic, never a
    /// length change, never a modification on error.
    #[test]
    fn process_any_bytes_never_panics(g in geometry(), bytes in junk(3000)) {
        let r = process_untrusted(&g, &bytes);
        if bytes.len() != g.packet_len() {
            prop_assert!(r.is_err());
        }
    }

    /// (a) Random bytes of exactly one packet: always refused (a valid MAC
    /// has probability 2^-128), and unchanged.
    #[test]
    fn random_packet_is_refused(
        bytes in geometry().prop_flat_map(|g| {
            (Just(g), proptest::collection::vec(any::<u8>(), g.packet_len()))
        }),
        clear_top_bit in any::<bool>(),
    ) {
        let (g, mut bytes) = bytes;
        if clear_top_bit {
            // A canonical alpha half the time at least: reach the MAC check.
            bytes[31] &= 0x7f;
        }
        let r = process_untrusted(&g, &bytes);
        prop_assert!(r.is_err(), "random bytes accepted: {:?}", r);
    }

    /// (e) SURB and payload parsing of untrusted bytes never panics; a SURB
    /// of the right length parses and serializes back to the same bytes; a
    /// payload that decodes is exactly the encoding of its message.
    #[test]
    fn surb_and_payload_parsing_never_panics(g in geometry(), bytes in junk(3000)) {
        match Surb::from_bytes(&g, &bytes) {
            Ok(s) => prop_assert_eq!(s.to_bytes(), bytes.clone()),
            Err(e) => prop_assert_eq!(
                e,
                SphinxError::BadSurb { expected: surb_len(&g), got: bytes.len() }
            ),
        }
        if let Ok(m) = payload::decode(&bytes) {
            let mut again = vec![0xa5u8; bytes.len()];
            payload::encode(m, &mut again).expect("a decoded message fits again");
            prop_assert_eq!(again, bytes.clone());
        }
    }

    /// (e) A SURB of exactly the right length always parses, round-trips,
    /// and a reply written with it is processed without panicking.
    #[test]
    fn surb_of_right_length_round_trips(
        bytes in geometry().prop_flat_map(|g| {
            (Just(g), proptest::collection::vec(any::<u8>(), surb_len(&g)))
        }),
        msg in junk(64),
    ) {
        let (g, bytes) = bytes;
        let surb = Surb::from_bytes(&g, &bytes).expect("right length");
        prop_assert_eq!(surb.to_bytes(), bytes.clone());
        prop_assert_eq!(&surb.first_hop().0[..], &bytes[..16]);
        let mut pkt = vec![0u8; g.packet_len()];
        surb.write_reply(&g, &msg, &mut pkt).expect("fits");
        prop_assert_eq!(&pkt[..g.header_len()], &bytes[48..]);
        let _ = process_untrusted(&g, &pkt);
    }

    /// Encoding then decoding any message that fits gives it back.
    #[test]
    fn payload_round_trips(msg in junk(2100), extra in 0usize..64) {
        let mut out = vec![0u8; msg.len() + payload::OVERHEAD + extra];
        payload::encode(&msg, &mut out).expect("fits");
        prop_assert_eq!(payload::decode(&out), Ok(&msg[..]));
        if !msg.is_empty() {
            let mut short = vec![0u8; msg.len() + payload::OVERHEAD - 1];
            prop_assert!(payload::encode(&msg, &mut short).is_err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (b) A random valid path: every hop reads exactly its command, the
    /// length is the same at every hop, and the recipient reads the message.
    #[test]
    fn random_paths_round_trip((g, path, msg, seed) in scenario()) {
        let mut pkt = build(&g, &path, &msg, seed);
        let net = net();
        for (i, &node) in path.nodes.iter().enumerate() {
            prop_assert_eq!(pkt.len(), g.packet_len());
            let before = sphinx::unwrap(&g, &net[node].secret, &pkt)
                .expect("canonical, not low order")
                .replay_tag();
            let out = sphinx::process(&g, &net[node].secret, &mut pkt)
                .expect("authentic at every hop");
            prop_assert_eq!(out.command, path.commands[i], "hop {}", i);
            prop_assert_eq!(out.replay_tag, before);
            prop_assert_eq!(out.command.is_forwarding(), i + 1 < path.nodes.len());
        }
        prop_assert_eq!(pkt.len(), g.packet_len());
        if let Some(RoutingCommand::Recipient { .. }) = path.commands.last() {
            // `build` does not depend on the kind: every kind decodes.
            prop_assert_eq!(payload::decode(&pkt[g.header_len()..]), Ok(&msg[..]));
        }
    }

    /// (c) One bit flipped anywhere before a random hop: a header bit is
    /// refused by that hop (buffer unchanged); a payload bit passes every hop
    /// and the recipient's decode fails.
    #[test]
    fn single_bit_flip_is_caught(
        (g, path, msg, seed) in scenario(),
        at_hop in any::<prop::sample::Index>(),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut pkt = build(&g, &path, &msg, seed);
        let net = net();
        let n = path.nodes.len();
        let t = at_hop.index(n);
        for &node in &path.nodes[..t] {
            sphinx::process(&g, &net[node].secret, &mut pkt).expect("authentic");
        }
        let bit = bit.index(g.packet_len() * 8);
        pkt[bit / 8] ^= 1 << (bit % 8);
        if bit / 8 < g.header_len() {
            let copy = pkt.clone();
            let r = sphinx::process(&g, &net[path.nodes[t]].secret, &mut pkt);
            prop_assert!(
                matches!(
                    r,
                    Err(SphinxError::BadMac
                        | SphinxError::NonCanonicalPoint
                        | SphinxError::LowOrderPoint)
                ),
                "header bit {} flipped before hop {}: {:?}", bit, t, r
            );
            prop_assert_eq!(pkt, copy);
        } else {
            for (i, &node) in path.nodes.iter().enumerate().skip(t) {
                let out = sphinx::process(&g, &net[node].secret, &mut pkt)
                    .expect("mixes cannot see payload tampering");
                prop_assert_eq!(out.command, path.commands[i]);
            }
            if path.recipient() {
                prop_assert_eq!(
                    payload::decode(&pkt[g.header_len()..]),
                    Err(SphinxError::BadPayload),
                    "payload bit {} flipped before hop {}", bit, t
                );
            }
        }
    }

    /// A SURB for a random path: the reply reaches the creator and opens.
    #[test]
    fn random_surb_replies_round_trip(
        (g, path, msg, seed) in scenario(),
        reply_id in any::<[u8; 16]>(),
    ) {
        let mut path = path;
        if let Some(last) = path.commands.last_mut() {
            *last = RoutingCommand::Recipient { kind: RecipientKind::Reply, id: reply_id };
        }
        // Still valid: only the last command changed, to another Recipient.
        let net = net();
        let first = net[path.nodes[0]].id;
        let (surb, keys) =
            Surb::new(&g, first, &hop_list(&path), &mut rng(seed)).expect("valid");
        prop_assert_eq!(keys.id(), reply_id);
        let surb = Surb::from_bytes(&g, &surb.to_bytes()).expect("well formed");
        let mut pkt = vec![0u8; g.packet_len()];
        surb.write_reply(&g, &msg, &mut pkt).expect("fits");
        for (i, &node) in path.nodes.iter().enumerate() {
            let out = sphinx::process(&g, &net[node].secret, &mut pkt).expect("authentic");
            prop_assert_eq!(out.command, path.commands[i]);
        }
        prop_assert_eq!(keys.open_reply(&mut pkt[g.header_len()..]), Ok(&msg[..]));
    }
}

/// A frame carrying `packet`, sealed with `key`.
fn seal(key: &LinkKey, sender: u32, counter: u64, packet: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_OVERHEAD + packet.len()];
    key.seal(sender, counter, packet, &mut frame)
        .expect("sized exactly");
    frame
}

/// One step of a replay-window run: a counter relative to the highest one
/// seen so far, or an absolute one; and whether its frame authenticates.
#[derive(Debug, Clone)]
enum Step {
    Ahead(u64, bool),
    Behind(u64, bool),
    Absolute(u64, bool),
}

fn step() -> impl Strategy<Value = Step> {
    let window = REPLAY_WINDOW;
    prop_oneof![
        3 => (0..2 * window + 8, any::<bool>()).prop_map(|(d, a)| Step::Ahead(d, a)),
        6 => (0..window + 8, any::<bool>()).prop_map(|(d, a)| Step::Behind(d, a)),
        1 => (
            prop_oneof![any::<u64>(), 0..4 * window, (u64::MAX - 4 * window)..=u64::MAX],
            any::<bool>()
        ).prop_map(|(c, a)| Step::Absolute(c, a)),
    ]
}

/// The replay window as its documentation states it: every counter ever
/// committed, and the highest.
#[derive(Default)]
struct WindowModel {
    seen: HashSet<u64>,
    highest: Option<u64>,
}

impl WindowModel {
    fn check(&self, c: u64) -> Result<(), LinkError> {
        match self.highest {
            None => Ok(()),
            Some(h) if c > h => Ok(()),
            Some(h) if h - c >= REPLAY_WINDOW => Err(LinkError::TooOld(c)),
            Some(_) if self.seen.contains(&c) => Err(LinkError::Replay(c)),
            Some(_) => Ok(()),
        }
    }
    fn commit(&mut self, c: u64) {
        self.seen.insert(c);
        self.highest = Some(self.highest.map_or(c, |h| h.max(c)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (d) Peeking and opening any bytes never panics; they agree on the
    /// header; random bytes never authenticate, whether opened as a clear
    /// or an encrypted kind.
    #[test]
    fn frames_from_any_bytes_never_panic(bytes in junk(3000), key in any::<[u8; 16]>()) {
        let key = LinkKey::from_bytes(&key);
        let peeked = FrameHeader::peek(&bytes);
        let opened = key.open(&bytes);
        let mut copy = bytes.clone();
        let decrypted = key.open_in_place(&mut copy).map(|_| ());
        match &peeked {
            Err(e) => {
                prop_assert_eq!(opened.err(), Some(*e));
                prop_assert_eq!(decrypted.err(), Some(*e));
            }
            Ok(h) => {
                prop_assert!(bytes.len() >= FRAME_OVERHEAD);
                prop_assert_eq!(h.kind, bytes[0]);
                let (clear, secret) = if loopix_crypto::link::encrypted_kind(h.kind) {
                    (LinkError::UnknownKind(h.kind), LinkError::BadTag)
                } else {
                    (LinkError::BadTag, LinkError::UnknownKind(h.kind))
                };
                prop_assert_eq!(opened.err(), Some(clear));
                prop_assert_eq!(decrypted.err(), Some(secret));
            }
        }
    }

    /// (d) Seal then open round-trips for any sender, counter and packet;
    /// the packet sits in clear at the alpha offset.
    #[test]
    fn frames_round_trip(
        key in any::<[u8; 16]>(),
        sender in any::<u32>(),
        counter in any::<u64>(),
        packet in junk(2200),
    ) {
        let key = LinkKey::from_bytes(&key);
        let frame = seal(&key, sender, counter, &packet);
        let header = FrameHeader::peek(&frame).expect("long enough, known kind");
        prop_assert_eq!((header.sender, header.counter), (sender, counter));
        let (h, p) = key.open(&frame).expect("authentic");
        prop_assert_eq!(h, header);
        prop_assert_eq!(p, &packet[..]);
        prop_assert_eq!(&frame[FRAME_HEADER_LEN..frame.len() - TAG_LEN], &packet[..]);
        // A wrong-sized output buffer is an error, not a panic.
        let mut short = vec![0u8; frame.len() - 1];
        prop_assert!(key.seal(sender, counter, &packet, &mut short).is_err());
    }

    /// (d) Any single flipped bit of a sealed frame fails `open`, and so does
    /// another key or a truncation.
    #[test]
    fn flipped_frame_bit_fails(
        key in any::<[u8; 16]>(),
        other in any::<[u8; 16]>(),
        sender in any::<u32>(),
        counter in any::<u64>(),
        packet in junk(1400),
        bit in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let link = LinkKey::from_bytes(&key);
        let frame = seal(&link, sender, counter, &packet);
        let mut bad = frame.clone();
        let bit = bit.index(frame.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(link.open(&bad).is_err(), "bit {} flipped and accepted", bit);
        let cut = cut.index(frame.len());
        prop_assert!(link.open(&frame[..cut]).is_err());
        if other != key {
            prop_assert_eq!(LinkKey::from_bytes(&other).open(&frame).err(), Some(LinkError::BadTag));
        }
    }

    /// (d) The replay window agrees with the model on every `check`, when
    /// counters are committed as a node does: after `check` passed and the
    /// frame authenticated.
    #[test]
    fn replay_window_matches_model(
        start in prop_oneof![Just(0u64), 0..10_000u64, any::<u64>()],
        steps in proptest::collection::vec(step(), 1..400),
    ) {
        let mut window = ReplayWindow::new();
        let mut model = WindowModel::default();
        for s in steps {
            let base = model.highest.unwrap_or(start);
            let (c, authentic) = match s {
                Step::Ahead(d, a) => (base.saturating_add(d), a),
                Step::Behind(d, a) => (base.saturating_sub(d), a),
                Step::Absolute(c, a) => (c, a),
            };
            let expected = model.check(c);
            prop_assert_eq!(window.check(c), expected, "counter {} highest {:?}", c, model.highest);
            if expected.is_ok() && authentic {
                window.commit(c);
                model.commit(c);
                prop_assert_eq!(window.check(c), Err(LinkError::Replay(c)));
            }
        }
    }
}
