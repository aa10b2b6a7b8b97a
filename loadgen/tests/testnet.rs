//! Issue 6's sweep test against a real network: a small `loopix testnet`
//! (one provider, two layers of one mix, every node a child process) runs
//! with no clients of its own; the load generator registers its clients
//! there through `--testnet DIR` and sweeps the per-client rate over three
//! steps. The report has one row per step with every field, delivered
//! never exceeds offered, the nodes' rates come from their `/metrics`, and
//! nothing is lost at these rates on loopback.
//!
//! The testnet's nodes run as `loopix-loadgen node ...` (the node embedded
//! in this crate's binary): cargo names only a package's own binaries to
//! its tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use loopix_loadgen::config::{Args, Scenario};
use loopix_testkit::testnet::{self, Manifest, TestnetOptions};
use serde_json::Value;

/// The scenario the command line `args` gives, parsed as the binary does.
fn flags(args: &[String]) -> loopix_loadgen::config::ScenarioFile {
    Args::try_parse_from(std::iter::once("loopix-loadgen").chain(args.iter().map(String::as_str)))
        .expect("flags parse")
        .scenario_file()
        .expect("scenario")
}

/// A testnet in a thread, stopped (every node with it) on drop.
struct Net {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<testnet::Summary, String>>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_testnet(dir: PathBuf) -> Net {
    let opts = TestnetOptions {
        providers: 1,
        layers: 2,
        mixes_per_layer: 1,
        clients: 0,
        // The scenarios run at rates of their own.
        allow_rate_overrides: true,
        duration_s: 300.0,
        keep: Some(dir.clone()),
        progress: false,
        node_program: Some((
            PathBuf::from(env!("CARGO_BIN_EXE_loopix-loadgen")),
            vec!["node".to_string()],
        )),
        ..TestnetOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || testnet::run(&opts, flag));
    let net = Net {
        stop,
        thread: Some(thread),
    };
    // Up when the manifest is written and every node answers.
    let by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = Manifest::read(&dir) {
            if m.nodes
                .iter()
                .all(|n| loopix_testkit::metrics::Metrics::scrape(n.metrics).is_some())
            {
                return net;
            }
        }
        assert!(Instant::now() < by, "the testnet did not come up");
        assert!(
            !net.thread.as_ref().expect("running").is_finished(),
            "the testnet ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

#[test]
fn short_sweep_against_a_testnet() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("net");
    let net = start_testnet(dir.clone());
    let out = tmp.path().join("out");
    let args: Vec<String> = format!(
        "--mode sweep --testnet {} --clients 40 --lambda-p 1 --lambda-l 1 --lambda-d 1 \
         --real-share 0.5 --mean-delay-ms 2 --pull-ms 100 --duration-s 3 --drain-s 2 \
         --factor 2 --max-steps 3 --loss-bound 0.5 --p99-bound-ms 100000 --no-progress --out {}",
        dir.display(),
        out.display()
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    let scenario = Scenario::resolve(flags(&args)).expect("valid");
    let target = loopix_loadgen::check(&scenario).expect("the testnet is a valid target");
    assert_eq!(target.registrations.len(), 40);
    let report = loopix_loadgen::execute_on(&scenario, target).expect("sweep runs");
    print!("{}", loopix_loadgen::output::table(&report));

    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{v}");
    let csv = std::fs::read_to_string(out.join("report.csv")).expect("report.csv");
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}");
    for s in steps {
        for key in [
            "offered_pps_total",
            "offered_pps_real",
            "delivered_pps_total",
            "delivered_pps_real",
            "loss",
            "latency_p50_ms",
            "latency_p99_ms",
            "loop_rtt_p50_ms",
            "lateness_p99_ms",
            "paper_ratio",
        ] {
            num(s, key);
        }
        assert!(
            num(s, "delivered_pps_total") <= num(s, "offered_pps_total") + 1e-9,
            "{s}"
        );
        assert!(
            num(s, "delivered_pps_real") <= num(s, "offered_pps_real") + 1e-9,
            "{s}"
        );
        assert_eq!(num(s, "loss"), 0.0, "loss on loopback at a light load: {s}");
        let nodes = s["nodes"].as_array().expect("per-node figures");
        assert_eq!(nodes.len(), 1 + 2, "{s}");
        for n in nodes {
            assert!(num(n, "pps") > 0.0, "{n}");
            assert_eq!(num(n, "drops_per_s"), 0.0, "{n}");
        }
    }
    // Each step offered more than the one before (the sweep raises the rate).
    let offered: Vec<f64> = steps.iter().map(|s| num(s, "offered_pps_total")).collect();
    assert!(offered.windows(2).all(|w| w[1] > w[0] * 1.5), "{offered:?}");
    for f in ["throughput.svg", "latency.svg", "latency_cdf.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    drop(net);
}
