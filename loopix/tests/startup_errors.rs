//! `loopix` start-up failures are one clear message and exit status 1 (2 for
//! usage mistakes), never a panic: a missing key directory, an unreadable
//! topology, a config mistake, a node missing from the topology, a missing
//! or wrong operator key, a key directory without an identity key.

use std::path::Path;
use std::process::Command;

use loopix_testkit::localnet::{LocalNet, LocalNetSpec};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(args)
        .output()
        .expect("run loopix");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn mix_with(config: &Path, text: &str) -> (i32, String) {
    std::fs::write(config, text).expect("write config");
    run(&["mix", "--config", config.to_str().expect("utf-8 path")])
}

#[test]
fn startup_failures_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &LocalNetSpec::default()).expect("lay out");
    let mix = &net.nodes[net.layer(1)[0]];
    let good = std::fs::read_to_string(mix.config.as_ref().expect("config")).expect("read");
    let cfg = dir.path().join("test.toml");

    let missing_keys = good.replace(
        &format!("key_dir = {:?}", mix.key_dir.display().to_string()),
        "key_dir = \"/nonexistent/keys\"",
    );
    let (code, err) = mix_with(&cfg, &missing_keys);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/keys: no link.key"), "{err}");
    assert!(
        err.contains("run `loopix keygen --dir /nonexistent/keys"),
        "{err}"
    );

    let bad_topology = good.replace(
        &format!("topology = {:?}", net.topology_path.display().to_string()),
        "topology = \"/nonexistent/topology.toml\"",
    );
    let (code, err) = mix_with(&cfg, &bad_topology);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("/nonexistent/topology.toml") && err.contains("cannot read"),
        "{err}"
    );

    let (code, err) = mix_with(&cfg, &good.replace("shards = 1", "shards = 0"));
    assert_eq!(code, 1);
    assert!(err.contains("engine.shards"), "{err}");

    let (code, err) = mix_with(&cfg, &good.replace("[replay]", "[replay]\nrate = 5"));
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `rate`"), "{err}");

    // A key directory whose node is not in the topology.
    let stranger = dir.path().join("stranger");
    loopix_engine::keyfile::keygen(
        &stranger,
        3600,
        loopix_directory::descriptor::epoch_at(loopix_engine::keyfile::unix_now_s(), 3600),
        1,
    )
    .expect("keygen");
    let not_listed = good.replace(
        &format!("key_dir = {:?}", mix.key_dir.display().to_string()),
        &format!("key_dir = {:?}", stranger.display().to_string()),
    );
    let (code, err) = mix_with(&cfg, &not_listed);
    assert_eq!(code, 1);
    assert!(err.contains("is not listed"), "{err}");

    // listen disagrees with the topology.
    let (code, err) = mix_with(&cfg, &good.replace(&mix.address.to_string(), "127.0.0.1:1"));
    assert_eq!(code, 1);
    assert!(err.contains("node.listen"), "{err}");

    // No operator key: the field and the fix are named.
    let operator_line = format!("operator_key = \"{}\"\n", net.operator);
    assert!(good.contains(&operator_line));
    let (code, err) = mix_with(&cfg, &good.replace(&operator_line, ""));
    assert_eq!(code, 1);
    assert!(
        err.contains("node.operator_key") && err.contains("operator-keygen"),
        "{err}"
    );

    // A different operator key: the topology's signer is not trusted.
    let other = loopix_crypto::IdentityKey::from_seed([7; 32]).expect("seed");
    let (code, err) = mix_with(
        &cfg,
        &good.replace(&net.operator.to_hex(), &other.public().to_hex()),
    );
    assert_eq!(code, 1);
    assert!(err.contains("trusted operator key"), "{err}");

    // A key directory from before identity keys.
    std::fs::remove_file(mix.key_dir.join("identity.key")).expect("remove identity.key");
    let (code, err) = mix_with(&cfg, &good);
    assert_eq!(code, 1);
    assert!(
        err.contains("identity.key") && err.contains("loopix keygen --dir"),
        "{err}"
    );
}

/// The metrics port is taken: the start fails naming it, and no start line
/// was logged first (everything is bound before it, as the unit file says).
#[test]
fn a_taken_metrics_port_fails_before_the_start_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = LocalNet::create(dir.path(), &LocalNetSpec::default()).expect("lay out");
    let mix = &net.nodes[net.layer(1)[0]];
    let good = std::fs::read_to_string(mix.config.as_ref().expect("config")).expect("read");
    let cfg = dir.path().join("test.toml");
    let taken = std::net::TcpListener::bind(mix.metrics).expect("take the metrics port");
    let (code, err) = mix_with(&cfg, &good);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("metrics.listen {}", mix.metrics)),
        "{err}"
    );
    assert!(
        !err.contains("loopix mix: node"),
        "start line before the bind: {err}"
    );
    drop(taken);
}

#[test]
fn usage_mistakes_exit_2() {
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["frobnicate"]).0, 2);
    assert_eq!(run(&["mix"]).0, 2);
    assert_eq!(run(&["keygen", "--dir"]).0, 2);
    assert_eq!(run(&["keygen", "--dir", "/tmp/x", "--epochs", "many"]).0, 2);
}

#[test]
fn keygen_writes_keys_and_prints_the_descriptor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("k");
    let out = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args([
            "keygen",
            "--dir",
            keys.to_str().expect("utf-8"),
            "--epochs",
            "2",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("link_key = ")
            && stdout.contains("identity_key = ")
            && stdout.contains("[[mix_keys]]"),
        "{stdout}"
    );
    use std::os::unix::fs::PermissionsExt;
    for file in ["link.key", "identity.key"] {
        let mode = std::fs::metadata(keys.join(file))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Run again with more epochs: the directory is topped up to 5 epochs
    // from the current one, and the keys already there are kept as they are.
    let mix_keys = || {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&keys)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("mix-"))
            })
            .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
            .collect();
        v.sort();
        v
    };
    let before = mix_keys();
    assert_eq!(before.len(), 2);
    let again = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args([
            "keygen",
            "--dir",
            keys.to_str().expect("utf-8"),
            "--epochs",
            "5",
        ])
        .output()
        .expect("run");
    assert!(again.status.success());
    let after = mix_keys();
    assert_eq!(after.len(), 5);
    assert!(
        before.iter().all(|k| after.contains(k)),
        "a key was rewritten"
    );
}
