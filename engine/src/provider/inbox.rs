//! A provider's durable inbox: the packets it holds for its clients until
//! they are pulled and acknowledged, in one embedded `redb` file.
//!
//! Layout (tables of the one file):
//! - `messages`: (mailbox, id) -> (stored at, Unix s; packet bytes);
//! - `owners`: id -> mailbox (tells a foreign acknowledgement from a stale one);
//! - `expiry`: (stored at, Unix s; id) -> mailbox (expiry in time order);
//! - `mailboxes`: mailbox -> (messages held, bytes held); present iff registered;
//! - `meta`: format version, next message id, messages and bytes held in all.
//!
//! Invariants:
//! - every change is one transaction committed with `Durability::Immediate`
//!   (fsync before return), so a packet `store_batch` reports as stored
//!   survives a crash of the process, or of the machine as far as the disk
//!   honours fsync (group commit: one fsync per batch, not per packet);
//!   except acknowledgements (`ack_batch`), committed without an fsync and
//!   made durable by the next durable commit (`persist`, or any store): a
//!   crash in between offers those messages again, which clients already
//!   deduplicate, and no fsync follows a client's acknowledgement in time;
//! - a message leaves only through `ack` by its own mailbox, `expire`, or
//!   `unregister`; `pending` never removes anything;
//! - message ids are unique and never reused (the next id is persisted in
//!   the same transaction as the messages that used it); internally they
//!   increase, but a client sees each through a keyed permutation
//!   ([`IdCipher`], its key in `meta`), so the ids it is handed tell it
//!   nothing of how many messages the provider stored for others;
//! - readers ([`InboxReader`], one per shard) read committed snapshots
//!   concurrently with the one writer;
//! - the three message tables, the per-mailbox usage and the totals change
//!   together in one transaction, so quota checks read one row;
//! - per mailbox, at most `max_messages_per_client` messages and
//!   `max_bytes_per_client` bytes are held; whatever is refused, expired or
//!   acknowledged by the wrong mailbox is counted in `InboxStats`;
//! - memory is bounded: the page cache by `cache_size_bytes`, every call by
//!   its arguments (`pending` by `max`), `expire` and `unregister` by
//!   `REMOVE_CHUNK_MESSAGES` per transaction;
//! - the file is created with mode 0600 (it tells who receives how much,
//!   when) and its directory entry is synced;
//! - a corrupt or foreign file is an `InboxError` naming it, never a panic:
//!   redb panics on some damaged pages, so every redb call (and the
//!   database's `Drop`) runs under `catch_unwind`; after `Corrupt`, stop
//!   using the inbox.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

// A client's mailbox at its provider (re-exported, not aliased, so that
// `MailboxId([..])` constructs one here too).
pub use loopix_crypto::MailboxId;

/// A message's id as clients see it: unique in its inbox for the inbox's
/// whole life, a keyed permutation of the internal sequence number (which
/// increases in the order messages were stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// What `store_batch` did with one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Durably stored under this id.
    Stored(MessageId),
    /// Refused: the mailbox already holds `max_messages_per_client` messages.
    RefusedCount,
    /// Refused: the message would take the mailbox over
    /// `max_bytes_per_client` (or is larger than `MAX_MESSAGE_BYTES`).
    RefusedBytes,
    /// Refused: the mailbox is not registered.
    UnknownMailbox,
}

/// Largest single message accepted (redb's own limit is 3 GiB; Loopix
/// packets are a few KiB). Larger ones are refused as `RefusedBytes`.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Messages removed per transaction by `expire` and `unregister`, so that no
/// one transaction's dirty pages grow with the backlog.
pub const REMOVE_CHUNK_MESSAGES: usize = 4096;

/// The on-disk format this build reads and writes (`meta` key
/// `format_version`).
pub const FORMAT_VERSION: u64 = 1;

/// Default page cache size (redb's own default is 1 GiB).
pub const DEFAULT_CACHE_SIZE_BYTES: usize = 64 << 20;

/// The first id an inbox hands out; 0 never names a message.
const FIRST_ID: u64 = 1;

type MailboxKey = [u8; 16];

const MESSAGES: TableDefinition<(MailboxKey, u64), (u64, &[u8])> = TableDefinition::new("messages");
const OWNERS: TableDefinition<u64, MailboxKey> = TableDefinition::new("owners");
const EXPIRY: TableDefinition<(u64, u64), MailboxKey> = TableDefinition::new("expiry");
const MAILBOXES: TableDefinition<MailboxKey, (u32, u64)> = TableDefinition::new("mailboxes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT_VERSION: &str = "format_version";
const META_NEXT_ID: &str = "next_id";
const META_HELD_MESSAGES: &str = "held_messages";
const META_HELD_BYTES: &str = "held_bytes";
/// The id permutation's key, four u64 words (written once, at creation or
/// at the first open by a build that has it).
const META_ID_KEY: [&str; 4] = ["id_key_0", "id_key_1", "id_key_2", "id_key_3"];

/// Rounds of the id permutation's Feistel network. Four rounds make a
/// pseudorandom permutation; more push the distinguishing bound on 32-bit
/// halves well past what any client sees.
const ID_ROUNDS: u8 = 8;

/// The keyed permutation between internal message numbers and the ids
/// clients see: a balanced Feistel network on two 32-bit halves whose
/// round function is keyed BLAKE3.
#[derive(Clone, Copy)]
pub struct IdCipher {
    key: [u8; 32],
}

impl std::fmt::Debug for IdCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdCipher(..)")
    }
}

impl IdCipher {
    /// The permutation under `key`.
    pub fn new(key: [u8; 32]) -> IdCipher {
        IdCipher { key }
    }

    fn round(&self, round: u8, half: u32) -> u32 {
        let mut input = [0u8; 5];
        input[0] = round;
        input[1..].copy_from_slice(&half.to_le_bytes());
        let h = blake3::keyed_hash(&self.key, &input);
        let b = h.as_bytes();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The id a client sees for internal number `n`.
    pub fn hide(&self, n: u64) -> MessageId {
        let (mut l, mut r) = ((n >> 32) as u32, n as u32);
        for i in 0..ID_ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        MessageId((u64::from(l) << 32) | u64::from(r))
    }

    /// The internal number behind a client's id.
    pub fn reveal(&self, id: MessageId) -> u64 {
        let (mut l, mut r) = ((id.0 >> 32) as u32, id.0 as u32);
        for i in (0..ID_ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (u64::from(l) << 32) | u64::from(r)
    }
}

/// Where the inbox lives and how much it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// The redb file (created, mode 0600, if absent; its directory must
    /// exist).
    pub path: PathBuf,
    /// Messages one mailbox may hold; more are refused (`RefusedCount`).
    pub max_messages_per_client: u32,
    /// Bytes one mailbox may hold; more are refused (`RefusedBytes`).
    pub max_bytes_per_client: u64,
    /// Messages older than this are removed by `expire`.
    pub max_age_s: u64,
    /// redb's page cache, bytes: with one transaction's dirty pages, the
    /// inbox's memory.
    pub cache_size_bytes: usize,
    /// The message id permutation's key for a new inbox file; `None` (the
    /// default) draws it from the OS. A simulation sets it from its seed.
    pub id_key: Option<[u8; 32]>,
}

impl InboxConfig {
    /// A config for `path` with the given quotas and the default cache size.
    pub fn new(
        path: impl Into<PathBuf>,
        max_messages_per_client: u32,
        max_bytes_per_client: u64,
        max_age_s: u64,
    ) -> InboxConfig {
        InboxConfig {
            path: path.into(),
            max_messages_per_client,
            max_bytes_per_client,
            max_age_s,
            cache_size_bytes: DEFAULT_CACHE_SIZE_BYTES,
            id_key: None,
        }
    }

    /// The same, with the id permutation's key for a new file fixed.
    pub fn with_id_key(mut self, key: [u8; 32]) -> InboxConfig {
        self.id_key = Some(key);
        self
    }
}

/// An inbox problem, phrased for the operator. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The file could not be created or opened.
    #[error("{path}: cannot open the inbox: {source}; check that its directory exists and the node's user may read and write it")]
    Open {
        /// The inbox file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process (or another `Inbox` in this one) has the file open.
    #[error("{path}: the inbox is already open elsewhere; stop the other provider process using this data directory (one provider per inbox file)")]
    Locked {
        /// The inbox file.
        path: PathBuf,
    },
    /// The file is not a readable inbox.
    #[error("{path}: not a readable inbox ({problem}); stop the provider, move the file aside (`mv {path} {path}.corrupt`) and start again with an empty inbox, or restore the file from a backup")]
    Corrupt {
        /// The inbox file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file was written by a different version of the inbox format.
    #[error("{path}: inbox format version {found}, this build reads version {expected}; run the loopix version that wrote it, or move the file aside to start with an empty inbox")]
    Version {
        /// The inbox file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The version this build reads.
        expected: u64,
    },
    /// A read or write failed after open. Count nothing of that call as
    /// done; a failed commit may still have reached the disk, so a packet
    /// may be delivered that was not counted as stored (never the reverse).
    #[error("{path}: inbox {op} failed: {source}; count nothing of it as done; if this repeats, check the disk (free space, I/O errors in the kernel log) and restart the provider")]
    Storage {
        /// The inbox file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// Why.
        source: Box<redb::Error>,
    },
}

/// Counters since open, and what the inbox holds now (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Messages durably stored.
    pub stored: u64,
    /// Messages refused because their mailbox was at its message quota.
    pub refused_count_quota: u64,
    /// Messages refused because of the byte quota (or `MAX_MESSAGE_BYTES`).
    pub refused_bytes_quota: u64,
    /// Messages refused because their mailbox is not registered.
    pub unknown_mailbox: u64,
    /// Messages removed by `expire`.
    pub expired: u64,
    /// Messages removed by acknowledgement.
    pub acked: u64,
    /// Acknowledgements naming another mailbox's message (ignored).
    pub foreign_acks: u64,
    /// Messages removed by `unregister`.
    pub dropped_unregistered: u64,
    /// Messages held now, all mailboxes.
    pub held_messages: u64,
    /// Bytes of messages held now, all mailboxes.
    pub held_bytes: u64,
}

/// The durable inbox: owns the redb database.
pub struct Inbox {
    db: Db,
    config: InboxConfig,
    stats: InboxStats,
    ids: IdCipher,
    /// A commit without fsync happened since the last durable one.
    unpersisted: bool,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // A clean close keeps the last acknowledgements.
        let _ = self.persist();
    }
}

/// The database, dropped inside `catch_unwind`: redb's `Drop` commits (its
/// allocator state) and can panic on a damaged file, like any other call.
/// Shared with the readers ([`InboxReader`]); the last holder closes it.
struct Db(Option<Arc<Database>>);

impl Db {
    fn get(&self) -> &Arc<Database> {
        // `None` only inside `drop`.
        self.0
            .as_ref()
            .expect("the database is open until the inbox is dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            // A panic here only loses the clean-close marker: the next open
            // repairs (or reports the damage).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        }
    }
}

/// Held totals as read inside a write transaction.
#[derive(Clone, Copy)]
struct Totals {
    messages: u64,
    bytes: u64,
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, redb::Error> {
    Ok(meta.get(key)?.map_or(0, |g| g.value()))
}

/// The id permutation's key from `meta`, created (from the OS's random
/// source) if absent.
fn id_key(
    meta: &mut redb::Table<&'static str, u64>,
    fixed: Option<[u8; 32]>,
) -> Result<[u8; 32], redb::Error> {
    let mut words = [0u64; 4];
    let mut present = true;
    for (w, name) in words.iter_mut().zip(META_ID_KEY) {
        match meta.get(name)? {
            Some(g) => *w = g.value(),
            None => present = false,
        }
    }
    if !present {
        use rand_core::RngCore;
        for (i, (w, name)) in words.iter_mut().zip(META_ID_KEY).enumerate() {
            *w = match fixed {
                Some(k) => u64::from_le_bytes(k[i * 8..i * 8 + 8].try_into().unwrap_or_default()),
                None => rand_core::OsRng.next_u64(),
            };
            meta.insert(name, *w)?;
        }
    }
    let mut key = [0u8; 32];
    for (chunk, w) in key.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    Ok(key)
}

fn read_totals(meta: &impl ReadableTable<&'static str, u64>) -> Result<Totals, redb::Error> {
    Ok(Totals {
        messages: meta_get(meta, META_HELD_MESSAGES)?,
        bytes: meta_get(meta, META_HELD_BYTES)?,
    })
}

fn write_totals(
    meta: &mut redb::Table<&'static str, u64>,
    totals: Totals,
) -> Result<(), redb::Error> {
    meta.insert(META_HELD_MESSAGES, totals.messages)?;
    meta.insert(META_HELD_BYTES, totals.bytes)?;
    Ok(())
}

/// Remove one message's rows from the three message tables; returns its
/// length in bytes, or `None` if it was not there.
fn remove_message(
    messages: &mut redb::Table<(MailboxKey, u64), (u64, &'static [u8])>,
    owners: &mut redb::Table<u64, MailboxKey>,
    expiry: &mut redb::Table<(u64, u64), MailboxKey>,
    mailbox: MailboxKey,
    id: u64,
) -> Result<Option<u64>, redb::Error> {
    let removed = messages.remove((mailbox, id))?.map(|g| {
        let (stored_at_s, bytes) = g.value();
        (stored_at_s, bytes.len() as u64)
    });
    let Some((stored_at_s, len_bytes)) = removed else {
        return Ok(None);
    };
    owners.remove(id)?;
    expiry.remove((stored_at_s, id))?;
    Ok(Some(len_bytes))
}

/// Subtract removed messages from mailboxes' usage rows and the totals.
fn debit(
    mailboxes: &mut redb::Table<MailboxKey, (u32, u64)>,
    totals: &mut Totals,
    removed: &HashMap<MailboxKey, (u64, u64)>,
) -> Result<(), redb::Error> {
    for (mailbox, &(count, len_bytes)) in removed {
        let usage = mailboxes.get(mailbox)?.map(|g| g.value());
        if let Some((held, held_bytes)) = usage {
            let count_u32 = u32::try_from(count).unwrap_or(u32::MAX);
            mailboxes.insert(
                mailbox,
                (
                    held.saturating_sub(count_u32),
                    held_bytes.saturating_sub(len_bytes),
                ),
            )?;
        }
        totals.messages = totals.messages.saturating_sub(count);
        totals.bytes = totals.bytes.saturating_sub(len_bytes);
    }
    Ok(())
}

/// Run `f`, turning a panic into `InboxError::Corrupt`. redb reports most
/// malformed files as errors but panics on some damaged pages (seen with
/// redb 4.4: `unreachable!` on an unknown page type); a damaged inbox must be
/// an error naming the file, not a crashed provider. The transaction the
/// panic unwound through is dropped, so nothing of it is committed.
fn contain_panic<T>(
    path: &Path,
    op: &'static str,
    f: impl FnOnce() -> Result<T, InboxError>,
) -> Result<T, InboxError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(corrupt(
            path,
            format!("the database library panicked during {op}; the file is probably damaged"),
        ))
    })
}

fn corrupt(path: &Path, problem: impl Into<String>) -> InboxError {
    InboxError::Corrupt {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

impl Inbox {
    /// Open the inbox at `config.path`, creating an empty one if the file is
    /// absent (or empty). A file that is not a readable inbox is
    /// `InboxError::Corrupt`; after a crash, redb repairs the file here
    /// (time grows with the file's size).
    pub fn open(config: InboxConfig) -> Result<Inbox, InboxError> {
        let path = config.path.clone();
        let open_err = |source| InboxError::Open {
            path: path.clone(),
            source,
        };
        let (file, created) = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(open_err)?,
                false,
            ),
            Err(e) => return Err(open_err(e)),
        };
        if created {
            // Make the new file's directory entry durable too.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| InboxError::Open {
                    path: dir.to_owned(),
                    source,
                })?;
        }

        let mut builder = redb::Builder::new();
        builder.set_cache_size(config.cache_size_bytes);
        let opened = contain_panic(&path, "open", || Ok(builder.create_file(file)))?;
        let db = match opened {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(InboxError::Locked { path })
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData
                    && e.kind() != std::io::ErrorKind::UnexpectedEof =>
            {
                return Err(open_err(e))
            }
            Err(e) => return Err(corrupt(&path, e.to_string())),
        };

        let mut inbox = Inbox {
            db: Db(Some(Arc::new(db))),
            config,
            stats: InboxStats::default(),
            ids: IdCipher::new([0; 32]),
            unpersisted: false,
        };
        contain_panic(&path, "open", || inbox.init_tables())?;
        Ok(inbox)
    }

    /// Check the format version, create the tables if absent, load totals.
    /// A new inbox gets its tables and version in one transaction, so a
    /// redb file without a version is someone else's.
    fn init_tables(&mut self) -> Result<(), InboxError> {
        enum Found {
            Inbox(Totals, [u8; 32]),
            Version(u64),
            Foreign,
        }
        let path = self.config.path.clone();
        let on_open = |e: redb::Error| match e {
            redb::Error::Corrupted(problem) => corrupt(&path, problem),
            redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TableIsNotMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. } => {
                corrupt(&path, format!("not a loopix inbox: {e}"))
            }
            other => InboxError::Storage {
                path: path.clone(),
                op: "open",
                source: Box::new(other),
            },
        };
        let txn = self.db.get().begin_write().map_err(|e| on_open(e.into()))?;
        let found = (|| -> Result<Found, redb::Error> {
            let had_tables =
                txn.list_tables()?.next().is_some() || txn.list_multimap_tables()?.next().is_some();
            let mut meta = txn.open_table(META)?;
            let version = meta.get(META_FORMAT_VERSION)?.map(|g| g.value());
            match version {
                Some(FORMAT_VERSION) => {}
                Some(v) => return Ok(Found::Version(v)),
                None if had_tables => return Ok(Found::Foreign),
                None => {
                    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                }
            }
            txn.open_table(MESSAGES)?;
            txn.open_table(OWNERS)?;
            txn.open_table(EXPIRY)?;
            txn.open_table(MAILBOXES)?;
            let key = id_key(&mut meta, self.config.id_key)?;
            Ok(Found::Inbox(read_totals(&meta)?, key))
        })()
        .map_err(on_open)?;
        // On the error paths, dropping the transaction aborts it: the file
        // is left as it was.
        let totals = match found {
            Found::Inbox(totals, key) => {
                self.ids = IdCipher::new(key);
                totals
            }
            Found::Version(found) => {
                return Err(InboxError::Version {
                    path,
                    found,
                    expected: FORMAT_VERSION,
                })
            }
            Found::Foreign => {
                return Err(corrupt(
                    &path,
                    "a redb database, but not a loopix inbox (no format version)",
                ))
            }
        };
        txn.commit().map_err(|e| on_open(e.into()))?;
        self.stats.held_messages = totals.messages;
        self.stats.held_bytes = totals.bytes;
        Ok(())
    }

    fn storage_err(&self, op: &'static str) -> impl FnOnce(redb::Error) -> InboxError + '_ {
        read_err(&self.config.path, op)
    }

    /// Run `f` in one write transaction committed with
    /// `Durability::Immediate`; an error before the commit applies nothing.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, InboxError> {
        let out = self.write_as(op, Durability::Immediate, f)?;
        self.unpersisted = false;
        Ok(out)
    }

    /// [`Inbox::write`] with the given durability.
    fn write_as<T>(
        &self,
        op: &'static str,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, InboxError> {
        let run = || -> Result<T, redb::Error> {
            let mut txn = self.db.get().begin_write()?;
            txn.set_durability(durability)?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        };
        contain_panic(&self.config.path, op, || {
            run().map_err(self.storage_err(op))
        })
    }

    /// Make every commit so far durable (one fsync), if one was not.
    pub fn persist(&mut self) -> Result<(), InboxError> {
        if !self.unpersisted {
            return Ok(());
        }
        self.write("persist", |_| Ok(()))
    }

    /// The config the inbox was opened with.
    pub fn config(&self) -> &InboxConfig {
        &self.config
    }

    /// Register `mailbox` (idempotent): from now on packets for it are
    /// stored. One durable transaction.
    pub fn register(&mut self, mailbox: MailboxId) -> Result<(), InboxError> {
        self.write("register", |txn| {
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let present = mailboxes.get(mailbox.0)?.is_some();
            if !present {
                mailboxes.insert(mailbox.0, (0u32, 0u64))?;
            }
            Ok(())
        })
    }

    /// Unregister `mailbox` and drop every message it holds; returns how
    /// many were dropped (0 if it was not registered). Messages go in
    /// durable transactions of at most `REMOVE_CHUNK_MESSAGES`, the
    /// registration with the last of them, so an interrupted call leaves a
    /// registered mailbox whose usage matches what it still holds.
    pub fn unregister(&mut self, mailbox: MailboxId) -> Result<u64, InboxError> {
        let mut dropped_total = 0u64;
        loop {
            let (dropped, more, totals) = self.write("unregister", |txn| {
                let mut messages = txn.open_table(MESSAGES)?;
                let mut owners = txn.open_table(OWNERS)?;
                let mut expiry = txn.open_table(EXPIRY)?;
                let mut mailboxes = txn.open_table(MAILBOXES)?;
                let mut meta = txn.open_table(META)?;
                let mut totals = read_totals(&meta)?;
                let ids = messages
                    .range((mailbox.0, 0)..=(mailbox.0, u64::MAX))?
                    .take(REMOVE_CHUNK_MESSAGES + 1)
                    .map(|r| r.map(|(k, _)| k.value().1))
                    .collect::<Result<Vec<u64>, _>>()?;
                let more = ids.len() > REMOVE_CHUNK_MESSAGES;
                let mut dropped = 0u64;
                let mut dropped_bytes = 0u64;
                for &id in ids.iter().take(REMOVE_CHUNK_MESSAGES) {
                    let removed =
                        remove_message(&mut messages, &mut owners, &mut expiry, mailbox.0, id)?;
                    if let Some(len_bytes) = removed {
                        dropped += 1;
                        dropped_bytes += len_bytes;
                    }
                }
                let by_mailbox = HashMap::from([(mailbox.0, (dropped, dropped_bytes))]);
                debit(&mut mailboxes, &mut totals, &by_mailbox)?;
                if !more {
                    mailboxes.remove(mailbox.0)?;
                }
                write_totals(&mut meta, totals)?;
                Ok((dropped, more, totals))
            })?;
            dropped_total += dropped;
            self.stats.dropped_unregistered += dropped;
            self.stats.held_messages = totals.messages;
            self.stats.held_bytes = totals.bytes;
            if !more {
                return Ok(dropped_total);
            }
        }
    }

    /// Every registered mailbox, in key order (one per registered client,
    /// so bounded by the provider's client registry).
    pub fn registered_mailboxes(&self) -> Result<Vec<MailboxId>, InboxError> {
        self.read("registered_mailboxes", |txn| {
            let mailboxes = txn.open_table(MAILBOXES)?;
            mailboxes
                .iter()?
                .map(|r| r.map(|(k, _)| MailboxId(k.value())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(redb::Error::from)
        })
    }

    /// Whether `mailbox` is registered.
    pub fn is_registered(&self, mailbox: MailboxId) -> Result<bool, InboxError> {
        self.read("is_registered", |txn| {
            let mailboxes = txn.open_table(MAILBOXES)?;
            Ok(mailboxes.get(mailbox.0)?.is_some())
        })
    }

    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, InboxError> {
        let run = || -> Result<T, redb::Error> {
            let txn = self.db.get().begin_read()?;
            f(&txn)
        };
        contain_panic(&self.config.path, op, || {
            run().map_err(self.storage_err(op))
        })
    }

    /// Group commit: store a batch in one durable transaction; returns one
    /// outcome per item, in order. The caller may count a packet as stored
    /// only after this returns `Ok` with `Stored` for it. On `Err` nothing of
    /// the batch is stored or counted here: the caller counts the whole
    /// batch as failed. `now_unix_s` is recorded as each message's age base.
    pub fn store_batch(
        &mut self,
        now_unix_s: u64,
        items: &[(MailboxId, &[u8])],
    ) -> Result<Vec<StoreOutcome>, InboxError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let max_count = self.config.max_messages_per_client;
        let max_bytes = self.config.max_bytes_per_client;
        let ids = self.ids;
        let (outcomes, totals) = self.write("store_batch", |txn| {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut owners = txn.open_table(OWNERS)?;
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let mut meta = txn.open_table(META)?;
            let mut totals = read_totals(&meta)?;
            let mut next_id = meta.get(META_NEXT_ID)?.map_or(FIRST_ID, |g| g.value());
            let mut outcomes = Vec::with_capacity(items.len());
            for &(mailbox, bytes) in items {
                let usage = mailboxes.get(mailbox.0)?.map(|g| g.value());
                let len_bytes = bytes.len() as u64;
                let outcome = match usage {
                    None => StoreOutcome::UnknownMailbox,
                    Some((count, _)) if count >= max_count => StoreOutcome::RefusedCount,
                    Some((_, held_bytes))
                        if bytes.len() > MAX_MESSAGE_BYTES
                            || held_bytes.saturating_add(len_bytes) > max_bytes =>
                    {
                        StoreOutcome::RefusedBytes
                    }
                    Some((count, held_bytes)) => {
                        let id = next_id;
                        // 2^64 ids: not reachable at any packet rate.
                        next_id = next_id.saturating_add(1);
                        messages.insert((mailbox.0, id), (now_unix_s, bytes))?;
                        owners.insert(id, mailbox.0)?;
                        expiry.insert((now_unix_s, id), mailbox.0)?;
                        mailboxes.insert(mailbox.0, (count + 1, held_bytes + len_bytes))?;
                        totals.messages += 1;
                        totals.bytes += len_bytes;
                        StoreOutcome::Stored(ids.hide(id))
                    }
                };
                outcomes.push(outcome);
            }
            meta.insert(META_NEXT_ID, next_id)?;
            write_totals(&mut meta, totals)?;
            Ok((outcomes, totals))
        })?;
        for o in &outcomes {
            match o {
                StoreOutcome::Stored(_) => self.stats.stored += 1,
                StoreOutcome::RefusedCount => self.stats.refused_count_quota += 1,
                StoreOutcome::RefusedBytes => self.stats.refused_bytes_quota += 1,
                StoreOutcome::UnknownMailbox => self.stats.unknown_mailbox += 1,
            }
        }
        self.stats.held_messages = totals.messages;
        self.stats.held_bytes = totals.bytes;
        Ok(outcomes)
    }

    /// Up to `max` oldest messages of `mailbox` not yet acknowledged, as
    /// (id, bytes), oldest first. Nothing is removed: they stay until
    /// acknowledged (or expired). An unknown mailbox has none.
    pub fn pending(
        &self,
        mailbox: MailboxId,
        max: usize,
    ) -> Result<Vec<(MessageId, Vec<u8>)>, InboxError> {
        let mut out = Vec::new();
        self.reader()
            .snapshot()?
            .pending(mailbox, max, |_| false, &mut out)?;
        Ok(out)
    }

    /// A read handle for another thread: it sees every committed change.
    pub fn reader(&self) -> InboxReader {
        InboxReader {
            db: Arc::clone(self.db.get()),
            path: Arc::from(self.config.path.as_path()),
            ids: self.ids,
        }
    }

    /// Remove `mailbox`'s acknowledged messages in one durable transaction;
    /// returns how many were removed. Ids not present (already acknowledged
    /// or expired) are ignored; ids of another mailbox's messages are
    /// ignored and counted (`InboxStats::foreign_acks`).
    pub fn ack(&mut self, mailbox: MailboxId, ids: &[MessageId]) -> Result<usize, InboxError> {
        self.ack_batch(&[(mailbox, ids)])
    }

    /// [`Inbox::ack`] for several mailboxes in one durable transaction (the
    /// acknowledgements of every pull a provider answers in one round: one
    /// commit instead of one per pull).
    pub fn ack_batch(&mut self, batch: &[(MailboxId, &[MessageId])]) -> Result<usize, InboxError> {
        if batch.iter().all(|(_, ids)| ids.is_empty()) {
            return Ok(0);
        }
        let ids = self.ids;
        let (removed, foreign, totals) = self.write_as("ack", Durability::None, |txn| {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut owners = txn.open_table(OWNERS)?;
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let mut meta = txn.open_table(META)?;
            let mut totals = read_totals(&meta)?;
            let mut removed = 0u64;
            let mut foreign = 0u64;
            let mut by_mailbox: HashMap<MailboxKey, (u64, u64)> = HashMap::new();
            for (mailbox, batch_ids) in batch {
                for &exposed in *batch_ids {
                    let id = ids.reveal(exposed);
                    match remove_message(&mut messages, &mut owners, &mut expiry, mailbox.0, id)? {
                        Some(len_bytes) => {
                            removed += 1;
                            let e = by_mailbox.entry(mailbox.0).or_insert((0, 0));
                            e.0 += 1;
                            e.1 += len_bytes;
                        }
                        None => {
                            if owners.get(id)?.is_some() {
                                foreign += 1;
                            }
                        }
                    }
                }
            }
            if removed > 0 {
                debit(&mut mailboxes, &mut totals, &by_mailbox)?;
                write_totals(&mut meta, totals)?;
            }
            Ok((removed, foreign, totals))
        })?;
        self.unpersisted = true;
        self.stats.acked += removed;
        self.stats.foreign_acks += foreign;
        self.stats.held_messages = totals.messages;
        self.stats.held_bytes = totals.bytes;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Remove every message stored more than `max_age_s` before
    /// `now_unix_s`; returns how many. Durable transactions of at most
    /// `REMOVE_CHUNK_MESSAGES` each; call periodically from the control
    /// plane.
    pub fn expire(&mut self, now_unix_s: u64) -> Result<u64, InboxError> {
        let cutoff_s = now_unix_s.saturating_sub(self.config.max_age_s);
        let mut expired_total = 0u64;
        loop {
            let (expired, more, totals) = self.write("expire", |txn| {
                let mut messages = txn.open_table(MESSAGES)?;
                let mut owners = txn.open_table(OWNERS)?;
                let mut expiry = txn.open_table(EXPIRY)?;
                let mut mailboxes = txn.open_table(MAILBOXES)?;
                let mut meta = txn.open_table(META)?;
                let mut totals = read_totals(&meta)?;
                // Stored strictly before the cutoff: age > max_age_s.
                let due = expiry
                    .range(..(cutoff_s, 0))?
                    .take(REMOVE_CHUNK_MESSAGES + 1)
                    .map(|r| r.map(|(k, v)| (k.value(), v.value())))
                    .collect::<Result<Vec<((u64, u64), MailboxKey)>, _>>()?;
                let more = due.len() > REMOVE_CHUNK_MESSAGES;
                let mut by_mailbox: HashMap<MailboxKey, (u64, u64)> = HashMap::new();
                let mut expired = 0u64;
                for &((stored_at_s, id), mailbox) in due.iter().take(REMOVE_CHUNK_MESSAGES) {
                    match remove_message(&mut messages, &mut owners, &mut expiry, mailbox, id)? {
                        Some(len_bytes) => {
                            let e = by_mailbox.entry(mailbox).or_default();
                            e.0 += 1;
                            e.1 += len_bytes;
                            expired += 1;
                        }
                        // An index row without its message cannot happen (they
                        // change together); drop it so expiry cannot stall.
                        None => {
                            expiry.remove((stored_at_s, id))?;
                        }
                    }
                }
                if expired > 0 {
                    debit(&mut mailboxes, &mut totals, &by_mailbox)?;
                    write_totals(&mut meta, totals)?;
                }
                Ok((expired, more, totals))
            })?;
            expired_total += expired;
            self.stats.expired += expired;
            self.stats.held_messages = totals.messages;
            self.stats.held_bytes = totals.bytes;
            if !more {
                return Ok(expired_total);
            }
        }
    }

    /// Messages and bytes `mailbox` holds now; (0, 0) if not registered.
    pub fn usage(&self, mailbox: MailboxId) -> Result<(u32, u64), InboxError> {
        self.read("usage", |txn| {
            let mailboxes = txn.open_table(MAILBOXES)?;
            Ok(mailboxes.get(mailbox.0)?.map_or((0, 0), |g| g.value()))
        })
    }

    /// Counters since open, and what is held now.
    pub fn stats(&self) -> InboxStats {
        self.stats
    }
}

/// A shard's read handle on the inbox: committed snapshots, read while the
/// writer commits (redb's MVCC), never blocking it.
#[derive(Clone)]
pub struct InboxReader {
    db: Arc<Database>,
    path: Arc<Path>,
    ids: IdCipher,
}

/// One committed state of the inbox, for a round of reads.
pub struct Snapshot {
    txn: redb::ReadTransaction,
    path: Arc<Path>,
    ids: IdCipher,
}

/// The error for a failed redb call on `path` during `op`.
fn read_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(redb::Error) -> InboxError + 'a {
    move |e| match e {
        redb::Error::Corrupted(problem) => corrupt(path, problem),
        source => InboxError::Storage {
            path: path.to_owned(),
            op,
            source: Box::new(source),
        },
    }
}

impl InboxReader {
    /// The state as of the last commit.
    pub fn snapshot(&self) -> Result<Snapshot, InboxError> {
        let path = Arc::clone(&self.path);
        let txn = contain_panic(&path, "snapshot", || {
            self.db
                .begin_read()
                .map_err(|e| read_err(&path, "snapshot")(e.into()))
        })?;
        Ok(Snapshot {
            txn,
            path,
            ids: self.ids,
        })
    }
}

impl Snapshot {
    /// Append to `out` up to `max` oldest messages of `mailbox`, as (id,
    /// bytes), skipping those `hidden` says are acknowledged already
    /// (acknowledgements not yet committed).
    pub fn pending(
        &self,
        mailbox: MailboxId,
        max: usize,
        hidden: impl Fn(MessageId) -> bool,
        out: &mut Vec<(MessageId, Vec<u8>)>,
    ) -> Result<(), InboxError> {
        let mut run = || -> Result<(), redb::Error> {
            let messages = self.txn.open_table(MESSAGES)?;
            let mut taken = 0;
            for r in messages.range((mailbox.0, 0)..=(mailbox.0, u64::MAX))? {
                if taken == max {
                    break;
                }
                let (k, v) = r?;
                let id = self.ids.hide(k.value().1);
                if hidden(id) {
                    continue;
                }
                out.push((id, v.value().1.to_vec()));
                taken += 1;
            }
            Ok(())
        };
        contain_panic(&self.path, "pending", || {
            run().map_err(read_err(&self.path, "pending"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableHandle;

    const A: MailboxId = MailboxId([0xaa; 16]);
    const B: MailboxId = MailboxId([0xbb; 16]);

    fn config(path: &Path) -> InboxConfig {
        InboxConfig::new(path, 100, 1 << 20, 3600)
    }

    fn open_fresh() -> (tempfile::TempDir, Inbox) {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(config(&dir.path().join("inbox.redb"))).expect("open");
        (dir, inbox)
    }

    fn stored(outcomes: &[StoreOutcome]) -> Vec<MessageId> {
        outcomes
            .iter()
            .filter_map(|o| match o {
                StoreOutcome::Stored(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn ids(pending: &[(MessageId, Vec<u8>)]) -> Vec<MessageId> {
        pending.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn store_pending_ack_round_trip() {
        let (_dir, mut inbox) = open_fresh();
        inbox.register(A).expect("register");
        assert!(inbox.is_registered(A).expect("is_registered"));
        assert!(!inbox.is_registered(B).expect("is_registered"));
        assert_eq!(inbox.registered_mailboxes().expect("list"), vec![A]);
        let out = inbox
            .store_batch(1000, &[(A, b"one"), (A, b"two")])
            .expect("store");
        let got = stored(&out);
        assert_eq!(got.len(), 2);
        assert_ne!(got[0], got[1]);
        let p = inbox.pending(A, 10).expect("pending");
        assert_eq!(
            p,
            vec![(got[0], b"one".to_vec()), (got[1], b"two".to_vec())]
        );
        assert_eq!(inbox.usage(A).expect("usage"), (2, 6));
        assert_eq!(inbox.ack(A, &got).expect("ack"), 2);
        assert!(inbox.pending(A, 10).expect("pending").is_empty());
        assert_eq!(inbox.usage(A).expect("usage"), (0, 0));
        // A second ack of the same ids removes nothing and is not foreign.
        assert_eq!(inbox.ack(A, &got).expect("ack again"), 0);
        let s = inbox.stats();
        assert_eq!((s.stored, s.acked, s.foreign_acks), (2, 2, 0));
        assert_eq!((s.held_messages, s.held_bytes), (0, 0));
    }

    #[test]
    fn pending_is_oldest_first_and_removes_nothing() {
        let (_dir, mut inbox) = open_fresh();
        inbox.register(A).expect("register");
        let mut all = Vec::new();
        for i in 0..5u8 {
            let out = inbox.store_batch(1000, &[(A, &[i; 10])]).expect("store");
            all.extend(stored(&out));
        }
        let first = inbox.pending(A, 3).expect("pending");
        assert_eq!(ids(&first), all[..3]);
        assert_eq!(first[0].1, vec![0u8; 10]);
        // Pulled again without ack: the same three.
        assert_eq!(inbox.pending(A, 3).expect("pending"), first);
        assert_eq!(ids(&inbox.pending(A, 100).expect("pending")), all);
        assert_eq!(inbox.ack(A, &all[..2]).expect("ack"), 2);
        assert_eq!(ids(&inbox.pending(A, 100).expect("pending")), all[2..]);
    }

    #[test]
    fn quotas_refuse_and_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(&dir.path().join("inbox.redb"));
        cfg.max_messages_per_client = 3;
        cfg.max_bytes_per_client = 25;
        let mut inbox = Inbox::open(cfg).expect("open");
        inbox.register(A).expect("register");
        inbox.register(B).expect("register");
        let ten = [7u8; 10];
        let out = inbox
            .store_batch(1, &[(A, &ten), (A, &ten), (A, &ten), (B, &[1]), (B, &[2])])
            .expect("store");
        // A: 10 + 10 fit in 25 bytes, the third 10 does not.
        assert!(matches!(out[0], StoreOutcome::Stored(_)));
        assert!(matches!(out[1], StoreOutcome::Stored(_)));
        assert_eq!(out[2], StoreOutcome::RefusedBytes);
        assert!(matches!(out[3], StoreOutcome::Stored(_)));
        assert!(matches!(out[4], StoreOutcome::Stored(_)));
        // A has room for 5 bytes; B for one more message.
        let out = inbox
            .store_batch(2, &[(A, &[0u8; 5]), (A, &[0u8; 1]), (B, &[3]), (B, &[4])])
            .expect("store");
        assert!(matches!(out[0], StoreOutcome::Stored(_)));
        assert_eq!(out[1], StoreOutcome::RefusedCount);
        assert!(matches!(out[2], StoreOutcome::Stored(_)));
        assert_eq!(out[3], StoreOutcome::RefusedCount);
        let s = inbox.stats();
        assert_eq!(s.stored, 6);
        assert_eq!(s.refused_bytes_quota, 1);
        assert_eq!(s.refused_count_quota, 2);
        assert_eq!(inbox.usage(A).expect("usage"), (3, 25));
        assert_eq!(inbox.usage(B).expect("usage"), (3, 3));
        // Acknowledging frees quota.
        let a = ids(&inbox.pending(A, 1).expect("pending"));
        inbox.ack(A, &a).expect("ack");
        let out = inbox.store_batch(3, &[(A, &ten)]).expect("store");
        assert!(matches!(out[0], StoreOutcome::Stored(_)));
    }

    #[test]
    fn oversized_message_is_refused_by_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(&dir.path().join("inbox.redb"));
        cfg.max_bytes_per_client = u64::MAX;
        let mut inbox = Inbox::open(cfg).expect("open");
        inbox.register(A).expect("register");
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let out = inbox.store_batch(1, &[(A, &big)]).expect("store");
        assert_eq!(out, vec![StoreOutcome::RefusedBytes]);
        assert_eq!(inbox.stats().refused_bytes_quota, 1);
    }

    #[test]
    fn unknown_mailbox_is_refused_and_counted() {
        let (_dir, mut inbox) = open_fresh();
        inbox.register(A).expect("register");
        let out = inbox
            .store_batch(1, &[(B, b"x"), (A, b"y"), (B, b"z")])
            .expect("store");
        assert_eq!(out[0], StoreOutcome::UnknownMailbox);
        assert!(matches!(out[1], StoreOutcome::Stored(_)));
        assert_eq!(out[2], StoreOutcome::UnknownMailbox);
        assert_eq!(inbox.stats().unknown_mailbox, 2);
        assert!(inbox.pending(B, 10).expect("pending").is_empty());
        assert_eq!(inbox.usage(B).expect("usage"), (0, 0));
    }

    #[test]
    fn unregister_drops_messages_and_refuses_later_ones() {
        let (_dir, mut inbox) = open_fresh();
        inbox.register(A).expect("register");
        inbox.register(A).expect("register is idempotent");
        inbox.register(B).expect("register");
        inbox
            .store_batch(1, &[(A, b"1"), (A, b"22"), (B, b"333")])
            .expect("store");
        assert_eq!(inbox.unregister(A).expect("unregister"), 2);
        assert!(!inbox.is_registered(A).expect("is_registered"));
        assert!(inbox.pending(A, 10).expect("pending").is_empty());
        assert_eq!(inbox.unregister(A).expect("unregister again"), 0);
        let out = inbox.store_batch(2, &[(A, b"4")]).expect("store");
        assert_eq!(out, vec![StoreOutcome::UnknownMailbox]);
        let s = inbox.stats();
        assert_eq!(
            (s.dropped_unregistered, s.held_messages, s.held_bytes),
            (2, 1, 3)
        );
        assert_eq!(inbox.pending(B, 10).expect("pending").len(), 1);
    }

    #[test]
    fn expire_removes_only_old_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(&dir.path().join("inbox.redb"));
        cfg.max_age_s = 100;
        let mut inbox = Inbox::open(cfg).expect("open");
        inbox.register(A).expect("register");
        inbox.register(B).expect("register");
        inbox
            .store_batch(1000, &[(A, b"old-a"), (B, b"old-b")])
            .expect("store");
        let young = stored(&inbox.store_batch(1050, &[(A, b"young")]).expect("store"));
        // At 1100 the first two are exactly 100 s old: not older than max.
        assert_eq!(inbox.expire(1100).expect("expire"), 0);
        assert_eq!(inbox.expire(1101).expect("expire"), 2);
        assert_eq!(ids(&inbox.pending(A, 10).expect("pending")), young);
        assert!(inbox.pending(B, 10).expect("pending").is_empty());
        assert_eq!(inbox.usage(A).expect("usage"), (1, 5));
        assert_eq!(inbox.usage(B).expect("usage"), (0, 0));
        let s = inbox.stats();
        assert_eq!((s.expired, s.held_messages, s.held_bytes), (2, 1, 5));
        // An acknowledged message is not expired again.
        inbox.ack(A, &young).expect("ack");
        assert_eq!(inbox.expire(10_000).expect("expire"), 0);
    }

    #[test]
    fn expire_works_in_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(&dir.path().join("inbox.redb"));
        cfg.max_messages_per_client = u32::MAX;
        cfg.max_bytes_per_client = u64::MAX;
        cfg.max_age_s = 0;
        let mut inbox = Inbox::open(cfg).expect("open");
        inbox.register(A).expect("register");
        let n = REMOVE_CHUNK_MESSAGES * 2 + 7;
        let items: Vec<(MailboxId, &[u8])> = (0..n).map(|_| (A, &b"m"[..])).collect();
        inbox.store_batch(5, &items).expect("store");
        assert_eq!(inbox.expire(6).expect("expire"), n as u64);
        assert_eq!(inbox.usage(A).expect("usage"), (0, 0));
        assert_eq!(inbox.stats().held_messages, 0);
    }

    #[test]
    fn ack_batch_removes_for_several_mailboxes_in_one_commit() {
        let (_dir, mut inbox) = open_fresh();
        inbox.register(A).expect("register");
        inbox.register(B).expect("register");
        let out = inbox
            .store_batch(1, &[(A, b"a1"), (A, b"a2"), (B, b"b1")])
            .expect("store");
        let ids = stored(&out);
        // A acks its first, B acks its own and A's second (foreign: kept).
        let removed = inbox
            .ack_batch(&[(A, &[ids[0]]), (B, &[ids[2], ids[1]])])
            .expect("ack");
        assert_eq!(removed, 2);
        assert_eq!(inbox.stats().foreign_acks, 1);
        assert_eq!(inbox.pending(A, 10).expect("read").len(), 1);
        assert!(inbox.pending(B, 10).expect("read").is_empty());
        assert_eq!(inbox.usage(A).expect("usage"), (1, 2));
        assert_eq!(inbox.usage(B).expect("usage"), (0, 0));
    }

    #[test]
    fn ack_of_another_mailboxs_id_is_ignored_and_counted() {
        let (_dir, mut inbox) = open_fresh();
        inbox.register(A).expect("register");
        inbox.register(B).expect("register");
        let out = inbox
            .store_batch(1, &[(A, b"for a"), (B, b"for b")])
            .expect("store");
        let (a, b) = (stored(&out)[0], stored(&out)[1]);
        // B acknowledges A's message, plus an id that never existed.
        assert_eq!(inbox.ack(B, &[a, MessageId(999_999)]).expect("ack"), 0);
        assert_eq!(ids(&inbox.pending(A, 10).expect("pending")), vec![a]);
        assert_eq!(inbox.stats().foreign_acks, 1);
        assert_eq!(inbox.ack(B, &[b]).expect("ack"), 1);
        assert_eq!(inbox.usage(A).expect("usage"), (1, 5));
    }

    #[test]
    fn reopen_keeps_everything_and_never_reuses_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inbox.redb");
        let first = {
            let mut inbox = Inbox::open(config(&path)).expect("open");
            inbox.register(A).expect("register");
            inbox.register(B).expect("register");
            let out = inbox
                .store_batch(1, &[(A, b"a1"), (A, b"a2"), (B, b"b1")])
                .expect("store");
            let got = stored(&out);
            // Acknowledge the newest: its id must not come back either.
            inbox.ack(B, &got[2..]).expect("ack");
            got
        };
        let mut inbox = Inbox::open(config(&path)).expect("reopen");
        assert!(inbox.is_registered(A).expect("is_registered"));
        assert!(inbox.is_registered(B).expect("is_registered"));
        assert_eq!(
            inbox.pending(A, 10).expect("pending"),
            vec![(first[0], b"a1".to_vec()), (first[1], b"a2".to_vec())]
        );
        assert!(inbox.pending(B, 10).expect("pending").is_empty());
        assert_eq!(inbox.usage(A).expect("usage"), (2, 4));
        let s = inbox.stats();
        assert_eq!((s.held_messages, s.held_bytes), (2, 4));
        assert_eq!(s.stored, 0, "counters are since open");
        let next = stored(&inbox.store_batch(2, &[(B, b"b2")]).expect("store"));
        assert!(
            !first.contains(&next[0]),
            "{next:?} reuses one of {first:?}"
        );
        // The permutation's key is the file's: the same message keeps its id.
        drop(inbox);
        let inbox = Inbox::open(config(&path)).expect("reopen");
        assert_eq!(ids(&inbox.pending(B, 10).expect("pending")), next);
    }

    #[test]
    fn ids_are_a_keyed_permutation_that_hides_the_sequence() {
        let c = IdCipher::new([7; 32]);
        let other = IdCipher::new([8; 32]);
        let mut seen = std::collections::HashSet::new();
        for n in 1..=10_000u64 {
            let id = c.hide(n);
            assert_eq!(c.reveal(id), n, "round trip");
            assert!(seen.insert(id), "a permutation: {n} collides");
            assert_ne!(other.hide(n), id, "another key, other ids");
        }
        // Consecutive numbers give unrelated ids: neither close nor ordered.
        let close = (1..1000u64)
            .filter(|&n| c.hide(n + 1).0.abs_diff(c.hide(n).0) < 1 << 40)
            .count();
        assert!(close < 5, "{close} consecutive pairs are close");
        let up = (1..1000u64).filter(|&n| c.hide(n + 1) > c.hide(n)).count();
        assert!((400..600).contains(&up), "{up} of 999 increase");
    }

    #[test]
    fn file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _inbox) = open_fresh();
        let mode = fs::metadata(dir.path().join("inbox.redb"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn second_open_is_locked() {
        let (dir, _inbox) = open_fresh();
        let err = Inbox::open(config(&dir.path().join("inbox.redb")))
            .err()
            .expect("second open refused");
        assert!(matches!(err, InboxError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("inbox.redb"), "{err}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent").join("inbox.redb");
        let err = Inbox::open(config(&path)).err().expect("refused");
        assert!(matches!(err, InboxError::Open { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    fn assert_corrupt(path: &Path) {
        let err = Inbox::open(config(path))
            .err()
            .expect("corrupt file refused");
        let text = err.to_string();
        assert!(matches!(err, InboxError::Corrupt { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("move the file aside"), "{text}");
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inbox.redb");
        let garbage: Vec<u8> = (0..20_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        fs::write(&path, &garbage).expect("write");
        assert_corrupt(&path);
        // Short garbage, shorter than redb's header.
        fs::write(&path, b"not a database").expect("write");
        assert_corrupt(&path);
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inbox.redb");
        {
            let mut inbox = Inbox::open(config(&path)).expect("open");
            inbox.register(A).expect("register");
            let packet = [9u8; 1344];
            for t in 0..20 {
                inbox.store_batch(t, &[(A, &packet[..]); 8]).expect("store");
            }
        }
        let len = fs::metadata(&path).expect("stat").len();
        for keep in [len / 2, 600, 100] {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for truncate");
            f.set_len(keep).expect("truncate");
            drop(f);
            assert_corrupt(&path);
        }
    }

    #[test]
    fn a_different_redb_file_is_not_an_inbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("begin");
            {
                let other: TableDefinition<u64, u64> = TableDefinition::new("messages");
                txn.open_table(other)
                    .expect("open")
                    .insert(1, 2)
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        assert_corrupt(&path);
    }

    #[test]
    fn a_redb_file_with_other_tables_is_not_an_inbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("begin");
            {
                let other: TableDefinition<&str, &str> = TableDefinition::new("settings");
                txn.open_table(other)
                    .expect("open")
                    .insert("k", "v")
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        assert_corrupt(&path);
        // And it was left as it was: still no inbox tables.
        let db = Database::create(&path).expect("reopen");
        let txn = db.begin_read().expect("begin");
        let names: Vec<String> = txn
            .list_tables()
            .expect("list")
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(names, vec!["settings".to_string()]);
    }

    #[test]
    fn other_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inbox.redb");
        drop(Inbox::open(config(&path)).expect("open"));
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("begin");
            txn.open_table(META)
                .expect("meta")
                .insert(META_FORMAT_VERSION, FORMAT_VERSION + 1)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = Inbox::open(config(&path)).err().expect("refused");
        assert!(matches!(err, InboxError::Version { found: 2, .. }), "{err}");
    }

    #[test]
    fn damaged_pages_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inbox.redb");
        let packet = [9u8; 1344];
        {
            let mut inbox = Inbox::open(config(&path)).expect("open");
            inbox.register(A).expect("register");
            for t in 0..12 {
                inbox.store_batch(t, &[(A, &packet[..]); 8]).expect("store");
            }
        }
        let original = fs::read(&path).expect("read");
        let mut refused = 0;
        // Damage the start of each 4 KiB page in turn (and a few header
        // offsets); every call must return, never unwind into the caller.
        let offsets = (0..original.len())
            .step_by(4096)
            .chain([100, 300, 500, 700]);
        for off in offsets {
            let mut damaged = original.clone();
            let end = (off + 64).min(damaged.len());
            for b in &mut damaged[off..end] {
                *b ^= 0x5a;
            }
            fs::write(&path, &damaged).expect("write");
            let mut inbox = match Inbox::open(config(&path)) {
                Ok(inbox) => inbox,
                Err(e) => {
                    assert!(e.to_string().contains("inbox.redb"), "{e}");
                    refused += 1;
                    continue;
                }
            };
            // Whatever these return, they return.
            let pending = inbox.pending(A, 1000).unwrap_or_default();
            let _ = inbox.store_batch(99, &[(A, &packet[..])]);
            let ids: Vec<MessageId> = pending.iter().map(|(id, _)| *id).collect();
            let _ = inbox.ack(A, &ids);
            let _ = inbox.expire(1 << 40);
        }
        assert!(refused > 0, "some damage must be noticed at open");
    }

    #[test]
    fn empty_batches_and_acks_do_nothing() {
        let (_dir, mut inbox) = open_fresh();
        assert!(inbox.store_batch(1, &[]).expect("store").is_empty());
        assert_eq!(inbox.ack(A, &[]).expect("ack"), 0);
        assert_eq!(inbox.stats(), InboxStats::default());
    }
}
