//! One reader of a node's `/metrics`: a scrape over HTTP/1.0 on loopback,
//! parsed once into samples, asked for by the series names the engine
//! serves ([`loopix_engine::metrics::names`]) and labels as pairs. Tests,
//! the testnet, the load generator and the benchmarks all read metrics
//! through [`Metrics`], so there is one parser and one place where the
//! names are spelt.
//!
//! Invariant: a line that is not a sample (comments, blanks, anything that
//! does not parse) is skipped, never guessed at; a series that is absent
//! sums to zero and `value` says `None`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use loopix_engine::metrics::{names, DropReason};

/// One sample: a series name, its labels in the order served, a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (counters end in `_total`).
    pub name: String,
    /// `(label, value)` pairs, unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// GET `/metrics` from `addr` (connect within 2 s, read within 5 s) and
    /// parse it. `None` if the endpoint does not answer with a page.
    pub fn scrape(addr: SocketAddr) -> Option<Metrics> {
        scrape_text(addr).map(|t| Metrics::parse(&t))
    }

    /// Parse Prometheus text.
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Every sample, in the order served.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sum of every sample of `name` that carries all of `labels`
    /// (zero when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the first sample of `name` that carries all of
    /// `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).next().map(|s| s.value)
    }

    /// The samples of `name` summed by the value of label `key` (for
    /// example drops by `reason`, summed over shards).
    pub fn by_label(&self, name: &str, key: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.matching(name, &[]) {
            if let Some(v) = s.label(key) {
                *out.entry(v.to_string()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// Drops for `reason`, over every shard.
    pub fn drops(&self, reason: DropReason) -> f64 {
        self.sum(names::DROPPED, &[("reason", reason.label())])
    }

    /// Every drop reason with a non-zero count, over every shard, in the
    /// engine's order of reasons.
    pub fn nonzero_drops(&self) -> Vec<(&'static str, f64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.label(), self.drops(*r)))
            .filter(|(_, n)| *n > 0.0)
            .collect()
    }

    /// Datagrams received, over every shard.
    pub fn received(&self) -> f64 {
        self.sum(names::RECEIVED_DATAGRAMS, &[])
    }

    /// Packets forwarded, over every shard.
    pub fn forwarded(&self) -> f64 {
        self.sum(names::FORWARDED_PACKETS, &[])
    }

    /// The node's I/O backend, from `loopix_node_info`.
    pub fn io(&self) -> Option<&str> {
        self.matching(names::NODE_INFO, &[])
            .find_map(|s| s.label("io"))
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.matches(name, labels))
    }
}

/// GET `/metrics` from `addr`: the body, or `None`.
fn scrape_text(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(head.split(' ').nth(1) == Some("200"))
        .filter(|ok| *ok)?;
    Some(body.to_string())
}

/// `name{k="v",...} value` or `name value`; `None` for anything else.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_string(), value));
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP loopix_dropped Datagrams or packets dropped, by reason.\n\
        # TYPE loopix_dropped counter\n\
        loopix_dropped_total{node=\"n1\",shard=\"0\",reason=\"sphinx_replay\"} 3\n\
        loopix_dropped_total{node=\"n1\",shard=\"1\",reason=\"sphinx_replay\"} 4\n\
        loopix_dropped_total{node=\"n1\",shard=\"1\",reason=\"bad_mac\"} 1\n\
        loopix_received_datagrams_total{node=\"n1\",shard=\"0\"} 10\n\
        loopix_node_info{node=\"a \\\"quoted\\\" name\",io=\"uring\"} 1\n\
        loopix_processing_overhead_microseconds{node=\"n1\",quantile=\"0.99\"} 43.5\n\
        loopix_topology_serial 7\n\
        not a sample\n\
        # EOF\n";

    #[test]
    fn sums_and_values_by_labels() {
        let m = Metrics::parse(PAGE);
        assert_eq!(m.samples().len(), 7);
        assert_eq!(m.drops(DropReason::SphinxReplay), 7.0);
        assert_eq!(m.sum(names::DROPPED, &[("shard", "1")]), 5.0);
        assert_eq!(m.received(), 10.0);
        assert_eq!(m.forwarded(), 0.0);
        assert_eq!(
            m.value(names::PROCESSING_OVERHEAD_US, &[("quantile", "0.99")]),
            Some(43.5)
        );
        assert_eq!(
            m.value(names::PROCESSING_OVERHEAD_US, &[("quantile", "0.5")]),
            None
        );
        assert_eq!(m.value(names::TOPOLOGY_SERIAL, &[]), Some(7.0));
        assert_eq!(m.io(), Some("uring"));
        let node = m.samples()[4].label("node");
        assert_eq!(node, Some("a \"quoted\" name"));
        let by = m.by_label(names::DROPPED, "reason");
        assert_eq!(by.get("sphinx_replay"), Some(&7.0));
        assert_eq!(by.get("bad_mac"), Some(&1.0));
        let expected: Vec<(&str, f64)> = DropReason::ALL
            .iter()
            .filter_map(|r| match r.label() {
                "bad_mac" => Some(("bad_mac", 1.0)),
                "sphinx_replay" => Some(("sphinx_replay", 7.0)),
                _ => None,
            })
            .collect();
        assert_eq!(m.nonzero_drops(), expected);
    }

    #[test]
    fn reads_what_the_engine_renders() {
        use loopix_engine::metrics::{render_node, ShardMetrics};
        use std::sync::Arc;
        let shard = Arc::new(ShardMetrics::default());
        shard.count_drop(DropReason::LinkReplay);
        shard.count_drop(DropReason::LinkReplay);
        let text = render_node(&[("node", "n1")], &[shard], "portable", None, None);
        let m = Metrics::parse(&text);
        assert_eq!(m.drops(DropReason::LinkReplay), 2.0);
        assert_eq!(m.nonzero_drops(), vec![("link_replay", 2.0)]);
        assert_eq!(m.io(), Some("portable"));
        // Every counter the node serves is readable by its constant.
        for name in [
            names::RECEIVED_DATAGRAMS,
            names::FORWARDED_PACKETS,
            names::DROPPED,
        ] {
            assert!(m.samples().iter().any(|s| s.name == name), "{name}");
        }
    }
}
