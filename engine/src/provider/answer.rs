//! Pull answers, built in the shard that received the pull and sent through
//! that shard's own batched I/O: no hop to another thread, no wait for a
//! commit.
//!
//! Why here and not on the inbox writer's thread: the time from a pull to
//! its answer must not say whether the inbox held real messages or whether
//! the pull carried acknowledgements (a global passive observer would learn
//! when a client receives mail). An answer therefore never waits for a
//! durable commit: it reads the last committed snapshot of the inbox
//! ([`Snapshot`]) and hides the messages whose acknowledgements are on their
//! way to the writer ([`PullShared`]). The writer commits acknowledgements
//! after the answer left; a crash in between delivers those messages once
//! more, which the client already deduplicates (it remembers handled ids).
//! A message is offered only after its store is durable, so a crash never
//! loses one a client was shown.
//!
//! Invariants:
//! - an answer is exactly `k` frames of one length, real messages first,
//!   sealed with the client's key under its own strictly increasing
//!   counter (per client, starting at the provider's start time in wall
//!   microseconds, so above any earlier run's and telling a client nothing
//!   of other clients' pulls);
//! - a message is never offered after the pull that acknowledged it was
//!   answered: its id stays hidden until the writer reports the commit, and
//!   a snapshot older than the last commit report is never used;
//! - the work per pull does not depend on whether messages are waiting
//!   beyond sealing their bytes (every frame is sealed, real or dummy).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::Sender;
use loopix_crypto::access::{delivery_frame_len, PullRequest};
use loopix_crypto::{Geometry, MailboxId};

use super::inbox::{InboxReader, MessageId, Snapshot};
use super::registry::ClientLink;
use super::{seal_answer, WriterWork};
use crate::metrics::ProviderMetrics;

/// State every shard's [`Answerer`] and the writer share, behind one mutex
/// taken once per pull and once per commit.
#[derive(Debug)]
pub struct PullShared {
    state: Mutex<PullState>,
}

#[derive(Debug)]
struct PullState {
    /// The next delivery counter of each client, by slot.
    counters: HashMap<u32, u64>,
    /// A new client's first counter: the provider's start in wall µs.
    base: u64,
    /// Acknowledged ids not yet committed, by mailbox, with the sequence
    /// number of the pull that carried them.
    unconfirmed: HashMap<MailboxId, Vec<(u64, MessageId)>>,
    next_seq: u64,
    /// Bumped after every commit the writer reports.
    commits: u64,
}

impl PullShared {
    /// Shared state for a provider started at `base_counter` (wall µs).
    pub fn new(base_counter: u64) -> Arc<PullShared> {
        Arc::new(PullShared {
            state: Mutex::new(PullState {
                counters: HashMap::new(),
                base: base_counter,
                unconfirmed: HashMap::new(),
                next_seq: 0,
                commits: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PullState> {
        // A panicking holder leaves consistent maps (every change is one
        // insert or retain): go on with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer committed (or gave up on) the acknowledgements of the
    /// pulls `done` (mailbox, sequence number), and maybe stores: forget
    /// those ids and make every shard take a new snapshot.
    pub fn committed(&self, done: &[(MailboxId, u64)]) {
        let mut st = self.lock();
        for (mailbox, seq) in done {
            forget(&mut st, *mailbox, *seq);
        }
        st.commits += 1;
    }

    /// Acknowledged ids waiting for their commit, all mailboxes.
    pub fn unconfirmed_len(&self) -> usize {
        self.lock().unconfirmed.values().map(Vec::len).sum()
    }
}

fn forget(st: &mut PullState, mailbox: MailboxId, seq: u64) {
    if let Some(v) = st.unconfirmed.get_mut(&mailbox) {
        v.retain(|&(s, _)| s != seq);
        if v.is_empty() {
            st.unconfirmed.remove(&mailbox);
        }
    }
}

/// One shard's pull answering.
pub struct Answerer {
    reader: InboxReader,
    shared: Arc<PullShared>,
    writer: Sender<WriterWork>,
    metrics: Arc<ProviderMetrics>,
    geometry: Geometry,
    k: u16,
    /// The snapshot of this round and the commit count it was taken at.
    snapshot: Option<(Snapshot, u64)>,
    hidden: Vec<MessageId>,
    /// Acknowledgements answered but not yet handed to the writer.
    acks: Vec<(MailboxId, u64, Vec<MessageId>)>,
    pending: Vec<(MessageId, Vec<u8>)>,
    frames: Vec<u8>,
}

impl Answerer {
    /// A shard's answerer: answers of `k` frames read through `reader`;
    /// acknowledgements go to the writer over `writer`.
    pub fn new(
        reader: InboxReader,
        shared: Arc<PullShared>,
        writer: Sender<WriterWork>,
        metrics: Arc<ProviderMetrics>,
        geometry: Geometry,
        k: u16,
    ) -> Answerer {
        Answerer {
            reader,
            shared,
            writer,
            metrics,
            geometry,
            k,
            snapshot: None,
            hidden: Vec::new(),
            acks: Vec::new(),
            pending: Vec::new(),
            frames: Vec::with_capacity(delivery_frame_len(&geometry) * usize::from(k)),
        }
    }

    /// One delivery frame's length.
    pub fn frame_len(&self) -> usize {
        delivery_frame_len(&self.geometry)
    }

    /// Answer `request` from `client` at `slot`: its acknowledgements are
    /// hidden at once and handed to the writer, then exactly `k` frames are
    /// sealed; returns them back to back.
    pub fn answer(&mut self, slot: u32, client: &ClientLink, request: &PullRequest) -> &[u8] {
        let mailbox = request.mailbox;
        let (counter, seq, commits) = {
            let mut st = self.shared.lock();
            let seq = st.next_seq;
            st.next_seq += 1;
            let base = st.base;
            let next = st.counters.entry(slot).or_insert(base);
            let counter = *next;
            *next = next.wrapping_add(u64::from(self.k));
            if !request.acks.is_empty() {
                st.unconfirmed
                    .entry(mailbox)
                    .or_default()
                    .extend(request.acks.iter().map(|&a| (seq, MessageId(a))));
            }
            self.hidden.clear();
            if let Some(v) = st.unconfirmed.get(&mailbox) {
                self.hidden.extend(v.iter().map(|&(_, id)| id));
            }
            (counter, seq, st.commits)
        };
        if !request.acks.is_empty() {
            let ids = request.acks.iter().map(|&a| MessageId(a)).collect();
            self.acks.push((mailbox, seq, ids));
        }
        self.read(mailbox, commits);
        let sealed = seal_answer(
            &self.geometry,
            client,
            slot,
            counter,
            request.request_id,
            self.k,
            &self.pending,
            &mut self.frames,
        );
        let m = &self.metrics;
        m.pulls.fetch_add(1, Ordering::Relaxed);
        m.pull_real_frames
            .fetch_add(u64::from(sealed.real), Ordering::Relaxed);
        m.pull_send_failed
            .fetch_add(u64::from(sealed.failed), Ordering::Relaxed);
        &self.frames
    }

    /// Fill `pending` with up to `k` visible messages of `mailbox` from a
    /// snapshot at least as new as commit report `commits`. A read error
    /// leaves it empty (the answer is all dummies, sent on time) and is
    /// counted.
    fn read(&mut self, mailbox: MailboxId, commits: u64) {
        self.pending.clear();
        if self.snapshot.as_ref().is_none_or(|(_, at)| *at != commits) {
            self.snapshot = None;
            match self.reader.snapshot() {
                Ok(s) => self.snapshot = Some((s, commits)),
                Err(e) => return self.read_failed(&e),
            }
        }
        let Some((snapshot, _)) = &self.snapshot else {
            return;
        };
        let hidden = &self.hidden;
        let max = usize::from(self.k);
        if let Err(e) = snapshot.pending(mailbox, max, |id| hidden.contains(&id), &mut self.pending)
        {
            self.pending.clear();
            self.read_failed(&e);
        }
    }

    fn read_failed(&mut self, e: &super::inbox::InboxError) {
        let before = self
            .metrics
            .pull_read_errors
            .fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            // The writer stops the provider on a damaged file; say it once
            // here too.
            eprintln!("loopix provider: reading the inbox for a pull: {e}");
        }
    }

    /// Hand the acknowledgements answered since the last call to the
    /// writer, in one piece of work. A full queue makes their ids visible
    /// again (offered once more; the client ignores a repeat), counted.
    pub fn hand_over_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        if let Err(e) = self.writer.try_send(WriterWork::Acks(acks)) {
            let WriterWork::Acks(acks) = e.into_inner() else {
                return;
            };
            let mut st = self.shared.lock();
            for (mailbox, seq, _) in &acks {
                forget(&mut st, *mailbox, *seq);
            }
            let n = acks.len() as u64;
            self.metrics.acks_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Count the answer frames the shard's backend sent and failed to send.
    pub fn count_sent(&self, sent: u64, failed: u64) {
        let m = &self.metrics;
        m.pull_frames.fetch_add(sent, Ordering::Relaxed);
        m.pull_send_failed.fetch_add(failed, Ordering::Relaxed);
    }

    /// The round is over: let go of the snapshot (an old reader keeps the
    /// writer from reusing pages).
    pub fn end_round(&mut self) {
        self.snapshot = None;
    }
}
