//! Link frames: one Sphinx packet between two nodes (or a client and its
//! provider), authenticated with a pairwise key, plus the anti-replay window
//! on the frame counter.
//!
//! Frame layout, integers big-endian:
//!
//! | offset | bytes | field                                   |
//! |--------|-------|-----------------------------------------|
//! | 0      | 1     | kind (see below)                        |
//! | 1      | 4     | sender index (u32 BE, in the receiver's table of peers) |
//! | 5      | 8     | counter (u64 BE, strictly per sender and link) |
//! | 13     | n     | body: a Sphinx packet in clear, or ciphertext |
//! | 13 + n | 16    | AES-128-GCM-SIV tag                     |
//!
//! Kinds: `0x01` a Sphinx packet between nodes; `0x02` a Sphinx packet from
//! a client to its provider (the sender index is the client's slot at the
//! provider); `0x03` a client's pull request and `0x04` one frame of a
//! provider's pull answer, both with an encrypted body (see `access`).
//!
//! A packet is authenticated as associated data, not encrypted: Sphinx
//! already makes packets unlinkable across hops, and the group element must
//! stay at a fixed offset (13) for the kernel to steer on it. The nonce is the
//! sender index and the counter, so the two directions of a link never share
//! one; GCM-SIV also keeps a repeated nonce from leaking the key.
//!
//! Invariant: opening costs one AEAD verification (well under a microsecond)
//! and no scalar multiplication, so junk from outside costs the receiver
//! almost nothing. A counter is committed to the window only after its frame
//! authenticated, so forgeries cannot poison it.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM_SIV};
use zeroize::Zeroize;

use crate::error::LinkError;
use crate::keys::{PublicKey, SecretKey};

/// Bytes before the packet: kind, sender index, counter.
pub const FRAME_HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes a frame adds to a packet.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + TAG_LEN;
/// Offset of the Sphinx group element inside a frame (for kernel steering).
pub const FRAME_ALPHA_OFFSET: usize = FRAME_HEADER_LEN;

/// Frame kind: a Sphinx packet between nodes, authenticated, in clear.
pub const KIND_PACKET: u8 = 0x01;
/// Frame kind: a Sphinx packet from a client to its provider, authenticated,
/// in clear; the sender index is the client's slot.
pub const KIND_CLIENT_PACKET: u8 = 0x02;
/// Frame kind: a client's pull request, encrypted.
pub const KIND_PULL: u8 = 0x03;
/// Frame kind: one frame of a provider's answer to a pull, encrypted.
pub const KIND_DELIVERY: u8 = 0x04;

/// Is `kind` a frame kind this version knows?
pub const fn known_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_PACKET | KIND_CLIENT_PACKET | KIND_PULL | KIND_DELIVERY
    )
}

/// Do frames of `kind` carry an encrypted body?
pub const fn encrypted_kind(kind: u8) -> bool {
    matches!(kind, KIND_PULL | KIND_DELIVERY)
}

const LINK_CONTEXT: &str = "loopix-link 2026-11 pairwise key v1";

/// The clear header of a frame. Untrusted until [`LinkKey::open`] succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: u8,
    /// Index of the sender in the receiver's peer table.
    pub sender: u32,
    /// Per-link counter chosen by the sender.
    pub counter: u64,
}

impl FrameHeader {
    /// Parse the header of `frame` without authenticating it, to choose the
    /// key and consult the replay window. Refuses short frames and unknown
    /// kinds.
    pub fn peek(frame: &[u8]) -> Result<FrameHeader, LinkError> {
        if frame.len() < FRAME_OVERHEAD {
            return Err(LinkError::TooShort(frame.len()));
        }
        let kind = frame[0];
        if !known_kind(kind) {
            return Err(LinkError::UnknownKind(kind));
        }
        let sender = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&frame[5..13]);
        Ok(FrameHeader {
            kind,
            sender,
            counter: u64::from_be_bytes(c),
        })
    }

    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.sender.to_be_bytes());
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

/// The pairwise key of one link, the same at both ends.
pub struct LinkKey {
    key: LessSafeKey,
}

impl core::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// Derive the key shared by `ours` and the holder of `peer`:
    /// BLAKE3-derive-key over the X25519 secret and both public keys in
    /// sorted order. `None` if `peer` has low order.
    pub fn derive(ours: &SecretKey, peer: &PublicKey) -> Option<LinkKey> {
        let mine = ours.public_key();
        let mut shared = ours.diffie_hellman(peer)?;
        let (lo, hi) = if mine <= *peer {
            (mine, *peer)
        } else {
            (*peer, mine)
        };
        let mut out = [0u8; 16];
        blake3::Hasher::new_derive_key(LINK_CONTEXT)
            .update(&shared)
            .update(lo.as_bytes())
            .update(hi.as_bytes())
            .finalize_xof()
            .fill(&mut out);
        shared.zeroize();
        let key = LinkKey::from_bytes(&out);
        out.zeroize();
        Some(key)
    }

    /// A link key from its 16 raw bytes (tests and known-answer vectors).
    pub fn from_bytes(bytes: &[u8; 16]) -> LinkKey {
        let unbound = UnboundKey::new(&AES_128_GCM_SIV, bytes)
            .expect("AES-128-GCM-SIV takes any 16-byte key");
        LinkKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Write a frame carrying `packet` from `sender` with `counter` into
    /// `out`, which must be exactly `FRAME_OVERHEAD + packet.len()` bytes.
    /// The caller never reuses a counter on a link.
    pub fn seal(
        &self,
        sender: u32,
        counter: u64,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<(), LinkError> {
        let expected = FRAME_OVERHEAD + packet.len();
        if out.len() != expected {
            return Err(LinkError::WrongLength {
                expected,
                got: out.len(),
            });
        }
        out[FRAME_HEADER_LEN..FRAME_HEADER_LEN + packet.len()].copy_from_slice(packet);
        self.seal_in_place(sender, counter, out)
    }

    /// Seal a frame whose packet is already in place at
    /// `frame[FRAME_HEADER_LEN..frame.len() - TAG_LEN]`: writes the header
    /// and the tag around it. Saves a copy on a node's send path.
    pub fn seal_in_place(
        &self,
        sender: u32,
        counter: u64,
        frame: &mut [u8],
    ) -> Result<(), LinkError> {
        self.seal_kind(KIND_PACKET, sender, counter, frame)
    }

    /// As [`LinkKey::seal_in_place`] for any kind: a body of an encrypted
    /// kind is encrypted in place, any other is authenticated in clear.
    pub fn seal_kind(
        &self,
        kind: u8,
        sender: u32,
        counter: u64,
        frame: &mut [u8],
    ) -> Result<(), LinkError> {
        if frame.len() < FRAME_OVERHEAD {
            return Err(LinkError::TooShort(frame.len()));
        }
        if !known_kind(kind) {
            return Err(LinkError::UnknownKind(kind));
        }
        let header = FrameHeader {
            kind,
            sender,
            counter,
        };
        frame[0] = kind;
        frame[1..5].copy_from_slice(&sender.to_be_bytes());
        frame[5..13].copy_from_slice(&counter.to_be_bytes());
        let body_end = frame.len() - TAG_LEN;
        let tag = if encrypted_kind(kind) {
            let (head, body) = frame[..body_end].split_at_mut(FRAME_HEADER_LEN);
            self.key
                .seal_in_place_separate_tag(header.nonce(), Aad::from(&head[..]), body)
        } else {
            self.key.seal_in_place_separate_tag(
                header.nonce(),
                Aad::from(&frame[..body_end]),
                &mut [],
            )
        }
        .map_err(|_| LinkError::BadTag)?;
        frame[body_end..].copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Authenticate `frame` (of a clear kind) and return its header and
    /// packet. The caller checks the counter against the sender's
    /// [`ReplayWindow`] before (to save work) and commits it after this
    /// succeeds.
    pub fn open<'a>(&self, frame: &'a [u8]) -> Result<(FrameHeader, &'a [u8]), LinkError> {
        let header = FrameHeader::peek(frame)?;
        if encrypted_kind(header.kind) {
            return Err(LinkError::UnknownKind(header.kind));
        }
        let body_end = frame.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&frame[body_end..]);
        self.key
            .open_in_place(header.nonce(), Aad::from(&frame[..body_end]), &mut tag)
            .map_err(|_| LinkError::BadTag)?;
        Ok((header, &frame[FRAME_HEADER_LEN..body_end]))
    }

    /// Authenticate and decrypt `frame` (of an encrypted kind) in place and
    /// return its header and the plaintext body. On failure the body is left
    /// unusable.
    pub fn open_in_place<'a>(
        &self,
        frame: &'a mut [u8],
    ) -> Result<(FrameHeader, &'a mut [u8]), LinkError> {
        let header = FrameHeader::peek(frame)?;
        if !encrypted_kind(header.kind) {
            return Err(LinkError::UnknownKind(header.kind));
        }
        let (head, rest) = frame.split_at_mut(FRAME_HEADER_LEN);
        let body_len = rest.len() - TAG_LEN;
        self.key
            .open_in_place(header.nonce(), Aad::from(&head[..]), rest)
            .map_err(|_| LinkError::BadTag)?;
        Ok((header, &mut rest[..body_len]))
    }
}

/// Counters remembered behind the highest one seen.
pub const REPLAY_WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Sliding anti-replay window over one link's counters (as in IPsec): a
/// counter is new if it is above the highest seen, or within the window
/// behind it and not seen yet. Fixed size: 136 bytes per link.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WINDOW_WORDS],
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// A window that refuses every counter at or below `top` (a restart's
    /// saved top: what came before is unknown, so all of it counts as seen)
    /// and accepts any above it.
    pub fn resume_above(top: u64) -> Self {
        Self {
            highest: Some(top),
            bits: [u64::MAX; WINDOW_WORDS],
        }
    }

    /// The highest counter committed, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn slot(counter: u64) -> (usize, u64) {
        let pos = counter % REPLAY_WINDOW;
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), LinkError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= REPLAY_WINDOW {
            return Err(LinkError::TooOld(counter));
        }
        let (w, b) = Self::slot(counter);
        if self.bits[w] & b != 0 {
            Err(LinkError::Replay(counter))
        } else {
            Ok(())
        }
    }

    /// Record `counter` as seen. Call only after `check` passed and the
    /// frame authenticated.
    pub fn commit(&mut self, counter: u64) {
        match self.highest {
            // Older than the window: `check` refuses it, and marking its slot
            // would mark an unrelated counter inside the window as seen.
            Some(h) if counter < h && h - counter >= REPLAY_WINDOW => return,
            Some(h) if counter <= h => {}
            Some(h) => {
                // Forget the counters the window slides past.
                let advance = counter - h;
                if advance >= REPLAY_WINDOW {
                    self.bits = [0; WINDOW_WORDS];
                } else {
                    for c in h + 1..=counter {
                        let (w, b) = Self::slot(c);
                        self.bits[w] &= !b;
                    }
                }
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (w, b) = Self::slot(counter);
        self.bits[w] |= b;
        debug_assert!(
            self.highest.is_some_and(|h| h >= counter),
            "the window's top is at or above every committed counter"
        );
        debug_assert!(
            self.check(counter).is_err(),
            "a committed counter is refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (LinkKey, LinkKey) {
        let a = SecretKey::from_bytes([1; 32]);
        let b = SecretKey::from_bytes([2; 32]);
        (
            LinkKey::derive(&a, &b.public_key()).expect("valid"),
            LinkKey::derive(&b, &a.public_key()).expect("valid"),
        )
    }

    #[test]
    fn seal_open_both_directions() {
        let (ka, kb) = pair();
        let packet = [0x5au8; 100];
        let mut frame = vec![0u8; FRAME_OVERHEAD + 100];
        ka.seal(7, 42, &packet, &mut frame).expect("sized");
        let (h, p) = kb.open(&frame).expect("authentic");
        assert_eq!((h.sender, h.counter), (7, 42));
        assert_eq!(p, &packet);
        assert_eq!(
            &frame[FRAME_ALPHA_OFFSET..FRAME_ALPHA_OFFSET + 4],
            &[0x5a; 4]
        );
        kb.seal(9, 42, &packet, &mut frame).expect("sized");
        assert!(ka.open(&frame).is_ok());
    }

    #[test]
    fn any_flipped_bit_fails() {
        let (ka, kb) = pair();
        let mut frame = vec![0u8; FRAME_OVERHEAD + 64];
        ka.seal(1, 1, &[3u8; 64], &mut frame).expect("sized");
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            assert!(kb.open(&bad).is_err(), "bit flip at {i} accepted");
        }
        let other = LinkKey::from_bytes(&[9u8; 16]);
        assert_eq!(other.open(&frame).err(), Some(LinkError::BadTag));
    }

    #[test]
    fn short_and_unknown_kind() {
        let (ka, _) = pair();
        assert_eq!(ka.open(&[1u8; 10]).err(), Some(LinkError::TooShort(10)));
        let mut f = [0u8; 40];
        f[0] = 0x77;
        assert_eq!(ka.open(&f).err(), Some(LinkError::UnknownKind(0x77)));
        assert_eq!(
            ka.seal(0, 0, &[0u8; 4], &mut [0u8; 5]),
            Err(LinkError::WrongLength {
                expected: 33,
                got: 5
            })
        );
    }

    #[test]
    fn low_order_peer_refused() {
        let a = SecretKey::from_bytes([1; 32]);
        assert!(LinkKey::derive(&a, &PublicKey::from_bytes([0; 32])).is_none());
    }

    #[test]
    fn resumed_window_refuses_everything_up_to_its_top() {
        let mut w = ReplayWindow::resume_above(5000);
        assert_eq!(w.highest(), Some(5000));
        for c in [0, 1, 3000, 3976, 3977, 4999, 5000] {
            assert!(w.check(c).is_err(), "counter {c} accepted");
        }
        assert!(w.check(5001).is_ok());
        w.commit(5003);
        assert!(w.check(5001).is_ok() && w.check(5002).is_ok());
        assert!(w.check(5000).is_err() && w.check(5003).is_err());
        assert_eq!(ReplayWindow::new().highest(), None);
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new();
        assert!(w.check(5).is_ok());
        w.commit(5);
        assert_eq!(w.check(5), Err(LinkError::Replay(5)));
        assert!(w.check(4).is_ok());
        w.commit(4);
        assert_eq!(w.check(4), Err(LinkError::Replay(4)));
        w.commit(2000);
        assert_eq!(w.check(5), Err(LinkError::TooOld(5)));
        assert!(w.check(2000 - 1023).is_ok());
        assert_eq!(w.check(2000 - 1024), Err(LinkError::TooOld(976)));
        w.commit(2001);
        w.commit(1999);
        assert_eq!(w.check(1999), Err(LinkError::Replay(1999)));
        // Sliding by less than a window clears exactly the slots passed.
        w.commit(2001 + 1023);
        assert!(w.check(2001).is_err());
        assert!(w.check(2002).is_ok());
    }

    /// Regression (issue "tests that pass only in release"): `commit`
    /// computed `highest - counter` before checking `counter < highest`, so
    /// any counter above the highest seen overflowed. Release builds wrapped
    /// and happened to take the right branch; debug builds panicked on the
    /// first frame that advanced a window. The `open_frame` fuzz input
    /// `bug_commit_above_highest_overflow.bin` hits the same line.
    #[test]
    fn bug_commit_above_highest_overflow() {
        let mut w = ReplayWindow::new();
        w.commit(0);
        for counter in [
            1,
            2,
            REPLAY_WINDOW,
            REPLAY_WINDOW * 3,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert!(w.check(counter).is_ok(), "{counter} is new");
            w.commit(counter);
            assert_eq!(w.check(counter), Err(LinkError::Replay(counter)));
        }
        // Far below the highest: refused by check, and commit leaves it so.
        w.commit(5);
        assert_eq!(w.check(5), Err(LinkError::TooOld(5)));
        assert_eq!(w.check(u64::MAX), Err(LinkError::Replay(u64::MAX)));
    }

    /// Regression (found by property testing): committing a counter older
    /// than the window marked a counter inside it as seen.
    #[test]
    fn bug_commit_too_old_poisoned_window() {
        let mut w = ReplayWindow::new();
        w.commit(2000);
        w.commit(975);
        assert!(w.check(1999).is_ok());
    }
}
