//! `loopix tune simulate` and `loopix tune sweep`: a table, JSON and CSV
//! on stdout with exit 0, the same output for the same seed, and exit 2
//! with the flag named for a parameter out of its domain.

mod common;
use common::{loopix, stderr, stdout};

/// Few repetitions and a short measurement keep a debug build quick.
const SMALL: &[&str] = &["--repetitions", "4", "--measure-s", "30"];

fn run_ok(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend_from_slice(SMALL);
    let out = loopix(&all);
    assert_eq!(out.status.code(), Some(0), "{all:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn simulate_prints_a_table_json_and_csv() {
    let table = run_ok(&["tune", "simulate"]);
    assert!(
        table.contains("eps_mean") && table.contains("4/4"),
        "{table}"
    );
    let json = run_ok(&["tune", "simulate", "--json", "--seed", "9"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["params"]["layers"], 3);
    assert_eq!(v["repetitions"].as_array().map(Vec::len), Some(4));
    assert!(
        v["epsilon_mean"].as_f64().is_some_and(|e| e >= 0.0),
        "{json}"
    );
    // The same seed gives the same bytes.
    assert_eq!(json, run_ok(&["tune", "simulate", "--json", "--seed", "9"]));
    let csv = run_ok(&["tune", "simulate", "--csv", "--lambda-over-mu", "4"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("lambda_over_mu,epsilon_mean"), "{csv}");
    assert!(lines[1].starts_with("4,"), "{csv}");
}

#[test]
fn sweep_prints_one_row_per_step() {
    let args = [
        "tune", "sweep", "--param", "layers", "--from", "1", "--to", "3", "--steps", "3", "--csv",
    ];
    let csv = run_ok(&args);
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    for (row, layers) in rows.iter().zip(["1,", "2,", "3,"]) {
        assert!(row.starts_with(layers), "{csv}");
    }
    let json = run_ok(&[
        "tune",
        "sweep",
        "--param",
        "lambda_over_mu",
        "--from",
        "1",
        "--to",
        "2",
        "--steps",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{json}");
}

#[test]
fn bad_parameters_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["tune", "simulate", "--layers", "0"], "--layers"),
        (&["tune", "simulate", "--width", "0"], "--width"),
        (&["tune", "simulate", "--mu", "-1"], "--mu"),
        (&["tune", "simulate", "--lambda", "0"], "--lambda"),
        (&["tune", "simulate", "--corrupt", "1.5"], "--corrupt"),
        (
            &["tune", "simulate", "--lambda-over-mu", "0"],
            "--lambda-over-mu",
        ),
        (
            &[
                "tune", "sweep", "--param", "corrupt", "--from", "0", "--to", "2", "--steps", "3",
            ],
            "--corrupt",
        ),
        (
            &[
                "tune", "sweep", "--param", "layers", "--from", "0", "--to", "2", "--steps", "3",
            ],
            "--layers",
        ),
        (
            &[
                "tune", "sweep", "--param", "bogus", "--from", "0", "--to", "2",
            ],
            "--param",
        ),
    ];
    for (args, flag) in cases {
        let out = loopix(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}
