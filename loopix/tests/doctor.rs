//! `loopix doctor` on this machine: it names every check, and its exit
//! status is 0 exactly when no line says `fail` (1 otherwise); with a
//! config of 256 unpinned shards (on a machine of fewer cores) it fails the core check.

use std::process::{Command, Output};

fn doctor(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("run loopix doctor");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const CHECKS: [&str; 6] = [
    "io_uring",
    "cpu",
    "memlock",
    "socket_buffers",
    "clocksource",
    "cores",
];

fn verdicts(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect()
}

#[test]
fn doctor_names_every_check_and_exits_by_its_verdicts() {
    let out = doctor(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = verdicts(&text);
    let names: Vec<&str> = v.iter().map(|(_, n)| *n).collect();
    assert_eq!(names, CHECKS, "{text}");
    for (level, _) in &v {
        assert!(["ok", "warn", "fail"].contains(level), "{text}");
    }
    let any_fail = v.iter().any(|(l, _)| *l == "fail");
    assert_eq!(out.status.code(), Some(i32::from(any_fail)), "{text}");
    let fixes = text.lines().filter(|l| l.contains("fix: ")).count();
    let not_ok = v.iter().filter(|(l, _)| *l != "ok").count();
    assert_eq!(fixes, not_ok, "{text}");
}

#[test]
fn doctor_reads_the_config_and_fails_too_many_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mix.toml");
    let toml = format!(
        "[node]\nkey_dir = \"keys\"\ntopology = \"topology.toml\"\nlisten = \"127.0.0.1:1789\"\n\
         operator_key = \"{}\"\n\n[engine]\nshards = 256\npin_cores = false\nio = \"portable\"\n",
        "0".repeat(64)
    );
    std::fs::write(&path, toml).expect("write config");
    let out = doctor(&["--config", path.to_str().expect("utf-8 path")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("engine.shards = 256"), "{text}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 256 {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}{err}");
        assert!(text.contains("fail  cores"), "{text}");
        assert!(err.contains("failed: cores"), "{err}");
    }
    assert!(
        text.contains("ok    io_uring       engine.io = \"portable\""),
        "{text}"
    );
}

#[test]
fn doctor_names_a_missing_config() {
    let out = doctor(&["--config", "/nonexistent/loopix-doctor.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/loopix-doctor.toml"));
}
