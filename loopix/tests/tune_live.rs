//! `loopix tune live` against a running network on loopback: every node
//! (one provider, three mixes) runs its own loops at a raised λM, and the
//! meter reports each with a positive arrival rate, the µ of the document
//! and the Lemma 1 pool `λ/µ`; a node that does not answer is named, exit
//! 1; a bad flag is named, exit 2. Every wait is bounded; every child is
//! killed when its guard drops.

use std::path::Path;
use std::process::{Command, Output};

use loopix_directory::params::NetworkParams;
use loopix_directory::topology::Role;
use loopix_testkit::localnet::{free_tcp_addr, LocalNet, LocalNetSpec};
use loopix_testkit::process::NodeProcess;

fn loopix(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(args)
        .output()
        .expect("run loopix")
}

fn live_args(extra: &[&str], targets: &[(String, std::net::SocketAddr)]) -> Vec<String> {
    let mut a: Vec<String> = ["tune", "live"].iter().map(|s| s.to_string()).collect();
    for (name, addr) in targets {
        a.push("--metrics".into());
        a.push(format!("{name}={addr}"));
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn live_meter_reports_every_node_of_a_running_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = LocalNetSpec {
        params: NetworkParams {
            lambda_m: 50.0,
            ..LocalNetSpec::default().params
        },
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(dir.path(), &spec).expect("lay out the network");
    let mut nodes = Vec::new();
    for n in &net.nodes {
        let role = match n.role {
            Role::Provider => "provider",
            _ => "mix",
        };
        let config = n.config.as_ref().expect("every node has a config");
        let p = NodeProcess::start_node(
            Path::new(env!("CARGO_BIN_EXE_loopix")),
            role,
            config,
            n.metrics,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", n.name()));
        nodes.push(p);
    }
    let targets: Vec<_> = net.nodes.iter().map(|n| (n.name(), n.metrics)).collect();
    // Let the loops start flowing before measuring.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = loopix(&live_args(
        &["--interval-s", "2", "--samples", "3", "--json"],
        &targets,
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let loads: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let loads = loads.as_array().expect("an array");
    assert_eq!(loads.len(), net.nodes.len(), "{loads:?}");
    let mu_want = 1000.0 / net.params.mean_delay_ms;
    for (l, (name, _)) in loads.iter().zip(&targets) {
        assert_eq!(l["node"].as_str(), Some(name.as_str()), "{l}");
        let lambda = l["lambda_per_s"].as_f64().expect("λ");
        let mu = l["mu_per_s"].as_f64().expect("µ");
        let pool = l["model_pool"].as_f64().expect("pool");
        assert!(lambda > 0.0, "{name}: no arrivals: {l}");
        assert!(
            (mu - mu_want).abs() < 1e-9 * mu_want,
            "{name}: µ {mu} not {mu_want}"
        );
        assert!((pool - lambda / mu).abs() < 1e-9 * pool.max(1.0), "{l}");
        assert!(l["measured_pool"].as_f64().expect("measured") >= 0.0);
        assert!(l["model_entropy_bits"].as_f64().expect("H") >= 0.0);
    }
    // The table names every node too.
    let out = loopix(&live_args(
        &["--interval-s", "0.5", "--samples", "2"],
        &targets,
    ));
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    for (name, _) in &targets {
        assert!(table.contains(name.as_str()), "{name} missing in\n{table}");
    }
    for mut p in nodes {
        let _ = p.terminate(std::time::Duration::from_secs(10));
    }
}

#[test]
fn an_unreachable_node_is_named_with_exit_1() {
    // A port nothing listens on: bound, then released.
    let addr = free_tcp_addr().expect("a free port");
    let out = loopix(&live_args(
        &["--interval-s", "0.2", "--samples", "2"],
        &[("ghost-mix".to_string(), addr)],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ghost-mix") && err.contains(&addr.to_string()),
        "{err}"
    );
}

#[test]
fn bad_flags_are_named_with_exit_2() {
    let t = [("m".to_string(), "127.0.0.1:9".parse().expect("addr"))];
    for (extra, flag) in [
        (vec!["--samples", "1"], "--samples"),
        (vec!["--interval-s", "0"], "--interval-s"),
        (vec!["--interval-s", "-1"], "--interval-s"),
    ] {
        let out = loopix(&live_args(&extra, &t));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
    let out = loopix(&[
        "tune".into(),
        "live".into(),
        "--metrics".into(),
        "nameless".into(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics"), "{err}");
}
