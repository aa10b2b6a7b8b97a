//! Hierarchical timing wheel: when each packet a shard holds must leave.
//!
//! One wheel per shard, single-threaded, microsecond resolution. An entry is
//! an index into the shard's buffer pool (`0..capacity`) and a deadline in
//! absolute microseconds on the shard's monotonic clock. All memory is
//! allocated in [`TimingWheel::new`]: `insert`, `poll` and `next_wakeup_us`
//! never allocate.
//!
//! Layout: up to [`MAX_LEVELS`] levels of 64 slots; a slot at level `L`
//! covers `64^L` microseconds. Each slot is a singly-linked list threaded
//! through the preallocated `next` array (indexed by entry index), and each
//! level has a 64-bit occupancy bitmap, so the next non-empty slot is found
//! with one `trailing_zeros`, never a scan. An entry is placed by the highest
//! bit in which its deadline differs from the wheel's time (as in the Linux
//! and tokio timer wheels); when time reaches a coarser slot, its entries are
//! moved ("cascaded") to finer levels, at most once per level per entry.
//!
//! Invariants (`now` is the wheel's time, [`TimingWheel::now_us`]):
//! - an index is in at most one slot list, and `next[i] == FREE` exactly
//!   when it is in none; `len` counts the indices in lists;
//! - bit `s` of a level's bitmap is set exactly when slot `s` is non-empty;
//! - an entry at level 0 is due at its slot's microsecond (its deadline, or
//!   `now` at insertion if that deadline had already passed);
//! - an entry at level `L > 0` lies outside `now`'s aligned `64^L` block and,
//!   below the top level, inside `now`'s aligned `64^(L+1)` block; so every
//!   entry at level `L - 1` is due before every entry at level `L`, and the
//!   earliest entry is in the lowest non-empty level;
//! - the top level wraps around, which is sound because the horizon keeps
//!   every deadline fewer than 64 top-level slots ahead of `now`;
//! - `now` never passes a slot that still holds an entry: `poll` advances it
//!   slot by slot through occupied slots only, then to the caller's time.

use std::fmt;

/// log2 of the slots per level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask selecting a slot number from a shifted time.
const SLOT_MASK: u64 = SLOTS as u64 - 1;

/// Most levels a wheel can have; with 8 levels the horizon can reach
/// [`MAX_HORIZON_US`] (about 8.8 years), far beyond any mix delay cap.
pub const MAX_LEVELS: usize = 8;

/// Largest `horizon_us` accepted by [`TimingWheel::new`]. The top level
/// wraps, so a deadline must stay fewer than 64 top-level slots ahead; a
/// horizon of at most 63 top-level slots guarantees that whatever the phase
/// of the current time (see `level_count_for`).
pub const MAX_HORIZON_US: u64 = 63 * (1u64 << (SLOT_BITS * (MAX_LEVELS as u32 - 1)));

/// `next[i]` of an index that is in no list.
const FREE: u32 = u32::MAX;
/// `next[i]` of the last entry of a list, and the head of an empty slot.
const END: u32 = u32::MAX - 1;

/// Why [`TimingWheel::insert`] refused an entry. The wheel is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Every index is already in the wheel (checked before `DuplicateIndex`).
    Full,
    /// This index is already in the wheel.
    DuplicateIndex,
    /// The index is not below the wheel's capacity.
    IndexOutOfRange,
    /// The deadline is more than `horizon_us` after the wheel's time.
    TooFar,
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "timing wheel full",
            Self::DuplicateIndex => "index already in the timing wheel",
            Self::IndexOutOfRange => "index beyond the timing wheel's capacity",
            Self::TooFar => "deadline beyond the timing wheel's horizon",
        })
    }
}

impl std::error::Error for InsertError {}

/// One level: 64 list heads and which of them are non-empty.
#[derive(Clone, Copy)]
struct Level {
    heads: [u32; SLOTS],
    occupied: u64,
}

impl Level {
    const EMPTY: Self = Self {
        heads: [END; SLOTS],
        occupied: 0,
    };
}

/// A hierarchical timing wheel over the indices `0..capacity`; see the
/// module documentation for the layout and its invariants.
pub struct TimingWheel {
    /// Next index in the same slot, `END` for the last one, `FREE` if the
    /// index is not in the wheel.
    next: Vec<u32>,
    /// Deadline each index was inserted with (meaningful while not `FREE`).
    deadline_us: Vec<u64>,
    levels: [Level; MAX_LEVELS],
    /// Levels in use (`1..=MAX_LEVELS`), fixed by the horizon.
    level_count: usize,
    /// The wheel's time: every entry due at or before it has fired, except
    /// when `poll` stopped at its `max`.
    now_us: u64,
    horizon_us: u64,
    len: u32,
}

/// Levels needed so that a deadline at most `horizon_us` ahead is fewer than
/// 64 top-level slots ahead whatever the phase of the current time: with
/// top-level slot width `w`, the slot distance is at most
/// `floor((w - 1 + horizon) / w)` (now at the end of its slot), which is at
/// most 63 exactly when `horizon <= 63 w`.
fn level_count_for(horizon_us: u64) -> usize {
    let mut levels = 1;
    while u128::from(horizon_us) > 63u128 << (SLOT_BITS as usize * (levels - 1)) {
        levels += 1;
    }
    levels
}

impl TimingWheel {
    /// A wheel for the indices `0..capacity`, whose time starts at `now_us`,
    /// accepting deadlines up to `horizon_us` after its current time.
    ///
    /// Panics (start-up only) if `capacity` is 0 or not below `u32::MAX - 1`
    /// (two values mark list ends), or if `horizon_us` exceeds
    /// [`MAX_HORIZON_US`].
    pub fn new(capacity: u32, now_us: u64, horizon_us: u64) -> Self {
        assert!(capacity > 0, "timing wheel capacity must be at least 1");
        assert!(
            capacity < END,
            "timing wheel capacity {capacity} collides with the list sentinels"
        );
        let level_count = level_count_for(horizon_us);
        assert!(
            level_count <= MAX_LEVELS,
            "horizon_us {horizon_us} needs {level_count} wheel levels, at most {MAX_LEVELS} \
             are supported (horizon_us <= {MAX_HORIZON_US})"
        );
        Self {
            next: vec![FREE; capacity as usize],
            deadline_us: vec![0; capacity as usize],
            levels: [Level::EMPTY; MAX_LEVELS],
            level_count,
            now_us,
            horizon_us,
            len: 0,
        }
    }

    /// Schedule `index` to fire at `deadline_us`. O(1).
    ///
    /// A deadline at or before the wheel's current time fires at the next
    /// poll (and is reported with the deadline given here). Checks, in this
    /// order: `IndexOutOfRange`, `Full`, `DuplicateIndex`, `TooFar`.
    pub fn insert(&mut self, deadline_us: u64, index: u32) -> Result<(), InsertError> {
        if index >= self.capacity() {
            return Err(InsertError::IndexOutOfRange);
        }
        if self.len == self.capacity() {
            return Err(InsertError::Full);
        }
        let i = index as usize;
        if self.next[i] != FREE {
            return Err(InsertError::DuplicateIndex);
        }
        if deadline_us > self.now_us.saturating_add(self.horizon_us) {
            return Err(InsertError::TooFar);
        }
        self.deadline_us[i] = deadline_us;
        // An overdue entry is filed at the current microsecond: level 0 can
        // only hold times at or after `now`.
        self.place(deadline_us.max(self.now_us), index);
        self.len += 1;
        debug_assert!(self.len <= self.capacity());
        Ok(())
    }

    /// Earliest time at which [`poll`](Self::poll) could fire something, or
    /// `None` if the wheel is empty.
    ///
    /// Exact when the earliest entry is in the finest level (within 64 us of
    /// the wheel's time); otherwise the start of its coarser slot, which is
    /// no later than its deadline, so a caller sleeping until this time
    /// never oversleeps (it may wake early, poll, and get a later time).
    /// Never earlier than [`now_us`](Self::now_us); equal to it when entries
    /// are already due.
    pub fn next_wakeup_us(&self) -> Option<u64> {
        self.next_expiration().map(|(_, _, start_us)| start_us)
    }

    /// Advance the wheel to `now_us` and call `fire(index, deadline_us)` for
    /// every entry due at or before it, at most `max` of them; returns how
    /// many fired.
    ///
    /// Entries fire in non-decreasing deadline order at microsecond
    /// granularity, across calls too. Entries that were already overdue when
    /// inserted are the exception: they fire with the entries due at the
    /// wheel's time of their insertion, in no particular order among them.
    /// When `max` stops the call, the remaining due entries stay due and the
    /// wheel's time stays at the last slot fired, so they come first in the
    /// next call. A `now_us` before the wheel's time is taken as the wheel's
    /// time. Time jumps go straight from one occupied slot to the next
    /// through the bitmaps; each entry is cascaded at most once per level, so
    /// the work is O(1) amortised per entry plus O(levels) per call.
    pub fn poll(&mut self, now_us: u64, max: usize, mut fire: impl FnMut(u32, u64)) -> usize {
        let now_us = now_us.max(self.now_us);
        let mut fired = 0;
        while let Some((level, slot, start_us)) = self.next_expiration() {
            if start_us > now_us {
                break;
            }
            if fired == max {
                // Time must not pass the entries still due.
                return fired;
            }
            debug_assert!(start_us >= self.now_us, "the wheel's time went backwards");
            self.now_us = start_us;
            if level == 0 {
                fired += self.fire_slot(slot, max - fired, &mut fire);
            } else {
                self.cascade(level, slot);
            }
        }
        // Nothing is due at or before `now_us` any more, so time may jump.
        self.now_us = now_us;
        fired
    }

    /// Remove every entry, calling `f(index, deadline_us)` for each, in no
    /// particular order (for shutdown). The wheel's time is unchanged and the
    /// wheel stays usable.
    pub fn drain(&mut self, mut f: impl FnMut(u32, u64)) {
        for level in &mut self.levels[..self.level_count] {
            while level.occupied != 0 {
                let slot = level.occupied.trailing_zeros() as usize;
                let mut head = level.heads[slot];
                while head != END {
                    let i = head as usize;
                    head = self.next[i];
                    self.next[i] = FREE;
                    self.len -= 1;
                    f(i as u32, self.deadline_us[i]);
                }
                level.heads[slot] = END;
                level.occupied &= !(1u64 << slot);
            }
        }
        debug_assert_eq!(self.len, 0);
    }

    /// Entries in the wheel.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the wheel holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of indices (`0..capacity`) the wheel can hold.
    pub fn capacity(&self) -> u32 {
        // `new` built `next` from a u32, so this never truncates.
        self.next.len() as u32
    }

    /// Whether `index` is in the wheel (false if out of range).
    pub fn contains(&self, index: u32) -> bool {
        self.next.get(index as usize).is_some_and(|&n| n != FREE)
    }

    /// The wheel's time: the `now_us` of the last `poll`, or of `new`, except
    /// that it stays at the last slot fired when `poll` stopped at its `max`.
    /// `insert` measures the horizon from here.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The largest delay past the wheel's time that `insert` accepts.
    pub fn horizon_us(&self) -> u64 {
        self.horizon_us
    }

    /// Level for an entry due at `due_us` (at or after `now`): the one whose
    /// digit holds the highest bit in which `due_us` and `now` differ, capped
    /// at the top level.
    #[inline]
    fn level_for(&self, due_us: u64) -> usize {
        debug_assert!(due_us >= self.now_us);
        // OR-ing the low digit in makes equal times land on level 0.
        let masked = (self.now_us ^ due_us) | SLOT_MASK;
        let significant = 63 - masked.leading_zeros();
        ((significant / SLOT_BITS) as usize).min(self.level_count - 1)
    }

    /// File `index` in the slot for `due_us` (at or after `now`).
    #[inline]
    fn place(&mut self, due_us: u64, index: u32) {
        let level = self.level_for(due_us);
        let slot = ((due_us >> (SLOT_BITS * level as u32)) & SLOT_MASK) as usize;
        let l = &mut self.levels[level];
        self.next[index as usize] = l.heads[slot];
        l.heads[slot] = index;
        l.occupied |= 1u64 << slot;
    }

    /// `(level, slot, start_us)` of the earliest non-empty slot. By the
    /// level invariant it is the first occupied slot at or after `now`'s
    /// position in the lowest non-empty level.
    #[inline]
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for (level, l) in self.levels[..self.level_count].iter().enumerate() {
            if l.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let current = ((self.now_us >> shift) & SLOT_MASK) as u32;
            // Rotating puts `now`'s slot at bit 0, which also handles the
            // top level's wrap-around.
            let delta = l.occupied.rotate_right(current).trailing_zeros();
            debug_assert!(
                level == 0 || delta != 0,
                "a coarse slot holds an entry from the current block"
            );
            let slot = ((current + delta) as u64 & SLOT_MASK) as usize;
            // Start of `now`'s slot at this level, plus `delta` slots; it is
            // no later than the entries' deadlines, so it cannot overflow.
            let start_us = ((self.now_us >> shift) << shift) + (u64::from(delta) << shift);
            return Some((level, slot, start_us));
        }
        None
    }

    /// Fire up to `budget` entries of level-0 `slot` (due at `now`).
    #[inline]
    fn fire_slot(&mut self, slot: usize, budget: usize, fire: &mut impl FnMut(u32, u64)) -> usize {
        let mut head = self.levels[0].heads[slot];
        debug_assert!(head != END, "an occupied slot has an empty list");
        let mut fired = 0;
        while head != END && fired < budget {
            let i = head as usize;
            head = self.next[i];
            self.next[i] = FREE;
            self.len -= 1;
            fired += 1;
            debug_assert!(self.deadline_us[i] <= self.now_us, "an entry fired early");
            fire(i as u32, self.deadline_us[i]);
        }
        let l = &mut self.levels[0];
        l.heads[slot] = head;
        if head == END {
            l.occupied &= !(1u64 << slot);
        }
        fired
    }

    /// Move every entry of a coarse slot, whose start is now `now`, to the
    /// finer levels.
    fn cascade(&mut self, level: usize, slot: usize) {
        let l = &mut self.levels[level];
        let mut head = l.heads[slot];
        l.heads[slot] = END;
        l.occupied &= !(1u64 << slot);
        while head != END {
            let i = head as usize;
            head = self.next[i];
            let deadline_us = self.deadline_us[i];
            debug_assert!(deadline_us >= self.now_us, "a coarse entry was overdue");
            debug_assert!(
                self.level_for(deadline_us) < level,
                "cascade did not descend"
            );
            self.place(deadline_us, i as u32);
        }
    }
}

impl fmt::Debug for TimingWheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingWheel")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("now_us", &self.now_us)
            .field("horizon_us", &self.horizon_us)
            .field("level_count", &self.level_count)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// xorshift64*: small, seeded, deterministic.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform-ish in `0..=max` (bias irrelevant here).
        fn upto(&mut self, max: u64) -> u64 {
            if max == u64::MAX {
                self.next()
            } else {
                self.next() % (max + 1)
            }
        }
        /// Mostly small values, sometimes large ones, to hit every level.
        fn delay(&mut self, horizon_us: u64) -> u64 {
            let bits = self.upto(64) as u32;
            let cap = if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            self.upto(cap.min(horizon_us))
        }
    }

    fn collect(wheel: &mut TimingWheel, now_us: u64, max: usize) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let n = wheel.poll(now_us, max, |i, d| out.push((i, d)));
        assert_eq!(n, out.len());
        out
    }

    /// The wheel under test next to a model of what it must hold: the
    /// state of one [`simulate`] run.
    struct Sim {
        seed: u64,
        horizon_us: u64,
        max_fire: usize,
        wheel: TimingWheel,
        /// (deadline, index) of entries in the wheel.
        model: BTreeSet<(u64, u32)>,
        deadline_of: Vec<Option<u64>>,
        free: Vec<u32>,
        last_fired_us: u64,
        fired: usize,
        inserted: usize,
    }

    impl Sim {
        /// Insert a random batch at or after the wheel's time.
        fn insert_batch(&mut self, rng: &mut Rng, capacity: u32) {
            let batch = rng.upto(u64::from(capacity) / 4 + 1);
            for _ in 0..batch {
                if self.free.is_empty() {
                    break;
                }
                let k = rng.upto(self.free.len() as u64 - 1) as usize;
                let index = self.free.swap_remove(k);
                let base = self.wheel.now_us();
                let room = self.horizon_us.min(u64::MAX - base);
                let deadline = base + rng.delay(room);
                self.wheel
                    .insert(deadline, index)
                    .expect("in range, free, within horizon");
                self.model.insert((deadline, index));
                self.deadline_of[index as usize] = Some(deadline);
                self.inserted += 1;
            }
            assert_eq!(self.wheel.len(), self.model.len());
        }

        /// The wakeup is never after the earliest deadline nor before now.
        fn check_wakeup(&self, round: usize) {
            let seed = self.seed;
            match (self.wheel.next_wakeup_us(), self.model.first()) {
                (None, None) => {}
                (Some(w), Some(&(d, _))) => {
                    assert!(
                        w <= d,
                        "seed {seed} round {round}: wakeup {w} after deadline {d}"
                    );
                    assert!(w >= self.wheel.now_us(), "seed {seed}: wakeup before now");
                }
                (w, m) => panic!("seed {seed}: wakeup {w:?} but model {m:?}"),
            }
        }

        /// Fire everything due at `t`, batch by batch, checking each entry:
        /// its own deadline, once, not early, in order.
        fn fire_until(&mut self, t: u64) {
            let seed = self.seed;
            loop {
                let fired = collect(&mut self.wheel, t, self.max_fire);
                assert!(
                    fired.len() <= self.max_fire,
                    "seed {seed}: max not honoured"
                );
                for &(index, deadline) in &fired {
                    assert_eq!(
                        self.deadline_of[index as usize],
                        Some(deadline),
                        "seed {seed}: wrong or repeated fire"
                    );
                    assert!(
                        deadline <= t,
                        "seed {seed}: fired {deadline} before its time (now {t})"
                    );
                    assert!(
                        deadline >= self.last_fired_us,
                        "seed {seed}: order broken: {deadline} after {}",
                        self.last_fired_us
                    );
                    self.last_fired_us = deadline;
                    assert!(self.model.remove(&(deadline, index)));
                    self.deadline_of[index as usize] = None;
                    self.free.push(index);
                    self.fired += 1;
                }
                if fired.len() < self.max_fire {
                    break;
                }
            }
        }
    }

    /// Checks the wheel against a model through random inserts and polls.
    /// `max_fire` bounds each poll; `step_max_us` bounds time steps.
    fn simulate(
        seed: u64,
        capacity: u32,
        horizon_us: u64,
        start_us: u64,
        step_max_us: u64,
        max_fire: usize,
        rounds: usize,
    ) {
        let mut rng = Rng::new(seed);
        let mut sim = Sim {
            seed,
            horizon_us,
            max_fire,
            wheel: TimingWheel::new(capacity, start_us, horizon_us),
            model: BTreeSet::new(),
            deadline_of: vec![None; capacity as usize],
            free: (0..capacity).collect(),
            last_fired_us: 0,
            fired: 0,
            inserted: 0,
        };
        let mut t = start_us;
        for round in 0..rounds {
            sim.insert_batch(&mut rng, capacity);
            sim.check_wakeup(round);
            // Step time (sometimes not at all, sometimes a lot).
            let step = if rng.upto(7) == 0 {
                0
            } else {
                rng.delay(step_max_us)
            };
            t = t.saturating_add(step);
            sim.fire_until(t);
            // Never late: whatever was due at `t` has fired.
            if let Some(&(d, _)) = sim.model.first() {
                assert!(
                    d > t,
                    "seed {seed} round {round}: {d} still in the wheel at {t}"
                );
            }
            assert_eq!(sim.wheel.now_us(), t);
            assert_eq!(sim.wheel.len(), sim.model.len());
        }
        // Finish: everything fires by the horizon.
        let end = t.saturating_add(horizon_us);
        while !sim.model.is_empty() {
            for (index, deadline) in collect(&mut sim.wheel, end, max_fire) {
                assert!(deadline >= sim.last_fired_us);
                sim.last_fired_us = deadline;
                assert!(sim.model.remove(&(deadline, index)));
                sim.fired += 1;
            }
        }
        assert!(sim.wheel.is_empty());
        assert_eq!(sim.fired, sim.inserted);
        assert!(sim.inserted > 0);
    }

    #[test]
    fn fires_in_order_at_exact_times() {
        let mut wheel = TimingWheel::new(8, 1_000, 10_000_000);
        for (index, deadline) in [
            (0, 1_000_050),
            (1, 1_005),
            (2, 70_000),
            (3, 1_005),
            (4, 9_000_000),
        ] {
            wheel.insert(deadline, index).expect("valid insert");
        }
        assert_eq!(wheel.len(), 5);
        assert!(collect(&mut wheel, 1_004, usize::MAX).is_empty());
        let mut first = collect(&mut wheel, 1_005, usize::MAX);
        first.sort_unstable();
        assert_eq!(first, vec![(1, 1_005), (3, 1_005)]);
        assert_eq!(collect(&mut wheel, 69_999, usize::MAX), vec![]);
        assert_eq!(
            collect(&mut wheel, 2_000_000, usize::MAX),
            vec![(2, 70_000), (0, 1_000_050)]
        );
        assert_eq!(
            collect(&mut wheel, u64::MAX, usize::MAX),
            vec![(4, 9_000_000)]
        );
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_wakeup_us(), None);
    }

    #[test]
    fn errors() {
        let mut wheel = TimingWheel::new(3, 100, 1_000);
        assert_eq!(wheel.capacity(), 3);
        assert_eq!(wheel.insert(200, 3), Err(InsertError::IndexOutOfRange));
        assert_eq!(
            wheel.insert(200, u32::MAX),
            Err(InsertError::IndexOutOfRange)
        );
        assert_eq!(wheel.insert(1_101, 0), Err(InsertError::TooFar));
        assert_eq!(wheel.insert(u64::MAX, 0), Err(InsertError::TooFar));
        assert_eq!(wheel.insert(1_100, 0), Ok(()));
        assert_eq!(wheel.insert(300, 0), Err(InsertError::DuplicateIndex));
        assert_eq!(wheel.insert(300, 1), Ok(()));
        assert_eq!(wheel.insert(300, 2), Ok(()));
        assert_eq!(wheel.insert(300, 2), Err(InsertError::Full));
        assert_eq!(wheel.insert(300, 7), Err(InsertError::IndexOutOfRange));
        assert_eq!(wheel.len(), 3);
        assert!(wheel.contains(2) && !wheel.contains(3));
        // A refused insert changed nothing, and a fired index can come back.
        let mut fired = collect(&mut wheel, 300, usize::MAX);
        fired.sort_unstable();
        assert_eq!(fired, vec![(1, 300), (2, 300)]);
        assert!(!wheel.contains(1));
        assert_eq!(wheel.insert(1_300, 1), Ok(()));
        // The horizon is measured from the wheel's time, which moved to 300.
        assert_eq!(wheel.insert(1_301, 2), Err(InsertError::TooFar));
        assert_eq!(
            format!("{}", InsertError::TooFar),
            "deadline beyond the timing wheel's horizon"
        );
    }

    #[test]
    #[should_panic(expected = "capacity must be at least 1")]
    fn zero_capacity_panics() {
        let _ = TimingWheel::new(0, 0, 1);
    }

    #[test]
    #[should_panic(expected = "wheel levels")]
    fn horizon_too_long_panics() {
        let _ = TimingWheel::new(1, 0, MAX_HORIZON_US + 1);
    }

    #[test]
    fn level_counts() {
        assert_eq!(level_count_for(0), 1);
        assert_eq!(level_count_for(63), 1);
        assert_eq!(level_count_for(64), 2);
        assert_eq!(level_count_for(63 * 64), 2);
        assert_eq!(level_count_for(63 * 64 + 1), 3);
        // One hour needs 6 levels (the top one 1.07 s wide).
        assert_eq!(level_count_for(3_600_000_000), 6);
        assert_eq!(level_count_for(MAX_HORIZON_US), MAX_LEVELS);
        assert_eq!(level_count_for(MAX_HORIZON_US + 1), MAX_LEVELS + 1);
        let wheel = TimingWheel::new(1, 0, MAX_HORIZON_US);
        assert_eq!(wheel.horizon_us(), MAX_HORIZON_US);
    }

    #[test]
    fn horizon_boundary_at_every_phase() {
        // The furthest deadline, inserted at every phase of the top-level
        // slot, must not land in the current top-level slot (which the
        // wrap-around would read as due now).
        for horizon_us in [63, 64, 63 * 64, 63 * 64 + 1, 63 * 64 * 64, 63 * 64 * 64 + 1] {
            // Every phase of the small top-level slots, and both ends of
            // the 262 144 us one.
            for now_us in (0..5_000u64).chain(261_900..262_400) {
                let mut wheel = TimingWheel::new(3, now_us, horizon_us);
                wheel
                    .insert(now_us + horizon_us, 0)
                    .expect("at the horizon");
                wheel.insert(now_us + 1, 1).expect("next microsecond");
                assert_eq!(
                    wheel.insert(now_us + horizon_us + 1, 2),
                    Err(InsertError::TooFar)
                );
                assert_eq!(
                    collect(&mut wheel, now_us + 1, usize::MAX),
                    vec![(1, now_us + 1)]
                );
                assert_eq!(
                    collect(&mut wheel, now_us + horizon_us - 1, usize::MAX),
                    vec![]
                );
                let wake_us = wheel.next_wakeup_us().expect("one entry left");
                assert!(wake_us <= now_us + horizon_us && wake_us > now_us);
                assert_eq!(
                    collect(&mut wheel, now_us + horizon_us, usize::MAX),
                    vec![(0, now_us + horizon_us)]
                );
            }
        }
    }

    #[test]
    fn overdue_insert_fires_at_next_poll_with_its_deadline() {
        let mut wheel = TimingWheel::new(4, 0, 1_000_000);
        assert!(collect(&mut wheel, 5_000, usize::MAX).is_empty());
        wheel.insert(4_000, 0).expect("overdue is accepted");
        wheel.insert(0, 1).expect("overdue is accepted");
        wheel.insert(5_000, 2).expect("due now is accepted");
        wheel.insert(5_001, 3).expect("future is accepted");
        assert_eq!(wheel.next_wakeup_us(), Some(5_000));
        // A time before the wheel's time counts as the wheel's time.
        let mut fired = collect(&mut wheel, 10, usize::MAX);
        fired.sort_unstable();
        assert_eq!(fired, vec![(0, 4_000), (1, 0), (2, 5_000)]);
        assert_eq!(wheel.next_wakeup_us(), Some(5_001));
        assert_eq!(collect(&mut wheel, 5_001, usize::MAX), vec![(3, 5_001)]);
    }

    #[test]
    fn max_bounds_each_poll_and_keeps_order() {
        let mut rng = Rng::new(7);
        let mut wheel = TimingWheel::new(1_000, 0, 3_600_000_000);
        for index in 0..1_000 {
            wheel
                .insert(rng.upto(2_000_000), index)
                .expect("valid insert");
        }
        let mut last = 0;
        let mut total = 0;
        for call in 0.. {
            let fired = collect(&mut wheel, 2_000_000, 7);
            assert!(fired.len() <= 7);
            for (_, d) in &fired {
                assert!(*d >= last);
                last = *d;
            }
            total += fired.len();
            if fired.len() < 7 {
                assert_eq!(call, 1_000 / 7);
                break;
            }
            // Entries remain due: the wheel asks to be polled again now.
            if total < 1_000 {
                assert!(wheel.next_wakeup_us().expect("not empty") <= 2_000_000);
            }
        }
        assert_eq!(total, 1_000);
        // max == 0 fires nothing and leaves due entries due.
        wheel.insert(2_000_000, 0).expect("valid insert");
        assert_eq!(collect(&mut wheel, 3_000_000, 0), vec![]);
        assert_eq!(wheel.next_wakeup_us(), Some(2_000_000));
        assert_eq!(collect(&mut wheel, 3_000_000, 1), vec![(0, 2_000_000)]);
    }

    #[test]
    fn sleeping_until_next_wakeup_fires_exactly_on_time() {
        // A caller that only ever polls at `next_wakeup_us` sees every entry
        // fire at exactly its deadline: the wakeup never oversleeps.
        let mut rng = Rng::new(11);
        let horizon_us = 3_600_000_000;
        let start_us = 123_456_789;
        let mut wheel = TimingWheel::new(5_000, start_us, horizon_us);
        for index in 0..5_000 {
            wheel
                .insert(start_us + rng.delay(horizon_us), index)
                .expect("valid insert");
        }
        let mut fired = 0;
        let mut polls = 0;
        while let Some(wake_us) = wheel.next_wakeup_us() {
            assert!(wake_us >= wheel.now_us());
            fired += wheel.poll(wake_us, usize::MAX, |_, d| {
                assert_eq!(d, wake_us, "fired late or early")
            });
            polls += 1;
        }
        assert_eq!(fired, 5_000);
        // Early wakeups (coarse slot starts) are bounded by cascades.
        assert!(polls <= 5_000 * MAX_LEVELS);
    }

    #[test]
    fn random_against_model() {
        // Small horizons exercise few levels and the top level's wrap-around.
        for (seed, horizon_us) in [
            (1, 0),
            (2, 1),
            (3, 63),
            (4, 64),
            (5, 4_000),
            (6, 63 * 64),
            (7, 63 * 64 + 1),
            (8, 1_000_000),
            (9, 3_600_000_000),
            (10, MAX_HORIZON_US),
        ] {
            simulate(
                seed,
                64,
                horizon_us,
                0,
                horizon_us.max(1) / 3 + 1,
                usize::MAX,
                3_000,
            );
            simulate(
                seed + 100,
                300,
                horizon_us,
                1 << 40,
                horizon_us.max(1),
                usize::MAX,
                500,
            );
            simulate(
                seed + 200,
                200,
                horizon_us,
                77,
                horizon_us.max(1) / 2 + 1,
                3,
                500,
            );
            simulate(seed + 300, 64, horizon_us, 0, 64, 5, 2_000);
        }
    }

    #[test]
    fn random_many_seeds() {
        for seed in 1_000..1_050 {
            let mut rng = Rng::new(seed);
            let horizon_us = rng.delay(1 << 36);
            let capacity = 1 + rng.upto(500) as u32;
            let max_fire = if rng.upto(1) == 0 {
                usize::MAX
            } else {
                1 + rng.upto(20) as usize
            };
            simulate(
                seed,
                capacity,
                horizon_us,
                rng.next() >> 4,
                horizon_us / 2 + 1,
                max_fire,
                300,
            );
        }
    }

    #[test]
    fn near_the_end_of_time() {
        // Deadlines next to u64::MAX must not overflow anything.
        let start_us = u64::MAX - 100_000;
        simulate(42, 100, 1_000_000, start_us, 5_000, usize::MAX, 200);
        let mut wheel = TimingWheel::new(2, u64::MAX - 10, 3_600_000_000);
        wheel.insert(u64::MAX, 0).expect("valid insert");
        wheel.insert(u64::MAX - 1, 1).expect("valid insert");
        assert_eq!(
            collect(&mut wheel, u64::MAX, usize::MAX),
            vec![(1, u64::MAX - 1), (0, u64::MAX)]
        );
    }

    #[test]
    fn large_time_jump() {
        // The process slept for two hours: one poll fires everything in
        // order, hopping between occupied slots.
        let mut rng = Rng::new(3);
        let hour_us = 3_600_000_000;
        let mut wheel = TimingWheel::new(10_000, 0, hour_us);
        for index in 0..10_000 {
            wheel
                .insert(rng.delay(hour_us), index)
                .expect("valid insert");
        }
        let mut last = 0;
        let fired = wheel.poll(2 * hour_us, usize::MAX, |_, d| {
            assert!(d >= last);
            last = d;
        });
        assert_eq!(fired, 10_000);
        assert_eq!(wheel.now_us(), 2 * hour_us);
        // A jump across years with the largest horizon; stepping one
        // microsecond at a time would never finish.
        let mut wheel = TimingWheel::new(3, 5, MAX_HORIZON_US);
        wheel.insert(MAX_HORIZON_US, 0).expect("valid insert");
        wheel.insert(6, 1).expect("valid insert");
        wheel.insert(MAX_HORIZON_US / 2, 2).expect("valid insert");
        assert_eq!(
            collect(&mut wheel, u64::MAX, usize::MAX),
            vec![(1, 6), (2, MAX_HORIZON_US / 2), (0, MAX_HORIZON_US)]
        );
    }

    #[test]
    fn drain_removes_everything() {
        let mut rng = Rng::new(5);
        let mut wheel = TimingWheel::new(500, 1_000, 60_000_000);
        let mut expected = Vec::new();
        for index in 0..500 {
            let d = 1_000 + rng.delay(60_000_000);
            wheel.insert(d, index).expect("valid insert");
            expected.push((index, d));
        }
        let mut seen = Vec::new();
        wheel.drain(|i, d| seen.push((i, d)));
        seen.sort_unstable();
        assert_eq!(seen, expected);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_wakeup_us(), None);
        assert_eq!(wheel.now_us(), 1_000);
        // Usable afterwards, with every index free again.
        wheel.insert(1_500, 499).expect("valid insert");
        assert_eq!(collect(&mut wheel, 2_000, usize::MAX), vec![(499, 1_500)]);
        let mut none = 0;
        wheel.drain(|_, _| none += 1);
        assert_eq!(none, 0);
    }

    #[test]
    fn hundred_thousand_entries() {
        // Not a benchmark (no timing assertion): shows the wheel handles a
        // full pool in one go. A mix delay of ~1 s mean, capped at 60 s.
        let capacity = 100_000;
        let mut rng = Rng::new(99);
        let mut wheel = TimingWheel::new(capacity, 0, 60_000_000);
        for index in 0..capacity {
            let delay_us = (rng.upto(60_000_000) * rng.upto(1_000)) / 1_000;
            wheel.insert(delay_us, index).expect("valid insert");
        }
        assert_eq!(wheel.insert(0, 0), Err(InsertError::Full));
        let started = std::time::Instant::now();
        let mut t = 0;
        let mut last = 0;
        let mut fired = 0;
        while !wheel.is_empty() {
            t += 1 + rng.upto(2_000);
            fired += wheel.poll(t, 256, |_, d| {
                assert!(d >= last && d <= t);
                last = d;
            });
        }
        assert_eq!(fired, capacity as usize);
        eprintln!("100k entries polled out in {:?}", started.elapsed());
    }

    #[test]
    fn debug_is_a_summary() {
        let wheel = TimingWheel::new(1 << 20, 0, 1_000_000);
        let text = format!("{wheel:?}");
        assert!(
            text.contains("capacity: 1048576") && text.len() < 200,
            "{text}"
        );
    }
}
