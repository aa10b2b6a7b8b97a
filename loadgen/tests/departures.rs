//! The departure process of the emulated clients, measured at the sender:
//! 400 clients with lambda_p + lambda_l + lambda_d = 1.25 packets/s each
//! (500 packets/s in all) send to a sink on 127.0.0.1 for 4 s. The real
//! send times of packets (pulls excluded: they are periodic by design)
//! must give the configured total rate within 10 % (about 4.5 standard
//! deviations of a Poisson count of 2,000, plus room for sending late at
//! the end), and their inter-departure times must pass a one-sample
//! Kolmogorov–Smirnov test against Exp(1/500 s) at significance 0.01
//! (the test fails, wrongly, once in a hundred runs of an ideal sender).
//! The scheduled times are checked the same way, as a control.
//!
//! The machine may be shared (2 cores, several builds): a sender starved
//! of CPU for milliseconds bunches its departures, which the measured
//! process truthfully shows. So the measured check gets up to 5 attempts
//! (fresh steps) and passes if one passes (on an ideal sender, a false
//! failure once in 10^10 runs). An attempt whose lateness p99 is above
//! 1 ms was starved (load average 7 on 2 cores gave 2-6 ms and failed
//! every attempt): if every attempt was starved, the KS result is printed,
//! not asserted, and the test says so loudly. The sender must still not
//! be systematically late: lateness p50 at most 1 ms, always asserted.

mod common;

use loopix_client::Rates;
use loopix_loadgen::emulator::{
    Emulator, EmulatorSpec, Measured, ReplayOptions, Schedule, StepSpec,
};
use loopix_tuning::model::{exp_cdf, ks_p_value, ks_statistic};

const CLIENTS: u32 = 400;
const DURATION_S: f64 = 4.0;
/// Tries of the measured check (each a fresh 4 s step).
const ATTEMPTS: u32 = 5;

fn inter_departures(times: &[u64]) -> Vec<f64> {
    times.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
}

/// An emulator of [`CLIENTS`] clients of `net` sending at `rates`, all to `sink`.
fn emulator(
    net: &common::Net,
    sink: &loopix_testkit::fake_provider::Sink,
    rates: Rates,
) -> Emulator {
    let regs = (0..CLIENTS)
        .map(|i| common::registration(net, sink.addr, i))
        .collect();
    Emulator::new(EmulatorSpec {
        geometry: common::G,
        topology: std::sync::Arc::clone(&net.topology),
        registrations: regs,
        rates,
        seed: 7,
        threads: 2,
    })
    .expect("emulator")
}

/// The control: every scheduled packet was sent, at the configured total
/// rate (packets/s) within 10 %, and the scheduled inter-departures pass the
/// KS test against the exponential.
fn assert_scheduled_is_poisson(attempt: u32, schedule: &Schedule, m: &Measured, total: f64) {
    let n = m.departures.len();
    assert_eq!(n as u64, m.counts.packets_sent);
    assert_eq!(n, schedule.packets());
    let rate = n as f64 / DURATION_S;
    assert!(
        (rate - total).abs() <= 0.10 * total,
        "measured {rate:.1} packets/s, configured {total}"
    );
    let mut gaps = inter_departures(&schedule.departure_times());
    let d = ks_statistic(&mut gaps, |x| exp_cdf(1e6 / total, x));
    let p = ks_p_value(d, gaps.len() as f64);
    eprintln!(
        "attempt {attempt}: scheduled: {n} departures, {rate:.1}/s, KS D = {d:.4}, p = {p:.3}"
    );
    assert!(
        p > 0.01,
        "scheduled inter-departures are not Exp: D {d}, p {p}"
    );
}

#[test]
fn departures_are_poisson_at_the_configured_rate() {
    let net = common::Net::new(1);
    let sink = common::sink();
    let rates = Rates {
        lambda_p: 0.5,
        lambda_l: 0.5,
        lambda_d: 0.25,
        mean_delay_us: 1000.0,
        pull_period_us: 1_000_000,
    };
    let total = f64::from(CLIENTS) * (rates.lambda_p + rates.lambda_l + rates.lambda_d);
    let mut emu = emulator(&net, &sink, rates);
    let mut failures = Vec::new();
    let (mut passed, mut fed) = (false, 0);
    let mut vstart = 0;
    for attempt in 0..ATTEMPTS {
        let spec = StepSpec {
            step: attempt,
            rates,
            active: CLIENTS as usize,
            duration_us: (DURATION_S * 1e6) as u64,
            drain_us: 0,
            real_share: 0.2,
            memory_cap_bytes: 256 << 20,
        };
        let schedule = emu.prepare(vstart, &spec).expect("prepare");
        vstart = schedule.drain_end_us;
        let m = emu
            .replay(
                &schedule,
                &ReplayOptions {
                    record_departures: true,
                    ..Default::default()
                },
            )
            .expect("replay");
        assert_scheduled_is_poisson(attempt, &schedule, &m, total);
        let mean_us = 1e6 / total;
        let mut gaps = inter_departures(&m.departures);
        let d = ks_statistic(&mut gaps, |x| exp_cdf(mean_us, x));
        let p = ks_p_value(d, gaps.len() as f64);
        let (p50, p99) = (
            m.lateness.value_at_quantile(0.5),
            m.lateness.value_at_quantile(0.99),
        );
        eprintln!(
            "attempt {attempt}: measured: KS D = {d:.4}, p = {p:.3}; lateness p50 {p50} us, \
             p99 {p99} us, max {} us",
            m.lateness.max()
        );
        assert!(
            p50 <= 1000,
            "the sender is late as a rule: lateness p50 {p50} us"
        );
        if p > 0.01 {
            passed = true;
            break;
        }
        if p99 <= 1000 {
            fed += 1;
        }
        failures.push(format!(
            "attempt {attempt}: D {d}, p {p}, lateness p99 {p99} us"
        ));
    }
    if !passed && fed == 0 {
        eprintln!(
            "WARNING: every attempt's sender was starved of CPU (lateness p99 > 1 ms); the \
             measured KS test is not asserted on this machine now: {failures:?}"
        );
    } else {
        assert!(
            passed,
            "measured inter-departures are not Exp in any attempt: {failures:?}"
        );
    }
    assert!(sink.datagrams.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
