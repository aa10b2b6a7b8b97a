//! Every benchmark binary's command line: `--help` exits 0 and lists its
//! flags, `--version` exits 0, and an unknown flag or a bad value exits 2
//! naming the flag. Nothing here runs a benchmark.

use std::process::{Command, Output};

/// Each binary with two of its flags that `--help` must list.
const BINARIES: [(&str, &str, [&str; 2]); 6] = [
    (
        "node-bench",
        env!("CARGO_BIN_EXE_node-bench"),
        ["--step-s", "--aqm-target-ms"],
    ),
    (
        "peer-compare",
        env!("CARGO_BIN_EXE_peer-compare"),
        ["--rounds", "--no-pin"],
    ),
    (
        "provider-bench",
        env!("CARGO_BIN_EXE_provider-bench"),
        ["--start-rate", "--seal-iters"],
    ),
    (
        "restart-bench",
        env!("CARGO_BIN_EXE_restart-bench"),
        ["--rates-pps", "--dir"],
    ),
    (
        "junk-bench",
        env!("CARGO_BIN_EXE_junk-bench"),
        ["--rate-pps", "--gen-core"],
    ),
    (
        "sphinx-demo",
        env!("CARGO_BIN_EXE_sphinx-demo"),
        ["--geometry", "--message"],
    ),
];

fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {exe}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version_exit_0_and_usage_errors_exit_2() {
    for (name, exe, flags) in BINARIES {
        let out = run(exe, &["--help"]);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name} --help: {help}");
        for flag in flags.iter().chain(&["--json", "--help", "--version"]) {
            // sphinx-demo has no --json.
            if *flag == "--json" && name == "sphinx-demo" {
                continue;
            }
            assert!(help.contains(flag), "{name} --help lacks {flag}:\n{help}");
        }
        let out = run(exe, &["--version"]);
        assert_eq!(out.status.code(), Some(0), "{name} --version");
        assert!(text(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
        let out = run(exe, &["--no-such-flag"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} --no-such-flag: {err}");
        assert!(err.contains("--no-such-flag"), "{name}: {err}");
        // A value its flag refuses.
        let out = run(exe, &[flags[0], "not-a-value"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {}: {err}", flags[0]);
        assert!(err.contains(flags[0]), "{name}: {err}");
    }
}

#[test]
fn checks_across_flags_are_usage_errors() {
    for (exe, args, named) in [
        (
            env!("CARGO_BIN_EXE_node-bench"),
            &["--node-core", "1"][..],
            "--node-core",
        ),
        (
            env!("CARGO_BIN_EXE_provider-bench"),
            &["--factor", "1"],
            "--factor",
        ),
        (
            env!("CARGO_BIN_EXE_junk-bench"),
            &["--gen-core", "0"],
            "--gen-core",
        ),
        (
            env!("CARGO_BIN_EXE_restart-bench"),
            &["--rates-pps", "0"],
            "--rates-pps",
        ),
    ] {
        let out = run(exe, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{exe} {args:?}: {err}");
        assert!(err.contains(named), "{exe} {args:?}: {err}");
    }
}
