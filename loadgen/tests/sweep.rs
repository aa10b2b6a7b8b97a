//! A short sweep against the fake provider (tests/common): 40 clients,
//! per-client rates doubled over 3 steps of 1.5 s. The sweep finishes by
//! itself, `report.json` has one row per step with every field the issue
//! asks for, delivered never exceeds offered (total and real), real
//! messages and loops do come back, and the CSV and SVG files are written.
//! Also: bad input is refused with the field named before any load.

mod common;

use std::sync::Arc;

use clap::Parser;
use loopix_loadgen::config::{Args, Scenario};

/// The scenario the command line `args` gives, parsed as the binary does.
fn flags(args: &[String]) -> loopix_loadgen::config::ScenarioFile {
    Args::try_parse_from(std::iter::once("loopix-loadgen").chain(args.iter().map(String::as_str)))
        .expect("flags parse")
        .scenario_file()
        .expect("scenario")
}

const CLIENTS: u32 = 40;

fn scenario(out: &std::path::Path, extra: &str) -> Scenario {
    let args: Vec<String> = format!(
        "--mode sweep --registrations unused --topology unused --clients {CLIENTS} \
         --lambda-p 2 --lambda-l 1 --lambda-d 1 --real-share 0.5 --pull-ms 100 \
         --duration-s 1.5 --drain-s 1 --factor 2 --max-steps 3 --loss-bound 1 \
         --p99-bound-ms 100000 --no-progress --out {} {extra}",
        out.display()
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    Scenario::resolve(flags(&args)).expect("valid scenario")
}

#[test]
fn short_sweep_writes_one_row_per_step_and_delivered_never_exceeds_offered() {
    let net = Arc::new(common::Net::new(9));
    let (provider, regs) = common::provider(Arc::clone(&net), CLIENTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = scenario(dir.path(), "");
    let keep = std::env::var_os("LOADGEN_KEEP_OUT");
    let report = loopix_loadgen::execute_on(&s, common::target(&net, regs)).expect("sweep runs");
    print!("{}", loopix_loadgen::output::table(&report));
    for r in &report.steps {
        eprintln!("{:?}", r.counts);
    }
    let text = std::fs::read_to_string(dir.path().join("report.json")).expect("report.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let steps = json["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "one row per step");
    for (i, row) in steps.iter().enumerate() {
        for field in [
            "offered_pps_total",
            "offered_pps_real",
            "delivered_pps_total",
            "delivered_pps_real",
            "loss",
            "latency_p50_ms",
            "latency_p90_ms",
            "latency_p99_ms",
            "latency_p999_ms",
            "loop_rtt_p50_ms",
            "loop_rtt_p99_ms",
            "lateness_p99_ms",
        ] {
            assert!(row[field].is_number(), "step {i}: {field} missing: {row}");
        }
        assert!(row["nodes"].is_array(), "step {i}: nodes");
        let f = |k: &str| row[k].as_f64().expect("number");
        assert!(
            f("delivered_pps_total") <= f("offered_pps_total"),
            "step {i}"
        );
        assert!(f("delivered_pps_real") <= f("offered_pps_real"), "step {i}");
        assert!(f("offered_pps_total") > 0.0, "step {i}");
        assert_eq!(row["step"].as_u64(), Some(i as u64));
    }
    // The offered load doubles with the rates (Poisson noise aside).
    let off = |i: usize| steps[i]["offered_pps_total"].as_f64().expect("number");
    assert!(off(2) > 2.5 * off(0), "{} then {}", off(0), off(2));
    // Something comes back end to end through the fake provider.
    let last = &report.steps[2];
    assert!(
        last.real_received > 0 && last.loops_received > 0,
        "{last:?}"
    );
    // The fake provider loses nothing on loopback and the drain collects
    // what is in flight: loss stays near 0 (5 % allows a dropped datagram).
    for r in &report.steps {
        assert!(r.loss <= 0.05, "step {}: loss {}", r.step, r.loss);
    }
    assert_eq!(report.knee_step, Some(2));
    let csv = std::fs::read_to_string(dir.path().join("report.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 4, "header and 3 rows");
    for svg in ["throughput.svg", "latency.svg", "latency_cdf.svg"] {
        let t = std::fs::read_to_string(dir.path().join(svg)).expect(svg);
        assert!(t.starts_with("<svg") && t.contains("polyline"), "{svg}");
    }
    if let Some(to) = keep {
        // LOADGEN_KEEP_OUT=DIR keeps the report files to look at.
        for f in [
            "report.json",
            "report.csv",
            "throughput.svg",
            "latency.svg",
            "latency_cdf.svg",
        ] {
            let _ = std::fs::copy(dir.path().join(f), std::path::Path::new(&to).join(f));
        }
    }
    assert_eq!(
        provider.state().bad_client_frames,
        0,
        "every frame authenticated at the provider"
    );
}

#[test]
fn bad_input_is_refused_before_any_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Registrations directory missing: named.
    let s = scenario(dir.path(), "");
    let e = loopix_loadgen::check(&s).err().expect("refused");
    assert!(e.contains("registrations"), "{e}");
    // A topology that is not a signed document: named.
    let net = common::Net::new(3);
    let regs = dir.path().join("regs");
    std::fs::create_dir(&regs).expect("mkdir");
    let reg = common::registration(&net, "127.0.0.1:9".parse().expect("addr"), 0);
    std::fs::write(regs.join("0.toml"), reg.to_toml()).expect("write");
    let topo = dir.path().join("topology.toml");
    std::fs::write(&topo, "epoch_s = 3600\nlayers = 1\nnodes = []\n").expect("write");
    let s = Scenario {
        topology: Some(topo.clone()),
        registrations: Some(regs.clone()),
        ..s
    };
    let e = loopix_loadgen::check(&s).err().expect("refused");
    assert!(e.contains("topology"), "{e}");
    // An output directory that cannot be written.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let e = loopix_loadgen::config::check_out_dir(&file.join("sub")).expect_err("not a dir");
    assert!(e.contains("out ="), "{e}");
    // A metrics endpoint nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let e = loopix_loadgen::target::check_metrics(&[("mix1".into(), addr)]).expect_err("closed");
    assert!(e.contains("mix1") && e.contains(&addr.to_string()), "{e}");
    // Rates out of range, from the flags.
    let args: Vec<String> = "--registrations r --topology t --real-share 1.5"
        .split_whitespace()
        .map(String::from)
        .collect();
    let e = Scenario::resolve(flags(&args)).expect_err("range");
    assert!(e.contains("real_share") && e.contains("0 to 1"), "{e}");
}
