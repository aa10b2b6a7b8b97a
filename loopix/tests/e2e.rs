//! Issue 4's end-to-end test over real processes on loopback: two
//! providers and three layers of mixes run as `loopix provider` and
//! `loopix mix`; client A (`loopix client send --wait-reply`, naming B by
//! its address id) sends a message of several packets to client B through
//! its provider, the three layers and B's provider; B is started only
//! after every fragment has left A, receives the message whole (`loopix
//! client recv --reply`), and answers through A's SURB; A prints the reply.
//!
//! Everything is started through the `loopix` binary the way an operator
//! and users would; every wait is bounded and every process is killed if
//! the test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loopix_directory::topology::Role;
use loopix_testkit::localnet::{LocalNet, LocalNetSpec, NetworkParams};
use loopix_testkit::supervise::Supervisor;

const BIN: &str = env!("CARGO_BIN_EXE_loopix");

fn loopix(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run loopix");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Online {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Online {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Online {
    fn start(args: &[&str], log: &Path) -> Online {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start client");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Online {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stdout line starting with `prefix`, within `bound`.
    fn line(&mut self, prefix: &str, bound: Duration, log: &Path) -> String {
        let by = Instant::now() + bound;
        loop {
            let left = by.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => self.seen.push(l),
                Err(_) if Instant::now() < by => {}
                Err(_) => panic!(
                    "no {prefix:?} line within {bound:?}; stdout so far {:?}; stderr:\n{}",
                    self.seen,
                    std::fs::read_to_string(log).unwrap_or_default()
                ),
            }
        }
    }

    fn exit_code(&mut self, bound: Duration) -> Option<i32> {
        let by = Instant::now() + bound;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code();
            }
            if Instant::now() > by {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A network of two providers and three layers of one mix under `root`,
/// every node started and serving its metrics.
fn start_network(root: &Path) -> (LocalNet, Supervisor) {
    let spec = LocalNetSpec {
        providers: 2,
        layers: 3,
        mixes_per_layer: 1,
        // The clients' rates are the network's, signed into the document.
        params: NetworkParams {
            lambda_p: 20.0,
            lambda_l: 2.0,
            lambda_d: 2.0,
            mean_delay_ms: 5.0,
            pull_period_ms: 100,
            ..LocalNetSpec::default().params
        },
        ..LocalNetSpec::default()
    };
    let net = LocalNet::create(&root.join("net"), &spec).expect("lay out");
    let mut nodes = Supervisor::new();
    for n in &net.nodes {
        let cmd = match n.role {
            Role::Provider => "provider",
            Role::Mix => "mix",
        };
        let config = n.config.as_ref().expect("config");
        nodes
            .spawn(
                &n.name(),
                Path::new(BIN),
                &[cmd, "--config", s(config)],
                &n.key_dir.with_extension("log"),
            )
            .expect("start node");
    }
    // Every node serves metrics once it runs.
    let by = Instant::now() + Duration::from_secs(20);
    for n in &net.nodes {
        while loopix_testkit::metrics::Metrics::scrape(n.metrics).is_none() {
            if let Some((name, st, tail)) = nodes.check_exited() {
                panic!("{name} exited {st}: {tail}");
            }
            assert!(Instant::now() < by, "{} did not start", n.name());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (net, nodes)
}

/// Register client "a" at the first provider and "b" at the second, as an
/// operator would, and set both up from what registration printed; returns
/// their directories.
fn register_a_and_b(root: &Path, net: &LocalNet) -> Vec<PathBuf> {
    let providers: Vec<_> = net
        .nodes
        .iter()
        .filter(|n| n.role == Role::Provider)
        .collect();
    let mut dirs = Vec::new();
    for (who, p) in ["a", "b"].iter().zip(&providers) {
        let reg = root.join(format!("{who}-registration.toml"));
        let config = p.config.as_ref().expect("config");
        let (code, _, err) = loopix(&[
            "provider",
            "register",
            "--config",
            s(config),
            "--name",
            who,
            "--out",
            s(&reg),
        ]);
        assert_eq!(code, 0, "register {who}: {err}");
        let dir = root.join(who);
        let (code, _, err) = loopix(&[
            "client",
            "init",
            "--dir",
            s(&dir),
            "--registration",
            s(&reg),
            "--topology",
            s(&net.topology_path),
        ]);
        assert_eq!(code, 0, "init {who}: {err}");
        dirs.push(dir);
    }
    dirs
}

#[test]
fn multi_packet_message_to_a_client_started_later_and_a_surb_reply() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (net, mut nodes) = start_network(root);
    let dirs = register_a_and_b(root, &net);
    // The providers pick registrations up within about a second.
    std::thread::sleep(Duration::from_millis(1500));

    // Three packets' worth of text, each line numbered so that a missing,
    // reordered or repeated fragment shows.
    let text: String = (0..60)
        .map(|i| format!("line {i:02} of the message from a to b;"))
        .collect();
    assert!(text.len() > 2 * 1000, "needs several packets");
    let a_log = root.join("a.log");
    // A names B by its one-line address id, as `loopix client address`
    // prints it (the address file works the same way).
    let (code, out, err) = loopix(&["client", "address", "--dir", s(&dirs[1])]);
    assert_eq!(code, 0, "{err}");
    let b_id = out
        .lines()
        .find_map(|l| l.strip_prefix("# as an id: "))
        .expect("address id line")
        .to_owned();
    let mut a = Online::start(
        &[
            "client",
            "send",
            "--dir",
            s(&dirs[0]),
            "--to",
            &b_id,
            "--wait-reply",
            "60",
            &text,
        ],
        &a_log,
    );
    let sent = a.line("sent ", Duration::from_secs(30), &a_log);
    assert!(sent.contains(&format!("{} bytes", text.len())), "{sent}");
    let fragments: u32 = sent
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("fragment count");
    assert!(fragments >= 3, "{sent}");

    // B comes online only now: its provider kept the packets.
    let b_log = root.join("b.log");
    let mut b = Online::start(
        &[
            "client",
            "recv",
            "--dir",
            s(&dirs[1]),
            "--count",
            "1",
            "--timeout",
            "60",
            "--reply",
            "pong from b",
        ],
        &b_log,
    );
    let got = b.line("message ", Duration::from_secs(60), &b_log);
    assert_eq!(got, format!("message {} bytes: {text}", text.len()));
    assert_eq!(b.exit_code(Duration::from_secs(60)), Some(0));

    let reply = a.line("reply ", Duration::from_secs(60), &a_log);
    assert_eq!(reply, "reply 11 bytes: pong from b");
    assert_eq!(a.exit_code(Duration::from_secs(10)), Some(0));

    if let Some((name, st, tail)) = nodes.check_exited() {
        panic!("{name} exited {st} during the test: {tail}");
    }
    for (name, st) in nodes.stop_all(Duration::from_secs(10)) {
        assert!(st.is_some_and(|s| s.success()), "{name}: {st:?}");
    }
}

/// Issue 14: `recv` twice in a row never shows a message twice. The first
/// session acknowledges what it showed before it leaves (at the pull
/// schedule), and the client's journal of shown ids catches a message the
/// provider offers again anyway.
#[test]
fn recv_twice_in_a_row_never_shows_a_message_twice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (net, mut nodes) = start_network(root);
    let dirs = register_a_and_b(root, &net);
    std::thread::sleep(Duration::from_millis(1500));
    let to = dirs[1].join("address.toml");
    const N: usize = 12;
    for i in 0..N {
        let (code, _, err) = loopix(&[
            "client",
            "send",
            "--dir",
            s(&dirs[0]),
            "--to",
            s(&to),
            &format!("message number {i:02}"),
        ]);
        assert_eq!(code, 0, "send {i}: {err}");
    }
    let mut shown: Vec<String> = Vec::new();
    // The first session stops at half of them; the second takes the rest
    // and then waits a while for anything offered again.
    for (count, timeout) in [(Some(N / 2), "60"), (None, "4")] {
        let n = count.map(|n| n.to_string());
        let mut args = vec!["client", "recv", "--dir", s(&dirs[1]), "--timeout", timeout];
        if let Some(n) = &n {
            args.extend(["--count", n]);
        }
        let (code, out, err) = loopix(&args);
        assert_eq!(code, 0, "recv: {err}");
        shown.extend(
            out.lines()
                .filter(|l| l.starts_with("message "))
                .map(String::from),
        );
    }
    let mut unique = shown.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        shown.len(),
        "a message shown twice: {shown:?}"
    );
    assert_eq!(shown.len(), N, "every message shown once: {shown:?}");
    let journal = std::fs::read_to_string(dirs[1].join("seen.ids")).expect("journal");
    assert_eq!(journal.lines().count(), N);

    if let Some((name, st, tail)) = nodes.check_exited() {
        panic!("{name} exited {st} during the test: {tail}");
    }
    for (name, st) in nodes.stop_all(Duration::from_secs(10)) {
        assert!(st.is_some_and(|s| s.success()), "{name}: {st:?}");
    }
}
