//! One repetition of the section 4.3 experiment: a discrete-event
//! simulation on simulated time (a binary heap of events ordered by time,
//! then by insertion sequence, so ties break the same way every run).
//!
//! Every message carries the adversary's belief about it, a
//! [`Label`]: the probabilities that it is S0's payload, S1's payload,
//! anything else, and (a marginal tracked alongside) one chosen target
//! message, S0's first payload. An honest mix keeps the sum of the beliefs
//! of the messages it holds; a departing message is, by Theorem 1, any
//! of the `n` held with equal probability, so it leaves with belief
//! `sum / n` and the sum keeps `(n - 1) / n` of itself. A corrupt mix
//! reveals the link: a message leaves with the belief it came in with.
//!
//! Invariants: a mix's `count` is the number of messages whose `mix` is
//! that mix; belief components are never negative; nothing after
//! `burn_in_s + measure_s` is processed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand_chacha::ChaCha8Rng;

use super::params::{BurnIn, SimParams};
use crate::rng::{exp_sample, index, poisson};

/// The adversary's belief about one message: `[S0, S1, other, target]`.
/// The first three sum to one; `target` is part of `S0`.
pub type Label = [f64; 4];

const UNLABELLED: Label = [0.0, 0.0, 1.0, 0.0];

/// What one repetition measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `Pr[S0]` summed over the measured final mix's pool at the end.
    pub p0: f64,
    /// `Pr[S1]`, likewise.
    pub p1: f64,
    /// The target's probability on each message that left the last layer.
    pub target_out: Vec<f64>,
    /// Payload messages S0 and S1 sent.
    pub payload_sent: [u32; 2],
    /// Events processed.
    pub events: u64,
    /// The measured mix's pool size at each probe time (empty unless a
    /// probe was asked for).
    pub probes: Vec<u64>,
}

/// Sample the pool size of mix `mix` (global index `layer * W + i`) every
/// `period_s` from the start of the measurement.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// Global mix index.
    pub mix: u32,
    /// Sampling period.
    pub period_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Send(u32),
    Depart(u32),
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    time: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed, so that `BinaryHeap` pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .time
            .total_cmp(&self.time)
            .then(other.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone)]
struct Mix {
    honest: bool,
    count: u64,
    sum: Label,
}

impl Mix {
    fn new(honest: bool) -> Self {
        Self {
            honest,
            count: 0,
            sum: [0.0; 4],
        }
    }

    /// A message with belief `label` enters.
    fn admit(&mut self, label: &Label) {
        self.count += 1;
        if self.honest {
            for (s, x) in self.sum.iter_mut().zip(label) {
                *s += x;
            }
        }
    }

    /// A message that came in with belief `label` leaves: returns its
    /// belief on the way out.
    fn release(&mut self, label: &Label) -> Label {
        debug_assert!(self.count >= 1);
        let mut out = *label;
        if self.honest {
            // Theorem 1: the departing message is each held one with
            // probability 1/n.
            let share = 1.0 / self.count as f64;
            for (o, s) in out.iter_mut().zip(self.sum.iter_mut()) {
                *o = *s * share;
                *s = (*s - *o).max(0.0);
            }
        }
        self.count -= 1;
        out
    }
}

#[derive(Debug, Clone)]
struct Msg {
    label: Label,
    mix: u32,
}

struct Net<'a> {
    p: &'a SimParams,
    rng: ChaCha8Rng,
    mixes: Vec<Mix>,
    msgs: Vec<Msg>,
    free: Vec<u32>,
    heap: BinaryHeap<Event>,
    seq: u64,
    start_s: f64,
    end_s: f64,
    payload_sent: [u32; 2],
    target_out: Vec<f64>,
}

impl Net<'_> {
    fn push(&mut self, time: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Event {
            time,
            seq: self.seq,
            kind,
        });
    }

    /// A message with `label` enters mix `mix` at `now`.
    fn arrive(&mut self, now: f64, label: Label, mix: u32) {
        self.mixes[mix as usize].admit(&label);
        let msg = Msg { label, mix };
        let id = match self.free.pop() {
            Some(id) => {
                self.msgs[id as usize] = msg;
                id
            }
            None => {
                self.msgs.push(msg);
                (self.msgs.len() - 1) as u32
            }
        };
        let delay = exp_sample(&mut self.rng, self.p.mu_per_s);
        self.push(now + delay, Kind::Depart(id));
    }

    fn depart(&mut self, now: f64, id: u32) {
        let Msg { label, mix } = self.msgs[id as usize].clone();
        let label = self.mixes[mix as usize].release(&label);
        let width = self.p.width;
        let layer = mix / width;
        if layer + 1 == self.p.layers {
            if label[3] > 0.0 {
                self.target_out.push(label[3]);
            }
            self.free.push(id);
            return;
        }
        self.free.push(id);
        let next = (layer + 1) * width + index(&mut self.rng, width as usize) as u32;
        self.arrive(now, label, next);
    }

    /// Payload messages queued by a challenge sender by time `now`: one at
    /// the burn-in's end and one every `payload_interval_s` after.
    fn payload_queued(&self, now: f64) -> u32 {
        let since = now - self.p.burn_in_s;
        if since < 0.0 {
            return 0;
        }
        (since / self.p.payload_interval_s).floor() as u32 + 1
    }

    fn send(&mut self, now: f64, sender: u32) {
        let mut label = UNLABELLED;
        if sender < 2 {
            let s = sender as usize;
            if self.payload_queued(now) > self.payload_sent[s] {
                label = [0.0; 4];
                label[s] = 1.0;
                if s == 0 && self.payload_sent[0] == 0 {
                    label[3] = 1.0;
                }
                self.payload_sent[s] += 1;
            }
        }
        let first = index(&mut self.rng, self.p.width as usize) as u32;
        self.arrive(now, label, first);
        let next = now + exp_sample(&mut self.rng, self.p.sender_rate_per_s);
        self.push(next, Kind::Send(sender));
    }
}

/// Marks `p.corrupt_mixes()` mixes corrupt, uniformly among all but the
/// measured one (the first mix of the last layer), by a partial
/// Fisher–Yates shuffle.
fn build_mixes(p: &SimParams, rng: &mut ChaCha8Rng) -> Vec<Mix> {
    let total = (p.layers * p.width) as usize;
    let measured = (p.layers - 1) as usize * p.width as usize;
    let mut mixes = vec![Mix::new(true); total];
    let mut others: Vec<usize> = (0..total).filter(|&i| i != measured).collect();
    for i in 0..p.corrupt_mixes() as usize {
        let j = i + index(rng, others.len() - i);
        others.swap(i, j);
        mixes[others[i]].honest = false;
    }
    mixes
}

/// Runs one repetition of the experiment with `rng`, sampling the pool
/// size of `probe.mix` if a probe is given. `p` must have passed
/// validation.
pub fn run(p: &SimParams, mut rng: ChaCha8Rng, probe: Option<Probe>) -> Outcome {
    let mixes = build_mixes(p, &mut rng);
    let start_s = match p.burn_in {
        BurnIn::Simulated => 0.0,
        BurnIn::Exact => p.burn_in_s,
    };
    let mut net = Net {
        p,
        rng,
        mixes,
        msgs: Vec::new(),
        free: Vec::new(),
        heap: BinaryHeap::new(),
        seq: 0,
        start_s,
        end_s: p.burn_in_s + p.measure_s,
        payload_sent: [0; 2],
        target_out: Vec::new(),
    };
    if p.burn_in == BurnIn::Exact {
        fill_stationary(&mut net);
    }
    for s in 0..p.senders {
        let from = if s < 2 { p.burn_in_s } else { net.start_s };
        let t = from + exp_sample(&mut net.rng, p.sender_rate_per_s);
        net.push(t, Kind::Send(s));
    }
    if let Some(pr) = probe {
        net.push(p.burn_in_s, Kind::Probe);
        debug_assert!(pr.period_s > 0.0);
    }
    let mut events = 0u64;
    let mut probes = Vec::new();
    while let Some(ev) = net.heap.pop() {
        if ev.time > net.end_s {
            break;
        }
        events += 1;
        match ev.kind {
            Kind::Send(s) => net.send(ev.time, s),
            Kind::Depart(id) => net.depart(ev.time, id),
            Kind::Probe => {
                if let Some(pr) = probe {
                    probes.push(net.mixes[pr.mix as usize].count);
                    net.push(ev.time + pr.period_s, Kind::Probe);
                }
            }
        }
    }
    let measured = &net.mixes[((p.layers - 1) * p.width) as usize];
    Outcome {
        p0: measured.sum[0],
        p1: measured.sum[1],
        target_out: net.target_out,
        payload_sent: net.payload_sent,
        events,
        probes,
    }
}

/// [`BurnIn::Exact`]: fills every pool with its exact distribution at the
/// end of a burn-in in which the `U - 2` other senders sent from time 0.
fn fill_stationary(net: &mut Net<'_>) {
    let p = net.p;
    let rate = f64::from(p.senders - 2) * p.sender_rate_per_s;
    let per_mix = rate / (f64::from(p.width) * p.mu_per_s);
    for layer in 0..p.layers {
        // The chance that a message sent at a uniform time in the burn-in
        // has passed exactly `layer` mixes, times the burn-in's length,
        // is `P(Gamma(layer + 1, µ) <= T) / µ`.
        let reached = crate::model::erlang_cdf(layer + 1, 1.0 / p.mu_per_s, p.burn_in_s);
        for i in 0..p.width {
            let mix = layer * p.width + i;
            let n = poisson(&mut net.rng, per_mix * reached);
            for _ in 0..n {
                net.arrive(net.start_s, UNLABELLED, mix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anonymity::{theorem1, Observation};

    /// The honest mix's update is Theorem 1: of `n` messages, one the
    /// target, `n - k` leave, `l` arrive, and the next to leave is the
    /// target with probability `k / (n (k + l))` (or a given later arrival,
    /// made the target instead, with `1 / (k + l)`).
    #[test]
    fn honest_mix_follows_theorem1() {
        let target: Label = [1.0, 0.0, 0.0, 1.0];
        for (n, k, l) in [
            (1u64, 1u64, 0u64),
            (5, 2, 3),
            (10, 0, 4),
            (7, 7, 0),
            (3, 1, 100),
        ] {
            let o = Observation::new(n, k, l).ok();
            let Some(o) = o else { continue };
            let want = theorem1(o);
            for later_is_target in [false, true] {
                let mut m = Mix::new(true);
                for i in 0..n {
                    let t = i == 0 && !later_is_target;
                    m.admit(if t { &target } else { &UNLABELLED });
                }
                for _ in 0..n - k {
                    m.release(&UNLABELLED);
                }
                for i in 0..l {
                    let t = i == 0 && later_is_target;
                    m.admit(if t { &target } else { &UNLABELLED });
                }
                let out = m.release(&UNLABELLED);
                let p = if later_is_target {
                    want.later_each
                } else {
                    want.initial_each
                };
                if later_is_target && l == 0 {
                    continue;
                }
                assert!((out[3] - p).abs() < 1e-12, "{o:?}: {} vs {p}", out[3]);
                assert!((out[0] + out[1] + out[2] - 1.0).abs() < 1e-12);
            }
        }
        // A corrupt mix passes the belief through.
        let mut c = Mix::new(false);
        c.admit(&target);
        c.admit(&UNLABELLED);
        assert_eq!(c.release(&target), target);
    }
}
