//! The operator's workflow through the `loopix` binary: `keygen` for each
//! node, `operator-keygen`, `topology build`, `show`, `verify`; then tampered
//! documents (a flipped signature byte, a mix in two layers, a missing
//! layer) are refused by `verify` and by `loopix mix` with a message naming
//! the fault. Every child is bounded in time and killed by its guard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loopix_directory::topology::TopologyFile;
use loopix_engine::keyfile::read_identity;

fn loopix(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(args)
        .output()
        .expect("run loopix");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `loopix mix` and wait at most `bound` for it to exit on its own.
fn mix_exit(config: &Path, bound: Duration) -> (i32, String) {
    let log = config.with_extension("log");
    let child = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(["mix", "--config", s(config)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start loopix mix");
    let mut g = Guard(child);
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(st) = g.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "loopix mix still running after {bound:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).expect("read log");
    assert!(!err.contains("panicked"), "{err}");
    (status.code().unwrap_or(-1), err)
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    topology: PathBuf,
    operator_pub: String,
}

fn free_port() -> u16 {
    loopix_testkit::localnet::free_port()
        .expect("free port")
        .port()
}

/// One provider and a mix in each of three layers, built with the CLI.
fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let mut specs = Vec::new();
    for (name, layer) in [("p", "provider"), ("m1", "1"), ("m2", "2"), ("m3", "3")] {
        let keys = root.join(name);
        let addr = format!("127.0.0.1:{}", free_port());
        let out = loopix(&[
            "keygen",
            "--dir",
            s(&keys),
            "--epochs",
            "2",
            "--address",
            &addr,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        specs.push(format!("{layer}:{}", s(&keys)));
    }
    let op = root.join("operator.key");
    let out = loopix(&["operator-keygen", "--out", s(&op)]);
    assert!(out.status.success(), "{}", text(&out));
    let operator_pub = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(operator_pub.len(), 64, "{operator_pub}");

    let topology = root.join("topology.toml");
    let mut args = vec![
        "topology",
        "build",
        "--operator-key",
        s(&op),
        "--layers",
        "3",
        "--out",
        s(&topology),
    ];
    args.extend(specs.iter().map(String::as_str));
    let out = loopix(&args);
    assert!(out.status.success(), "{}", text(&out));
    Setup {
        _dir: dir,
        root,
        topology,
        operator_pub,
    }
}

fn verify(path: &Path, operator_pub: &str) -> (bool, String) {
    let out = loopix(&[
        "topology",
        "verify",
        s(path),
        "--operator-pub",
        operator_pub,
    ]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
    (out.status.success(), text(&out))
}

fn tampered(setup: &Setup, name: &str, edit: impl FnOnce(&mut TopologyFile)) -> PathBuf {
    let mut file = TopologyFile::read(&setup.topology).expect("read");
    edit(&mut file);
    let path = setup.root.join(name);
    std::fs::write(&path, file.to_toml().expect("toml")).expect("write");
    path
}

fn flip(hex: &mut String, at: usize) {
    let c = if hex.as_bytes()[at] == b'0' { "1" } else { "0" };
    hex.replace_range(at..at + 1, c);
}

/// Documents with one fault each, and what the refusal must name.
fn tampered_cases(t: &Setup) -> Vec<(PathBuf, Vec<String>)> {
    let operator = read_identity(&t.root.join("operator.key")).expect("operator key");
    let id1 = TopologyFile::read(&t.topology).expect("read").nodes[1]
        .id
        .clone();
    vec![
        (
            tampered(t, "mixkey.toml", |f| {
                flip(&mut f.nodes[1].mix_keys[0].signature, 9)
            }),
            vec![format!("node 1 ({id1})"), "mix key for epoch".into()],
        ),
        (
            tampered(t, "operator.toml", |f| flip(&mut f.signature, 3)),
            vec!["operator signature".into(), "does not verify".into()],
        ),
        (
            tampered(t, "twice.toml", |f| {
                let mut again = f.nodes[1].clone();
                again.layer = 2;
                f.nodes.push(again);
            }),
            vec![
                format!("node 4 ({id1})"),
                "also listed as node 1".into(),
                "one layer".into(),
            ],
        ),
        (
            tampered(t, "missing.toml", |f| f.nodes.retain(|n| n.layer != 2)),
            vec!["layer 2 has no mix".into()],
        ),
        // Signed by the operator, but out of range: refused by name.
        (
            tampered(t, "negative.toml", |f| {
                f.params.lambda_l = -1.0;
                f.sign(&operator).expect("sign");
            }),
            vec!["params.lambda_l is -1".into()],
        ),
        (
            tampered(t, "mtu.toml", |f| {
                f.params.mtu = 1300;
                f.sign(&operator).expect("sign");
            }),
            vec![
                "params.payload_len 1056 with params.max_hops 6".into(),
                "over params.mtu 1300".into(),
            ],
        ),
        (
            tampered(t, "hops.toml", |f| {
                f.params.max_hops = 5;
                f.sign(&operator).expect("sign");
            }),
            vec!["params.max_hops is 5 but a path through 3 layers takes 6 hops".into()],
        ),
    ]
}

#[test]
fn build_show_verify_and_tampering() {
    let t = setup();

    let out = loopix(&[
        "topology",
        "show",
        s(&t.topology),
        "--operator-pub",
        &t.operator_pub,
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for needle in [
        "providers (layer 0)",
        "layer 1 of 3",
        "layer 3 of 3",
        "every node has keys for",
        "signatures: all verify",
        "params: mean delay 1 ms per hop; clients lambda_P 2 lambda_L 1 lambda_D 1 /s",
        "6 hops, 1056-byte payload, mtu 1500",
        &t.operator_pub[..16],
    ] {
        assert!(shown.contains(needle), "show lacks {needle:?}:\n{shown}");
    }

    let (ok, msg) = verify(&t.topology, &t.operator_pub);
    assert!(ok, "{msg}");
    assert!(msg.contains("ok:"), "{msg}");
    // The .pub file next to the operator key works too.
    let pub_file = t.root.join("operator.key.pub");
    assert!(verify(&t.topology, s(&pub_file)).0);

    let wrong = "11".repeat(32);
    let (ok, msg) = verify(&t.topology, &wrong);
    assert!(!ok && msg.contains("trusted operator key"), "{msg}");

    let cases = tampered_cases(&t);
    for (path, needles) in &cases {
        let (ok, msg) = verify(path, &t.operator_pub);
        assert!(!ok, "{} verified", path.display());
        for n in needles {
            assert!(msg.contains(n.as_str()), "{msg:?} should name {n:?}");
        }
    }

    // A mix started with each tampered document exits 1 with the message.
    let desc = std::fs::read_to_string(t.root.join("m1/node.toml")).expect("descriptor");
    let listen = desc
        .lines()
        .find_map(|l| l.strip_prefix("address = "))
        .expect("address line")
        .trim_matches('"')
        .to_owned();
    for (path, needles) in &cases {
        let config = t.root.join("m1.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nkey_dir = {:?}\ntopology = {:?}\nlisten = \"{listen}\"\noperator_key = \"{}\"\n\n[engine]\npin_cores = false\n",
                s(&t.root.join("m1")),
                s(path),
                t.operator_pub
            ),
        )
        .expect("config");
        let (code, err) = mix_exit(&config, Duration::from_secs(20));
        assert_eq!(code, 1, "{err}");
        for n in needles {
            assert!(err.contains(n.as_str()), "{err:?} should name {n:?}");
        }
    }
}

#[test]
fn build_refuses_descriptor_without_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("k");
    assert!(loopix(&["keygen", "--dir", s(&keys), "--epochs", "1"])
        .status
        .success());
    let op = dir.path().join("op.key");
    assert!(loopix(&["operator-keygen", "--out", s(&op)])
        .status
        .success());
    let out = loopix(&[
        "topology",
        "build",
        "--operator-key",
        s(&op),
        "--layers",
        "1",
        "--out",
        s(&dir.path().join("t.toml")),
        &format!("1:{}", s(&keys)),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--address"), "{}", text(&out));
    // Usage mistakes exit 2.
    assert_eq!(loopix(&["topology"]).status.code(), Some(2));
    assert_eq!(
        loopix(&["topology", "verify", "x.toml"]).status.code(),
        Some(2)
    );
    assert_eq!(
        loopix(&["topology", "build", "--layers", "1"])
            .status
            .code(),
        Some(2)
    );
    // Network parameters out of range, or a geometry that cannot hold the
    // path, are refused naming the field and the numbers.
    let out_path = dir.path().join("t.toml");
    let build = |extra: &[&str]| {
        let mut args = vec![
            "topology",
            "build",
            "--operator-key",
            s(&op),
            "--out",
            s(&out_path),
        ];
        args.extend_from_slice(extra);
        let keys_arg = format!("1:{}", s(&keys));
        args.push(&keys_arg);
        let out = loopix(&args);
        (out.status.code(), text(&out))
    };
    let (code, msg) = build(&["--layers", "4", "--max-hops", "6"]);
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains("params.max_hops is 6 but a path through 4 layers takes 7 hops"),
        "{msg}"
    );
    let (code, msg) = build(&["--layers", "1", "--lambda-l", "-1"]);
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("params.lambda_l is -1"), "{msg}");
    let (code, msg) = build(&["--layers", "11"]);
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("--layers"), "{msg}");
    // An operator key is never overwritten.
    let out = loopix(&["operator-keygen", "--out", s(&op)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("never overwritten"), "{}", text(&out));
}
