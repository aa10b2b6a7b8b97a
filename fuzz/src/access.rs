//! `access_session`: the client's access-link state machine
//! (`loopix_client::AccessSession`, which the driver and the load generator
//! both run) fed a program of pulls and provider frames.
//!
//! Each operation is one byte (mod 5) and its arguments:
//! 0 seal a pull (checked: it opens under the key, carries at most
//!   `max_acks` distinct acknowledgements, and its request id is new);
//! 1 a raw frame (u16 length, bytes);
//! 2 a delivery frame sealed with the client's key: u64 counter, a request
//!   id (one of the recent pulls or any u64), index, k, and a message id
//!   and packet or a dummy;
//! 3 the same with one bit flipped at a u16 position;
//! 4 the last frame again.
//!
//! Checked throughout: a message id is handed out as new at most once
//! while the session remembers it; every frame has exactly one outcome in
//! the counters; pending acknowledgements stay within the limit.

use std::collections::{HashSet, VecDeque};

use loopix_client::{AccessSession, Received, SessionLimits};
use loopix_crypto::access::{self, PullRequest};
use loopix_crypto::{Geometry, LinkKey};

use crate::fixed;
use crate::Input;

/// Small tables, so that the fuzzer reaches their bounds.
const LIMITS: SessionLimits = SessionLimits {
    handled_ids: 8,
    recent_requests: 4,
    pending_acks: 8,
};
/// Operations read from one input at most.
const MAX_OPS: usize = 512;

/// The session under test: client `slot`'s, from counter 1.
fn session(g: Geometry, slot: u32) -> AccessSession {
    AccessSession::new(
        g,
        &fixed::access_key(slot),
        slot,
        fixed::mailbox(slot),
        [0; 8],
        1,
        LIMITS,
    )
}

/// See the module documentation.
pub fn access_session(data: &[u8]) {
    let g = Geometry::DEFAULT;
    let slot = 0;
    let key = LinkKey::from_bytes(&fixed::access_key(slot));
    let mut s = session(g, slot);
    let mut input = Input::new(data);
    let mut requests: Vec<u64> = Vec::new();
    let mut handled: VecDeque<u64> = VecDeque::new();
    let mut frames = 0u64;
    let mut last: Vec<u8> = Vec::new();
    let dlen = access::delivery_frame_len(&g);
    let mut out = vec![0u8; s.send_frame_len()];
    for _ in 0..MAX_OPS {
        let Some(op) = input.next_byte() else { break };
        let frame: Vec<u8> = match op % 5 {
            0 => {
                let pending = s.acks_pending();
                let n = s.seal_pull(&mut out).unwrap();
                assert_eq!(n, pending.min(access::max_acks(&g)));
                let mut opened = out.clone();
                let (header, body) = key.open_in_place(&mut opened).unwrap();
                let request = PullRequest::parse(body).unwrap();
                assert_eq!(request.request_id, header.counter);
                assert!(!requests.contains(&request.request_id), "request id reused");
                let distinct: HashSet<u64> = request.acks.iter().copied().collect();
                assert_eq!(
                    distinct.len(),
                    request.acks.len(),
                    "an ack twice in one pull"
                );
                requests.push(request.request_id);
                continue;
            }
            1 => {
                let len = usize::from(input.u16()) % (dlen + 16);
                input.take(len).to_vec()
            }
            2 | 3 => {
                let counter = input.u64();
                let pick = input.byte();
                let request_id = match requests.iter().rev().nth(usize::from(pick % 8)) {
                    Some(r) if pick & 0x80 == 0 => *r,
                    _ => input.u64(),
                };
                let index = u16::from(input.byte());
                let k = u16::from(input.byte());
                let message_id = input.u64();
                let real = input.byte() & 1 == 1;
                let packet = input.padded(g.packet_len());
                let mut f = vec![0u8; dlen];
                let message = real.then_some((message_id, packet.as_slice()));
                access::seal_delivery(
                    &g, &key, slot, counter, request_id, index, k, message, &mut f,
                )
                .unwrap();
                if op % 5 == 3 {
                    let bit = usize::from(input.u16()) % (dlen * 8);
                    f[bit / 8] ^= 1 << (bit % 8);
                }
                f
            }
            _ => last.clone(),
        };
        last = frame.clone();
        let mut buf = frame;
        frames += 1;
        match s.handle_frame(&mut buf) {
            Received::Message { id, packet } => {
                assert_eq!(packet.len(), g.packet_len());
                assert!(!handled.contains(&id), "message {id} handed out twice");
                if handled.len() >= LIMITS.handled_ids {
                    handled.pop_front();
                }
                handled.push_back(id);
            }
            Received::Duplicate => {
                assert!(handled.contains(&id_of_last(&last, &key, slot)));
            }
            Received::Dummy | Received::Refused(_) => {}
        }
        assert!(s.acks_pending() <= LIMITS.pending_acks);
    }
    let st = s.stats();
    let outcomes = st.deliveries_real
        + st.deliveries_dummy
        + st.drop_wrong_length
        + st.drop_wrong_kind
        + st.drop_replayed
        + st.drop_bad_tag
        + st.drop_malformed
        + st.drop_unknown_request;
    assert_eq!(outcomes, frames, "every frame has exactly one outcome");
}

/// The message id in a delivery frame (which the session accepted, so it
/// opens).
fn id_of_last(frame: &[u8], key: &LinkKey, slot: u32) -> u64 {
    let mut f = frame.to_vec();
    let (_, d) = access::open_delivery(&Geometry::DEFAULT, key, slot, &mut f).unwrap();
    d.message.map(|(id, _)| id).unwrap()
}
