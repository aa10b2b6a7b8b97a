//! The anonymity meter of a live node: from two scrapes of its `/metrics`
//! (and pool gauge readings in between) the arrival rate λ, the delay
//! parameter µ the node runs with, the expected pool size of Lemma 1
//! (`λ/µ`) against the measured pool occupancy, and the entropy the model
//! gives at that load. `loopix tune live` and the testnet's summary both
//! compute through [`node_load`], so they agree.
//!
//! The entropy is the Poisson mixture of Theorem 1 over Lemma 1 (paper
//! section 4.1.3): by the memoryless property a departing message is each
//! of the `k` messages in the pool with equal probability (`log2 k` bits),
//! and in steady state the pool holds `k ~ Pois(λ/µ)`; we report
//! `E[log2 K | K >= 1]`, the mean entropy of a departure (a departure needs
//! a non-empty pool).
//!
//! Invariant: the computation is pure (no I/O, no clock); a node that
//! lacks a series the meter needs is an error naming the node and series.

use serde::Serialize;

use loopix_engine::metrics::names;
use loopix_tuning::anonymity::{poisson_pmf, pool_mean};

use crate::metrics::Metrics;

/// One node's load and the model's anonymity at that load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeLoad {
    /// The node's name.
    pub node: String,
    /// Datagrams received per second between the two scrapes (λ).
    pub lambda_per_s: f64,
    /// The delay parameter per second, 1 / `loopix_params_mean_delay_seconds`.
    pub mu_per_s: f64,
    /// Lemma 1: the expected pool size, `λ/µ` (0 with no arrivals).
    pub model_pool: f64,
    /// The mean of the pool gauge over the readings (all shards summed).
    pub measured_pool: f64,
    /// Pool gauge readings the mean is over.
    pub pool_readings: usize,
    /// `E[log2 K | K >= 1]`, `K ~ Pois(λ/µ)`, bits (0 with no arrivals).
    pub model_entropy_bits: f64,
}

/// Packets in the node's pools now, summed over shards, leaving out the
/// node's own loops waiting to leave (built ahead, they are not mixed with
/// anything yet): the pool of the paper's Lemma 1.
pub fn pool_occupancy(m: &Metrics) -> f64 {
    (m.sum(names::POOL_IN_USE, &[]) - m.sum(names::POOL_OWN_LOOPS, &[])).max(0.0)
}

/// The mean entropy in bits of a uniform choice among `K` messages, `K ~
/// Pois(mean)` conditioned on `K >= 1` (0 for a mean of 0). The sum runs
/// to 20 standard deviations past the mean, where the tail is negligible.
pub fn poisson_mixture_entropy_bits(mean: f64) -> f64 {
    if mean.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !mean.is_finite() {
        return 0.0;
    }
    let k_max = (mean + 20.0 * mean.sqrt() + 20.0).ceil() as u64;
    let (mut acc, mut mass) = (0.0, 0.0);
    for k in 1..=k_max {
        let p = poisson_pmf(mean, k).unwrap_or(0.0);
        acc += p * (k as f64).log2();
        mass += p;
    }
    if mass > 0.0 {
        acc / mass
    } else {
        0.0
    }
}

/// The per-node report from the `first` and `last` scrapes `elapsed_s`
/// apart and the pool readings taken over that time (which may include
/// the two scrapes' own).
pub fn node_load(
    node: &str,
    first: &Metrics,
    last: &Metrics,
    elapsed_s: f64,
    pool_readings: &[f64],
) -> Result<NodeLoad, String> {
    if elapsed_s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err(format!(
            "node {node}: the scrapes must be apart in time (elapsed {elapsed_s} s)"
        ));
    }
    let delay_s = last
        .value(names::PARAMS_MEAN_DELAY_S, &[])
        .filter(|d| *d > 0.0 && d.is_finite())
        .ok_or_else(|| {
            format!(
                "node {node}: no positive {} in its /metrics (is it older than this tool?)",
                names::PARAMS_MEAN_DELAY_S
            )
        })?;
    let mu_per_s = 1.0 / delay_s;
    // A counter that went down means the node restarted between scrapes.
    let arrivals = (last.received() - first.received()).max(0.0);
    let lambda_per_s = arrivals / elapsed_s;
    let model_pool = pool_mean(lambda_per_s, mu_per_s).unwrap_or(0.0);
    let measured_pool = if pool_readings.is_empty() {
        pool_occupancy(last)
    } else {
        pool_readings.iter().sum::<f64>() / pool_readings.len() as f64
    };
    Ok(NodeLoad {
        node: node.to_string(),
        lambda_per_s,
        mu_per_s,
        model_pool,
        measured_pool,
        pool_readings: pool_readings.len().max(1),
        model_entropy_bits: poisson_mixture_entropy_bits(model_pool),
    })
}

/// A table of `loads`, one line per node.
pub fn render_loads(loads: &[NodeLoad]) -> String {
    let mut out = format!(
        "{:<12} {:>12} {:>8} {:>18} {:>12} {:>13}\n",
        "node", "lambda_pps", "mu_ps", "model_pool=l/mu", "pool_mean", "entropy_bits"
    );
    for l in loads {
        out.push_str(&format!(
            "{:<12} {:>12.2} {:>8.3} {:>18.3} {:>12.3} {:>13.3}\n",
            l.node, l.lambda_per_s, l.mu_per_s, l.model_pool, l.measured_pool, l.model_entropy_bits
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: in a test a failed unwrap is the test failing, with the value printed
mod tests {
    use super::*;

    fn page(received: [u64; 2], pool: [u64; 2], delay_s: Option<f64>) -> Metrics {
        let mut t = String::new();
        for (shard, (r, p)) in received.iter().zip(pool).enumerate() {
            t.push_str(&format!(
                "loopix_received_datagrams_total{{node=\"m1\",shard=\"{shard}\"}} {r}\n\
                 loopix_pool_in_use_packets{{node=\"m1\",shard=\"{shard}\"}} {p}\n"
            ));
        }
        if let Some(d) = delay_s {
            t.push_str(&format!(
                "# TYPE loopix_params_mean_delay_seconds gauge\n\
                 loopix_params_mean_delay_seconds{{node=\"m1\"}} {d}\n"
            ));
        }
        Metrics::parse(&t)
    }

    #[test]
    fn rate_mu_and_lemma1_pool_from_two_scrapes() {
        let first = page([100, 50], [3, 2], Some(0.5));
        let last = page([300, 150], [4, 4], Some(0.5));
        // 300 arrivals in 10 s: λ = 30/s; µ = 2/s; λ/µ = 15.
        let l = node_load("m1", &first, &last, 10.0, &[5.0, 8.0, 14.0]).unwrap();
        assert!((l.lambda_per_s - 30.0).abs() < 1e-12, "{l:?}");
        assert!((l.mu_per_s - 2.0).abs() < 1e-12, "{l:?}");
        assert!((l.model_pool - 15.0).abs() < 1e-12, "{l:?}");
        assert!((l.measured_pool - 9.0).abs() < 1e-12, "{l:?}");
        assert_eq!(l.pool_readings, 3);
        // Between log2 of a pool a little below the mean and log2 of the mean.
        assert!(l.model_entropy_bits < 15f64.log2(), "{l:?}");
        assert!(l.model_entropy_bits > 12f64.log2(), "{l:?}");
        let table = render_loads(&[l]);
        assert!(table.contains("m1") && table.contains("30.00"), "{table}");
        // Without readings, the last scrape's pool is the measurement.
        let l = node_load("m1", &first, &last, 10.0, &[]).unwrap();
        assert!((l.measured_pool - 8.0).abs() < 1e-12, "{l:?}");
    }

    #[test]
    fn no_traffic_gives_an_empty_model_and_no_entropy() {
        let m = page([7, 7], [0, 0], Some(1.0));
        let l = node_load("m1", &m, &m, 1.0, &[0.0]).unwrap();
        assert_eq!(
            (l.lambda_per_s, l.model_pool, l.model_entropy_bits),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn a_node_without_the_params_gauge_is_named() {
        let m = page([1, 1], [0, 0], None);
        let e = node_load("m7", &m, &m, 1.0, &[]).unwrap_err();
        assert!(
            e.contains("m7") && e.contains(names::PARAMS_MEAN_DELAY_S),
            "{e}"
        );
        let m = page([1, 1], [0, 0], Some(1.0));
        assert!(node_load("m7", &m, &m, 0.0, &[])
            .unwrap_err()
            .contains("m7"));
    }

    #[test]
    fn mixture_entropy_known_values() {
        assert_eq!(poisson_mixture_entropy_bits(0.0), 0.0);
        // A tiny mean: the pool is almost surely one message, 0 bits.
        assert!(poisson_mixture_entropy_bits(1e-6) < 1e-5);
        // Grows with the load, and stays below log2 of the mean + 1.
        let mut last = -1.0;
        for mean in [0.5, 1.0, 2.0, 8.0, 64.0, 1000.0] {
            let h = poisson_mixture_entropy_bits(mean);
            assert!(h > last && h < (mean + 1.0).log2(), "{mean}: {h}");
            last = h;
        }
        assert!((poisson_mixture_entropy_bits(1000.0) - 1000f64.log2()).abs() < 0.01);
    }
}
