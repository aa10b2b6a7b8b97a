//! The `loopix-loadgen` command: parse the scenario and flags, check
//! everything, run, print the table and write the report files.
//! Exit status: 0 done, 1 a failure while running, 2 bad input (nothing
//! was sent).

use std::process::ExitCode;

use loopix_loadgen::config::{parse_args, Scenario};

const USAGE: &str = "usage: loopix-loadgen [--scenario FILE] [--FIELD VALUE]...
  every field of the scenario file is also a flag, with - for _, e.g.
  --mode run|sweep --topology FILE --registrations DIR --clients N
  --lambda-p X --lambda-l X --lambda-d X --real-share X --duration-s S
  --metrics name=host:port,... --out DIR --no-progress
  see loadgen/README.md for every field and its range";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
