//! `loopix tune live`: the anonymity meter of a running network. Scrapes
//! each named node's `/metrics` several times over an interval and prints,
//! per node, the arrival rate λ, the µ it runs with, the pool Lemma 1
//! expects (`λ/µ`) against the measured mean occupancy, and the model's
//! entropy at that load (`loopix_testkit::pool_meter`). A node that does
//! not answer is an error naming it (exit 1); a bad flag exits 2.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Args;
use loopix_testkit::metrics::Metrics;
use loopix_testkit::pool_meter::{self, NodeLoad};

use crate::CliError;

/// `loopix tune live`'s options.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct LiveArgs {
    /// A node's metrics endpoint, NAME=HOST:PORT; repeat for every node.
    #[arg(long = "metrics", value_name = "NAME=HOST:PORT", required = true, value_parser = parse_target)]
    targets: Vec<(String, SocketAddr)>,
    /// Seconds between the first and the last scrape.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    interval_s: f64,
    /// Scrapes of every node over the interval (at least 2).
    #[arg(long, value_name = "N", default_value_t = 5)]
    samples: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Parse `NAME=HOST:PORT`.
fn parse_target(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=HOST:PORT"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has no NAME before '='"));
    }
    let addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))?;
    Ok((name.to_string(), addr))
}

/// One node's scrapes: the first, the last, when, and every pool reading.
struct Readings {
    first: (Instant, Metrics),
    last: (Instant, Metrics),
    pool: Vec<f64>,
}

fn scrape(name: &str, addr: SocketAddr) -> Result<(Instant, Metrics), CliError> {
    let at = Instant::now();
    Metrics::scrape(addr)
        .map(|m| (at, m))
        .ok_or_else(|| CliError::Failed(format!("node {name}: no /metrics answer at {addr}")))
}

/// Runs `loopix tune live`.
pub fn live(a: &LiveArgs) -> Result<(), CliError> {
    if !(a.interval_s > 0.0 && a.interval_s <= 86_400.0) {
        return Err(CliError::Usage(format!(
            "--interval-s: is {}; use more than 0, at most 86400",
            a.interval_s
        )));
    }
    if !(2..=10_000).contains(&a.samples) {
        return Err(CliError::Usage(format!(
            "--samples: is {}; use 2 to 10000",
            a.samples
        )));
    }
    let mut readings = Vec::with_capacity(a.targets.len());
    for (name, addr) in &a.targets {
        let first = scrape(name, *addr)?;
        let pool = vec![pool_meter::pool_occupancy(&first.1)];
        let last = (first.0, first.1.clone());
        readings.push(Readings { first, last, pool });
    }
    let step = Duration::from_secs_f64(a.interval_s / f64::from(a.samples - 1));
    for _ in 1..a.samples {
        std::thread::sleep(step);
        for ((name, addr), r) in a.targets.iter().zip(&mut readings) {
            r.last = scrape(name, *addr)?;
            r.pool.push(pool_meter::pool_occupancy(&r.last.1));
        }
    }
    let mut loads: Vec<NodeLoad> = Vec::with_capacity(readings.len());
    for ((name, _), r) in a.targets.iter().zip(&readings) {
        let elapsed_s = r.last.0.duration_since(r.first.0).as_secs_f64();
        loads.push(pool_meter::node_load(
            name, &r.first.1, &r.last.1, elapsed_s, &r.pool,
        )?);
    }
    if a.json {
        let json = serde_json::to_string_pretty(&loads)
            .map_err(|e| CliError::Failed(format!("json: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", pool_meter::render_loads(&loads));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: in a test a failed unwrap is the test failing, with the value printed
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_name_the_mistake() {
        let (n, a) = parse_target("m1=127.0.0.1:9100").unwrap();
        assert_eq!((n.as_str(), a.port()), ("m1", 9100));
        assert!(parse_target("127.0.0.1:9100")
            .unwrap_err()
            .contains("NAME=HOST:PORT"));
        assert!(parse_target("=127.0.0.1:1").unwrap_err().contains("NAME"));
        assert!(parse_target("m1=nowhere").is_err());
    }
}
