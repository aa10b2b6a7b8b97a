//! The bodies of the fuzz targets, as plain functions: the libFuzzer
//! targets in `fuzz_targets/` call them, and `crypto/tests/fuzz_corpus.rs`
//! (on stable, in CI) runs them over every checked-in seed of
//! `fuzz/corpus/<target>/`, so the corpus is a regression suite.
//!
//! Each body feeds untrusted bytes to the crate exactly as given (no padding
//! or truncation) and asserts the crate's promises: no panic, agreement
//! between the one-call and two-call APIs, buffers unchanged on error, and a
//! replay window that agrees with its documented model.
//!
//! Owns: this file, with the rest of `crypto/fuzz/`.

use std::collections::HashSet;

use loopix_crypto::link::{encrypted_kind, FRAME_HEADER_LEN, TAG_LEN};
use loopix_crypto::{
    payload, sphinx, FrameHeader, Geometry, LinkError, LinkKey, ReplayWindow, RoutingCommand,
    SecretKey, SphinxError, Surb,
};

/// The fuzzed node's X25519 secret key (clamped by `SecretKey::from_bytes`).
/// Valid seed packets in the corpus are built for this key at every hop.
pub const NODE_SECRET: [u8; 32] = *b"loopix-crypto fuzz node key v1..";

/// The fuzzed link's AES-128-GCM-SIV key. Valid seed frames are sealed with
/// it.
pub const LINK_KEY: [u8; 16] = *b"loopix-fuzz-link";

/// The fuzzed node's secret key.
pub fn node_secret() -> SecretKey {
    SecretKey::from_bytes(NODE_SECRET)
}

/// The fuzzed link's key.
pub fn link_key() -> LinkKey {
    LinkKey::from_bytes(&LINK_KEY)
}

/// Treat `data` as a Sphinx packet for [`Geometry::DEFAULT`] arriving at the
/// node with [`NODE_SECRET`]. While it forwards, process the result again
/// with the same key (valid seeds are paths that visit this node at every
/// hop), at most `max_hops` times. Also parse `data` as a SURB and as a
/// payload plaintext.
pub fn process_packet(data: &[u8]) {
    let g = Geometry::DEFAULT;
    let secret = node_secret();

    if let Ok(m) = payload::decode(data) {
        assert!(m.len() + payload::OVERHEAD <= data.len());
    }
    if let Ok(surb) = Surb::from_bytes(&g, data) {
        assert_eq!(surb.to_bytes(), data, "a SURB does not serialize back");
    }

    let mut packet = data.to_vec();
    for _hop in 0..g.max_hops() {
        let before = packet.clone();

        // Two calls, as a node does: unwrap, look at the tag, finish.
        let mut two_step = packet.clone();
        let stepped = match sphinx::unwrap(&g, &secret, &two_step) {
            Ok(unwrapped) => {
                let tag = unwrapped.replay_tag();
                let r = unwrapped.finish(&mut two_step);
                if let Ok(p) = &r {
                    assert_eq!(p.replay_tag, tag, "finish reports another tag");
                }
                r
            }
            Err(e) => Err(e),
        };

        // One call.
        let r = sphinx::process(&g, &secret, &mut packet);
        assert_eq!(r, stepped, "process and unwrap+finish disagree");
        assert_eq!(packet, two_step, "process and unwrap+finish disagree");
        assert_eq!(packet.len(), data.len(), "the length changed");
        if data.len() != g.packet_len() {
            assert_eq!(
                r,
                Err(SphinxError::WrongLength {
                    expected: g.packet_len(),
                    got: data.len()
                })
            );
        }

        match r {
            Err(_) => {
                assert_eq!(packet, before, "a refused packet was modified");
                return;
            }
            Ok(p) => match p.command {
                RoutingCommand::Relay { .. } | RoutingCommand::Deliver { .. } => {
                    assert_ne!(
                        packet[..32],
                        before[..32],
                        "a forwarded packet kept its group element"
                    );
                }
                RoutingCommand::Drop => {
                    assert_eq!(packet, before, "Drop changed the packet");
                    return;
                }
                RoutingCommand::Recipient { .. } => {
                    let h = g.header_len();
                    assert_eq!(packet[..h], before[..h], "Recipient changed the header");
                    let _ = payload::decode(&packet[h..]);
                    return;
                }
            },
        }
    }
}

/// The replay window as documented: every committed counter, and the
/// highest. A counter is new if above the highest, or within
/// `REPLAY_WINDOW` behind it and not committed yet.
#[derive(Debug, Default)]
pub struct WindowModel {
    seen: HashSet<u64>,
    highest: Option<u64>,
}

impl WindowModel {
    /// What `ReplayWindow::check` must answer.
    pub fn check(&self, c: u64) -> Result<(), LinkError> {
        match self.highest {
            None => Ok(()),
            Some(h) if c > h => Ok(()),
            Some(h) if h - c >= loopix_crypto::link::REPLAY_WINDOW => Err(LinkError::TooOld(c)),
            Some(_) if self.seen.contains(&c) => Err(LinkError::Replay(c)),
            Some(_) => Ok(()),
        }
    }

    /// Record `c` as seen.
    pub fn commit(&mut self, c: u64) {
        self.seen.insert(c);
        self.highest = Some(self.highest.map_or(c, |h| h.max(c)));
    }

    /// The highest committed counter.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

/// One frame arriving on a link: `check` must agree with the model, and the
/// counter is committed only if it passed and the frame authenticated.
fn window_step(window: &mut ReplayWindow, model: &mut WindowModel, counter: u64, authentic: bool) {
    let expected = model.check(counter);
    assert_eq!(window.check(counter), expected, "window and model disagree");
    if expected.is_ok() && authentic {
        window.commit(counter);
        model.commit(counter);
        assert_eq!(window.check(counter), Err(LinkError::Replay(counter)));
    }
}

/// Seal `body` as a frame of `h`'s kind, sender and counter.
fn reseal(key: &LinkKey, h: &FrameHeader, body: &[u8], len: usize) -> Vec<u8> {
    let mut again = vec![0u8; len];
    again[FRAME_HEADER_LEN..len - TAG_LEN].copy_from_slice(body);
    key.seal_kind(h.kind, h.sender, h.counter, &mut again)
        .expect("sized exactly");
    again
}

/// Treat `data` as a link frame for the link with [`LINK_KEY`]: peek its
/// header, open it, and re-seal an authentic one (GCM-SIV is deterministic,
/// so the same bytes must come out). Then drive a replay window from the
/// header's counter: first the frame itself, then each 3 bytes after the
/// header as one more frame (`flags`, `delta` u16 BE; flags bit 0: counter
/// behind the highest instead of ahead, bit 1: the frame fails
/// authentication).
pub fn open_frame(data: &[u8]) {
    let key = link_key();
    let peeked = FrameHeader::peek(data);
    let opened = key.open(data);
    let mut authentic = opened.is_ok();
    match (&peeked, &opened) {
        (Err(e), _) => assert_eq!(opened.err(), Some(*e), "peek and open disagree"),
        (Ok(h), Ok((h2, packet))) => {
            assert_eq!(h, h2, "peek and open disagree");
            assert_eq!(*packet, &data[FRAME_HEADER_LEN..data.len() - TAG_LEN]);
            assert_eq!(
                reseal(&key, h, packet, data.len()),
                data,
                "re-sealing gives other bytes"
            );
        }
        // `open` is for frames whose body is in clear; encrypted kinds
        // (pulls, deliveries) go through `open_in_place`, which must agree
        // with the sealer in the same way.
        (Ok(h), Err(e)) if encrypted_kind(h.kind) => {
            assert_eq!(
                *e,
                LinkError::UnknownKind(h.kind),
                "open takes clear kinds only"
            );
            let mut copy = data.to_vec();
            match key.open_in_place(&mut copy) {
                Ok((h3, body)) => {
                    assert_eq!(*h, h3, "peek and open_in_place disagree");
                    let plain = body.to_vec();
                    assert_eq!(
                        reseal(&key, h, &plain, data.len()),
                        data,
                        "re-sealing differs"
                    );
                    authentic = true;
                }
                Err(e) => assert_eq!(e, LinkError::BadTag),
            }
        }
        (Ok(_), Err(e)) => assert_eq!(*e, LinkError::BadTag),
    }

    let Ok(header) = peeked else {
        return;
    };
    let mut window = ReplayWindow::new();
    let mut model = WindowModel::default();
    window_step(&mut window, &mut model, header.counter, authentic);
    for step in data[FRAME_HEADER_LEN..].chunks_exact(3) {
        let delta = u64::from(u16::from_be_bytes([step[1], step[2]]));
        let base = model.highest().unwrap_or(header.counter);
        let counter = if step[0] & 1 == 0 {
            base.wrapping_add(delta)
        } else {
            base.wrapping_sub(delta)
        };
        window_step(&mut window, &mut model, counter, step[0] & 2 == 0);
    }
}
