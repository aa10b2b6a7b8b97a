//! The `loopix-loadgen` command: parse the scenario and flags, check
//! everything, run, print the table and write the report files.
//! Exit status: 0 done, 1 a failure while running, 2 bad input (nothing
//! was sent).

use std::process::ExitCode;

use loopix_engine::config::MixConfig;
use loopix_engine::node;
use loopix_loadgen::config::{parse_args, Scenario};

const USAGE: &str = "usage: loopix-loadgen [--scenario FILE] [--FIELD VALUE]...
  every field of the scenario file is also a flag, with - for _, e.g.
  --mode run|sweep --topology FILE --registrations DIR --clients N
  --lambda-p X --lambda-l X --lambda-d X --real-share X --duration-s S
  --metrics name=host:port,... --out DIR --no-progress
  --testnet DIR (a running `loopix testnet --clients 0 --keep DIR`)
  see loadgen/README.md for every field and its range";

/// `loopix-loadgen node mix|provider --config FILE`: run a node, as
/// `loopix mix|provider` does. Not for operators: it lets this crate's
/// tests start a `loopix testnet` (whose nodes are child processes of a
/// binary that embeds the node) without the `loopix` binary, which only
/// the engine's own tests can name.
fn node(args: &[String]) -> ExitCode {
    let (Some(role), Some("--config"), Some(path), None) = (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
        args.get(2),
        args.get(3),
    ) else {
        eprintln!("usage: loopix-loadgen node mix|provider --config FILE");
        return ExitCode::from(2);
    };
    let result = MixConfig::load(std::path::Path::new(path))
        .map_err(|e| e.to_string())
        .and_then(|c| match role {
            "mix" => node::run_mix(&c),
            "provider" => node::run_provider(&c),
            other => Err(format!("unknown role {other:?}")),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopix-loadgen node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("node") {
        return node(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") || args.is_empty() {
        println!("{USAGE}");
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let scenario = match parse_args(&args).and_then(Scenario::resolve) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loopix-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let target = match loopix_loadgen::check(&scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loopix-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    match loopix_loadgen::execute_on(&scenario, target) {
        Ok(report) => {
            print!("{}", loopix_loadgen::output::table(&report));
            println!("report written to {}", scenario.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loopix-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
