//! The shipped systemd units (mix and provider) pass `systemd-analyze verify`, and the shipped
//! example configs (mix and provider) parse. The unit check is skipped, with a message, where
//! systemd-analyze is not installed.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn example_config_parses() {
    let path = repo().join("systemd/mix.example.toml");
    let text = std::fs::read_to_string(&path).expect("example config");
    let c = loopix_engine::config::MixConfig::parse(&path, &text).expect("example is valid");
    assert_eq!(c.engine.shards, 2);
    assert!(c.provider.is_none());
}

#[test]
fn example_provider_config_parses() {
    let path = repo().join("systemd/provider.example.toml");
    let text = std::fs::read_to_string(&path).expect("example config");
    let c = loopix_engine::config::MixConfig::parse(&path, &text).expect("example is valid");
    let p = c.provider.expect("has [provider]");
    assert_eq!(p.answer_delay_us, 1000);
}

/// `systemd-analyze verify` on a shipped unit, its binary pointed at the one
/// cargo built; findings that name the unit fail the test.
fn verify_unit(name: &str) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one
    // cargo built for this test.
    let unit = std::fs::read_to_string(repo().join("systemd").join(name)).expect("unit");
    let unit = unit.replace("/usr/local/bin/loopix", env!("CARGO_BIN_EXE_loopix"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's other units are not ours; anything naming our
    // unit is a finding.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {name}: {stderr}"
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    verify_unit("loopix-mix.service");
}

#[test]
fn provider_unit_passes_systemd_analyze_verify() {
    verify_unit("loopix-provider.service");
    // The unit runs a provider with the shipped example's data directory
    // under its StateDirectory.
    let unit =
        std::fs::read_to_string(repo().join("systemd/loopix-provider.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/loopix provider --config"));
    let path = repo().join("systemd/provider.example.toml");
    let text = std::fs::read_to_string(&path).expect("example config");
    let c = loopix_engine::config::MixConfig::parse(&path, &text).expect("example is valid");
    let data_dir = c.provider.expect("has [provider]").data_dir;
    assert!(
        data_dir.starts_with("/var/lib/loopix"),
        "{}",
        data_dir.display()
    );
    assert!(unit.contains("StateDirectory=loopix loopix/provider"));
}
