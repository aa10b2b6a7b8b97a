//! The `loopix-loadgen` command: parse the scenario and flags, check
//! everything, run, print the table and write the report files.
//! Exit status: 0 done, 1 a failure while running, 2 bad input (nothing
//! was sent).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use loopix_engine::config::MixConfig;
use loopix_engine::node;
use loopix_loadgen::config::{Args, NodeCommand, NodeRole, Scenario};

/// `loopix-loadgen node mix|provider --config FILE`: run a node, as
/// `loopix mix|provider` does. Not for operators: it lets this crate's
/// tests start a `loopix testnet` (whose nodes are child processes of a
/// binary that embeds the node) without the `loopix` binary, which only
/// the engine's own tests can name.
fn node(role: NodeRole, config: &Path) -> ExitCode {
    let result = MixConfig::load(config)
        .map_err(|e| e.to_string())
        .and_then(|c| match role {
            NodeRole::Mix => node::run_mix(&c),
            NodeRole::Provider => node::run_provider(&c),
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
    // Usage errors exit 2 and `--help`/`--version` 0, from clap.
    let args = Args::parse();
    if let Some(NodeCommand::Node { role, config }) = &args.node {
        return node(*role, config);
    }
    let scenario = match args.scenario_file().and_then(Scenario::resolve) {
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
