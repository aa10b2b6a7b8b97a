//! `loopix client`: `init` writes the client directory (secrets mode 0600)
//! and refuses to overwrite it; bad registration, topology and config files
//! give one message naming the field; usage mistakes exit 2; `send` and
//! `recv` go online on loopback and stop by themselves (no provider is
//! running here: the full exchange is tested with real providers).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loopix_client::Address;
use loopix_directory::topology::{Role, TopologyFile};
use loopix_engine::keyfile::read_identity;
use loopix_testkit::localnet::{free_udp_addr, LocalNet, LocalNetSpec, NetworkParams};

/// Kills the child if the test fails before it exits.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `loopix ARGS` with `stdin`, at most `limit` long.
fn loopix_in(args: &[&str], stdin: &[u8], limit: Duration) -> (i32, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loopix");
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().expect("just set");
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin).expect("stdin");
    drop(input);
    let end = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < end, "loopix {args:?} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = guard
        .0
        .take()
        .expect("set")
        .wait_with_output()
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn loopix(args: &[&str]) -> (i32, String, String) {
    loopix_in(args, b"", Duration::from_secs(20))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A laid-out network (nothing running) and a registration at its provider
/// whose address is a free loopback port.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    net: LocalNet,
    registration: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    // Fast clients, so that sends leave at once: the network's rates.
    let spec = LocalNetSpec {
        layers: 1,
        params: NetworkParams {
            lambda_p: 50.0,
            pull_period_ms: 50,
            ..LocalNetSpec::default().params
        },
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(&root.join("net"), &spec).expect("lay out");
    let provider = net
        .nodes
        .iter()
        .find(|n| n.role == Role::Provider)
        .expect("a provider");
    let registration = root.join("registration.toml");
    std::fs::write(
        &registration,
        format!(
            "provider_id = \"{}\"\nprovider_address = \"{}\"\nslot = 3\n\
             mailbox = \"{}\"\naccess_key = \"{}\"\noperator_key = \"{}\"\n",
            provider.descriptor.id,
            free_udp_addr().expect("port"),
            "ab".repeat(16),
            "cd".repeat(16),
            net.operator.to_hex(),
        ),
    )
    .expect("write registration");
    Setup {
        _tmp: tmp,
        root,
        net,
        registration,
    }
}

fn init(st: &Setup, dir: &Path, registration: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "client",
        "init",
        "--dir",
        s(dir),
        "--registration",
        s(registration),
        "--topology",
        s(&st.net.topology_path),
    ];
    args.extend(extra);
    loopix(&args)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn init_writes_private_files_and_refuses_to_overwrite() {
    let st = setup();
    let dir = st.root.join("alice");
    // Rates of its own only as a development override, and only where the
    // document allows it: this one does not.
    let (code, _, err) = init(&st, &dir, &st.registration, &["--lambda-p", "5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--dev-rates"), "{err}");
    let (code, _, err) = init(
        &st,
        &dir,
        &st.registration,
        &["--dev-rates", "--lambda-p", "5"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("allow_rate_overrides = false"), "{err}");
    assert!(!dir.join("client.key").exists());
    let (code, out, err) = init(&st, &dir, &st.registration, &[]);
    assert_eq!(code, 0, "{err}");
    let addr = Address::parse(&out).expect("prints the address");
    assert_eq!(addr.mailbox.0, [0xab; 16]);
    assert_eq!(mode(&dir.join("client.key")), 0o600);
    assert_eq!(mode(&dir.join("registration.toml")), 0o600);
    let config = std::fs::read_to_string(dir.join("client.toml")).expect("config");
    assert!(
        !config.contains("lambda_p"),
        "the network's rates: {config}"
    );
    assert!(
        config.contains(&format!(
            "topology = \"{}\"",
            std::fs::canonicalize(&st.net.topology_path)
                .expect("exists")
                .display()
        )),
        "absolute topology path: {config}"
    );
    let (code, printed, _) = loopix(&["client", "address", "--dir", s(&dir)]);
    assert_eq!(code, 0);
    assert_eq!(Address::parse(&printed).expect("parses"), addr);

    let key_before = std::fs::read(dir.join("client.key")).expect("read");
    let (code, _, err) = init(&st, &dir, &st.registration, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds a client"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("client.key")).expect("read"),
        key_before
    );
}

#[test]
fn bad_files_name_the_field() {
    let st = setup();
    let good = std::fs::read_to_string(&st.registration).expect("read");
    let bad = st.root.join("bad-registration.toml");
    let cases: Vec<(String, &str)> = vec![
        (good.replace(&"ab".repeat(16), &"ab".repeat(3)), "mailbox"),
        (good.replace("slot = 3", "slot = \"x\""), "slot"),
        (format!("{good}colour = 1\n"), "colour"),
        (good.replace("access_key", "acess_key"), "acess_key"),
        (
            good.replace(
                &st.net
                    .nodes
                    .iter()
                    .find(|n| n.role == Role::Provider)
                    .expect("provider")
                    .descriptor
                    .id,
                &"11".repeat(16),
            ),
            "provider_id",
        ),
    ];
    for (i, (text, field)) in cases.into_iter().enumerate() {
        std::fs::write(&bad, text).expect("write");
        let (code, _, err) = init(&st, &st.root.join(format!("c{i}")), &bad, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(field) && err.contains("bad-registration.toml"),
            "case {i}: {err}"
        );
        assert!(!st.root.join(format!("c{i}")).join("client.key").exists());
    }

    // A topology changed after the operator signed it is refused.
    let topo = std::fs::read_to_string(&st.net.topology_path).expect("read");
    let tampered = st.root.join("tampered.toml");
    std::fs::write(&tampered, topo.replacen("serial = 1", "serial = 2", 1)).expect("write");
    let (code, _, err) = loopix(&[
        "client",
        "init",
        "--dir",
        s(&st.root.join("nk")),
        "--registration",
        s(&st.registration),
        "--topology",
        s(&tampered),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("operator signature"), "{err}");

    // Signed, but with parameters out of range: refused naming the field.
    let operator = read_identity(&st.net.operator_key_path).expect("operator key");
    let mut file = TopologyFile::read(&st.net.topology_path).expect("read");
    file.params.lambda_l = -1.0;
    file.sign(&operator).expect("sign");
    let negative = st.root.join("negative.toml");
    std::fs::write(&negative, file.to_toml().expect("toml")).expect("write");
    let (code, _, err) = loopix(&[
        "client",
        "init",
        "--dir",
        s(&st.root.join("neg")),
        "--registration",
        s(&st.registration),
        "--topology",
        s(&negative),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("params.lambda_l is -1"), "{err}");
}

/// client.toml mistakes are named when the client goes online; so is a
/// message too long to leave, and a registration others can read.
#[test]
fn client_toml_mistakes_are_named() {
    let st = setup();
    let dir = st.root.join("bob");
    assert_eq!(init(&st, &dir, &st.registration, &[]).0, 0);
    let config = std::fs::read_to_string(dir.join("client.toml")).expect("read");
    let to = dir.join("address.toml");
    let dev = "\n[dev_rates]\nlambda_p = 2.0\nlambda_l = 1.0\nlambda_d = 1.0\nmean_delay_ms = 1.0\npull_ms = 1000\n";
    for (text, field) in [
        (format!("{config}lambda_x = 1.0\n"), "lambda_x"),
        (
            format!("lambda_p = 2.0\n{config}"),
            "a client's rates are its network's now",
        ),
        (
            format!("{config}{}", dev.replace("pull_ms = 1000", "pull_ms = 0")),
            "dev_rates.pull_period_ms",
        ),
        (
            format!(
                "{config}{}",
                dev.replace("lambda_d = 1.0", "lambda_d = -1.0")
            ),
            "dev_rates.lambda_d",
        ),
        (format!("{config}{dev}"), "allow_rate_overrides = false"),
    ] {
        std::fs::write(dir.join("client.toml"), text).expect("write");
        let (code, _, err) = loopix(&["client", "send", "--dir", s(&dir), "--to", s(&to), "x"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(field) && err.contains("client.toml"), "{err}");
    }
    std::fs::write(dir.join("client.toml"), &config).expect("write");
    // A message too long to ever leave is refused before the client goes
    // online: no "online" line, no packet on the wire.
    let huge = vec![b'x'; 4 << 20];
    let (code, _, err) = loopix_in(
        &["client", "send", "--dir", s(&dir), "--to", s(&to)],
        &huge,
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("fragments"), "{err}");
    assert!(!err.contains("online"), "went online first: {err}");
    std::fs::set_permissions(
        dir.join("registration.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let (code, _, err) = loopix(&["client", "send", "--dir", s(&dir), "--to", s(&to), "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn usage_mistakes_exit_2() {
    for args in [
        &["client"][..],
        &["client", "bogus"],
        &["client", "send"],
        &["client", "send", "--dir", "d"],
        &["client", "send", "--dir", "d", "--to", "f", "one", "two"],
        &[
            "client",
            "send",
            "--dir",
            "d",
            "--to",
            "f",
            "--wait-reply",
            "-1",
        ],
        &["client", "send", "--dir", "d", "--to", "f", "--colour", "x"],
        &["client", "recv", "--dir", "d", "--count", "x"],
        &["client", "recv", "--dir", "d", "--count", "0"],
        &["client", "recv", "--dir", "d", "--timeout"],
        &["client", "recv", "--dir", "d", "stray"],
        &["client", "init", "--dir", "d"],
        &[
            "client",
            "init",
            "--dir",
            "d",
            "--registration",
            "r",
            "--topology",
            "t",
            "--lambda-p",
            "abc",
        ],
        &["client", "run"],
        &["client", "address", "--dir", "d", "--dir", "e"],
    ] {
        let (code, _, err) = loopix(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        // clap's message, or the command's help when it has no subcommand.
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
}

#[test]
fn send_and_recv_go_online_and_stop_by_themselves() {
    let st = setup();
    let (alice, bob) = (st.root.join("alice"), st.root.join("bob"));
    assert_eq!(init(&st, &alice, &st.registration, &[]).0, 0);
    assert_eq!(init(&st, &bob, &st.registration, &[]).0, 0);
    let to = bob.join("address.toml");
    let (code, out, err) = loopix_in(
        &["client", "send", "--dir", s(&alice), "--to", s(&to)],
        b"hello from stdin",
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 16 bytes in 1 fragments"), "{out}");

    let (code, _, err) = loopix(&[
        "client",
        "send",
        "--dir",
        s(&alice),
        "--to",
        s(&to),
        "--wait-reply",
        "0.3",
        "hi",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no reply within"), "{err}");

    let (code, _, err) = loopix(&[
        "client",
        "recv",
        "--dir",
        s(&bob),
        "--count",
        "1",
        "--timeout",
        "0.3",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out after 0 of 1"), "{err}");
    let (code, _, err) = loopix(&["client", "recv", "--dir", s(&bob), "--timeout", "0.2"]);
    assert_eq!(code, 0, "without --count a timeout is the end: {err}");

    // `run` stays online until SIGTERM, then exits 0.
    let child = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(["client", "run", "--dir", s(&bob)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loopix");
    let mut guard = ChildGuard(Some(child));
    std::thread::sleep(Duration::from_millis(500));
    let pid = guard.0.as_ref().expect("set").id().to_string();
    let child = guard.0.as_mut().expect("set");
    assert!(child.try_wait().expect("wait").is_none(), "still online");
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < end, "run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = guard
        .0
        .take()
        .expect("set")
        .wait_with_output()
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
}
