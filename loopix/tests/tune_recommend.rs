//! `loopix tune recommend`: every set it returns meets the targets it was
//! given (ε re-run with the simulator from the set's own parameters, the
//! latency recomputed from the model), the same seed gives the same
//! bytes, an impossible target exits 1 with a message saying so, and a
//! bad flag exits 2 naming it.

mod common;
use common::{loopix, stderr};
use std::process::Output;

use loopix_tuning::sim::{self, BurnIn, SimParams};

/// A small grid and few repetitions keep a debug build quick.
const SMALL: &[&str] = &[
    "tune",
    "recommend",
    "--max-layers",
    "3",
    "--widths",
    "2,3",
    "--delays-ms",
    "200,500,1000",
    "--repetitions",
    "10",
];

fn recommend(extra: &[&str]) -> Output {
    let mut all = SMALL.to_vec();
    all.extend_from_slice(extra);
    loopix(&all)
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn u(v: &serde_json::Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u32
}

/// The simulator's inputs as the JSON gives them.
fn sim_params(v: &serde_json::Value) -> SimParams {
    assert_eq!(v["burn_in"], "exact", "{v}");
    SimParams {
        senders: u(v, "senders"),
        sender_rate_per_s: f(v, "sender_rate_per_s"),
        mu_per_s: f(v, "mu_per_s"),
        payload_interval_s: f(v, "payload_interval_s"),
        layers: u(v, "layers"),
        width: u(v, "width"),
        corrupt_fraction: f(v, "corrupt_fraction"),
        burn_in_s: f(v, "burn_in_s"),
        measure_s: f(v, "measure_s"),
        burn_in: BurnIn::Exact,
    }
}

#[test]
fn every_set_meets_its_targets_and_a_seed_repeats() {
    let args = [
        "--max-epsilon",
        "0.3",
        "--min-entropy-bits",
        "9",
        "--latency-budget-ms",
        "5000",
        "--clients",
        "60",
        "--json",
        "--seed",
        "7",
    ];
    let out = recommend(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let sets = v["recommendations"].as_array().expect("recommendations");
    assert!(!sets.is_empty(), "{json}");
    let mut last_latency = 0.0;
    for r in sets {
        let (layers, delay) = (u(r, "layers"), f(r, "mean_delay_ms"));
        let latency = f64::from(layers + 2) * delay + 1000.0 / 2.0;
        assert!((f(r, "latency_ms") - latency).abs() < 1e-9, "{r}");
        assert!(latency <= 5000.0 && latency >= last_latency, "{json}");
        last_latency = latency;
        let p = sim_params(&r["sim"]);
        assert_eq!((p.senders, p.layers, p.width), (60, layers, u(r, "width")));
        let s = sim::simulate(&p, 10, 7).expect("simulate");
        assert_eq!(s.epsilon_finite, 10, "{r}");
        let upper = s.epsilon_mean + 2.0 * s.epsilon_std / 10f64.sqrt();
        assert!(upper <= 0.3, "{r}: re-run ε {upper}");
        assert_eq!(s.epsilon_mean, f(r, "epsilon_mean"), "{r}");
        assert!(s.entropy_mean_bits >= 9.0, "{r}");
    }
    let again = recommend(&args);
    assert_eq!(String::from_utf8_lossy(&again.stdout), json);
}

#[test]
fn the_table_has_a_header_and_a_footer() {
    let out = recommend(&["--max-epsilon", "0.5", "--latency-budget-ms", "4000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("layers width"), "{text}");
    assert!(
        text.contains("eps_upper") && text.contains("pps_per_mix"),
        "{text}"
    );
    assert!(text.contains("repetitions each, seed 1"), "{text}");
}

#[test]
fn an_impossible_target_says_so_and_exits_1() {
    let out = recommend(&["--max-epsilon", "0.00001", "--latency-budget-ms", "3000"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no parameter set meets ε <= 0.00001"), "{err}");
    assert!(err.contains("relax the target"), "{err}");
    let out = recommend(&["--max-epsilon", "0.3", "--latency-budget-ms", "100"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("fits a latency budget of 100 ms"), "{err}");
    assert!(err.contains("takes 1100 ms"), "{err}");
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--latency-budget-ms", "1000"], "--max-epsilon"),
        (
            &["--max-epsilon", "-1", "--latency-budget-ms", "1000"],
            "--max-epsilon",
        ),
        (
            &["--max-epsilon", "0.1", "--latency-budget-ms", "0"],
            "--latency-budget-ms",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--clients",
                "1",
            ],
            "--clients",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--message-rate",
                "5",
            ],
            "--message-rate",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--lambda-l",
                "-1",
            ],
            "--lambda-l",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--max-layers",
                "0",
            ],
            "--max-layers",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--widths",
                "0",
            ],
            "--widths",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--delays-ms",
                "x",
            ],
            "--delays-ms",
        ),
        (
            &[
                "--max-epsilon",
                "0.1",
                "--latency-budget-ms",
                "1000",
                "--repetitions",
                "0",
            ],
            "--repetitions",
        ),
    ];
    for (extra, flag) in cases {
        let out = recommend(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{extra:?}: {}", stderr(&out));
    }
}
