//! Sphinx replay filters: one bloom filter per key epoch for the whole
//! node, shared by its shards ([`BloomFilter`] is a handle), in process
//! memory or in a file that outlives the process
//! ([`BloomFilter::open_file`], `docs/restarts.md`); each shard keeps the
//! handles of the epochs it accepts in a [`ReplayFilters`].
//!
//! A replay tag ([`ReplayTag`]) is a uniformly random 16-byte value derived
//! from a packet's shared secret, equal for two copies of one packet at one
//! hop. Because it is already uniform, the filter takes its probe positions
//! straight from the tag's bits: `h1` and `h2` are its two little-endian
//! halves, `h2` forced odd, and probe `i` is `(h1 + i * h2) mod m` (double
//! hashing, computed without per-probe division).
//!
//! Invariants:
//! - no false negatives: once inserted, a tag is contained until its epoch's
//!   filter is retired;
//! - memory is fixed when an epoch opens ([`ReplayFilters::open_epoch`] or
//!   [`ReplayFilters::install`]) and is freed when the last handle goes
//!   ([`ReplayFilters::retire_before`] in every shard); `contains` and
//!   `insert` never allocate;
//! - at most [`MAX_OPEN_EPOCHS`] filters exist at once, and an epoch once
//!   retired is never reopened (a fresh filter would forget its tags and let
//!   every old packet of that epoch be replayed);
//! - `set_bits` always equals the number of one bits (each is counted by
//!   the one `fetch_or` that set it), so the fill ratio is O(1).

use crate::io::mapped::MappedFile;
use loopix_crypto::ReplayTag;
use std::f64::consts::LN_2;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Fewest probes per tag.
const HASHES_MIN: u32 = 1;
/// Most probes per tag: beyond 30 the extra cache misses cost more than the
/// false-positive rate they buy back.
const HASHES_MAX: u32 = 30;

/// Hard cap on one filter's size whatever the caller allows: keeps the bit
/// count (and `start + step` in the probe loop) far from overflowing `u64`.
const FILTER_BYTES_LIMIT: u64 = 1 << 59;

/// Most filters open at once: previous (grace period), current, next
/// (published early), and one spare for a late retirement.
pub const MAX_OPEN_EPOCHS: usize = 4;

/// Why a filter could not be sized. Its message names the argument and, for
/// size limits, the computed size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterSizeError {
    /// `expected_items` was 0.
    #[error("replay filter sized for 0 expected items; need at least 1")]
    ZeroItems,
    /// The false-positive rate was not strictly between 0 and 1 (or NaN).
    #[error("replay filter false-positive rate {0} is not strictly between 0 and 1")]
    FpRateOutOfRange(f64),
    /// The filter would be larger than the allowed size.
    #[error(
        "replay filter for {expected_items} items at false-positive rate {fp_rate} needs \
         {needed_bytes} bytes, over the limit of {limit_bytes} bytes"
    )]
    TooLarge {
        /// Items the filter was sized for.
        expected_items: u64,
        /// False-positive rate it was sized for.
        fp_rate: f64,
        /// Bytes the sizing formula asks for (saturated at `u64::MAX`).
        needed_bytes: u64,
        /// The caller's `max_bytes`, or the internal cap if smaller.
        limit_bytes: u64,
    },
}

/// Why [`ReplayFilters::open_epoch`] refused to open an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenEpochError {
    /// The epoch was retired: reopening it with an empty filter would accept
    /// replays of its packets.
    #[error("key epoch {epoch} was retired (epochs before {retired_before} are closed for good)")]
    Retired {
        /// The epoch asked for.
        epoch: u64,
        /// Every epoch below this was retired.
        retired_before: u64,
    },
    /// [`MAX_OPEN_EPOCHS`] epochs are already open.
    #[error("cannot open key epoch {epoch}: {MAX_OPEN_EPOCHS} epochs already open")]
    TooMany {
        /// The epoch asked for.
        epoch: u64,
    },
}

/// A filter's dimensions, computed from the expected load without
/// allocating (so a configuration can be checked and its memory reported
/// before any filter exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterSizing {
    /// Bits in the filter (`m`), a multiple of 64.
    pub bits: u64,
    /// Probes per tag (`k`), in `1..=30`.
    pub hashes: u32,
}

impl FilterSizing {
    /// `m = ceil(-n ln p / (ln 2)^2)` rounded up to a multiple of 64 bits,
    /// `k = round(m / n * ln 2)` clamped to `1..=30`. Errors if `n` is 0,
    /// `p` is not strictly between 0 and 1, or the filter would exceed
    /// `max_bytes`.
    pub fn compute(
        expected_items: u64,
        fp_rate: f64,
        max_bytes: u64,
    ) -> Result<Self, FilterSizeError> {
        if expected_items == 0 {
            return Err(FilterSizeError::ZeroItems);
        }
        // Written so that NaN fails too.
        if !(fp_rate > 0.0 && fp_rate < 1.0) {
            return Err(FilterSizeError::FpRateOutOfRange(fp_rate));
        }
        let n = expected_items as f64;
        let bits_f = (-n * fp_rate.ln() / (LN_2 * LN_2)).ceil();
        let words_f = (bits_f / 64.0).ceil();
        let needed_bytes_f = words_f * 8.0;
        // `isize::MAX` matters on 32-bit targets, where it is the largest
        // allocation; the cast below is then lossless.
        let limit_bytes = max_bytes.min(FILTER_BYTES_LIMIT).min(isize::MAX as u64);
        if needed_bytes_f > limit_bytes as f64 {
            return Err(FilterSizeError::TooLarge {
                expected_items,
                fp_rate,
                // Float-to-int casts saturate.
                needed_bytes: needed_bytes_f as u64,
                limit_bytes,
            });
        }
        let bits = words_f as u64 * 64;
        // A multiple of 64 (a mask, not `is_multiple_of`, for the 1.85 MSRV).
        debug_assert!(bits >= 64 && bits & 63 == 0);
        let hashes = (bits as f64 / n * LN_2)
            .round()
            .clamp(f64::from(HASHES_MIN), f64::from(HASHES_MAX)) as u32;
        Ok(Self { bits, hashes })
    }

    /// Bytes one filter of this size occupies.
    pub fn memory_bytes(&self) -> u64 {
        self.bits / 8
    }
}

/// Filters by key epoch, as the control plane hands them to the shards.
pub type EpochFilters = Vec<(u64, BloomFilter)>;

/// Where a filter's bits live.
enum Words {
    /// Process memory: simulations, fuzzing, benches.
    Heap(Box<[AtomicU64]>),
    /// A shared file mapping that outlives the process (see `io::mapped`).
    File(MappedFile),
}

impl Words {
    #[inline]
    fn get(&self) -> &[AtomicU64] {
        match self {
            Words::Heap(w) => w,
            Words::File(f) => f.body(),
        }
    }
}

struct Inner {
    words: Words,
    /// `m`: `words.len() * 64`.
    bits: u64,
    /// `k`.
    hashes: u32,
    /// One bits in `words`.
    set_bits: AtomicU64,
    /// Inserts that set at least one new bit.
    items: AtomicU64,
}

/// A bloom filter over replay tags, fixed size, no deletion: a shared
/// handle (cloning it shares the bits), so one filter per key epoch serves
/// every shard of a node. Bits are set with relaxed atomic `fetch_or`, which
/// loses no bit when two shards insert at once; `set_bits` and `items` are
/// exact for the same reason (a bit is counted by the one insert that set
/// it).
#[derive(Clone)]
pub struct BloomFilter {
    inner: Arc<Inner>,
}

/// The persistent filter file's header words.
mod header {
    /// `LOOPIXRF`, then the format version.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"LOOPIXRF");
    pub const VERSION: u64 = 1;
    pub const W_MAGIC: usize = 0;
    pub const W_VERSION: usize = 1;
    pub const W_EPOCH: usize = 2;
    pub const W_BITS: usize = 3;
    pub const W_HASHES: usize = 4;
    /// `items` as of the last sync (for metrics after a restart).
    pub const W_ITEMS: usize = 5;
}

/// Why a persistent filter file could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum FilterFileError {
    /// The file system refused (no space, no permission, ...).
    #[error("replay state {path}: {err}", path = .path.display())]
    Io {
        /// The filter file.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// The file is not a filter this node wrote for this epoch.
    #[error(
        "replay state {path} is damaged or foreign ({why}); move it aside to start (packets of          key epoch {epoch} seen before it was written can then be replayed once)",
        path = .path.display()
    )]
    Damaged {
        /// The filter file.
        path: PathBuf,
        /// The epoch it was opened for.
        epoch: u64,
        /// What was wrong.
        why: String,
    },
}

impl BloomFilter {
    /// A filter sized for `expected_items` at false-positive rate `fp_rate`
    /// (see [`FilterSizing::compute`]), no larger than `max_bytes`.
    pub fn new(expected_items: u64, fp_rate: f64, max_bytes: u64) -> Result<Self, FilterSizeError> {
        FilterSizing::compute(expected_items, fp_rate, max_bytes).map(Self::with_sizing)
    }

    /// A filter of exactly these dimensions, in process memory. Panics if
    /// `sizing.bits` is not a positive multiple of 64 (sizings from
    /// `compute` always are).
    ///
    /// The bits are written (not merely allocated zeroed) here, so every page
    /// is faulted in by the thread that builds the filter: a fresh filter
    /// otherwise costs a page fault per page on the packet path (node-bench
    /// measured about 125 ms of faults for a 247 MiB filter).
    pub fn with_sizing(sizing: FilterSizing) -> Self {
        assert!(
            sizing.bits > 0 && sizing.bits & 63 == 0 && sizing.bits / 8 <= FILTER_BYTES_LIMIT,
            "bloom filter bits {} must be a positive multiple of 64 within the size cap",
            sizing.bits
        );
        assert!((HASHES_MIN..=HASHES_MAX).contains(&sizing.hashes));
        // Collecting writes every word, which touches every page now.
        let words: Box<[AtomicU64]> = (0..sizing.bits / 64).map(|_| AtomicU64::new(0)).collect();
        Self::from_parts(Words::Heap(words), sizing, 0, 0)
    }

    fn from_parts(words: Words, sizing: FilterSizing, set_bits: u64, items: u64) -> Self {
        debug_assert_eq!(words.get().len() as u64 * 64, sizing.bits);
        BloomFilter {
            inner: Arc::new(Inner {
                words,
                bits: sizing.bits,
                hashes: sizing.hashes,
                set_bits: AtomicU64::new(set_bits),
                items: AtomicU64::new(items),
            }),
        }
    }

    /// Key epoch `epoch`'s filter in the file `path`: resumed with every tag
    /// it holds if the file exists (whatever sizing it was made with), else
    /// created with `sizing` and its disk space reserved. Returns the filter
    /// and whether it was resumed. Every page is read (counting its bits),
    /// so the packet path takes no fault to read it in.
    pub fn open_file(
        path: &Path,
        epoch: u64,
        sizing: FilterSizing,
    ) -> Result<(Self, bool), FilterFileError> {
        let io_err = |err| FilterFileError::Io {
            path: path.to_owned(),
            err,
        };
        if !path.exists() {
            let map = MappedFile::create(path, sizing.memory_bytes()).map_err(io_err)?;
            let h = map.header();
            h[header::W_MAGIC].store(header::MAGIC, Ordering::Relaxed);
            h[header::W_VERSION].store(header::VERSION, Ordering::Relaxed);
            h[header::W_EPOCH].store(epoch, Ordering::Relaxed);
            h[header::W_BITS].store(sizing.bits, Ordering::Relaxed);
            h[header::W_HASHES].store(u64::from(sizing.hashes), Ordering::Relaxed);
            map.sync().map_err(io_err)?;
            let f = Self::from_parts(Words::File(map), sizing, 0, 0);
            f.prefault();
            return Ok((f, false));
        }
        let damaged = |why: String| FilterFileError::Damaged {
            path: path.to_owned(),
            epoch,
            why,
        };
        let map = MappedFile::open(path).map_err(|e| damaged(e.to_string()))?;
        let h = map.header();
        let word = |i: usize| h[i].load(Ordering::Relaxed);
        if word(header::W_MAGIC) != header::MAGIC || word(header::W_VERSION) != header::VERSION {
            return Err(damaged("not a loopix replay filter of format 1".into()));
        }
        if word(header::W_EPOCH) != epoch {
            return Err(damaged(format!(
                "written for epoch {}",
                word(header::W_EPOCH)
            )));
        }
        let found = FilterSizing {
            bits: word(header::W_BITS),
            hashes: u32::try_from(word(header::W_HASHES)).unwrap_or(0),
        };
        if found.bits == 0
            || !found.bits.is_multiple_of(64)
            || found.bits / 64 != map.body().len() as u64
            || !(HASHES_MIN..=HASHES_MAX).contains(&found.hashes)
        {
            return Err(damaged(format!(
                "header says {} bits and {} hashes for a body of {} words",
                found.bits,
                word(header::W_HASHES),
                map.body().len()
            )));
        }
        let set_bits = map
            .body()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        let items = word(header::W_ITEMS);
        // Write back what the last process left dirty before the shards
        // start: the kernel would do it later, under the shards, and each
        // page it cleaned would cost them a write fault (node-bench counted
        // thousands per step without this).
        map.sync().map_err(io_err)?;
        let f = Self::from_parts(Words::File(map), found, set_bits, items);
        f.prefault();
        Ok((f, true))
    }

    /// Make every page of a file-backed filter writable now, on the calling
    /// thread: a page of a shared file mapping is write-protected until its
    /// first write after it was mapped or written back (msync), and that
    /// write takes a fault. Done where the filter is opened and after each
    /// sync, so that the shards' first writes do not. An atomic
    /// compare-exchange of one word per page with its own value: a write that changes
    /// nothing, safe while shards set bits. (Not `fetch_or(0)`: the compiler
    /// turns an idempotent read-modify-write into a load, which faults
    /// nothing in; node-bench counted 6,000 to 11,000 write faults a step
    /// with it, and none with this.) Nothing to do in memory.
    pub fn prefault(&self) {
        if let Words::File(map) = &self.inner.words {
            for w in map.body().iter().step_by(4096 / 8) {
                let mut v = w.load(Ordering::Relaxed);
                // A successful exchange is a store on every architecture.
                while let Err(now) =
                    w.compare_exchange_weak(v, v, Ordering::Relaxed, Ordering::Relaxed)
                {
                    v = now;
                }
            }
        }
    }

    /// For a filter in a file: record `items` in its header and write every
    /// changed page to the disk, waiting for it. Nothing to do in memory.
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.inner.words {
            Words::Heap(_) => Ok(()),
            Words::File(map) => {
                map.header()[header::W_ITEMS].store(self.items(), Ordering::Relaxed);
                map.sync()
            }
        }
    }

    /// The file behind the filter, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.words {
            Words::Heap(_) => None,
            Words::File(map) => Some(map.path()),
        }
    }

    /// First probe position and the stride, both reduced modulo `m`. The
    /// stride is odd before reduction and `m` is even, so it stays odd and
    /// never 0.
    #[inline]
    fn probe_start(&self, tag: &ReplayTag) -> (u64, u64) {
        let x = u128::from_le_bytes(tag.0);
        let h1 = x as u64;
        let h2 = (x >> 64) as u64 | 1;
        (h1 % self.inner.bits, h2 % self.inner.bits)
    }

    /// Whether the tag is (probably) in the filter. Stops at the first clear
    /// bit, so a fresh tag usually costs one or two probes.
    #[inline]
    pub fn contains(&self, tag: &ReplayTag) -> bool {
        let (mut pos, step) = self.probe_start(tag);
        let (words, bits) = (self.inner.words.get(), self.inner.bits);
        for _ in 0..self.inner.hashes {
            debug_assert!(pos < bits);
            if words[(pos >> 6) as usize].load(Ordering::Relaxed) & (1u64 << (pos & 63)) == 0 {
                return false;
            }
            // (pos + step) mod m without a division: both are below m.
            pos += step;
            if pos >= bits {
                pos -= bits;
            }
        }
        true
    }

    /// Add the tag. Returns true if it was (probably) already present, that
    /// is, if no bit changed.
    #[inline]
    pub fn insert(&self, tag: &ReplayTag) -> bool {
        let (mut pos, step) = self.probe_start(tag);
        let (words, bits) = (self.inner.words.get(), self.inner.bits);
        let mut newly_set = 0;
        for _ in 0..self.inner.hashes {
            debug_assert!(pos < bits);
            let word = &words[(pos >> 6) as usize];
            let mask = 1u64 << (pos & 63);
            // Read first: a bit already set costs no locked instruction.
            if word.load(Ordering::Relaxed) & mask == 0
                && word.fetch_or(mask, Ordering::Relaxed) & mask == 0
            {
                newly_set += 1;
            }
            pos += step;
            if pos >= bits {
                pos -= bits;
            }
        }
        if newly_set == 0 {
            return true;
        }
        let set = self.inner.set_bits.fetch_add(newly_set, Ordering::Relaxed) + newly_set;
        debug_assert!(set <= bits);
        self.inner.items.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Bytes of filter bits.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.bits / 8
    }

    /// Bits in the filter (`m`).
    pub fn bits(&self) -> u64 {
        self.inner.bits
    }

    /// Probes per tag (`k`).
    pub fn hashes(&self) -> u32 {
        self.inner.hashes
    }

    /// Fraction of bits set, in `0..=1` (kept incrementally, O(1)).
    pub fn fill_ratio(&self) -> f64 {
        self.inner.set_bits.load(Ordering::Relaxed) as f64 / self.inner.bits as f64
    }

    /// Inserts that set at least one new bit: the distinct tags seen, less
    /// those that collided with earlier ones.
    pub fn items(&self) -> u64 {
        self.inner.items.load(Ordering::Relaxed)
    }

    /// Estimated probability that a fresh tag is reported present now:
    /// `fill_ratio ^ k`.
    pub fn estimated_fp_rate(&self) -> f64 {
        // k is at most 30, so the cast is lossless.
        self.fill_ratio().powi(self.inner.hashes as i32)
    }
}

impl fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BloomFilter")
            .field("bits", &self.bits())
            .field("hashes", &self.hashes())
            .field("set_bits", &self.inner.set_bits.load(Ordering::Relaxed))
            .field("items", &self.items())
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

/// One shard's replay filters, keyed by key epoch: the current epoch, the
/// next one (its key is published, and may be used, early) and the previous
/// one (accepted for a grace period).
///
/// Use around Sphinx processing: [`contains`](Self::contains) before the MAC
/// check (a replay then costs one scalar multiplication, not two), and
/// [`insert`](Self::insert) only after the MAC verified, so a forged copy
/// with a bad MAC cannot poison the genuine packet's tag.
#[derive(Debug)]
pub struct ReplayFilters {
    sizing: FilterSizing,
    /// `(epoch, filter)`, sorted by epoch, at most `MAX_OPEN_EPOCHS`.
    filters: Vec<(u64, BloomFilter)>,
    /// Every epoch below this was retired and may not reopen.
    retired_before: u64,
}

impl ReplayFilters {
    /// Filters of `expected_items_per_epoch` items at false-positive rate
    /// `fp_rate`, each at most `max_bytes_per_filter` bytes. Sizes are
    /// checked here; no filter is allocated until an epoch opens.
    pub fn new(
        expected_items_per_epoch: u64,
        fp_rate: f64,
        max_bytes_per_filter: u64,
    ) -> Result<Self, FilterSizeError> {
        let sizing =
            FilterSizing::compute(expected_items_per_epoch, fp_rate, max_bytes_per_filter)?;
        Ok(Self {
            sizing,
            filters: Vec::with_capacity(MAX_OPEN_EPOCHS),
            retired_before: 0,
        })
    }

    /// The filter of an open epoch.
    #[inline]
    fn filter(&self, epoch: u64) -> Option<&BloomFilter> {
        self.filters
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, f)| f)
    }

    /// Whether the tag was (probably) seen in `epoch`; `None` if the epoch
    /// is not open, which the caller must treat as a drop (no key, or a
    /// retired one), never as "fresh".
    #[inline]
    pub fn contains(&self, epoch: u64, tag: &ReplayTag) -> Option<bool> {
        self.filter(epoch).map(|f| f.contains(tag))
    }

    /// Record the tag in `epoch`'s filter. Returns false, recording nothing,
    /// if the epoch is not open.
    #[inline]
    pub fn insert(&mut self, epoch: u64, tag: &ReplayTag) -> bool {
        self.test_and_insert(epoch, tag).is_some()
    }

    /// Record the tag in `epoch`'s filter and say whether it was (probably)
    /// already there: `Some(true)` means a replay got past `contains`, as
    /// when two copies of a packet are checked in one batch before either is
    /// inserted. `None` if the epoch is not open.
    #[inline]
    pub fn test_and_insert(&mut self, epoch: u64, tag: &ReplayTag) -> Option<bool> {
        self.filters
            .iter_mut()
            .find(|(e, _)| *e == epoch)
            .map(|(_, f)| f.insert(tag))
    }

    /// Allocate `epoch`'s filter, when its key becomes active (not lazily on
    /// the packet path). Idempotent: an open epoch keeps its filter.
    /// Refuses an epoch already retired and a fifth open epoch.
    pub fn open_epoch(&mut self, epoch: u64) -> Result<(), OpenEpochError> {
        if !self.admit(epoch)? {
            self.insert_sorted(epoch, BloomFilter::with_sizing(self.sizing));
        }
        Ok(())
    }

    /// Open `epoch` with a filter built elsewhere: the control plane builds
    /// (or resumes from its file) and faults in each epoch's filter, shared
    /// by every shard, so that no shard ever does. Idempotent like
    /// `open_epoch`. The filter may have another sizing than this set's (a
    /// file written before the configuration changed keeps its own).
    pub fn install(&mut self, epoch: u64, filter: BloomFilter) -> Result<(), OpenEpochError> {
        if self.admit(epoch)? {
            return Ok(());
        }
        self.insert_sorted(epoch, filter);
        Ok(())
    }

    /// May `epoch` be opened? `Ok(true)` if it already is (nothing to do).
    fn admit(&self, epoch: u64) -> Result<bool, OpenEpochError> {
        if self.is_open(epoch) {
            return Ok(true);
        }
        if epoch < self.retired_before {
            return Err(OpenEpochError::Retired {
                epoch,
                retired_before: self.retired_before,
            });
        }
        if self.filters.len() >= MAX_OPEN_EPOCHS {
            return Err(OpenEpochError::TooMany { epoch });
        }
        Ok(false)
    }

    fn insert_sorted(&mut self, epoch: u64, filter: BloomFilter) {
        let at = self.filters.partition_point(|(e, _)| *e < epoch);
        self.filters.insert(at, (epoch, filter));
        debug_assert!(self.filters.len() <= MAX_OPEN_EPOCHS);
    }

    /// Whether `epoch` has a filter.
    pub fn is_open(&self, epoch: u64) -> bool {
        self.filter(epoch).is_some()
    }

    /// Free every filter for epochs below `oldest_kept`, and refuse to open
    /// them again. Returns the bytes freed.
    pub fn retire_before(&mut self, oldest_kept: u64) -> u64 {
        self.retired_before = self.retired_before.max(oldest_kept);
        let before = self.memory_bytes();
        self.filters.retain(|(e, _)| *e >= oldest_kept);
        before - self.memory_bytes()
    }

    /// Bytes of all open filters (shared filters count in every set that
    /// holds them).
    pub fn memory_bytes(&self) -> u64 {
        self.filters.iter().map(|(_, f)| f.memory_bytes()).sum()
    }

    /// Bytes each filter takes once its epoch opens.
    pub fn bytes_per_filter(&self) -> u64 {
        self.sizing.memory_bytes()
    }

    /// The dimensions every filter gets.
    pub fn sizing(&self) -> FilterSizing {
        self.sizing
    }

    /// `(epoch, fill_ratio, memory_bytes, items)` for each open epoch, by
    /// increasing epoch, for metrics (allocates; control plane only).
    pub fn stats(&self) -> Vec<(u64, f64, u64, u64)> {
        self.filters
            .iter()
            .map(|(e, f)| (*e, f.fill_ratio(), f.memory_bytes(), f.items()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: seeded, deterministic, good enough to stand in for
    /// uniform tags.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            crate::aqm::splitmix64(&mut self.0)
        }
        fn tag(&mut self) -> ReplayTag {
            let lo = self.next();
            let hi = self.next();
            ReplayTag((u128::from(lo) | u128::from(hi) << 64).to_le_bytes())
        }
    }

    const MIB: u64 = 1 << 20;

    fn popcount(f: &BloomFilter) -> u64 {
        f.inner
            .words
            .get()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    #[test]
    fn sizing_formula() {
        // n = 1e6, p = 1e-6: 28.755 bits per item, k = 20.
        let s = FilterSizing::compute(1_000_000, 1e-6, 64 * MIB).expect("fits");
        let exact_bits = (1e6 * -(1e-6f64).ln() / (LN_2 * LN_2)).ceil() as u64;
        assert_eq!(exact_bits, 28_755_176);
        assert_eq!(s.bits, exact_bits.div_ceil(64) * 64);
        assert_eq!(s.bits, 28_755_200);
        assert!((s.bits as f64 / 1e6 - 28.76).abs() < 0.01);
        assert_eq!(s.hashes, 20);
        assert_eq!(s.memory_bytes(), 3_594_400);
        let f = BloomFilter::new(1_000_000, 1e-6, 64 * MIB).expect("fits");
        assert_eq!(
            (f.bits(), f.hashes(), f.memory_bytes()),
            (28_755_200, 20, 3_594_400)
        );
        // The textbook values at 1%: 9.59 bits per item, 7 hashes.
        let s = FilterSizing::compute(1_000_000, 0.01, 64 * MIB).expect("fits");
        assert_eq!((s.bits, s.hashes), (9_585_088, 7));
        // k clamps at both ends; m is never below one word.
        let s = FilterSizing::compute(1_000, 0.5, MIB).expect("fits");
        assert_eq!((s.bits, s.hashes), (1_472, 1));
        let s = FilterSizing::compute(1, 1e-12, MIB).expect("fits");
        assert_eq!((s.bits, s.hashes), (64, 30));
        let s = FilterSizing::compute(1, 0.999, MIB).expect("fits");
        assert_eq!((s.bits, s.hashes), (64, 30));
    }

    #[test]
    fn sizing_errors() {
        assert_eq!(
            BloomFilter::new(0, 0.01, MIB).err(),
            Some(FilterSizeError::ZeroItems)
        );
        for p in [0.0, 1.0, -0.5, 1.5, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                BloomFilter::new(10, p, MIB).err(),
                Some(FilterSizeError::FpRateOutOfRange(p))
            );
        }
        let nan = BloomFilter::new(10, f64::NAN, MIB).expect_err("NaN is refused");
        assert!(matches!(nan, FilterSizeError::FpRateOutOfRange(p) if p.is_nan()));
        // Exactly at the limit is accepted, one byte less is not.
        assert!(BloomFilter::new(1_000_000, 1e-6, 3_594_400).is_ok());
        let err = BloomFilter::new(1_000_000, 1e-6, 3_594_399).expect_err("too large");
        assert_eq!(
            err,
            FilterSizeError::TooLarge {
                expected_items: 1_000_000,
                fp_rate: 1e-6,
                needed_bytes: 3_594_400,
                limit_bytes: 3_594_399
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("needs 3594400 bytes") && text.contains("limit of 3594399"),
            "{text}"
        );
        assert!(FilterSizeError::ZeroItems
            .to_string()
            .contains("0 expected items"));
        assert!(FilterSizeError::FpRateOutOfRange(2.0)
            .to_string()
            .contains("rate 2"));
        // Absurd sizes are errors, not overflows or aborts.
        match BloomFilter::new(u64::MAX, 1e-300, u64::MAX).err() {
            Some(FilterSizeError::TooLarge {
                needed_bytes,
                limit_bytes,
                ..
            }) => {
                assert_eq!(needed_bytes, u64::MAX);
                assert_eq!(limit_bytes, FILTER_BYTES_LIMIT);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(ReplayFilters::new(0, 0.01, MIB).is_err());
        assert!(ReplayFilters::new(1_000_000, 1e-6, MIB).is_err());
    }

    #[test]
    fn probes_follow_double_hashing() {
        // The bits one tag sets are exactly {(h1 + i*h2) mod m : i < k}.
        let f = BloomFilter::new(1_000, 1e-4, MIB).expect("fits");
        let mut rng = Rng(1);
        for _ in 0..50 {
            let tag = rng.tag();
            let fresh = BloomFilter::with_sizing(FilterSizing {
                bits: f.bits(),
                hashes: f.hashes(),
            });
            assert!(!fresh.insert(&tag));
            let x = u128::from_le_bytes(tag.0);
            let (h1, h2, m) = (
                x as u64 as u128,
                ((x >> 64) as u64 | 1) as u128,
                u128::from(f.bits()),
            );
            let mut expected: Vec<u64> = (0..u128::from(f.hashes()))
                .map(|i| ((h1 + i * h2) % m) as u64)
                .collect();
            expected.sort_unstable();
            expected.dedup();
            let set: Vec<u64> = (0..f.bits())
                .filter(|&b| {
                    fresh.inner.words.get()[(b / 64) as usize].load(Ordering::Relaxed) >> (b % 64)
                        & 1
                        == 1
                })
                .collect();
            assert_eq!(set, expected);
            f.insert(&tag);
        }
    }

    #[test]
    fn no_false_negatives() {
        let f = BloomFilter::new(100_000, 1e-3, 16 * MIB).expect("fits");
        let mut rng = Rng(2);
        let tags: Vec<ReplayTag> = (0..100_000).map(|_| rng.tag()).collect();
        for tag in &tags {
            f.insert(tag);
        }
        assert!(tags.iter().all(|t| f.contains(t)));
        // Re-inserting reports every tag present and changes nothing.
        let (fill, items) = (f.fill_ratio(), f.items());
        assert!(tags.iter().all(|t| f.insert(t)));
        assert_eq!((f.fill_ratio(), f.items()), (fill, items));
    }

    /// Inserts `n` tags into a filter sized for `n` at `p`, probes 1e6 fresh
    /// tags, returns (measured rate, estimated rate).
    fn measured_fp_rate(seed: u64, n: u64, p: f64) -> (f64, f64) {
        let f = BloomFilter::new(n, p, 64 * MIB).expect("fits");
        let mut rng = Rng(seed);
        for _ in 0..n {
            f.insert(&rng.tag());
        }
        let probes = 1_000_000;
        let hits = (0..probes).filter(|_| f.contains(&rng.tag())).count();
        (hits as f64 / probes as f64, f.estimated_fp_rate())
    }

    #[test]
    fn false_positive_rate_near_target() {
        for (seed, n, p) in [(3, 100_000, 1e-3), (4, 100_000, 1e-4), (5, 1_000_000, 1e-3)] {
            let (measured, estimated) = measured_fp_rate(seed, n, p);
            assert!(
                measured >= p / 2.0 && measured <= p * 2.0,
                "n {n} p {p}: measured {measured}"
            );
            assert!(
                estimated >= p / 2.0 && estimated <= p * 2.0,
                "n {n} p {p}: estimated {estimated}"
            );
        }
    }

    #[test]
    fn fill_ratio_and_items_count_bits() {
        let f = BloomFilter::new(10_000, 1e-3, MIB).expect("fits");
        assert_eq!(
            (f.fill_ratio(), f.items(), f.estimated_fp_rate()),
            (0.0, 0, 0.0)
        );
        let mut rng = Rng(6);
        let tag = rng.tag();
        assert!(!f.contains(&tag));
        assert!(!f.insert(&tag), "a fresh tag is not present");
        // A large filter and an odd stride: k distinct bits.
        assert_eq!(popcount(&f), u64::from(f.hashes()));
        assert_eq!(f.fill_ratio(), f64::from(f.hashes()) / f.bits() as f64);
        assert_eq!(f.items(), 1);
        assert!(f.insert(&tag), "a repeated tag is present");
        assert_eq!(f.items(), 1);
        assert_eq!(popcount(&f), u64::from(f.hashes()));
        let mut last = f.fill_ratio();
        for _ in 0..10_000 {
            f.insert(&rng.tag());
            assert!(f.fill_ratio() >= last);
            last = f.fill_ratio();
        }
        assert_eq!(f.fill_ratio(), popcount(&f) as f64 / f.bits() as f64);
        // At design load about half the bits are set.
        assert!((f.fill_ratio() - 0.5).abs() < 0.02, "{}", f.fill_ratio());
        assert_eq!(
            f.estimated_fp_rate(),
            f.fill_ratio().powi(f.hashes() as i32)
        );
        assert!(f.items() > 9_980 && f.items() <= 10_001);
        assert!(format!("{f:?}").contains("hashes: 10"));
    }

    #[test]
    fn epochs_open_retire_and_account_memory() {
        let mut r = ReplayFilters::new(100_000, 1e-4, 4 * MIB).expect("fits");
        let per = r.bytes_per_filter();
        assert_eq!(per, r.sizing().memory_bytes());
        assert_eq!(r.memory_bytes(), 0);
        let mut rng = Rng(7);
        let tag = rng.tag();
        // Nothing is open: lookups say so rather than "fresh".
        assert_eq!(r.contains(5, &tag), None);
        assert!(!r.insert(5, &tag));
        assert_eq!(r.test_and_insert(5, &tag), None);

        r.open_epoch(6).expect("opens");
        r.open_epoch(5).expect("opens");
        assert_eq!(r.memory_bytes(), 2 * per);
        assert_eq!(r.contains(5, &tag), Some(false));
        assert!(r.insert(5, &tag));
        assert_eq!(r.contains(5, &tag), Some(true));
        assert_eq!(r.contains(6, &tag), Some(false), "epochs are separate");
        assert_eq!(r.test_and_insert(5, &tag), Some(true));
        assert_eq!(r.test_and_insert(6, &tag), Some(false));
        // Opening again keeps the filter and its tags.
        r.open_epoch(5).expect("idempotent");
        assert_eq!(r.contains(5, &tag), Some(true));
        assert_eq!(r.memory_bytes(), 2 * per);

        r.open_epoch(7).expect("opens");
        r.open_epoch(8).expect("opens");
        assert_eq!(r.open_epoch(9), Err(OpenEpochError::TooMany { epoch: 9 }));
        assert_eq!(r.memory_bytes(), 4 * per);
        let stats = r.stats();
        assert_eq!(
            stats.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![5, 6, 7, 8]
        );
        assert_eq!(stats[0].3, 1);
        assert_eq!(stats[2], (7, 0.0, per, 0));
        assert!(stats[0].1 > 0.0);

        assert_eq!(r.retire_before(7), 2 * per);
        assert_eq!(r.memory_bytes(), 2 * per);
        assert_eq!(r.contains(5, &tag), None);
        assert!(!r.is_open(6) && r.is_open(7));
        // Retired epochs stay closed, even after a lower watermark.
        assert_eq!(r.retire_before(3), 0);
        assert_eq!(
            r.open_epoch(6),
            Err(OpenEpochError::Retired {
                epoch: 6,
                retired_before: 7
            })
        );
        assert!(r
            .open_epoch(6)
            .expect_err("retired")
            .to_string()
            .contains("retired"));
        r.open_epoch(9).expect("room again");
        assert_eq!(r.retire_before(u64::MAX), 3 * per);
        assert_eq!(r.memory_bytes(), 0);
        assert!(r.stats().is_empty());
        assert!(format!("{r:?}").contains("retired_before"));
    }

    #[test]
    fn install_prebuilt_filter() {
        let mut f = ReplayFilters::new(1000, 1e-3, 1 << 20).expect("sized");
        let built = BloomFilter::with_sizing(f.sizing());
        f.install(7, built).expect("installed");
        assert!(f.is_open(7));
        let tag = ReplayTag([3; 16]);
        assert_eq!(f.contains(7, &tag), Some(false));
        f.insert(7, &tag);
        assert_eq!(f.contains(7, &tag), Some(true));
        // Idempotent: an open epoch keeps its filter (and its tags).
        f.install(7, BloomFilter::with_sizing(f.sizing()))
            .expect("idempotent");
        assert_eq!(f.contains(7, &tag), Some(true));
        // Another sizing is accepted: a resumed file keeps its own.
        let other = BloomFilter::new(10, 1e-2, 1 << 20).expect("sized");
        f.install(8, other).expect("installed");
        assert_eq!(f.contains(8, &tag), Some(false));
        f.retire_before(8);
        let again = BloomFilter::with_sizing(f.sizing());
        assert!(matches!(
            f.install(7, again),
            Err(OpenEpochError::Retired { .. })
        ));
    }

    #[test]
    fn a_filter_file_keeps_its_tags_across_opens_without_a_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("epoch-9.bloom");
        let sizing = FilterSizing::compute(10_000, 1e-4, MIB).expect("fits");
        let (f, resumed) = BloomFilter::open_file(&path, 9, sizing).expect("created");
        assert!(!resumed);
        assert_eq!(f.path(), Some(path.as_path()));
        let mut rng = Rng(11);
        let tags: Vec<ReplayTag> = (0..1000).map(|_| rng.tag()).collect();
        for t in &tags {
            assert!(!f.insert(t));
        }
        let fill = f.fill_ratio();
        // A shared clone sees the same bits (every shard holds one).
        let g = f.clone();
        assert!(tags.iter().all(|t| g.contains(t)));
        // Like a SIGKILL: no sync, the mapping goes away, the file stays.
        drop((f, g));
        let (back, resumed) = BloomFilter::open_file(&path, 9, sizing).expect("resumed");
        assert!(resumed);
        assert!(tags.iter().all(|t| back.contains(t)));
        assert_eq!(back.fill_ratio(), fill, "bits recounted on open");
        assert_eq!(back.items(), 0, "items are stored by sync only");
        assert!(!back.insert(&rng.tag()));
        back.sync().expect("synced");
        drop(back);
        // A changed configuration does not change a resumed file's sizing.
        let other = FilterSizing::compute(100, 1e-2, MIB).expect("fits");
        let (back, _) = BloomFilter::open_file(&path, 9, other).expect("resumed");
        assert_eq!((back.bits(), back.items()), (sizing.bits, 1));
        // Opened for another epoch, or damaged: a clear error, nothing lost.
        let e = BloomFilter::open_file(&path, 10, sizing).expect_err("foreign");
        assert!(e.to_string().contains("written for epoch 9"), "{e}");
        let junk = dir.path().join("junk.bloom");
        std::fs::write(&junk, vec![7u8; 8192]).expect("write");
        let e = BloomFilter::open_file(&junk, 1, sizing).expect_err("junk");
        assert!(e.to_string().contains("move it aside"), "{e}");
    }
}
