//! What a run leaves: a table on the terminal, `report.json`, `report.csv`
//! (one row per step) and three SVG plots, hand-written (polylines and
//! text; no plotting dependency): delivered against offered throughput,
//! latency quantiles against offered load, and the last step's latency CDF
//! against the Erlang-plus-pull model of `loopix_client::model`.

use std::fmt::Write as _;
use std::path::Path;

use crate::run::{Report, StepResult, PAPER_NODE_PPS};

/// The terminal table.
pub fn table(report: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>4} {:>7} {:>9} {:>8} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  nodes (pps/drops per s)",
        "step", "clients", "off.tot", "off.real", "del.tot", "del.real", "loss",
        "p50ms", "p90ms", "p99ms", "p999ms", "loop50", "loop99", "late99"
    );
    for r in &report.steps {
        let nodes: Vec<String> = r
            .nodes
            .iter()
            .map(|n| format!("{}={:.0}/{:.1}", n.name, n.pps, n.drops_per_s))
            .collect();
        let _ = writeln!(
            t,
            "{:>4} {:>7} {:>9.1} {:>8.1} {:>9.1} {:>8.1} {:>7.4} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.2}{}  {}",
            r.step,
            r.clients,
            r.offered_pps_total,
            r.offered_pps_real,
            r.delivered_pps_total,
            r.delivered_pps_real,
            r.loss,
            r.latency_p50_ms,
            r.latency_p90_ms,
            r.latency_p99_ms,
            r.latency_p999_ms,
            r.loop_rtt_p50_ms,
            r.loop_rtt_p99_ms,
            r.lateness_p99_ms,
            if r.within_bounds { " " } else { "!" },
            nodes.join(" ")
        );
    }
    match (report.knee_step, report.knee_offered_pps) {
        (Some(k), Some(p)) => {
            let _ = writeln!(t, "knee: step {k}, {p:.1} packets/s offered in total");
        }
        _ => {
            let _ = writeln!(t, "knee: no step was within the bounds");
        }
    }
    if let Some(why) = &report.stopped {
        let _ = writeln!(t, "sweep ended early: {why}");
    }
    match report.paper_ratio {
        Some(r) => {
            let _ = writeln!(
                t,
                "busiest node: {:.1} packets/s = {r:.2} x the paper's {PAPER_NODE_PPS} packets/s per node",
                r * PAPER_NODE_PPS
            );
        }
        None => {
            let _ = writeln!(
                t,
                "per-node throughput unknown (no metrics endpoints); the paper's figure is {PAPER_NODE_PPS} packets/s per node"
            );
        }
    }
    t
}

/// CSV columns, in order.
const CSV_COLUMNS: &str = "step,clients,lambda_p,lambda_l,lambda_d,duration_s,offered_pps_total,offered_pps_real,delivered_pps_total,delivered_pps_real,loss,loss_real,latency_p50_ms,latency_p90_ms,latency_p99_ms,latency_p999_ms,loop_rtt_p50_ms,loop_rtt_p99_ms,lateness_p99_ms,lateness_max_ms,packets_sent,real_sent,real_received,loops_sent,loops_received,pulls_sent,real_refused,frames_dropped,max_node_pps,paper_ratio,within_bounds";

/// `report.csv`: a header and one row per step.
pub fn csv(report: &Report) -> String {
    let mut t = String::from(CSV_COLUMNS);
    t.push('\n');
    for r in &report.steps {
        let max_node = r.nodes.iter().map(|n| n.pps).fold(f64::NAN, f64::max);
        let _ = writeln!(
            t,
            "{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.6},{:.6},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{}",
            r.step,
            r.clients,
            r.lambda_p,
            r.lambda_l,
            r.lambda_d,
            r.duration_s,
            r.offered_pps_total,
            r.offered_pps_real,
            r.delivered_pps_total,
            r.delivered_pps_real,
            r.loss,
            r.loss_real,
            r.latency_p50_ms,
            r.latency_p90_ms,
            r.latency_p99_ms,
            r.latency_p999_ms,
            r.loop_rtt_p50_ms,
            r.loop_rtt_p99_ms,
            r.lateness_p99_ms,
            r.lateness_max_ms,
            r.packets_sent,
            r.real_sent,
            r.real_received,
            r.loops_sent,
            r.loops_received,
            r.pulls_sent,
            r.real_refused,
            r.frames_dropped,
            if max_node.is_nan() { String::new() } else { format!("{max_node:.3}") },
            r.paper_ratio.map(|x| format!("{x:.4}")).unwrap_or_default(),
            r.within_bounds
        );
    }
    t
}

/// One named line of a plot.
pub struct Series {
    /// Legend.
    pub name: String,
    /// SVG colour.
    pub color: &'static str,
    /// Points.
    pub points: Vec<(f64, f64)>,
    /// Dashed.
    pub dashed: bool,
}

fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// A line plot as an SVG document, axes from 0 to a round maximum.
pub fn svg_plot(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (640.0, 420.0, 70.0, 20.0, 40.0, 50.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let xmax = nice_max(all.clone().map(|p| p.0).fold(0.0, f64::max));
    let ymax = nice_max(all.map(|p| p.1).fold(0.0, f64::max));
    let px = |x: f64| l + (x / xmax) * (w - l - r);
    let py = |y: f64| h - b - (y / ymax) * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (x, y) = (px(f * xmax), py(f * ymax));
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            t,
            h - b,
            h - b + 16.0,
            fmt_tick(f * xmax)
        );
        let _ = writeln!(
            s,
            "<line x1=\"{l:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - r,
            l - 6.0,
            y + 4.0,
            fmt_tick(f * ymax)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        h - 12.0,
        esc(xlabel)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        esc(ylabel)
    );
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        if se.points.len() <= 30 {
            for p in &pts {
                if let Some((x, y)) = p.split_once(',') {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                        se.color
                    );
                }
            }
        }
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            l + 10.0,
            l + 30.0,
            se.color,
            l + 36.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn points(steps: &[StepResult], y: impl Fn(&StepResult) -> f64) -> Vec<(f64, f64)> {
    steps.iter().map(|r| (r.offered_pps_total, y(r))).collect()
}

/// Write `report.json`, `report.csv` and the three SVG plots into `dir`.
pub fn write_all(
    dir: &Path,
    report: &Report,
    model: &loopix_tuning::model::LatencyModel,
) -> Result<(), String> {
    let w = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: cannot write: {e}", p.display()))
    };
    let json = serde_json::to_string_pretty(report).map_err(|e| format!("report.json: {e}"))?;
    w("report.json", &json)?;
    w("report.csv", &csv(report))?;
    let steps = &report.steps;
    w("throughput.svg", &throughput_svg(steps))?;
    w("latency.svg", &latency_svg(steps))?;
    w("latency_cdf.svg", &latency_cdf_svg(steps, model))?;
    Ok(())
}

/// Delivered against offered throughput, with the diagonal.
fn throughput_svg(steps: &[StepResult]) -> String {
    let diag = steps
        .iter()
        .map(|r| r.offered_pps_total)
        .fold(0.0, f64::max);
    svg_plot(
        "Delivered against offered throughput",
        "offered packets/s (all clients)",
        "delivered packets/s",
        &[
            Series {
                name: "delivered (total)".into(),
                color: "#1f77b4",
                points: points(steps, |r| r.delivered_pps_total),
                dashed: false,
            },
            Series {
                name: "delivered = offered".into(),
                color: "#999",
                points: vec![(0.0, 0.0), (diag, diag)],
                dashed: true,
            },
        ],
    )
}

/// Latency quantiles against offered load.
fn latency_svg(steps: &[StepResult]) -> String {
    type Quantile = (&'static str, &'static str, fn(&StepResult) -> f64);
    let quantiles: [Quantile; 4] = [
        ("p50", "#2ca02c", |r| r.latency_p50_ms),
        ("p90", "#ff7f0e", |r| r.latency_p90_ms),
        ("p99", "#d62728", |r| r.latency_p99_ms),
        ("p99.9", "#9467bd", |r| r.latency_p999_ms),
    ];
    let series: Vec<Series> = quantiles
        .iter()
        .map(|&(name, color, y)| Series {
            name: name.into(),
            color,
            points: points(steps, y),
            dashed: false,
        })
        .collect();
    svg_plot(
        "End-to-end latency against offered load",
        "offered packets/s (all clients)",
        "latency (ms)",
        &series,
    )
}

/// The last step's latency CDF against the model's.
fn latency_cdf_svg(steps: &[StepResult], model: &loopix_tuning::model::LatencyModel) -> String {
    let last = steps
        .iter()
        .rev()
        .find(|r| !r.latency_cdf.is_empty())
        .map(|r| r.latency_cdf.clone())
        .unwrap_or_default();
    let xmax = last
        .iter()
        .map(|p| p.0)
        .fold(model.quantile(0.999), f64::max);
    let model_pts = (0..=200)
        .map(|i| {
            let x = xmax * f64::from(i) / 200.0;
            (x, model.cdf(x))
        })
        .collect();
    svg_plot(
        &format!(
            "Latency CDF (last step) against the model: Erlang({}, {} ms) + pull wait",
            model.hops, model.mean_delay
        ),
        "latency (ms)",
        "fraction of messages",
        &[
            Series {
                name: "measured".into(),
                color: "#1f77b4",
                points: last,
                dashed: false,
            },
            Series {
                name: "model".into(),
                color: "#d62728",
                points: model_pts,
                dashed: true,
            },
        ],
    )
}
