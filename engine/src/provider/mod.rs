//! The provider role beyond what mixes do, in one folder: the inbox
//! (`inbox.rs`, redb), the client registry (`registry.rs`), pull answers
//! (`answer.rs`, run in the shards), and here the inbox writer thread (group
//! commit of delivered packets and of acknowledgements, expiry, and the
//! registry changes the control plane finds), the control plane's
//! [`RegistryWatch`], and the `loopix provider register|unregister|clients`
//! admin commands.
//!
//! The writer thread alone writes the `Inbox`. Shards hand it packets to
//! store and the acknowledgements of the pulls they answered over one
//! bounded channel. It commits in groups (up to `commit_max_batch` packets,
//! waiting at most `commit_max_wait_ms` for more) and counts a packet as
//! stored only after its transaction is durable. Nobody waits for a commit:
//! pulls are answered by the shard that received them, from the last
//! committed snapshot (see `answer.rs` for why, and for what a crash between
//! an answer and its acknowledgements' commit costs).
//!
//! Invariants:
//! - a pull answer is exactly `pull_frames` delivery frames of one length,
//!   real messages first, then dummies, all sealed with the client's key,
//!   sent from the provider's own address by the receiving shard's `io`
//!   backend, the answers of a receive batch in one batch;
//! - a message is offered only once its store is durable, in every answer
//!   until acknowledged, and never in an answer after the one to the pull
//!   that acknowledged it;
//! - delivery frame counters are per client and strictly increasing,
//!   starting at the wall clock in microseconds (above any earlier run's);
//!   message ids are a keyed permutation of the inbox's sequence: neither
//!   tells a client how much traffic others have;
//! - the registry directory is the source of truth for who is registered:
//!   the control plane rescans it (every second when the directory changed,
//!   at once on SIGHUP) and hands the writer the new list, and the
//!   inbox registers and unregisters mailboxes to match it;
//! - whatever is refused, expired or lost is counted (`ProviderMetrics`).

pub mod answer;
pub mod inbox;
pub mod registry;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use loopix_crypto::access::{delivery_frame_len, seal_delivery};
use loopix_crypto::{Geometry, MailboxId};
use loopix_directory::Registration;

use crate::config::{MixConfig, ProviderSection};
use crate::keyfile::{self, unix_now_s};
use crate::metrics::ProviderMetrics;
use crate::shard::Control;
pub use answer::{Answerer, PullShared};
use inbox::{Inbox, InboxConfig, InboxError, MessageId};
use registry::{ClientEntry, ClientLink, ClientTable};

/// The inbox file under a provider's data directory.
pub fn inbox_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("inbox.redb")
}

/// How often old messages are expired.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// How often acknowledgements committed without an fsync are made durable.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for work, so the stop flag and timers are seen.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Pulls whose acknowledgements one commit takes at most.
const MAX_ACKS_PER_ROUND: usize = 1024;

/// The `[provider]` section, or the error for a config without one.
pub fn section(config: &MixConfig) -> Result<&ProviderSection, String> {
    config.provider.as_ref().ok_or_else(|| {
        "the config has no [provider] section; add one with at least `data_dir = \"...\"` \
         (see systemd/provider.example.toml), or run this node with `loopix mix`"
            .to_string()
    })
}

/// Create the data directory (mode 0700) and open the inbox in it. A
/// corrupt inbox file is an error naming it.
pub fn open_inbox(p: &ProviderSection) -> Result<Inbox, String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&p.data_dir)
        .map_err(|e| {
            format!(
                "provider.data_dir {}: cannot create: {e}; check the path and the node's permissions",
                p.data_dir.display()
            )
        })?;
    Inbox::open(InboxConfig::new(
        inbox_path(&p.data_dir),
        p.max_messages_per_client,
        p.max_bytes_per_client,
        p.max_age_s,
    ))
    .map_err(|e| e.to_string())
}

/// Make the inbox's registered mailboxes those of the registry directory;
/// returns the registered clients. Problems with single files are printed
/// when they differ from `last_problems`.
pub fn sync_registry(
    inbox: &mut Inbox,
    data_dir: &Path,
    last_problems: &mut Vec<String>,
) -> Result<Vec<ClientEntry>, InboxError> {
    let (entries, problems) = registry::scan(data_dir);
    report_problems(problems, last_problems);
    sync_mailboxes(inbox, &entries)?;
    Ok(entries)
}

/// Print the registry's unreadable files when the set changed.
fn report_problems(problems: Vec<String>, last: &mut Vec<String>) {
    if problems != *last {
        for p in &problems {
            eprintln!("loopix provider: client registry: {p}; skipped until fixed");
        }
        *last = problems;
    }
}

/// Register the mailboxes of `entries` in the inbox and unregister every
/// other (dropping its messages, counted).
fn sync_mailboxes(inbox: &mut Inbox, entries: &[ClientEntry]) -> Result<(), InboxError> {
    let want: HashSet<MailboxId> = entries.iter().map(|e| e.mailbox).collect();
    for m in inbox.registered_mailboxes()? {
        if !want.contains(&m) {
            let dropped = inbox.unregister(m)?;
            eprintln!("loopix provider: mailbox {m} unregistered; {dropped} message(s) dropped");
        }
    }
    for m in &want {
        inbox.register(*m)?;
    }
    Ok(())
}

/// The control plane's watch on a provider's registry directory: at most
/// one scan a second, and only when the directory's modification time
/// moved (a register or an unregister creates or removes a file), so that
/// thousands of clients do not cost thousands of reads a second; on SIGHUP
/// at once. A changed list goes to the inbox writer, which owns the inbox.
pub struct RegistryWatch {
    data_dir: PathBuf,
    /// The list the inbox writer was last handed.
    clients: Vec<ClientEntry>,
    /// Unreadable files, as last reported.
    problems: Vec<String>,
    /// The directory's modification time at the last scan, once settled.
    mtime_s: Option<u64>,
    /// The second of the last scan.
    last_scan_s: u64,
    updates: Sender<Vec<ClientEntry>>,
}

impl RegistryWatch {
    /// A watch on `data_dir` whose inbox writer already has `clients`;
    /// changes go to `updates`.
    pub fn new(
        data_dir: &Path,
        clients: Vec<ClientEntry>,
        problems: Vec<String>,
        updates: Sender<Vec<ClientEntry>>,
    ) -> RegistryWatch {
        RegistryWatch {
            data_dir: data_dir.to_path_buf(),
            clients,
            problems,
            mtime_s: None,
            last_scan_s: 0,
            updates,
        }
    }

    /// One turn at `now_unix_s`; `forced` (SIGHUP) scans whatever the time.
    pub fn tick(&mut self, now_unix_s: u64, forced: bool) {
        if !forced && now_unix_s == self.last_scan_s {
            return;
        }
        self.last_scan_s = now_unix_s;
        let mtime_s = fs::metadata(registry::clients_dir(&self.data_dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        if !forced && mtime_s.is_some() && mtime_s == self.mtime_s {
            return;
        }
        let (entries, problems) = registry::scan(&self.data_dir);
        report_problems(problems, &mut self.problems);
        // Directory times are coarse: a change in the same second as this
        // scan would keep the same time. Trust a time only once it is old.
        let settled = mtime_s.is_some_and(|t| now_unix_s.saturating_sub(t) >= 2);
        self.mtime_s = if settled { mtime_s } else { None };
        if entries != self.clients {
            // A full queue (the inbox writer is behind) or a stopped
            // writer: keep the old list, so the next scan sends it again.
            if self.updates.try_send(entries.clone()).is_ok() {
                self.clients = entries;
            } else {
                self.mtime_s = None;
            }
        }
    }
}

/// What a provider's shards hand its inbox writer.
#[derive(Debug)]
pub enum WriterWork {
    /// Store this processed packet (`packet_len` bytes) in `mailbox`;
    /// handed over at that instant (its store time is measured from it).
    Store(MailboxId, Vec<u8>, Instant),
    /// Remove acknowledged messages: per answered pull, the client's
    /// mailbox, the pull's sequence number (see [`PullShared`]) and the
    /// ids. A shard hands them over every `ACK_HANDOFF_US`, not per pull, so
    /// the writer's activity does not follow any one client's pulls.
    Acks(Vec<(MailboxId, u64, Vec<MessageId>)>),
}

/// Everything the inbox writer thread needs.
pub struct InboxWriter {
    /// The inbox (the thread's alone for writing; shards read snapshots).
    pub inbox: Inbox,
    /// The `[provider]` settings.
    pub settings: ProviderSection,
    /// Work from the shards.
    pub work: Receiver<WriterWork>,
    /// What the shards' answerers share with the writer.
    pub shared: Arc<PullShared>,
    /// The shards' control channels (new client tables go there).
    pub controls: Vec<Sender<Control>>,
    /// The registered clients now.
    pub clients: Vec<ClientEntry>,
    /// Counters and gauges.
    pub metrics: Arc<ProviderMetrics>,
    /// Stop flag (SIGTERM, SIGINT).
    pub stop: Arc<AtomicBool>,
    /// New client lists from the control plane's [`RegistryWatch`].
    pub registry: Receiver<Vec<ClientEntry>>,
}

struct Runner {
    t: InboxWriter,
    broken: bool,
}

/// One round's work for the writer.
#[derive(Default)]
pub struct Round {
    /// Packets to store, in arrival order.
    pub stores: Vec<(MailboxId, Vec<u8>)>,
    /// When each of `stores` was handed to the writer.
    pub handed: Vec<Instant>,
    /// Acknowledgements: (mailbox, pull sequence number, ids).
    pub acks: Vec<(MailboxId, u64, Vec<MessageId>)>,
}

impl Round {
    /// Add one piece of work.
    pub fn take(&mut self, w: WriterWork) {
        match w {
            WriterWork::Store(m, bytes, at) => {
                self.stores.push((m, bytes));
                self.handed.push(at);
            }
            WriterWork::Acks(mut acks) => self.acks.append(&mut acks),
        }
    }

    fn is_empty(&self) -> bool {
        self.stores.is_empty() && self.acks.is_empty()
    }

    /// The round is over, committed or not: the answerers may forget the
    /// ids it acknowledged (and see what it stored); empty it.
    fn close(&mut self, shared: &PullShared) {
        let done: Vec<(MailboxId, u64)> = self.acks.iter().map(|(m, seq, _)| (*m, *seq)).collect();
        shared.committed(&done);
        self.stores.clear();
        self.handed.clear();
        self.acks.clear();
    }
}

/// Commit a round: the stores in one durable transaction, the
/// acknowledgements in another; then tell the answerers (`shared`), whose
/// hidden ids of those pulls become unnecessary, whether or not the
/// commits succeeded (after a failed one the messages are offered again).
/// Clears `round`. The errors are the operation and what failed.
pub fn commit_round(
    inbox: &mut Inbox,
    shared: &PullShared,
    now_unix_s: u64,
    round: &mut Round,
) -> Vec<(&'static str, u64, InboxError)> {
    let mut errors = Vec::new();
    if !round.stores.is_empty() {
        let items: Vec<(MailboxId, &[u8])> = round
            .stores
            .iter()
            .map(|(m, b)| (*m, b.as_slice()))
            .collect();
        if let Err(e) = inbox.store_batch(now_unix_s, &items) {
            errors.push(("storing a batch", items.len() as u64, e));
        }
    }
    if !round.acks.is_empty() {
        let batch: Vec<(MailboxId, &[MessageId])> = round
            .acks
            .iter()
            .map(|(m, _, ids)| (*m, ids.as_slice()))
            .collect();
        if let Err(e) = inbox.ack_batch(&batch) {
            errors.push(("applying acknowledgements", 0, e));
        }
    }
    round.close(shared);
    errors
}

impl InboxWriter {
    /// Run until every shard has ended (they hold the work channel's
    /// senders) and the queue is drained.
    pub fn run(self) {
        let mut r = Runner {
            t: self,
            broken: false,
        };
        r.publish();
        r.run();
    }
}

impl Runner {
    fn run(&mut self) {
        let batch_max = self.t.settings.commit_max_batch;
        let wait = Duration::from_millis(self.t.settings.commit_max_wait_ms);
        let mut round = Round::default();
        let mut last_expire = Instant::now();
        let mut last_persist = Instant::now();
        loop {
            while let Ok(entries) = self.t.registry.try_recv() {
                self.apply_registry(entries);
            }
            // Acknowledgements are committed without an fsync; make them
            // durable on this clock, not after any one client's pull.
            if last_persist.elapsed() >= PERSIST_EVERY {
                self.persist();
                last_persist = Instant::now();
            }
            if last_expire.elapsed() >= EXPIRE_EVERY {
                self.expire();
                last_expire = Instant::now();
            }
            // After stop, keep committing until every shard has ended (they
            // hold the only senders), so nothing they queued is lost.
            let first = match self.t.work.recv_timeout(IDLE_WAIT) {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    self.persist();
                    return;
                }
            };
            round.take(first);
            // Nobody waits for this commit (answers never do), so wait a
            // little for more to share it.
            let deadline = Instant::now() + wait;
            while round.stores.len() < batch_max && round.acks.len() < MAX_ACKS_PER_ROUND {
                match self.t.work.recv_deadline(deadline) {
                    Ok(w) => round.take(w),
                    Err(_) => break,
                }
            }
            self.commit(&mut round);
            self.publish();
        }
    }

    fn fail(&mut self, what: &str, e: &InboxError) {
        eprintln!("loopix provider: {what}: {e}");
        if matches!(e, InboxError::Corrupt { .. }) && !self.broken {
            // The inbox must not be used after this: stop the provider so
            // the operator sees it rather than a node that drops everything.
            eprintln!("loopix provider: the inbox is damaged; stopping");
            self.broken = true;
            self.t.stop.store(true, Ordering::Relaxed);
        }
    }

    fn commit(&mut self, round: &mut Round) {
        if round.is_empty() {
            return;
        }
        if self.broken {
            // Nothing more is written to a damaged inbox: the packets are
            // lost (counted), and the acknowledged ids become visible again.
            let n = round.stores.len() as u64;
            self.t.metrics.storage_error.fetch_add(n, Ordering::Relaxed);
            round.close(&self.t.shared);
            return;
        }
        let stores = round.stores.len();
        let handed = std::mem::take(&mut round.handed);
        let errors = commit_round(&mut self.t.inbox, &self.t.shared, unix_now_s(), round);
        // Outcomes are counted by the inbox (published from its stats).
        let stores_failed = errors.iter().any(|(_, n, _)| *n > 0);
        if stores > 0 && !stores_failed {
            self.t.metrics.commits.fetch_add(1, Ordering::Relaxed);
            // From each packet's handover to its durable commit: the time a
            // delivery waits before a pull can see it.
            let done = Instant::now();
            let waited_us: u128 = handed
                .iter()
                .map(|t| done.saturating_duration_since(*t).as_micros())
                .sum();
            self.t.metrics.store_wait_us.fetch_add(
                u64::try_from(waited_us).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            self.t
                .metrics
                .store_waits
                .fetch_add(handed.len() as u64, Ordering::Relaxed);
        }
        for (what, lost, e) in errors {
            self.t
                .metrics
                .storage_error
                .fetch_add(lost, Ordering::Relaxed);
            self.fail(what, &e);
        }
    }

    /// Make the inbox and the shards' client table match `entries`.
    fn apply_registry(&mut self, entries: Vec<ClientEntry>) {
        if self.broken || entries == self.t.clients {
            return;
        }
        match sync_mailboxes(&mut self.t.inbox, &entries) {
            Ok(()) => {
                eprintln!(
                    "loopix provider: client registry changed: {} client(s)",
                    entries.len()
                );
                let table = Arc::new(ClientTable::new(&entries));
                self.t.clients = entries;
                for tx in &self.t.controls {
                    let _ = tx.send(Control::Clients(Arc::clone(&table)));
                }
                self.publish();
            }
            Err(e) => self.fail("syncing the client registry", &e),
        }
    }

    fn persist(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.t.inbox.persist() {
            self.fail("making acknowledgements durable", &e);
        }
    }

    fn expire(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.t.inbox.expire(unix_now_s()) {
            self.fail("expiring old messages", &e);
        }
        self.publish();
    }

    fn publish(&self) {
        let s = self.t.inbox.stats();
        let m = &self.t.metrics;
        let set = |a: &std::sync::atomic::AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&m.stored, s.stored);
        set(&m.refused_count, s.refused_count_quota);
        set(&m.refused_bytes, s.refused_bytes_quota);
        set(&m.unknown_mailbox, s.unknown_mailbox);
        set(&m.expired, s.expired);
        set(&m.acked, s.acked);
        set(&m.foreign_acks, s.foreign_acks);
        set(&m.dropped_unregistered, s.dropped_unregistered);
        set(&m.inbox_messages, s.held_messages);
        set(&m.inbox_bytes, s.held_bytes);
        set(&m.registered_clients, self.t.clients.len() as u64);
    }
}

/// What [`seal_answer`] sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sealed {
    /// Frames sealed (all of one length), real and dummy.
    pub frames: u16,
    /// Of them, frames carrying a stored message.
    pub real: u16,
    /// Frames that could not be sealed (left out).
    pub failed: u16,
}

/// Seal the answer to pull `request_id` for `client` at `slot`: exactly `k`
/// delivery frames, back to back in `out` (cleared first), the messages of
/// `pending` first (at most `k`), then dummies, with counters
/// `first_counter`, `first_counter + 1`, ... A stored packet of the wrong
/// length (not written by this build) becomes a dummy, so the answer keeps
/// its `k` frames.
#[allow(clippy::too_many_arguments)] // reason: the fields of one answer, all needed
pub fn seal_answer(
    g: &Geometry,
    client: &ClientLink,
    slot: u32,
    first_counter: u64,
    request_id: u64,
    k: u16,
    pending: &[(MessageId, Vec<u8>)],
    out: &mut Vec<u8>,
) -> Sealed {
    let frame_len = delivery_frame_len(g);
    out.clear();
    let mut done = Sealed::default();
    for i in 0..k {
        let message = pending
            .get(usize::from(i))
            .map(|(id, bytes)| (id.0, bytes.as_slice()));
        let counter = first_counter.wrapping_add(u64::from(i));
        let start = out.len();
        out.resize(start + frame_len, 0);
        let frame = &mut out[start..];
        let mut sealed = seal_delivery(
            g,
            &client.link,
            slot,
            counter,
            request_id,
            i,
            k,
            message,
            frame,
        );
        if sealed.is_err() && message.is_some() {
            sealed = seal_delivery(
                g,
                &client.link,
                slot,
                counter,
                request_id,
                i,
                k,
                None,
                frame,
            );
        } else if sealed.is_ok() && message.is_some() {
            done.real += 1;
        }
        if sealed.is_err() {
            out.truncate(start);
            done.failed += 1;
            continue;
        }
        done.frames += 1;
    }
    debug_assert_eq!(out.len(), usize::from(done.frames) * frame_len);
    debug_assert_eq!(done.frames + done.failed, k);
    done
}

/// `loopix provider register`: add a client to the registry and return its
/// registration. Touches only the registry directory.
pub fn register(config: &MixConfig, name: &str) -> Result<Registration, String> {
    let p = section(config)?;
    let link =
        keyfile::read_secret(&config.node.key_dir.join("link.key")).map_err(|e| e.to_string())?;
    let provider_id = loopix_directory::descriptor::node_id_of(&link.public_key());
    let entry = registry::register(&p.data_dir, name)?;
    Ok(Registration {
        provider_id,
        provider_address: config.node.listen,
        slot: entry.slot,
        mailbox: entry.mailbox,
        access_key: entry.access_key,
        operator_key: config.node.operator_key,
    })
}

/// Write a registration to `path`, mode 0600, never over an existing file.
pub fn write_registration(path: &Path, r: &Registration) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("--out {}: cannot create: {e}", path.display()))?;
    f.write_all(r.to_toml().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("--out {}: cannot write: {e}", path.display()))
}

/// `loopix provider unregister`: remove the client in `slot`.
pub fn unregister(config: &MixConfig, slot: u32) -> Result<ClientEntry, String> {
    registry::unregister(&section(config)?.data_dir, slot)
}

/// `loopix provider clients`: one line per client (`slot name mailbox`),
/// and the problems with unreadable files.
pub fn list(config: &MixConfig) -> Result<(String, Vec<String>), String> {
    let (entries, problems) = registry::scan(&section(config)?.data_dir);
    let mut out = String::new();
    for e in entries {
        out.push_str(&format!("{}\t{}\t{}\n", e.slot, e.name, e.mailbox));
    }
    Ok((out, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(v: &[ClientEntry]) -> Vec<u32> {
        v.iter().map(|e| e.slot).collect()
    }

    #[test]
    fn registry_watch_hands_each_change_to_the_inbox_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut w = RegistryWatch::new(dir.path(), Vec::new(), Vec::new(), tx);
        w.tick(100, false);
        assert!(rx.try_recv().is_err(), "nothing registered, nothing sent");

        let a = registry::register(dir.path(), "a").expect("register a");
        w.tick(100, false);
        assert!(rx.try_recv().is_err(), "at most one scan a second");
        w.tick(101, false);
        assert_eq!(slots(&rx.try_recv().expect("a")), vec![a.slot]);
        w.tick(102, false);
        assert!(rx.try_recv().is_err(), "unchanged: nothing sent");

        // The inbox writer is behind: the list waits in the queue, and a
        // later change is sent once it has taken it.
        let b = registry::register(dir.path(), "b").expect("register b");
        w.tick(103, false);
        registry::unregister(dir.path(), a.slot).expect("unregister a");
        w.tick(104, false);
        assert_eq!(slots(&rx.try_recv().expect("a, b")), vec![a.slot, b.slot]);
        assert!(rx.try_recv().is_err());
        w.tick(105, false);
        assert_eq!(slots(&rx.try_recv().expect("b")), vec![b.slot]);

        // SIGHUP scans at once, and still sends only a change.
        w.tick(105, true);
        assert!(rx.try_recv().is_err());
        std::fs::write(
            registry::clients_dir(dir.path()).join("junk.toml"),
            "not toml",
        )
        .expect("write");
        w.tick(105, true);
        assert!(
            rx.try_recv().is_err(),
            "an unreadable file is reported, not sent"
        );
    }
}
