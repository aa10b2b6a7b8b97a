//! `loopix testnet` end to end (issue 5): a short run delivers every real
//! message it sent and writes the summary as JSON; loop round trips with
//! delays large against processing time follow the Poisson (Erlang plus
//! pull wait) model by a Kolmogorov-Smirnov test; Ctrl-C stops every node
//! and removes the directory; a node that dies fails the run, naming it.
//!
//! Each run is a real network of child processes on loopback; the tests
//! bound every wait and kill what they started if they fail.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_loopix");

/// One testnet at a time in this binary. Each lays out its network on ports
/// it found free and released (`LocalNet::create`), and its nodes bind them
/// a moment later: testnets laid out side by side can take each other's
/// ports in that moment ("Address already in use"). Running them in turn
/// also spares the latency test the others' load.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed holding it leaves it poisoned; the next still runs.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A testnet process, killed (with its nodes, which notice their parent's
/// stop flag only through signals) on drop.
struct Testnet {
    child: Option<Child>,
    nodes: Vec<u32>,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in &self.nodes {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

fn start(args: &[&str], tmpdir: &Path) -> Testnet {
    let child = Command::new(BIN)
        .arg("testnet")
        .args(args)
        .env("TMPDIR", tmpdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopix testnet");
    Testnet {
        child: Some(child),
        nodes: Vec::new(),
    }
}

impl Testnet {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Wait until the testnet has started `n` node processes.
    fn wait_nodes(&mut self, n: usize) {
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        let by = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let pids: Vec<u32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() >= n {
                self.nodes = pids;
                return;
            }
            assert!(Instant::now() < by, "only {} nodes started", pids.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the exit, at most `bound`.
    fn finish(&mut self, bound: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let by = Instant::now() + bound;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > by {
                let _ = child.kill();
                panic!("loopix testnet did not exit within {bound:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn run_json(args: &[&str], bound: Duration) -> Value {
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("summary.json");
    let mut all: Vec<&str> = args.to_vec();
    let json_arg = json.to_str().expect("utf-8").to_owned();
    all.extend(["--json", &json_arg, "--quiet"]);
    let mut t = start(&all, tmp.path());
    let out = t.finish(bound);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "testnet failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).expect("JSON summary written");
    serde_json::from_str(&text).expect("valid JSON")
}

fn num(v: &Value, path: &str) -> f64 {
    let mut x = v;
    for k in path.split('.') {
        x = &x[k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

#[test]
fn short_run_delivers_every_message_and_writes_the_summary() {
    let _one = one_at_a_time();
    let v = run_json(
        &[
            "--duration-s",
            "10",
            "--clients",
            "6",
            "--layers",
            "3",
            "--mixes-per-layer",
            "1",
            "--providers",
            "2",
            "--message-rate",
            "1",
        ],
        Duration::from_secs(60),
    );
    let sent = num(&v, "messages_sent");
    assert!(sent >= 10.0, "too few messages to mean anything: {sent}");
    assert_eq!(num(&v, "messages_delivered"), sent, "{v}");
    assert_eq!(num(&v, "messages_lost"), 0.0);
    assert_eq!(num(&v, "messages_duplicated"), 0.0);
    for field in [
        "message_latency.measured.p50",
        "message_latency.measured.p99",
        "message_latency.model.p50",
        "loop_latency.measured.p50",
        "loop_latency.model.p99",
        "loop_latency.ks_p",
        "elapsed_s",
        "loops_returned",
        "client_packets.drop",
        "client_packets.loop",
        "client_packets.real",
    ] {
        num(&v, field);
    }
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2 + 3, "{v}");
    for n in nodes {
        assert!(num(n, "pps") > 0.0, "{n}");
        assert!(n["name"].is_string() && n["role"].is_string());
        // No overload and no artificial loss on loopback: the only drops
        // allowed are packets still held when the nodes were stopped.
        let drops = n["drops"].as_object().expect("drops");
        for (reason, count) in drops {
            assert_eq!(reason, "shutting_down", "{} dropped {count}", n["name"]);
        }
        // Every mix carries the anonymity meter: λ > 0 and Lemma 1's pool.
        if n["role"] == "mix" {
            let pool = &n["pool"];
            let (lambda, mu) = (num(pool, "lambda_per_s"), num(pool, "mu_per_s"));
            assert!(lambda > 0.0 && mu > 0.0, "{n}");
            assert!(
                (num(pool, "model_pool") - lambda / mu).abs() < 1e-9 * (lambda / mu),
                "{n}"
            );
            num(pool, "measured_pool");
            num(pool, "model_entropy_bits");
        } else {
            assert!(n["pool"].is_null(), "{n}");
        }
    }
}

/// Issue 13: more layers than the default geometry's six hops hold. The
/// document carries a geometry chosen from the layer count, and every
/// real message and the loop stream get through four and five layers.
#[test]
fn four_and_five_layer_networks_deliver_every_message() {
    let _one = one_at_a_time();
    for layers in ["4", "5"] {
        let v = run_json(
            &[
                "--duration-s",
                "8",
                "--clients",
                "4",
                "--layers",
                layers,
                "--mixes-per-layer",
                "1",
                "--providers",
                "1",
                "--message-rate",
                "1.5",
            ],
            Duration::from_secs(60),
        );
        let sent = num(&v, "messages_sent");
        // About 24 expected (4 clients, 1.5/s, 4 s before the drain).
        assert!(sent >= 5.0, "{layers} layers: too few messages: {sent}");
        assert_eq!(num(&v, "messages_delivered"), sent, "{layers} layers: {v}");
        assert_eq!(num(&v, "messages_lost"), 0.0, "{layers} layers");
        assert!(num(&v, "loops_returned") > 10.0, "{layers} layers: {v}");
        assert_eq!(
            v["nodes"].as_array().expect("nodes").len(),
            1 + layers.parse::<usize>().expect("a number")
        );
    }
    // A layer count no geometry is chosen for is refused at start.
    let out = Command::new(BIN)
        .args(["testnet", "--layers", "11", "--quiet"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--layers must be 1 to 10"),
        "{out:?}"
    );
}

/// The "an idle network is not silent": with no clients at all,
/// every mix and provider sends its own loops (λM) through the network
/// and gets them back, and the summary says so per node.
#[test]
fn a_network_without_clients_is_not_silent() {
    let _one = one_at_a_time();
    let v = run_json(
        &[
            "--duration-s",
            "12",
            "--clients",
            "0",
            "--layers",
            "2",
            "--mixes-per-layer",
            "2",
            "--providers",
            "2",
            "--lambda-m",
            "5",
            "--mu-ms",
            "5",
        ],
        Duration::from_secs(60),
    );
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2 + 2 * 2, "{v}");
    for n in nodes {
        let name = &n["name"];
        // 5 loops a second for about 12 s: about 60; Poisson, so at least
        // 25 with overwhelming probability (P < 1e-7).
        let sent = num(n, "loops_sent");
        let back = num(n, "loops_returned");
        assert!(sent >= 25.0, "{name} sent only {sent} loops: {n}");
        // Round trips take tens of milliseconds; only the loops in flight
        // when the nodes stopped may be missing.
        assert!(
            back >= sent - 5.0,
            "{name}: {back} of {sent} loops came back: {n}"
        );
        assert!(num(n, "loops_ratio") >= 0.8, "{n}");
        assert_eq!(num(n, "loops_missed"), 0.0, "{n}");
        // Every node carries others' loops as well as its own.
        assert!(
            num(n, "received") > back,
            "{name} only saw its own loops: {n}"
        );
        assert!(num(n, "forwarded") > 0.0, "{n}");
        let drops = n["drops"].as_object().expect("drops");
        for (reason, count) in drops {
            assert_eq!(reason, "shutting_down", "{name} dropped {count}");
        }
    }
}

/// The paper's Figure 11 as a test: with per-hop delays large against
/// processing time (mean 250 ms, processing well under 10 ms end to end),
/// loop round trips follow Erlang(layers + 2, 250 ms) plus a uniform wait
/// for the next pull. Kolmogorov-Smirnov at alpha = 0.01 on at least 500
/// loops; the measured median must also sit within 5% of the model's.
#[test]
fn loop_latency_follows_the_poisson_model() {
    let _one = one_at_a_time();
    let v = run_json(
        &[
            "--duration-s",
            "24",
            "--clients",
            "8",
            "--mixes-per-layer",
            "1",
            "--providers",
            "1",
            "--mu-ms",
            "250",
            "--pull-ms",
            "50",
            "--lambda-l",
            "6",
            "--lambda-p",
            "1",
            "--lambda-d",
            "1",
            "--message-rate",
            "0",
        ],
        Duration::from_secs(90),
    );
    let n = num(&v, "loop_latency.samples");
    assert!(n >= 500.0, "only {n} loops");
    let p = num(&v, "loop_latency.ks_p");
    let d = num(&v, "loop_latency.ks_d");
    assert!(p > 0.01, "KS rejects the model: D = {d}, p = {p}, n = {n}");
    let (m, model) = (
        num(&v, "loop_latency.measured.p50"),
        num(&v, "loop_latency.model.p50"),
    );
    assert!(
        (m - model).abs() < 0.05 * model,
        "median {m} s against the model's {model} s"
    );
}

#[test]
fn ctrl_c_stops_every_node_and_cleans_up() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut t = start(
        &[
            "--duration-s",
            "60",
            "--clients",
            "4",
            "--mixes-per-layer",
            "1",
        ],
        tmp.path(),
    );
    t.wait_nodes(1 + 3);
    let nodes = t.nodes.clone();
    std::thread::sleep(Duration::from_secs(3));
    Command::new("kill")
        .args(["-INT", &t.pid().to_string()])
        .status()
        .expect("kill");
    let out = t.finish(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    for pid in nodes {
        assert!(!alive(pid), "node {pid} still running");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_node_that_dies_fails_the_run_naming_it() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut t = start(
        &[
            "--duration-s",
            "60",
            "--clients",
            "4",
            "--mixes-per-layer",
            "1",
        ],
        tmp.path(),
    );
    t.wait_nodes(1 + 3);
    std::thread::sleep(Duration::from_secs(3));
    // The last node started: the layer-3 mix.
    let victim = *t.nodes.last().expect("a node");
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("kill");
    let out = t.finish(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mix-l3") && stderr.contains("signal: 9"),
        "{stderr}"
    );
    for pid in &t.nodes {
        assert!(!alive(*pid), "node {pid} still running");
    }
}

/// The (n−1) demonstration as a test. A proxy in front of one mix
/// of layer 2 blocks 90% of its input while the network carries only its
/// nodes' loops (20 per second each, a 5 s detector window, r = 0.3):
///
/// - that mix's own loops come back at about 10%, so it raises the alarm,
///   within the bound the detector's design gives: the loop time-out
///   (4 × the 99.9th percentile of Gamma(3, 5 ms) + 1 s ≈ 1.2 s) plus one
///   window (5 s), plus a second for the control plane's tick and this
///   test's half-second reading of the metrics: 8 s from the run's start;
/// - every other node loses at most the loops that cross that mix (half of
///   them, so it keeps about 55%, above r): no alarm;
/// - with no proxy, a run of the same length raises no alarm anywhere.
#[test]
fn an_n_minus_1_attack_raises_the_alarm_at_that_mix_only() {
    let _one = one_at_a_time();
    let common = [
        "--duration-s",
        "20",
        "--clients",
        "0",
        "--layers",
        "3",
        "--mixes-per-layer",
        "2",
        "--providers",
        "2",
        "--lambda-m",
        "20",
        "--mu-ms",
        "5",
        "--detector-window-s",
        "5",
    ];
    // Providers are nodes 0 and 1, layer 1 holds 2 and 3, layer 2 4 and 5.
    let target = "mix-l2-4";
    let mut attacked: Vec<&str> = common.to_vec();
    let attack = format!("n-1:{target}:0.9");
    attacked.extend(["--attack", &attack]);
    let v = run_json(&attacked, Duration::from_secs(90));
    let a = &v["attack"];
    assert_eq!(a["attack"]["node"], target, "{v}");
    let blocked = num(a, "blocked");
    let passed = num(a, "forwarded");
    assert!(
        blocked > 5.0 * passed && passed > 0.0,
        "the proxy blocked {blocked} and passed {passed}: {v}"
    );
    for n in v["nodes"].as_array().expect("nodes") {
        let name = n["name"].as_str().expect("name");
        let alarms = num(n, "alarms");
        if name == target {
            assert!(alarms >= 1.0, "{name} raised no alarm: {n}");
            let at = num(n, "first_alarm_s");
            assert!(at <= 8.0, "{name} raised the alarm only at {at} s: {n}");
            assert!(num(n, "loops_lost") > num(n, "loops_returned"), "{n}");
        } else {
            assert_eq!(alarms, 0.0, "{name} raised an alarm: {n}");
            assert!(num(n, "loops_returned") > 0.0, "{n}");
        }
    }
    let v = run_json(&common, Duration::from_secs(90));
    assert!(v["attack"].is_null(), "{v}");
    for n in v["nodes"].as_array().expect("nodes") {
        assert_eq!(num(n, "alarms"), 0.0, "alarm without an attack: {n}");
        let sent = num(n, "loops_sent");
        assert!(sent > 200.0, "{n}");
        // Loopback loses nothing; allow a stall of the loaded test machine
        // to push a loop or two past its time-out.
        assert!(num(n, "loops_lost") <= sent / 100.0, "{n}");
    }
}
