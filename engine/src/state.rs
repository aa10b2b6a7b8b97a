//! What a node keeps across restarts so that nothing captured before a
//! restart is accepted after it (docs/restarts.md):
//!
//! - `replay/epoch-<E>.bloom`: the Sphinx replay filter of key epoch `E`,
//!   one per epoch shared by every shard, a shared file mapping
//!   ([`BloomFilter::open_file`]). A process crash loses no tag; msync every
//!   `replay.sync_s` bounds what a power loss can lose.
//! - `links`: for each neighbour and sending shard, the highest link counter
//!   accepted, and the next counter this node's shards may seal with. A
//!   restarted node refuses every counter at or below the saved one, and
//!   seals above everything it used before, so peers accept it at once.
//!
//! The shards publish their windows' tops into a [`LinkState`] once a
//! second (never blocking: `try_lock`); the [`Syncer`] thread writes the
//! file and syncs the filters every `replay.sync_s`, and once more after the
//! shards stopped. Frames accepted after the last write of `links` and
//! replayed after a crash pass the link window but not the Sphinx filter,
//! which kept every tag.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopix_crypto::{MailboxId, NodeId};

use crate::metrics::ControlMetrics;
use crate::replay::{BloomFilter, EpochFilters, FilterFileError, FilterSizing};

/// Counters a shard may use past the ones it published: far more than a
/// shard seals between two publications (one a second), so a restart after
/// a crash still starts above every counter used.
pub const COUNTER_RESERVE: u64 = 1 << 32;

/// The file names inside a node's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state under `root` (created with its `replay/` folder, mode 0700).
    pub fn create(root: &Path) -> Result<StateDir, String> {
        let replay = root.join("replay");
        fs::create_dir_all(&replay).map_err(|e| {
            format!(
                "node.state_dir {}: cannot create {}: {e}",
                root.display(),
                replay.display()
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
        }
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Key epoch `epoch`'s replay filter.
    pub fn filter_path(&self, epoch: u64) -> PathBuf {
        self.root
            .join("replay")
            .join(format!("epoch-{epoch}.bloom"))
    }

    /// The link state file.
    pub fn links_path(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Delete the filter files of epochs below `oldest_kept` (their keys are
    /// retired, so no packet of theirs is accepted any more). Returns the
    /// epochs deleted.
    pub fn remove_filters_before(&self, oldest_kept: u64) -> Vec<u64> {
        let mut gone = Vec::new();
        let Ok(entries) = fs::read_dir(self.root.join("replay")) else {
            return gone;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(epoch) = name
                .to_str()
                .and_then(|n| n.strip_prefix("epoch-"))
                .and_then(|n| n.strip_suffix(".bloom"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if epoch < oldest_kept && fs::remove_file(entry.path()).is_ok() {
                gone.push(epoch);
            }
        }
        gone.sort_unstable();
        gone
    }
}

/// Link state: what a shard publishes once a second, what the node saves
/// (the shards' merged), and what a restarted node restores.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LinkState {
    /// Highest counter accepted, by neighbour and its sending shard: a
    /// restarted node refuses counters at or below it.
    pub windows: HashMap<(NodeId, u8), u64>,
    /// A provider's: highest counter accepted from each client, by mailbox.
    pub clients: HashMap<MailboxId, u64>,
    /// No counter at or above this was sealed yet: a restarted node seals
    /// from here on.
    pub counter_floor: u64,
}

/// Raise `map[key]` to `top` (insert it if absent).
pub fn keep_max<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, top: u64) {
    let e = map.entry(key).or_insert(top);
    *e = (*e).max(top);
}

impl LinkState {
    /// Merge the shards' states (highest of each).
    pub fn merge<'a>(states: impl IntoIterator<Item = &'a LinkState>) -> LinkState {
        let mut out = LinkState::default();
        for s in states {
            for (&k, &v) in &s.windows {
                keep_max(&mut out.windows, k, v);
            }
            for (&k, &v) in &s.clients {
                keep_max(&mut out.clients, k, v);
            }
            out.counter_floor = out.counter_floor.max(s.counter_floor);
        }
        out
    }

    /// The file's text: a comment line, `counter <N>`, then one
    /// `window <node id hex> <sending shard> <highest>` per link and one
    /// `client <mailbox hex> <highest>` per client of a provider, sorted.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = self
            .windows
            .iter()
            .map(|((id, shard), top)| format!("window {id} {shard} {top}"))
            .chain(
                self.clients
                    .iter()
                    .map(|(mailbox, top)| format!("client {mailbox} {top}")),
            )
            .collect();
        lines.sort();
        format!(
            "# loopix link state 1: do not edit; deleting it reopens link replays until the \
             peers' counters pass them\ncounter {}\n{}",
            self.counter_floor,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>()
        )
    }

    /// Parse [`to_text`](Self::to_text); the error names the line.
    pub fn from_text(text: &str) -> Result<LinkState, String> {
        let mut out = LinkState::default();
        for (n, line) in text.lines().enumerate() {
            let bad = || format!("line {}: {line:?} is not a link state line", n + 1);
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            match fields.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["counter", v] => out.counter_floor = v.parse().map_err(|_| bad())?,
                ["window", id, shard, top] => {
                    let mut raw = [0u8; 16];
                    hex::decode_to_slice(id, &mut raw).map_err(|_| bad())?;
                    let shard: u8 = shard.parse().map_err(|_| bad())?;
                    let top: u64 = top.parse().map_err(|_| bad())?;
                    out.windows.insert((NodeId(raw), shard), top);
                }
                ["client", mailbox, top] => {
                    let mut raw = [0u8; 16];
                    hex::decode_to_slice(mailbox, &mut raw).map_err(|_| bad())?;
                    let top: u64 = top.parse().map_err(|_| bad())?;
                    out.clients.insert(MailboxId(raw), top);
                }
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }

    /// Read the node's link state; a missing file is an empty state (a first
    /// start). A damaged file is an error naming it.
    pub fn load(dir: &StateDir) -> Result<LinkState, String> {
        let path = dir.links_path();
        match fs::read_to_string(&path) {
            Ok(text) => LinkState::from_text(&text).map_err(|e| {
                format!(
                    "{}: {e}; move it aside to start (link frames captured before the restart \
                     are then refused by the replay filters only)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LinkState::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Write the file durably: a temporary file, fsync, rename, fsync of the
    /// directory.
    pub fn store(&self, dir: &StateDir) -> std::io::Result<()> {
        let path = dir.links_path();
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(self.to_text().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir.root())?.sync_all()
    }
}

/// The node's replay filter files: one per accepted key epoch, shared by
/// every shard, and the list the [`Syncer`] syncs.
#[derive(Debug, Clone)]
pub struct ReplayFiles {
    /// Where they live.
    pub dir: StateDir,
    /// The sizing of filters created from now on.
    pub sizing: FilterSizing,
    /// The open epochs' filters.
    pub open: Arc<Mutex<EpochFilters>>,
}

impl ReplayFiles {
    /// Files in `dir` sized by `sizing`; none open yet.
    pub fn new(dir: StateDir, sizing: FilterSizing) -> ReplayFiles {
        ReplayFiles {
            dir,
            sizing,
            open: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Make `epochs` the open set: resume or create the filter of each
    /// epoch not open yet (faulting it in on this thread), close the others
    /// and delete the files of epochs below the oldest of `epochs` (their
    /// keys are retired). Returns the newly opened filters, and the
    /// epochs that could not be opened with why (their keys stay unusable
    /// until a later turn opens them).
    pub fn open_epochs(&self, epochs: &[u64]) -> (EpochFilters, Vec<(u64, FilterFileError)>) {
        let mut open = self.open.lock().map(|g| g.clone()).unwrap_or_default();
        open.retain(|(e, _)| epochs.contains(e));
        let (mut fresh, mut failed) = (Vec::new(), Vec::new());
        for &e in epochs {
            if open.iter().any(|(o, _)| *o == e) {
                continue;
            }
            match BloomFilter::open_file(&self.dir.filter_path(e), e, self.sizing) {
                Ok((f, resumed)) => {
                    if resumed {
                        eprintln!(
                            "loopix: replay filter of epoch {e} resumed from {} ({:.2}% of its bits set)",
                            self.dir.filter_path(e).display(),
                            f.fill_ratio() * 100.0
                        );
                    }
                    open.push((e, f.clone()));
                    fresh.push((e, f));
                }
                Err(why) => failed.push((e, why)),
            }
        }
        if let Some(&oldest) = epochs.iter().min() {
            self.dir.remove_filters_before(oldest);
        }
        if let Ok(mut g) = self.open.lock() {
            *g = open;
        }
        (fresh, failed)
    }
}

/// The thread that makes the node's state durable (see the module docs).
pub struct Syncer {
    /// Where to write.
    pub dir: StateDir,
    /// Every shard's published snapshot.
    pub shards: Vec<Arc<Mutex<LinkState>>>,
    /// The open epochs' filters (the control plane keeps this current).
    pub filters: Arc<Mutex<EpochFilters>>,
    /// Between two syncs.
    pub interval: Duration,
    /// Syncs done, failed, and the last one's duration.
    pub metrics: Arc<ControlMetrics>,
}

impl Syncer {
    /// Sync now: write the link state and msync every filter, then (with
    /// `refault`, while shards run) make the filters' pages writable again
    /// on this thread. Errors are counted and logged, never fatal (the node
    /// keeps forwarding; what is at risk is replays after a power loss).
    pub fn sync_once(&self, refault: bool) {
        let t = Instant::now();
        let snapshots: Vec<LinkState> = self
            .shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|g| g.clone()))
            .collect();
        let mut ok = LinkState::merge(&snapshots).store(&self.dir).map_err(|e| {
            eprintln!(
                "loopix: cannot write {}: {e}",
                self.dir.links_path().display()
            )
        });
        let filters: EpochFilters = self.filters.lock().map(|g| g.clone()).unwrap_or_default();
        for (_, f) in &filters {
            if let Err(e) = f.sync() {
                eprintln!("loopix: cannot sync replay filter {:?}: {e}", f.path());
                ok = Err(());
            }
            // The sync write-protected every page it wrote: take the faults
            // here rather than on the shards' packet path.
            if refault {
                f.prefault();
            }
        }
        let m = &self.metrics;
        if ok.is_ok() {
            m.state_syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            m.state_sync_errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        m.state_sync_last_us.store(us, Ordering::Relaxed);
    }

    /// Sync every `interval` until `stop`, then return (the caller syncs
    /// once more after the shards have stopped).
    pub fn run(&self, stop: &AtomicBool) {
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= self.interval {
                self.sync_once(true);
                last = Instant::now();
            }
        }
    }
}

/// Unix time in microseconds (0 before 1970).
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_state_round_trips_merges_and_names_a_bad_line() {
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        let s1 = LinkState {
            windows: HashMap::from([((a, 0), 10), ((b, 1), 5)]),
            clients: HashMap::from([(MailboxId([9; 16]), 40)]),
            counter_floor: 100,
        };
        let s2 = LinkState {
            windows: HashMap::from([((a, 0), 7), ((a, 1), 3)]),
            clients: HashMap::from([(MailboxId([9; 16]), 44)]),
            counter_floor: 200,
        };
        let merged = LinkState::merge([&s1, &s2]);
        assert_eq!(merged.counter_floor, 200);
        assert_eq!(merged.windows[&(a, 0)], 10);
        assert_eq!(merged.windows.len(), 3);
        assert_eq!(merged.clients[&MailboxId([9; 16])], 44);
        let text = merged.to_text();
        assert_eq!(LinkState::from_text(&text), Ok(merged.clone()));
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::create(dir.path()).expect("created");
        assert_eq!(LinkState::load(&sd), Ok(LinkState::default()));
        merged.store(&sd).expect("stored");
        assert_eq!(LinkState::load(&sd), Ok(merged));
        let e = LinkState::from_text("counter 5\nwindow zz 0 1\n").expect_err("bad");
        assert!(e.starts_with("line 2:"), "{e}");
        fs::write(sd.links_path(), "garbage here\n").expect("write");
        let e = LinkState::load(&sd).expect_err("damaged");
        assert!(e.contains("move it aside"), "{e}");
    }

    #[test]
    fn old_filter_files_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::create(dir.path()).expect("created");
        for e in [3u64, 4, 5] {
            fs::write(sd.filter_path(e), b"x").expect("write");
        }
        fs::write(dir.path().join("replay").join("notes.txt"), b"x").expect("write");
        assert_eq!(sd.remove_filters_before(5), vec![3, 4]);
        assert!(sd.filter_path(5).exists());
        assert!(dir.path().join("replay").join("notes.txt").exists());
    }
}
