//! The `loopix-loadgen` binary end to end on a registrations target: a
//! topology file and a directory of registration files for the fake
//! provider (tests/common) on 127.0.0.1. A 1 s run finishes by itself,
//! exits 0, prints the table and writes the report; bad input (a metrics
//! endpoint nobody listens on, an unknown flag, a rate out of range) exits
//! 2 with the field named, and the provider sees no packet. `--help` and
//! `--version` exit 0, no arguments at all and an unknown flag exit 2.
//! Each child is killed by a guard if the test fails, and waited for at
//! most 60 s.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kills the child on drop (a failed assertion).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the binary with `args`; (exit code, stdout, stderr).
fn run(args: &[String]) -> (i32, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_loopix-loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loopix-loadgen");
    let mut guard = Guard(child);
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < end, "loopix-loadgen did not stop in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut o) = guard.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn a_run_on_registration_files_reports_and_bad_input_sends_nothing() {
    let net = Arc::new(common::Net::new(11));
    let (provider, regs) = common::provider(Arc::clone(&net), 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("topology.toml");
    std::fs::write(&topo, net.topology_toml(provider.addr)).expect("write topology");
    let regdir = dir.path().join("registrations");
    std::fs::create_dir(&regdir).expect("mkdir");
    for (i, r) in regs.iter().enumerate() {
        std::fs::write(regdir.join(format!("client-{i:04}.toml")), r.to_toml()).expect("write");
    }
    let out = dir.path().join("out");
    let base = |extra: &str| -> Vec<String> {
        format!(
            "--topology {} --registrations {} --clients 10 --duration-s 1 --drain-s 0.5 \
             --lambda-p 2 --lambda-l 2 --lambda-d 1 --pull-ms 100 --no-progress --out {} {extra}",
            topo.display(),
            regdir.display(),
            out.display()
        )
        .split_whitespace()
        .map(String::from)
        .collect()
    };

    // Bad input first: nothing may reach the provider.
    let (code, _, err) = run(&base("--metrics mix1=127.0.0.1:9"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mix1"), "{err}");
    let (code, _, err) = run(&base("--lambda-x 1"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--lambda-x"), "{err}");
    let mut args = base("");
    let at = args.iter().position(|a| a == "--clients").expect("flag") + 1;
    args[at] = "11".into();
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("clients = 11"), "{err}");
    let mut args = base("");
    let at = args.iter().position(|a| a == "--lambda-l").expect("flag") + 1;
    args[at] = "5000".into();
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lambda_l"), "{err}");
    assert_eq!(provider.state().client_packets, 0);
    assert_eq!(provider.state().pulls, 0);

    let (code, stdout, err) = run(&base(""));
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("knee") && stdout.contains("300"),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("json");
    let step = &json["steps"][0];
    assert!(step["loops_received"].as_u64().expect("n") > 0, "{step}");
    assert!(provider.state().client_packets > 0);
    assert_eq!(provider.state().bad_client_frames, 0);
}

#[test]
fn help_and_version_exit_0_and_usage_errors_exit_2() {
    let args = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
    let (code, out, err) = run(&args("--help"));
    assert_eq!(code, 0, "{err}");
    // Every flag is listed with its help.
    for flag in [
        "--scenario",
        "--no-progress",
        "--lambda-p",
        "--mean-delay-ms",
        "--sweep-by",
        "--metrics",
        "--testnet",
        "--out",
    ] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
    assert!(out.contains("Per-client payload stream rate"), "{out}");
    let (code, out, err) = run(&args("--version"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (code, _, err) = run(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--scenario"), "{err}");
    let (code, _, err) = run(&args("--testnet x --bogus-flag 3"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bogus-flag"), "{err}");
    let (code, _, err) = run(&args("--testnet x --clients lots"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--clients"), "{err}");
    let (code, _, err) = run(&args("node relay --config x.toml"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("relay"), "{err}");
}
