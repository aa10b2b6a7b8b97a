//! The access link between a client and its provider: what a client sends
//! (Sphinx packets, pull requests) and what its provider answers (pull
//! answers), as frames under the client's registration key.
//!
//! Every frame uses the [`crate::link`] layout. The sender index of a
//! client's frames is its slot at the provider; the provider's frames to a
//! client carry [`provider_sender`]`(slot)` (the slot with the top bit set), so the two directions never share a
//! nonce under the one key; the client's slot is in it too, so a load
//! generator that multiplexes many clients over one socket can tell whose
//! answer a frame is before it decrypts. Counters are chosen by each sender, strictly
//! increasing, and checked against a [`crate::ReplayWindow`] by the
//! receiver.
//!
//! | frame | kind | body (after the 13-byte header) | length |
//! |-------|------|------------------------------------|--------|
//! | packet | `KIND_CLIENT_PACKET` | Sphinx packet, in clear | `frame_len` |
//! | pull request | `KIND_PULL` | encrypted [`PullRequest`] padded to `packet_len` | `frame_len` |
//! | pull answer, one of `k` | `KIND_DELIVERY` | encrypted [`Delivery`] | [`delivery_frame_len`] |
//!
//! A pull request and a Sphinx packet have the same length, so an observer
//! of the access link sees one kind of datagram leave the client apart from
//! the kind byte. A pull answer is always exactly `k` delivery frames of one
//! length, real messages first, then dummies: the body is encrypted, so the
//! number of real messages is hidden.
//!
//! Pull request body, integers big-endian:
//!
//! | offset | bytes | field |
//! |--------|-------|-------|
//! | 0 | 8 | request id (echoed in the answer) |
//! | 8 | 16 | mailbox the client asks for |
//! | 24 | 8 | digest of the rates the client runs at (its provider refuses a client whose rates are not the network's) |
//! | 32 | 2 | number of acknowledgements `n` (at most [`max_acks`]) |
//! | 34 | 8 n | acknowledged message ids |
//! | ... | | zero padding to `packet_len` |
//!
//! Delivery body:
//!
//! | offset | bytes | field |
//! |--------|-------|-------|
//! | 0 | 8 | request id of the pull it answers |
//! | 8 | 2 | index of this frame in the answer, from 0 |
//! | 10 | 2 | `k`, frames in the answer |
//! | 12 | 1 | 1: a message; 0: a dummy |
//! | 13 | 8 | message id (0 in a dummy) |
//! | 21 | `packet_len` | the stored Sphinx packet (zeros in a dummy) |

use crate::error::LinkError;
use crate::geometry::Geometry;
use crate::keys::MailboxId;
use crate::link::{
    FrameHeader, LinkKey, FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_CLIENT_PACKET, KIND_DELIVERY,
    KIND_PULL,
};

/// The bit that marks a frame's sender index as the provider's.
pub const PROVIDER_BIT: u32 = 0x8000_0000;
/// Largest slot a provider hands out.
pub const MAX_SLOT: u32 = PROVIDER_BIT - 1;

/// Sender index of the provider's frames to the client at `slot`.
pub const fn provider_sender(slot: u32) -> u32 {
    PROVIDER_BIT | (slot & MAX_SLOT)
}

/// The client slot a provider's frame is addressed to, read from its
/// (untrusted) sender index; `None` if it is not a provider's.
pub const fn addressed_slot(sender: u32) -> Option<u32> {
    if sender & PROVIDER_BIT != 0 {
        Some(sender & MAX_SLOT)
    } else {
        None
    }
}

const PULL_FIXED: usize = 8 + 16 + 8 + 2;
/// Bytes of a delivery body before the packet.
pub const DELIVERY_HEADER_LEN: usize = 8 + 2 + 2 + 1 + 8;

/// Acknowledgements one pull request can carry.
pub const fn max_acks(g: &Geometry) -> usize {
    (g.packet_len() - PULL_FIXED) / 8
}

/// Length of a pull request frame: the same as a packet frame.
pub const fn pull_frame_len(g: &Geometry) -> usize {
    g.frame_len()
}

/// Length of one delivery frame.
pub const fn delivery_frame_len(g: &Geometry) -> usize {
    FRAME_OVERHEAD + DELIVERY_HEADER_LEN + g.packet_len()
}

/// A client's pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Chosen by the client, echoed in every frame of the answer.
    pub request_id: u64,
    /// The mailbox asked for (must be the client's own).
    pub mailbox: MailboxId,
    /// The digest of the rates the client runs at
    /// (`loopix_directory::ClientRates::digest`).
    pub rates: [u8; 8],
    /// Ids of messages received in earlier answers: the provider deletes
    /// them before it answers.
    pub acks: Vec<u64>,
}

/// Why an access-link frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The link layer refused it.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Not the kind expected here.
    #[error("frame kind 0x{0:02x} is not expected here")]
    WrongKind(u8),
    /// A body whose fields do not parse.
    #[error("malformed body: {0}")]
    Malformed(&'static str),
}

impl PullRequest {
    /// Seal this request into `frame` (exactly [`pull_frame_len`] bytes).
    pub fn seal(
        &self,
        g: &Geometry,
        key: &LinkKey,
        slot: u32,
        counter: u64,
        frame: &mut [u8],
    ) -> Result<(), AccessError> {
        if frame.len() != pull_frame_len(g) {
            return Err(LinkError::WrongLength {
                expected: pull_frame_len(g),
                got: frame.len(),
            }
            .into());
        }
        if self.acks.len() > max_acks(g) {
            return Err(AccessError::Malformed("too many acknowledgements"));
        }
        let body = &mut frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + g.packet_len()];
        body.fill(0);
        body[..8].copy_from_slice(&self.request_id.to_be_bytes());
        body[8..24].copy_from_slice(&self.mailbox.0);
        body[24..32].copy_from_slice(&self.rates);
        body[32..34].copy_from_slice(&(self.acks.len() as u16).to_be_bytes());
        for (i, id) in self.acks.iter().enumerate() {
            body[PULL_FIXED + 8 * i..PULL_FIXED + 8 * i + 8].copy_from_slice(&id.to_be_bytes());
        }
        key.seal_kind(KIND_PULL, slot, counter, frame)?;
        Ok(())
    }

    /// Parse a decrypted body (see [`LinkKey::open_in_place`]).
    pub fn parse(body: &[u8]) -> Result<PullRequest, AccessError> {
        if body.len() < PULL_FIXED {
            return Err(AccessError::Malformed("pull request too short"));
        }
        let n = u16::from_be_bytes([body[32], body[33]]) as usize;
        if PULL_FIXED + 8 * n > body.len() {
            return Err(AccessError::Malformed("more acknowledgements than fit"));
        }
        let mut mailbox = [0u8; 16];
        mailbox.copy_from_slice(&body[8..24]);
        let mut rates = [0u8; 8];
        rates.copy_from_slice(&body[24..32]);
        Ok(PullRequest {
            request_id: u64_at(body, 0),
            mailbox: MailboxId(mailbox),
            rates,
            acks: (0..n).map(|i| u64_at(body, PULL_FIXED + 8 * i)).collect(),
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// One frame of a pull answer, as the client reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The pull it answers.
    pub request_id: u64,
    /// Position in the answer.
    pub index: u16,
    /// Frames in the answer.
    pub k: u16,
    /// The message id and stored packet; `None` for a dummy.
    pub message: Option<(u64, &'a mut [u8])>,
}

/// Seal one delivery frame for the client at `slot` into `frame` (exactly
/// [`delivery_frame_len`] bytes): `message` is the id and stored packet
/// (exactly `packet_len` bytes), `None` for a dummy.
#[allow(clippy::too_many_arguments)] // reason: one field of the frame each, all needed
pub fn seal_delivery(
    g: &Geometry,
    key: &LinkKey,
    slot: u32,
    counter: u64,
    request_id: u64,
    index: u16,
    k: u16,
    message: Option<(u64, &[u8])>,
    frame: &mut [u8],
) -> Result<(), AccessError> {
    if frame.len() != delivery_frame_len(g) {
        return Err(LinkError::WrongLength {
            expected: delivery_frame_len(g),
            got: frame.len(),
        }
        .into());
    }
    let body =
        &mut frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + DELIVERY_HEADER_LEN + g.packet_len()];
    body[..8].copy_from_slice(&request_id.to_be_bytes());
    body[8..10].copy_from_slice(&index.to_be_bytes());
    body[10..12].copy_from_slice(&k.to_be_bytes());
    match message {
        Some((id, packet)) => {
            if packet.len() != g.packet_len() {
                return Err(AccessError::Malformed("stored packet has the wrong length"));
            }
            body[12] = 1;
            body[13..21].copy_from_slice(&id.to_be_bytes());
            body[DELIVERY_HEADER_LEN..].copy_from_slice(packet);
        }
        None => {
            body[12] = 0;
            body[13..].fill(0);
        }
    }
    key.seal_kind(KIND_DELIVERY, provider_sender(slot), counter, frame)?;
    Ok(())
}

/// Open a delivery frame for the client at `slot` in place: checks the
/// kind, the sender, the tag and the body. The caller checks the counter
/// against its window.
pub fn open_delivery<'a>(
    g: &Geometry,
    key: &LinkKey,
    slot: u32,
    frame: &'a mut [u8],
) -> Result<(FrameHeader, Delivery<'a>), AccessError> {
    if frame.len() != delivery_frame_len(g) {
        return Err(LinkError::WrongLength {
            expected: delivery_frame_len(g),
            got: frame.len(),
        }
        .into());
    }
    let header = FrameHeader::peek(frame)?;
    if header.kind != KIND_DELIVERY || header.sender != provider_sender(slot) {
        return Err(AccessError::WrongKind(header.kind));
    }
    let (header, body) = key.open_in_place(frame)?;
    let request_id = u64_at(body, 0);
    let index = u16::from_be_bytes([body[8], body[9]]);
    let k = u16::from_be_bytes([body[10], body[11]]);
    if index >= k {
        return Err(AccessError::Malformed("index beyond k"));
    }
    let message = match body[12] {
        0 => None,
        1 => {
            let id = u64_at(body, 13);
            Some((id, &mut body[DELIVERY_HEADER_LEN..]))
        }
        _ => return Err(AccessError::Malformed("bad message flag")),
    };
    Ok((
        header,
        Delivery {
            request_id,
            index,
            k,
            message,
        },
    ))
}

/// Seal a Sphinx packet from a client into `frame` (exactly `frame_len`
/// bytes).
pub fn seal_client_packet(
    key: &LinkKey,
    slot: u32,
    counter: u64,
    packet: &[u8],
    frame: &mut [u8],
) -> Result<(), LinkError> {
    let expected = FRAME_OVERHEAD + packet.len();
    if frame.len() != expected {
        return Err(LinkError::WrongLength {
            expected,
            got: frame.len(),
        });
    }
    frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + packet.len()].copy_from_slice(packet);
    key.seal_kind(KIND_CLIENT_PACKET, slot, counter, frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry::DEFAULT;

    #[test]
    fn pull_round_trip_and_tamper() {
        let key = LinkKey::from_bytes(&[7; 16]);
        let req = PullRequest {
            request_id: 99,
            mailbox: MailboxId([3; 16]),
            rates: *b"ratesdig",
            acks: vec![1, 5, u64::MAX],
        };
        let mut frame = vec![0u8; pull_frame_len(&G)];
        req.seal(&G, &key, 12, 1000, &mut frame).expect("fits");
        assert_eq!(frame[0], KIND_PULL);
        let sealed = frame.clone();
        let (h, body) = key.open_in_place(&mut frame).expect("authentic");
        assert_eq!((h.sender, h.counter), (12, 1000));
        assert_eq!(PullRequest::parse(body).expect("parses"), req);
        // The body is not in clear.
        assert!(!sealed.windows(8).any(|w| w == 99u64.to_be_bytes()));
        for i in [0, 3, 10, 20, 700, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(key.open_in_place(&mut bad).is_err(), "flip at {i}");
        }
        let mut f = sealed.clone();
        assert!(
            key.open(&f).is_err(),
            "an encrypted kind is not a clear one"
        );
        assert!(LinkKey::from_bytes(&[8; 16]).open_in_place(&mut f).is_err());
    }

    #[test]
    fn pull_limits() {
        let key = LinkKey::from_bytes(&[7; 16]);
        let mut frame = vec![0u8; pull_frame_len(&G)];
        let full = PullRequest {
            request_id: 1,
            mailbox: MailboxId([0; 16]),
            rates: [0; 8],
            acks: (0..max_acks(&G) as u64).collect(),
        };
        full.seal(&G, &key, 0, 0, &mut frame).expect("max fits");
        let over = PullRequest {
            acks: (0..=max_acks(&G) as u64).collect(),
            ..full
        };
        assert!(over.seal(&G, &key, 0, 1, &mut frame).is_err());
        // A count pointing past the body is refused, not a panic.
        let mut body = vec![0u8; G.packet_len()];
        body[32..34].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(PullRequest::parse(&body).is_err());
        assert!(PullRequest::parse(&body[..10]).is_err());
    }

    #[test]
    fn deliveries_real_and_dummy_look_alike() {
        let key = LinkKey::from_bytes(&[1; 16]);
        let packet = vec![0xabu8; G.packet_len()];
        let mut real = vec![0u8; delivery_frame_len(&G)];
        let mut dummy = vec![0u8; delivery_frame_len(&G)];
        seal_delivery(&G, &key, 9, 5, 77, 0, 2, Some((42, &packet)), &mut real).expect("ok");
        seal_delivery(&G, &key, 9, 6, 77, 1, 2, None, &mut dummy).expect("ok");
        assert_eq!(real.len(), dummy.len());
        assert_eq!(real[..5], dummy[..5], "kind and sender are the same");
        assert!(!real.windows(4).any(|w| w == [0xab; 4]), "packet in clear");
        let h = FrameHeader::peek(&real).expect("header");
        assert_eq!(addressed_slot(h.sender), Some(9));
        assert_eq!(addressed_slot(3), None);
        let mut other_slot = real.clone();
        assert!(open_delivery(&G, &key, 8, &mut other_slot).is_err());
        let (h, d) = open_delivery(&G, &key, 9, &mut real).expect("ok");
        assert_eq!(h.counter, 5);
        assert_eq!((d.request_id, d.index, d.k), (77, 0, 2));
        let (id, p) = d.message.expect("real");
        assert_eq!(id, 42);
        assert_eq!(p, &packet[..]);
        let (_, d) = open_delivery(&G, &key, 9, &mut dummy).expect("ok");
        assert!(d.message.is_none());
        let mut short = vec![0u8; 50];
        assert!(open_delivery(&G, &key, 9, &mut short).is_err());
    }

    #[test]
    fn client_packet_frames() {
        let key = LinkKey::from_bytes(&[2; 16]);
        let packet = vec![9u8; G.packet_len()];
        let mut frame = vec![0u8; G.frame_len()];
        seal_client_packet(&key, 3, 8, &packet, &mut frame).expect("ok");
        let (h, p) = key.open(&frame).expect("ok");
        assert_eq!((h.kind, h.sender, h.counter), (KIND_CLIENT_PACKET, 3, 8));
        assert_eq!(p, &packet[..]);
    }
}
