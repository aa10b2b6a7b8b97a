//! 5,000 emulated clients, created, prepared and replayed for 3 s against
//! a sink on 127.0.0.1, stay within a memory bound measured from this
//! process's peak resident set (`VmHWM` in /proc/self/status; the test
//! binary is this file's alone, and its other test holds one client).
//!
//! The bound, 400 MB, from what the emulator holds: each client keeps its
//! own prepared Sphinx key (a curve25519 basepoint table, ~30 KB; its
//! partner shares it instead of copying) plus its core's tables (~2 KB
//! empty), so 5,000 clients take ~160 MB; the schedule holds 5,000 x
//! 0.5 packets/s x 3 s = 7,500 packets of 1,344 + 40 bytes, ~10 MB; the
//! test binary and its threads ~20 MB. That is ~190 MB; the bound leaves
//! about 2x for allocator slack.

mod common;

use loopix_client::Rates;
use loopix_loadgen::emulator::{Emulator, EmulatorSpec, ReplayOptions, Schedule, StepSpec};

const CLIENTS: u32 = 5_000;
const BOUND_MB: u64 = 400;

fn vm_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("linux /proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field present")
}

#[test]
fn five_thousand_clients_stay_within_the_memory_bound() {
    let net = common::Net::new(2);
    let sink = common::sink();
    let regs = (0..CLIENTS)
        .map(|i| common::registration(&net, sink.addr, i))
        .collect();
    let rates = Rates {
        lambda_p: 0.25,
        lambda_l: 0.125,
        lambda_d: 0.125,
        mean_delay_us: 1000.0,
        pull_period_us: 2_000_000,
    };
    let t = std::time::Instant::now();
    let mut emu = Emulator::new(EmulatorSpec {
        geometry: common::G,
        topology: std::sync::Arc::clone(&net.topology),
        registrations: regs,
        rates,
        seed: 3,
        threads: 2,
    })
    .expect("emulator");
    let created = t.elapsed();
    let spec = StepSpec {
        step: 0,
        rates,
        active: CLIENTS as usize,
        duration_us: 3_000_000,
        drain_us: 0,
        real_share: 0.2,
        memory_cap_bytes: 64 << 20,
    };
    let schedule = emu.prepare(0, &spec).expect("prepare");
    let prepared = t.elapsed();
    let per_packet = common::G.packet_len() + Schedule::BYTES_PER_PACKET_OVERHEAD;
    eprintln!(
        "{CLIENTS} clients created in {created:?}, {} packets prepared by {prepared:?} \
         ({per_packet} bytes each, {} MB schedule)",
        schedule.packets(),
        schedule.bytes() >> 20
    );
    let m = emu
        .replay(&schedule, &ReplayOptions::default())
        .expect("replay");
    assert_eq!(m.counts.packets_sent as usize, schedule.packets());
    assert!(m.counts.pulls_sent > 0);
    let hwm_mb = vm_kb("VmHWM:") / 1024;
    let rss_mb = vm_kb("VmRSS:") / 1024;
    eprintln!("peak resident {hwm_mb} MB, now {rss_mb} MB, bound {BOUND_MB} MB");
    assert!(
        hwm_mb <= BOUND_MB,
        "peak resident set {hwm_mb} MB is above {BOUND_MB} MB"
    );
}

#[test]
fn a_step_over_the_memory_cap_is_refused_before_building() {
    let spec = StepSpec {
        step: 3,
        rates: Rates {
            lambda_p: 100.0,
            lambda_l: 0.0,
            lambda_d: 0.0,
            mean_delay_us: 1000.0,
            pull_period_us: 1_000_000,
        },
        active: 5_000,
        duration_us: 60_000_000,
        drain_us: 0,
        real_share: 0.0,
        memory_cap_bytes: 1 << 30,
    };
    // 30 M packets x 1.4 KB: ~40 GB, far above 1 GB.
    assert!(spec.estimated_bytes(&common::G) > 30 << 30);
    let net = common::Net::new(4);
    let sink = common::sink();
    let mut emu = Emulator::new(EmulatorSpec {
        geometry: common::G,
        topology: std::sync::Arc::clone(&net.topology),
        registrations: vec![common::registration(&net, sink.addr, 0)],
        rates: spec.rates,
        seed: 1,
        threads: 1,
    })
    .expect("emulator");
    let spec = StepSpec {
        active: 1,
        rates: Rates {
            lambda_p: 1e6,
            ..spec.rates
        },
        ..spec
    };
    let e = emu.prepare(0, &spec).err().expect("refused");
    assert!(e.contains("memory_cap_mb") && e.contains("step 3"), "{e}");
}
