//! The (n−1) detector: does this node's own loop traffic come back?
//!
//! The paper's §4.2: an adversary that wants to follow one packet through
//! a mix blocks everything else that enters it. The mix notices because its
//! own loops (see [`crate::loops`]), which look like any other traffic, stop
//! coming back: an adversary that cannot tell them apart must let a fraction
//! of *all* traffic through to let that fraction of loops through. The node
//! chooses a public threshold `r`; when fewer than `r` of its loops return,
//! it is in *alarm* and responds (more cover, a log line, or a halt).
//!
//! [`Detector`] is sans-IO and reads no clock: the control plane tells it
//! which loops left (id and departure time), which came back (the shards
//! hand over the ids they read in `Recipient { Loop, id }` commands), and
//! what fraction of this node's own arrivals its AQM and pool dropped; then
//! [`Detector::tick`] resolves time-outs and decides.
//!
//! - A loop is *returned* when its id comes back before its time-out, and
//!   *lost* when the time-out passes first. The time-out is
//!   [`loop_timeout_us`]: a multiple of the 99.9th percentile of the round
//!   trip under the model (the sum of one `Exp(mu)` delay per relaying hop,
//!   a Gamma distribution), plus a fixed allowance for the wire and the
//!   nodes' processing.
//! - The window holds the loops resolved (returned or lost) in the last
//!   `window_us`; its return fraction is `returned / (returned + lost)`.
//!   No decision is taken on fewer than `min_loops` resolved loops, so a
//!   node that just started (or a window the rate cannot fill) never alarms
//!   on noise.
//! - Congestion is not an attack: a returning loop passes this node's own
//!   arrival path once, where the AQM and the full pool drop a fraction `c`
//!   of arrivals at random. The loss that explains is divided out: the
//!   fraction compared with `r` is `returned / (resolved · (1 − c))`,
//!   capped at 1. Other nodes' congestion cannot be seen from here; the
//!   threshold leaves room for it (see `docs/loops.md`).
//! - Hysteresis: the alarm starts when the fraction falls below `r` and
//!   ends only when it is back at `r + hysteresis` or more.
//!
//! Invariants: memory is bounded (`MAX_OUTSTANDING` loops awaited, older
//! ones counted as lost at once when the bound is hit); an id is resolved at
//! most once; a return whose id is unknown (forged, or past its time-out)
//! changes nothing but a counter.

use std::collections::{HashMap, VecDeque};

/// Loops awaited at once, at most: at the largest accepted λM (10⁵/s) and
/// a time-out of 10 s this would be 10⁶; a node that reaches it counts the
/// oldest as lost rather than grow.
pub const MAX_OUTSTANDING: usize = 1 << 20;

/// What the node does in alarm (config `detector.response`, spelled in
/// lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    /// More cover traffic: loops at `cover_multiple` × λM until the return
    /// fraction recovers (the paper's gentler approach).
    #[default]
    Cover,
    /// Only log and count.
    Log,
    /// Stop forwarding (the paper's extreme); loops keep going so that the
    /// node sees when the attack ends.
    Halt,
}

impl Response {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Response::Cover => "cover",
            Response::Log => "log",
            Response::Halt => "halt",
        }
    }
}

/// The detector's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorSettings {
    /// The public threshold `r`: the alarm starts below this return fraction.
    pub threshold: f64,
    /// The alarm ends at `threshold + hysteresis` or more.
    pub hysteresis: f64,
    /// Length of the sliding window of resolved loops, microseconds.
    pub window_us: u64,
    /// A loop not back this long after its departure is lost, microseconds.
    pub timeout_us: u64,
    /// No decision on fewer resolved loops than this in the window.
    pub min_loops: u32,
}

/// A change of state, returned by [`Detector::tick`] so that the caller logs
/// it once and responds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The return fraction fell below `r`.
    Alarm(Figures),
    /// It is back at `r + hysteresis`.
    Calm(Figures),
}

/// The window's figures at a decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Loops returned in the window.
    pub returned: u64,
    /// Loops lost in the window.
    pub lost: u64,
    /// `returned / (returned + lost)`.
    pub ratio: f64,
    /// The node's own congestion drop fraction that was divided out.
    pub congestion: f64,
    /// The fraction compared with the threshold.
    pub effective: f64,
}

/// Running totals since start, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Loops recorded as sent.
    pub sent: u64,
    /// Loops back before their time-out.
    pub returned: u64,
    /// Loops whose time-out passed first.
    pub lost: u64,
    /// Returns with an id not awaited (forged, duplicated or too late).
    pub unmatched: u64,
    /// Times the alarm started.
    pub alarms: u64,
}

/// The detector (see the module documentation).
#[derive(Debug)]
pub struct Detector {
    settings: DetectorSettings,
    /// Awaited loops: id → departure time.
    outstanding: HashMap<[u8; 16], u64>,
    /// Time-outs in departure order: (time-out instant, id).
    deadlines: VecDeque<(u64, [u8; 16])>,
    /// Resolved loops in the window: (when, returned?).
    window: VecDeque<(u64, bool)>,
    returned_in_window: u64,
    congestion: f64,
    alarm: bool,
    totals: Totals,
}

impl Detector {
    /// A calm detector with nothing awaited.
    pub fn new(settings: DetectorSettings) -> Detector {
        Detector {
            settings,
            outstanding: HashMap::new(),
            deadlines: VecDeque::new(),
            window: VecDeque::new(),
            returned_in_window: 0,
            congestion: 0.0,
            alarm: false,
            totals: Totals::default(),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &DetectorSettings {
        &self.settings
    }

    /// Use a new time-out for loops sent from now on (the path length or
    /// the delay changed). Loops already awaited keep theirs.
    pub fn set_timeout_us(&mut self, timeout_us: u64) {
        self.settings.timeout_us = timeout_us;
    }

    /// Loop `id` leaves at `depart_us`. Calls come in departure order.
    pub fn sent(&mut self, id: [u8; 16], depart_us: u64) {
        if self.outstanding.len() >= MAX_OUTSTANDING {
            if let Some((_, oldest)) = self.deadlines.pop_front() {
                if self.outstanding.remove(&oldest).is_some() {
                    self.resolve(depart_us, false);
                }
            }
        }
        if self.outstanding.insert(id, depart_us).is_none() {
            self.totals.sent += 1;
            self.deadlines
                .push_back((depart_us.saturating_add(self.settings.timeout_us), id));
        }
    }

    /// Loop `id` came back at `at_us`; false if it was not awaited.
    pub fn returned(&mut self, id: &[u8; 16], at_us: u64) -> bool {
        match self.outstanding.remove(id) {
            Some(_) => {
                self.resolve(at_us, true);
                true
            }
            None => {
                self.totals.unmatched += 1;
                false
            }
        }
    }

    /// The fraction of this node's arrivals its own AQM and full pool
    /// dropped over the window, in `[0, 1]`.
    pub fn set_congestion(&mut self, fraction: f64) {
        self.congestion = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
    }

    /// Resolve the time-outs due by `now_us`, slide the window and decide.
    pub fn tick(&mut self, now_us: u64) -> Option<Transition> {
        while let Some(&(due, id)) = self.deadlines.front() {
            if due > now_us {
                break;
            }
            self.deadlines.pop_front();
            if self.outstanding.remove(&id).is_some() {
                self.resolve(due, false);
            }
        }
        let since = now_us.saturating_sub(self.settings.window_us);
        while let Some(&(at, returned)) = self.window.front() {
            if at >= since {
                break;
            }
            self.window.pop_front();
            if returned {
                self.returned_in_window -= 1;
            }
        }
        let figures = self.figures()?;
        let s = &self.settings;
        if !self.alarm && figures.effective < s.threshold {
            self.alarm = true;
            self.totals.alarms += 1;
            return Some(Transition::Alarm(figures));
        }
        if self.alarm && figures.effective >= s.threshold + s.hysteresis {
            self.alarm = false;
            return Some(Transition::Calm(figures));
        }
        None
    }

    /// The window's figures, or `None` while it holds fewer than
    /// `min_loops` resolved loops.
    pub fn figures(&self) -> Option<Figures> {
        let resolved = self.window.len() as u64;
        if resolved < u64::from(self.settings.min_loops.max(1)) {
            return None;
        }
        let returned = self.returned_in_window;
        let ratio = returned as f64 / resolved as f64;
        let kept = 1.0 - self.congestion;
        let effective = if kept > 0.0 {
            (ratio / kept).min(1.0)
        } else {
            1.0
        };
        Some(Figures {
            returned,
            lost: resolved - returned,
            ratio,
            congestion: self.congestion,
            effective,
        })
    }

    /// In alarm now.
    pub fn in_alarm(&self) -> bool {
        self.alarm
    }

    /// Totals since start.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Loops awaited now.
    pub fn awaited(&self) -> usize {
        self.outstanding.len()
    }

    fn resolve(&mut self, at_us: u64, returned: bool) {
        if returned {
            self.totals.returned += 1;
            self.returned_in_window += 1;
        } else {
            self.totals.lost += 1;
        }
        // Keep the window in time order: a time-out resolved late (at its
        // due time, which may precede a return already recorded) is placed
        // by its own time.
        let at = self
            .window
            .back()
            .map_or(at_us, |&(last, _)| at_us.max(last));
        self.window.push_back((at, returned));
    }
}

/// The time-out of a loop with `relays` relaying hops of mean delay
/// `mean_delay_us`: `factor` times the 99.9th percentile of the model's
/// round trip (a sum of `relays` independent `Exp` delays, Gamma(relays,
/// mean)), plus `grace_us` for the wire and the nodes' processing.
pub fn loop_timeout_us(relays: u32, mean_delay_us: f64, factor: f64, grace_us: u64) -> u64 {
    let q = gamma_quantile(relays, mean_delay_us, 0.999);
    let t = factor * q;
    let t = if t.is_finite() && t > 0.0 {
        t.min(1e15) as u64
    } else {
        0
    };
    t.saturating_add(grace_us)
}

/// P(X > x) for X ~ Gamma(k, mean) with integer shape `k` (an Erlang
/// distribution): `e^{-x/mean} Σ_{j<k} (x/mean)^j / j!`.
pub fn erlang_survival(k: u32, mean: f64, x: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if mean <= 0.0 {
        return if x < 0.0 { 1.0 } else { 0.0 };
    }
    let y = x / mean;
    if y <= 0.0 {
        return 1.0;
    }
    // Sum the terms in log space so that large y does not overflow.
    let mut term_ln = -y; // j = 0
    let mut sum = term_ln.exp();
    for j in 1..k {
        term_ln += y.ln() - f64::from(j).ln();
        sum += term_ln.exp();
    }
    sum.min(1.0)
}

/// The `p` quantile of Gamma(k, mean) for integer `k` (by bisection on
/// [`erlang_survival`]); 0 for `k == 0` or a zero mean.
pub fn gamma_quantile(k: u32, mean: f64, p: f64) -> f64 {
    if k == 0 || mean <= 0.0 || !(0.0..1.0).contains(&p) {
        return 0.0;
    }
    let tail = 1.0 - p;
    let mut lo = 0.0;
    let mut hi = mean * f64::from(k);
    while erlang_survival(k, mean, hi) > tail {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if erlang_survival(k, mean, mid) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// P(Binomial(n, p) < threshold · n): the chance that a window of `n`
/// resolved loops, each returning with probability `p`, reads below the
/// threshold. Exact sum in log space.
pub fn binomial_below(n: u64, p: f64, threshold: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = p.clamp(0.0, 1.0);
    let nf = n as f64;
    let mut total = 0.0;
    let mut ln_choose = 0.0; // ln C(n, 0)
    for k in 0..=n {
        if k > 0 {
            ln_choose += (nf - k as f64 + 1.0).ln() - (k as f64).ln();
        }
        if (k as f64) >= threshold * nf {
            break;
        }
        let ln_p = if k == 0 { 0.0 } else { k as f64 * p.ln() };
        let ln_q = if k == n {
            0.0
        } else {
            (nf - k as f64) * (1.0 - p).ln()
        };
        total += (ln_choose + ln_p + ln_q).exp();
    }
    total.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A splitmix64 generator: tests only, seeded.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            crate::aqm::splitmix64(&mut self.0)
        }
        fn uniform(&mut self) -> f64 {
            ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn exp(&mut self, mean: f64) -> f64 {
            -self.uniform().ln() * mean
        }
    }

    const MEAN_DELAY_US: f64 = 1_000.0;
    const RELAYS: u32 = 3;

    fn settings(window_us: u64) -> DetectorSettings {
        DetectorSettings {
            threshold: 0.3,
            hysteresis: 0.1,
            window_us,
            timeout_us: loop_timeout_us(RELAYS, MEAN_DELAY_US, 4.0, 50_000),
            min_loops: 20,
        }
    }

    /// Drive a detector on simulated time: loops at `rate_per_s` each
    /// returning with probability `p_return(t)` after a Gamma round trip;
    /// decisions every 100 ms. Returns the transitions with their times.
    fn run(
        d: &mut Detector,
        rng: &mut Rng,
        rate_per_s: f64,
        from_us: u64,
        until_us: u64,
        p_return: impl Fn(u64) -> f64,
    ) -> Vec<(u64, Transition)> {
        let mut returns: Vec<(u64, [u8; 16])> = Vec::new();
        let mut next_tick = from_us + 100_000;
        let mut t = from_us as f64 + rng.exp(1e6 / rate_per_s);
        let mut seen = Vec::new();
        let mut counter = 0u64;
        loop {
            let depart = t as u64;
            let until_event = depart.min(until_us);
            // Returns and ticks that happen before the next departure.
            returns.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
            loop {
                let next_return = returns.last().map_or(u64::MAX, |r| r.0);
                if next_return.min(next_tick) > until_event {
                    break;
                }
                if next_return <= next_tick {
                    let (at, id) = returns.pop().expect("present");
                    d.returned(&id, at);
                } else {
                    if let Some(tr) = d.tick(next_tick) {
                        seen.push((next_tick, tr));
                    }
                    next_tick += 100_000;
                }
            }
            if depart >= until_us {
                // Loops still travelling come back, without more decisions.
                for (at, id) in returns.drain(..) {
                    d.returned(&id, at);
                }
                return seen;
            }
            counter += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&counter.to_le_bytes());
            id[8..].copy_from_slice(&from_us.to_le_bytes());
            d.sent(id, depart);
            if rng.uniform() < p_return(depart) {
                let rtt: f64 = (0..RELAYS).map(|_| rng.exp(MEAN_DELAY_US)).sum();
                returns.push((depart + rtt as u64 + 200, id));
            }
            t += rng.exp(1e6 / rate_per_s);
        }
    }

    #[test]
    fn the_timeout_is_a_multiple_of_the_model_quantile() {
        // Gamma(1, m): the 99.9th percentile is m ln 1000.
        let q = gamma_quantile(1, 1000.0, 0.999);
        assert!((q - 1000.0 * 1000f64.ln()).abs() < 1e-6, "{q}");
        // Gamma(3, 1 ms): 11.23 ms (tables: the chi-square with 6 degrees
        // of freedom at 0.999 is 22.458, halved).
        let q3 = gamma_quantile(3, 1000.0, 0.999);
        assert!((q3 - 11_229.0).abs() < 5.0, "{q3}");
        assert!((erlang_survival(3, 1000.0, q3) - 0.001).abs() < 1e-9);
        assert_eq!(
            loop_timeout_us(3, 1000.0, 4.0, 1_000_000),
            (4.0 * q3) as u64 + 1_000_000
        );
        assert_eq!(loop_timeout_us(0, 1000.0, 4.0, 7), 7);
    }

    #[test]
    fn no_alarm_at_the_nominal_rate() {
        // Every loop returns: over 20 seeds and 600 s of simulated time at
        // 10 loops/s, not one alarm.
        for seed in 0..20 {
            let mut rng = Rng(seed);
            let mut d = Detector::new(settings(5_000_000));
            let seen = run(&mut d, &mut rng, 10.0, 0, 600_000_000, |_| 1.0);
            assert!(seen.is_empty(), "seed {seed}: {seen:?}");
            assert_eq!(d.totals().lost, 0);
            assert!(d.totals().returned > 5_000);
        }
    }

    #[test]
    fn the_alarm_comes_within_a_window_of_the_attack() {
        // 90% of the returns blocked from t = 60 s: the alarm must come
        // within the time-out plus one window (5 s), and end within a
        // time-out plus a window of the attack's end (hysteresis allowing).
        let window = 5_000_000;
        for seed in 0..20 {
            let mut rng = Rng(100 + seed);
            let mut d = Detector::new(settings(window));
            let start = 60_000_000;
            let end = 120_000_000;
            let seen = run(&mut d, &mut rng, 20.0, 0, 180_000_000, |t| {
                if (start..end).contains(&t) {
                    0.1
                } else {
                    1.0
                }
            });
            let bound = d.settings().timeout_us + window;
            let alarms: Vec<_> = seen
                .iter()
                .filter(|(_, t)| matches!(t, Transition::Alarm(_)))
                .collect();
            assert_eq!(alarms.len(), 1, "seed {seed}: {seen:?}");
            let (at, Transition::Alarm(f)) = alarms[0] else {
                unreachable!()
            };
            assert!(
                *at > start && *at <= start + bound,
                "seed {seed}: alarm at {at}"
            );
            assert!(f.effective < 0.3);
            let calm = seen
                .iter()
                .find(|(_, t)| matches!(t, Transition::Calm(_)))
                .map(|(at, _)| *at)
                .expect("calm after the attack");
            assert!(
                calm > end && calm <= end + bound + d.settings().timeout_us,
                "seed {seed}: calm at {calm}"
            );
            assert_eq!(d.totals().alarms, 1);
        }
    }

    #[test]
    fn the_false_alarm_rate_is_the_computed_one() {
        // A lossy but honest network: each loop returns with p = 0.55 and
        // r = 0.5. A decision on a fresh detector after one window sees
        // n ~ Pois(rate · window) resolved loops; the chance it alarms is
        // Σ_n Pois(n) · P(Bin(n, p) < r n) over n ≥ min_loops, computed
        // exactly here. Over 2,000 seeded independent runs the observed
        // alarm count must match it within 4.5 standard deviations.
        let rate = 10.0;
        let window = 5_000_000u64;
        let p = 0.55;
        let mut s = settings(window);
        s.threshold = 0.5;
        let mean_n = rate * window as f64 / 1e6;
        let mut expected = 0.0;
        let mut pois = (-mean_n).exp(); // P(N = 0)
        for n in 0..400u64 {
            if n > 0 {
                pois *= mean_n / n as f64;
            }
            if n >= u64::from(s.min_loops) {
                expected += pois * binomial_below(n, p, s.threshold);
            }
        }
        assert!((0.1..0.5).contains(&expected), "{expected}");
        let runs = 2_000;
        let mut alarms = 0;
        for seed in 0..runs {
            let mut rng = Rng(10_000 + seed);
            // No decision while the loops travel.
            let mut d = Detector::new(DetectorSettings {
                min_loops: u32::MAX,
                ..s
            });
            // Sends over [0, window]; decide once when every loop sent has
            // resolved: the window then holds exactly those loops.
            let _ = run(&mut d, &mut rng, rate, 0, window, |_| p);
            let decide_at = window + s.timeout_us + 1;
            let mut w = s;
            w.window_us = decide_at; // the whole run in one window
            d.settings = w;
            if matches!(d.tick(decide_at), Some(Transition::Alarm(_))) {
                alarms += 1;
            }
        }
        let n = runs as f64;
        let sd = (n * expected * (1.0 - expected)).sqrt();
        let observed = f64::from(alarms);
        assert!(
            (observed - n * expected).abs() < 4.5 * sd,
            "observed {observed} alarms in {n} runs, computed {:.1} ± {sd:.1}",
            n * expected
        );
        // And at the nominal rate the same computation gives a false-alarm
        // probability below 10⁻⁹ per decision (every loop returns but for
        // 2% lost elsewhere), which the default r = 0.3 leaves room for.
        let nominal: f64 = binomial_below(50, 0.98, 0.3);
        assert!(nominal < 1e-9, "{nominal}");
    }

    #[test]
    fn hysteresis_keeps_the_alarm_until_the_fraction_recovers() {
        let mut s = settings(10_000_000);
        s.min_loops = 10;
        let mut d = Detector::new(s);
        let mut t = 0u64;
        let mut next_id = 0u64;
        let mut feed = |d: &mut Detector, t: &mut u64, returned: usize, lost: usize| {
            for k in 0..returned + lost {
                next_id += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&next_id.to_le_bytes());
                d.sent(id, *t);
                if k < returned {
                    d.returned(&id, *t + 1_000);
                }
                *t += 10_000;
            }
        };
        // 20 resolved, 5 returned: 0.25 < 0.3 -> alarm (lost ones resolve
        // at their time-out).
        feed(&mut d, &mut t, 5, 15);
        let tr = d.tick(t + s.timeout_us);
        assert!(matches!(tr, Some(Transition::Alarm(_))), "{tr:?}");
        t += s.timeout_us;
        // The window slides to a 0.35 fraction: above r, below r + h: still alarm.
        let mut d2_t = t + s.window_us;
        feed(&mut d, &mut d2_t, 7, 13);
        assert_eq!(d.tick(d2_t + s.timeout_us), None);
        assert!(d.in_alarm());
        let f = d.figures().expect("enough loops");
        assert!(f.effective >= 0.3 && f.effective < 0.4, "{f:?}");
        // Then 0.45: calm.
        let mut t3 = d2_t + s.timeout_us + s.window_us;
        feed(&mut d, &mut t3, 9, 11);
        let tr = d.tick(t3 + s.timeout_us);
        assert!(matches!(tr, Some(Transition::Calm(_))), "{tr:?}");
        assert!(!d.in_alarm());
        assert_eq!(d.totals().alarms, 1);
    }

    #[test]
    fn own_congestion_is_divided_out() {
        let mut s = settings(10_000_000);
        s.min_loops = 10;
        let mut d = Detector::new(s);
        // 25 of 100 return: 0.25, an alarm on its own; but this node's AQM
        // dropped 80% of its arrivals, which explains it (0.25 / 0.2 > 1).
        d.set_congestion(0.8);
        for k in 0..100u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&k.to_le_bytes());
            d.sent(id, k * 1_000);
            if k % 4 == 0 {
                d.returned(&id, k * 1_000 + 500);
            }
        }
        assert_eq!(d.tick(100_000 + s.timeout_us), None);
        let f = d.figures().expect("enough");
        assert!((f.ratio - 0.25).abs() < 1e-9 && f.effective == 1.0, "{f:?}");
        // Without the congestion it is an alarm.
        d.set_congestion(0.0);
        assert!(matches!(
            d.tick(100_000 + s.timeout_us),
            Some(Transition::Alarm(_))
        ));
    }

    #[test]
    fn unknown_and_repeated_returns_change_nothing() {
        let mut d = Detector::new(settings(1_000_000));
        d.sent([1; 16], 0);
        assert!(!d.returned(&[2; 16], 10));
        assert!(d.returned(&[1; 16], 20));
        assert!(!d.returned(&[1; 16], 30));
        let t = d.totals();
        assert_eq!((t.sent, t.returned, t.lost, t.unmatched), (1, 1, 0, 2));
        // A return after the time-out is unmatched, the loop stays lost.
        d.sent([3; 16], 100);
        let _ = d.tick(100 + d.settings().timeout_us);
        assert!(!d.returned(&[3; 16], 200 + d.settings().timeout_us));
        assert_eq!(d.totals().lost, 1);
        assert_eq!(d.awaited(), 0);
    }

    #[test]
    fn binomial_tail_matches_a_direct_sum() {
        // P(Bin(4, 0.5) < 2) = (1 + 4) / 16.
        assert!((binomial_below(4, 0.5, 0.5) - 5.0 / 16.0).abs() < 1e-12);
        assert_eq!(binomial_below(10, 1.0, 0.3), 0.0);
        assert!((binomial_below(10, 0.0, 0.3) - 1.0).abs() < 1e-12);
    }
}
