//! One client's access link to its provider, sans-IO: the state machine
//! that both the online driver (`driver.rs`) and the load generator's
//! emulated clients run, so the two can never disagree on what a valid
//! delivery is.
//!
//! Outgoing, [`AccessSession::seal_packet`] and [`AccessSession::seal_pull`]
//! write frames into the caller's buffer under one strictly increasing
//! counter (packets and pulls share it; a pull's counter is also its request
//! id). Incoming, [`AccessSession::handle_frame`] checks a delivery frame in
//! the order that costs junk the least: length, kind and addressed slot,
//! counter against the replay window, tag, body, then the request id against
//! the recent pulls; it tells the caller whether the frame carried a new
//! message, a dummy or a re-delivery, and queues the acknowledgement.
//!
//! Invariants: bytes from the network never panic the session; every refused
//! frame is counted under one reason in [`SessionStats`]; the window is
//! committed only after the tag verified; every table is bounded by
//! [`SessionLimits`]; a message id is handed out at most once while it is
//! remembered (re-deliveries are acknowledged again, never processed twice).
//! The session reads no clock: the caller gives the first counter.

use std::collections::{HashSet, VecDeque};

use loopix_crypto::access::{self, AccessError, PullRequest};
use loopix_crypto::link::{FrameHeader, KIND_DELIVERY};
use loopix_crypto::{Geometry, LinkError, LinkKey, MailboxId, ReplayWindow};

/// Bounds on a session's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Message ids remembered as handled (to ignore re-deliveries).
    pub handled_ids: usize,
    /// Pull requests whose answers are still accepted. Answers to other
    /// requests are dropped: a restarted client has a fresh replay window,
    /// and the request id keeps old answers, replayed by someone, out.
    pub recent_requests: usize,
    /// Acknowledgements waiting for a pull.
    pub pending_acks: usize,
}

impl SessionLimits {
    /// A real client: remembers enough ids for hours of traffic.
    pub const CLIENT: SessionLimits = SessionLimits {
        handled_ids: 65_536,
        recent_requests: 64,
        pending_acks: 65_536,
    };
    /// One of thousands of emulated clients (loadgen): small tables, so
    /// that 5,000 of them stay within the generator's memory bound. An id
    /// forgotten early is only delivered and acknowledged once more.
    pub const EMULATED: SessionLimits = SessionLimits {
        handled_ids: 64,
        recent_requests: 16,
        pending_acks: 1_024,
    };
}

/// Why a received frame was refused, one reason each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not the length of a delivery frame.
    WrongLength,
    /// Unknown kind, or not a delivery frame addressed to this slot.
    WrongKind,
    /// Counter replayed or behind the window.
    Replayed,
    /// The tag did not verify (wrong key, tampered).
    BadTag,
    /// Authentic but a malformed body.
    Malformed,
    /// An answer to a pull this session did not send recently.
    UnknownRequest,
}

/// What one received frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A message not handled before: give `packet` to the client core. Its
    /// acknowledgement is queued.
    Message {
        /// The provider's id of the stored message.
        id: u64,
        /// The stored Sphinx packet (the core processes it in place).
        packet: &'a mut [u8],
    },
    /// A padding frame of a pull answer.
    Dummy,
    /// A message handled before (our acknowledgement was lost or is on its
    /// way): acknowledged again, not to be processed.
    Duplicate,
    /// Refused and counted.
    Refused(Refusal),
}

/// What the session sealed, received and refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Client-packet frames sealed.
    pub packets_sealed: u64,
    /// Pull requests sealed.
    pub pulls_sealed: u64,
    /// Acknowledgements carried by those pulls.
    pub acks_sent: u64,
    /// Delivery frames carrying a message.
    pub deliveries_real: u64,
    /// Delivery frames that were dummies.
    pub deliveries_dummy: u64,
    /// Messages delivered again after they were handled.
    pub duplicates: u64,
    /// Refused: not the length of a delivery frame.
    pub drop_wrong_length: u64,
    /// Refused: unknown kind, or not a delivery frame for this slot.
    pub drop_wrong_kind: u64,
    /// Refused: counter replayed or behind the window.
    pub drop_replayed: u64,
    /// Refused: the tag did not verify.
    pub drop_bad_tag: u64,
    /// Refused: authentic but a malformed body.
    pub drop_malformed: u64,
    /// Refused: an answer to a pull not sent recently.
    pub drop_unknown_request: u64,
    /// Acknowledgements forgotten because the pending queue was full.
    pub acks_forgotten: u64,
}

/// One client's access link (see the module documentation).
pub struct AccessSession {
    geometry: Geometry,
    key: LinkKey,
    slot: u32,
    mailbox: MailboxId,
    rates: [u8; 8],
    counter: u64,
    window: ReplayWindow,
    /// Ids to acknowledge in the next pulls, oldest first, no repeats.
    acks: VecDeque<u64>,
    ack_set: HashSet<u64>,
    handled: HashSet<u64>,
    handled_order: VecDeque<u64>,
    requests: VecDeque<u64>,
    limits: SessionLimits,
    stats: SessionStats,
}

impl AccessSession {
    /// A session for the client at `slot` with `mailbox`, under the
    /// 16-byte `access_key`, announcing `rates` (the digest of the rates the
    /// client runs at, `Rates::announced().digest()`) in every pull.
    /// `first_counter` must be above any counter this slot used before (the
    /// wall clock in microseconds does that across restarts).
    pub fn new(
        geometry: Geometry,
        access_key: &[u8; 16],
        slot: u32,
        mailbox: MailboxId,
        rates: [u8; 8],
        first_counter: u64,
        limits: SessionLimits,
    ) -> AccessSession {
        assert!(limits.handled_ids > 0 && limits.recent_requests > 0 && limits.pending_acks > 0);
        AccessSession {
            geometry,
            key: LinkKey::from_bytes(access_key),
            slot,
            mailbox,
            rates,
            counter: first_counter,
            window: ReplayWindow::new(),
            acks: VecDeque::new(),
            ack_set: HashSet::new(),
            handled: HashSet::new(),
            handled_order: VecDeque::new(),
            requests: VecDeque::with_capacity(limits.recent_requests),
            limits,
            stats: SessionStats::default(),
        }
    }

    /// Announce `rates` (a `ClientRates` digest) in the pulls from now on:
    /// after the client's rates change (a load generator's sweep step).
    pub fn announce_rates(&mut self, rates: [u8; 8]) {
        self.rates = rates;
    }

    /// The slot this session is registered at.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Length of every outgoing frame (packets and pulls alike).
    pub fn send_frame_len(&self) -> usize {
        self.geometry.frame_len()
    }

    /// Length of every frame a provider sends to this session.
    pub fn delivery_frame_len(&self) -> usize {
        access::delivery_frame_len(&self.geometry)
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Acknowledgements waiting for the next pull.
    pub fn acks_pending(&self) -> usize {
        self.acks.len()
    }

    fn next_counter(&mut self) -> u64 {
        let c = self.counter;
        // A counter space of 2^64 from the wall clock in microseconds does
        // not run out; saturating keeps a forged first counter from wrapping.
        self.counter = self.counter.saturating_add(1);
        c
    }

    /// Seal a Sphinx packet (exactly `packet_len` bytes) into `out`
    /// (exactly [`Self::send_frame_len`] bytes).
    pub fn seal_packet(&mut self, packet: &[u8], out: &mut [u8]) -> Result<(), LinkError> {
        let counter = self.next_counter();
        access::seal_client_packet(&self.key, self.slot, counter, packet, out)?;
        self.stats.packets_sealed += 1;
        Ok(())
    }

    /// Seal a pull request into `out` (exactly [`Self::send_frame_len`]
    /// bytes) carrying the oldest pending acknowledgements (at most
    /// [`access::max_acks`]; the rest wait for the next pull). Returns the
    /// number of acknowledgements it carries. The request id is remembered
    /// among the recent ones whose answers are accepted.
    pub fn seal_pull(&mut self, out: &mut [u8]) -> Result<usize, AccessError> {
        let n = self.acks.len().min(access::max_acks(&self.geometry));
        let counter = self.next_counter();
        // The counter is unique, so it serves as the request id too.
        let request = PullRequest {
            request_id: counter,
            mailbox: self.mailbox,
            rates: self.rates,
            acks: self.acks.iter().take(n).copied().collect(),
        };
        request.seal(&self.geometry, &self.key, self.slot, counter, out)?;
        for id in self.acks.drain(..n) {
            self.ack_set.remove(&id);
        }
        if self.requests.len() >= self.limits.recent_requests {
            self.requests.pop_front();
        }
        self.requests.push_back(counter);
        self.stats.pulls_sealed += 1;
        self.stats.acks_sent += n as u64;
        Ok(n)
    }

    fn refuse<'a>(&mut self, why: Refusal) -> Received<'a> {
        let s = &mut self.stats;
        match why {
            Refusal::WrongLength => s.drop_wrong_length += 1,
            Refusal::WrongKind => s.drop_wrong_kind += 1,
            Refusal::Replayed => s.drop_replayed += 1,
            Refusal::BadTag => s.drop_bad_tag += 1,
            Refusal::Malformed => s.drop_malformed += 1,
            Refusal::UnknownRequest => s.drop_unknown_request += 1,
        }
        Received::Refused(why)
    }

    /// Check one frame received from the provider's address (the caller
    /// checks the source) and say what it was. `frame` is decrypted in
    /// place.
    pub fn handle_frame<'a>(&mut self, frame: &'a mut [u8]) -> Received<'a> {
        if frame.len() != self.delivery_frame_len() {
            return self.refuse(Refusal::WrongLength);
        }
        let header = match FrameHeader::peek(frame) {
            Ok(h) => h,
            Err(_) => return self.refuse(Refusal::WrongKind),
        };
        if header.kind != KIND_DELIVERY || header.sender != access::provider_sender(self.slot) {
            return self.refuse(Refusal::WrongKind);
        }
        // Cheap check first; commit only once the frame authenticated.
        if self.window.check(header.counter).is_err() {
            return self.refuse(Refusal::Replayed);
        }
        let delivery = match access::open_delivery(&self.geometry, &self.key, self.slot, frame) {
            Ok((_, d)) => d,
            Err(AccessError::Link(LinkError::BadTag)) => return self.refuse(Refusal::BadTag),
            Err(AccessError::WrongKind(_) | AccessError::Link(LinkError::UnknownKind(_))) => {
                return self.refuse(Refusal::WrongKind)
            }
            Err(_) => return self.refuse(Refusal::Malformed),
        };
        self.window.commit(header.counter);
        if !self.requests.contains(&delivery.request_id) {
            return self.refuse(Refusal::UnknownRequest);
        }
        let Some((id, packet)) = delivery.message else {
            self.stats.deliveries_dummy += 1;
            return Received::Dummy;
        };
        self.stats.deliveries_real += 1;
        self.queue_ack(id);
        if self.handled.contains(&id) {
            self.stats.duplicates += 1;
            return Received::Duplicate;
        }
        self.remember_handled(id);
        Received::Message { id, packet }
    }

    fn remember_handled(&mut self, id: u64) {
        if self.handled_order.len() >= self.limits.handled_ids {
            if let Some(old) = self.handled_order.pop_front() {
                self.handled.remove(&old);
            }
        }
        self.handled.insert(id);
        self.handled_order.push_back(id);
        debug_assert_eq!(self.handled.len(), self.handled_order.len());
        debug_assert!(self.handled_order.len() <= self.limits.handled_ids);
    }

    fn queue_ack(&mut self, id: u64) {
        if !self.ack_set.insert(id) {
            return;
        }
        if self.acks.len() >= self.limits.pending_acks {
            // Bounded: a message whose ack is forgotten is delivered again
            // and acknowledged then.
            if let Some(old) = self.acks.pop_front() {
                self.ack_set.remove(&old);
                self.stats.acks_forgotten += 1;
            }
        }
        self.acks.push_back(id);
        debug_assert_eq!(self.acks.len(), self.ack_set.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [7; 16];
    const SLOT: u32 = 3;

    fn session(limits: SessionLimits) -> AccessSession {
        AccessSession::new(
            Geometry::DEFAULT,
            &KEY,
            SLOT,
            MailboxId([1; 16]),
            [5; 8],
            1_000,
            limits,
        )
    }

    /// A provider's answer frame to `request_id`.
    fn delivery(counter: u64, request_id: u64, message: Option<(u64, &[u8])>) -> Vec<u8> {
        let g = Geometry::DEFAULT;
        let mut frame = vec![0u8; access::delivery_frame_len(&g)];
        access::seal_delivery(
            &g,
            &LinkKey::from_bytes(&KEY),
            SLOT,
            counter,
            request_id,
            0,
            1,
            message,
            &mut frame,
        )
        .expect("sized");
        frame
    }

    /// The pull just sealed, as the provider parses it.
    fn pull(s: &mut AccessSession) -> PullRequest {
        let mut out = vec![0u8; s.send_frame_len()];
        s.seal_pull(&mut out).expect("sized");
        let (_, body) = LinkKey::from_bytes(&KEY)
            .open_in_place(&mut out)
            .expect("authentic");
        PullRequest::parse(body).expect("parses")
    }

    #[test]
    fn message_once_then_duplicate_then_acked() {
        let mut s = session(SessionLimits::CLIENT);
        let req = pull(&mut s);
        assert!(req.acks.is_empty());
        let packet = vec![9u8; Geometry::DEFAULT.packet_len()];
        let mut f = delivery(1, req.request_id, Some((42, &packet)));
        assert!(matches!(
            s.handle_frame(&mut f),
            Received::Message { id: 42, .. }
        ));
        let mut f = delivery(2, req.request_id, Some((42, &packet)));
        assert_eq!(s.handle_frame(&mut f), Received::Duplicate);
        let mut f = delivery(3, req.request_id, None);
        assert_eq!(s.handle_frame(&mut f), Received::Dummy);
        // The same frame again: the window refuses it.
        let mut again = delivery(3, req.request_id, None);
        assert_eq!(
            s.handle_frame(&mut again),
            Received::Refused(Refusal::Replayed)
        );
        assert_eq!(s.acks_pending(), 1);
        assert_eq!(pull(&mut s).acks, vec![42]);
        assert_eq!(s.acks_pending(), 0);
        let st = s.stats();
        assert_eq!(
            (st.deliveries_real, st.duplicates, st.drop_replayed),
            (2, 1, 1)
        );
    }

    #[test]
    fn refusals_by_reason() {
        let mut s = session(SessionLimits::CLIENT);
        let req = pull(&mut s);
        assert_eq!(
            s.handle_frame(&mut [0u8; 10]),
            Received::Refused(Refusal::WrongLength)
        );
        let mut f = delivery(5, req.request_id + 1, None);
        assert_eq!(
            s.handle_frame(&mut f),
            Received::Refused(Refusal::UnknownRequest)
        );
        let mut f = delivery(6, req.request_id, None);
        let last = f.len() - 1;
        f[last] ^= 1;
        assert_eq!(s.handle_frame(&mut f), Received::Refused(Refusal::BadTag));
        let mut f = delivery(7, req.request_id, None);
        f[0] = 0x02;
        assert_eq!(
            s.handle_frame(&mut f),
            Received::Refused(Refusal::WrongKind)
        );
    }

    #[test]
    fn old_requests_are_forgotten() {
        let limits = SessionLimits::EMULATED;
        let mut s = session(limits);
        let first = pull(&mut s).request_id;
        for _ in 0..limits.recent_requests {
            pull(&mut s);
        }
        let mut f = delivery(1, first, None);
        assert_eq!(
            s.handle_frame(&mut f),
            Received::Refused(Refusal::UnknownRequest)
        );
    }

    #[test]
    fn tables_stay_bounded() {
        let limits = SessionLimits {
            handled_ids: 4,
            recent_requests: 2,
            pending_acks: 3,
        };
        let mut s = session(limits);
        let req = pull(&mut s).request_id;
        let packet = vec![0u8; Geometry::DEFAULT.packet_len()];
        for id in 0..10u64 {
            let mut f = delivery(10 + id, req, Some((id, &packet)));
            assert!(matches!(s.handle_frame(&mut f), Received::Message { .. }));
        }
        assert_eq!(s.acks_pending(), 3);
        assert_eq!(s.stats().acks_forgotten, 7);
        assert_eq!(s.handled.len(), 4);
        // Forgotten ids come back as new messages: delivered again, not lost.
        let mut f = delivery(100, req, Some((0, &packet)));
        assert!(matches!(
            s.handle_frame(&mut f),
            Received::Message { id: 0, .. }
        ));
    }
}
