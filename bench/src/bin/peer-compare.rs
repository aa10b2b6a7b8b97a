//! `peer-compare`: our Sphinx against nym's `sphinx-packet` 0.8 in one
//! process, with the same payload size (1056 bytes), and both against one
//! X25519, the floor of any hop.
//!
//! Usage: `cargo run --release -p loopix-bench --bin peer-compare -- [--json]
//! [--rounds N] [--iters N] [--warmup N] [--no-pin]`.
//!
//! Method: every operation is prepared once and checked for correctness,
//! then run in warm-up rounds that are thrown away, then in `--rounds`
//! measured rounds. A round runs every operation for `--iters` iterations,
//! round-robin, starting with a different operation each round so none
//! always runs first. Each iteration is timed on its own (two clock reads,
//! about 0.03 us, reported as `timer_overhead_us` and not subtracted). The
//! figure of an operation is the median of its per-iteration times, in
//! microseconds. The process is pinned to the last CPU core unless
//! `--no-pin`.
//!
//! Why per iteration and not per batch: on a shared machine another process
//! takes the core for whole scheduler slices (milliseconds). A batch of 200
//! hops lasts about 10 ms and almost always contains such a slice; a batch
//! of 200 X25519s lasts 5 ms and often does not. Batch means then inflate
//! the longer operations and bias every ratio; a per-iteration median is hit
//! only by the iterations that were preempted. The median of the round
//! means is still printed (`round-mean` column, `round_mean_medians` in the
//! JSON) so the two can be compared.
//!
//! Output: a table on stdout; with `--json`, one JSON object as the last
//! line of stdout after the table (handwritten: every value is a number, a
//! boolean or a fixed string).
//!
//! What each side does per iteration, kept symmetric:
//! - hop, ours: copy the first-hop packet bytes into a reused buffer,
//!   `sphinx::unwrap`, read the replay tag, `Unwrapped::finish`;
//! - hop, nym: `SphinxPacket::from_bytes` on the same kind of bytes (it has
//!   to parse into its own structs; that allocates), then `process`. Nym's
//!   output is a struct: turning it back into bytes for the wire
//!   (`to_bytes`) is NOT counted, which favours nym;
//! - create, ours: `sphinx::build` of a 5-hop Loopix path (Relay, Relay,
//!   Relay, Deliver, Recipient{Message}) with route keys prepared once, into
//!   a reused buffer, ephemeral key from `OsRng`;
//! - create, nym: `SphinxPacketBuilder::build_packet` over 5 nodes (nym's
//!   maximum), ephemeral key from its own OS-backed RNG;
//! - x25519: `loopix_crypto::SecretKey::diffie_hellman` with a static key,
//!   the same raw aws-lc `X25519` call the hop path makes twice (the fair
//!   floor). The safe `aws_lc_rs::agreement::agree` API is also timed, for
//!   reference only: it builds an `EVP_PKEY` for the peer on every call.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_lc_rs::agreement;
use clap::Parser;
use loopix_bench::{emit, hops, median, message_commands, nodes, parse_options, say};
use loopix_crypto::{sphinx, Delay, Geometry, MailboxId, RouteKey, RoutingCommand};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::OsRng;
use sphinx_packet::crypto::{PrivateKey, PublicKey};
use sphinx_packet::header::delays::Delay as NymDelay;
use sphinx_packet::packet::builder::SphinxPacketBuilder;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{ProcessedPacketData, SphinxPacket};

/// Payload bytes on both sides: our default geometry's payload.
const PAYLOAD_LEN: usize = 1056;
/// Hops of the compared path (nym's maximum path length).
const HOPS: usize = 5;

/// Targets, as ratios of medians.
const TARGET_HOP_OVER_X25519_MAX: f64 = 2.3;
const TARGET_NYM_OVER_OURS_HOP_MIN: f64 = 2.0;
const TARGET_CREATE5_OVER_X25519_MAX: f64 = 8.0;

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "peer-compare",
    version,
    about = "Our Sphinx against nym's sphinx-packet 0.8 in one process, with \
             the same payload size, and both against one X25519."
)]
struct Cli {
    /// After the table, print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Measured rounds.
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = at_least_1)]
    rounds: usize,
    /// Iterations per operation per round (route-key preparation runs
    /// N/20, at least 1).
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = at_least_1)]
    iters: usize,
    /// Rounds run and discarded before measuring.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = at_least_1)]
    warmup: usize,
    /// Do not pin the process to a CPU core.
    #[arg(long)]
    no_pin: bool,
}

/// A count flag's value: a positive integer.
fn at_least_1(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("needs a positive integer".into()),
    }
}

struct Options {
    json: bool,
    rounds: usize,
    iters: usize,
    warmup: usize,
    pin: bool,
}

fn options(c: Cli) -> Result<Options, String> {
    Ok(Options {
        json: c.json,
        rounds: c.rounds,
        iters: c.iters,
        warmup: c.warmup,
        pin: !c.no_pin,
    })
}

/// One timed operation: `run()` does one iteration and returns its time,
/// read around the work only (setup and the call itself are outside).
struct Op<'a> {
    key: &'static str,
    label: &'static str,
    iters: usize,
    run: Box<dyn FnMut() -> Duration + 'a>,
    /// Per-iteration times of the measured rounds, in microseconds.
    samples: Vec<f64>,
    /// Mean per-iteration time of each measured round, in microseconds.
    round_means: Vec<f64>,
}

/// The `q` quantile (0 to 1) of sorted `samples` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The 1-minute load average, to tell a quiet machine from a busy one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Pin this thread to the last core the OS lists; its id, or `None`.
fn pin_to_last_core() -> Option<usize> {
    let core = core_affinity::get_core_ids()?.into_iter().last()?;
    core_affinity::set_for_current(core).then_some(core.id)
}

fn main() -> ExitCode {
    let opts = parse_options(std::env::args_os(), options).unwrap_or_else(|e| e.exit());
    let pinned = if opts.pin { pin_to_last_core() } else { None };

    let g = Geometry::DEFAULT;
    assert_eq!(g.payload_len(), PAYLOAD_LEN, "default geometry payload");
    // The same message on both sides: the smaller of the two capacities.
    let capacity = g
        .message_capacity()
        .min(PAYLOAD_LEN - sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE);
    let msg = vec![0x5au8; capacity];

    // Ours: 5 nodes from a seeded RNG, route keys prepared once.
    let net = nodes(&mut ChaCha20Rng::seed_from_u64(1), HOPS);
    let delays = [Delay::from_micros(10_000); HOPS];
    let cmds = message_commands(&net, &delays, MailboxId([0x22; 16]), [0x11; 16]);
    let path = hops(&net, &cmds);
    let mut ours_first = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, &msg, &mut OsRng, &mut ours_first).expect("a valid Loopix path");

    // Nym: 5 nodes, same payload size, 10 ms delays.
    let nym_secrets: Vec<PrivateKey> = (0..HOPS).map(|_| PrivateKey::random()).collect();
    let nym_route: Vec<Node> = nym_secrets
        .iter()
        .enumerate()
        .map(|(i, sk)| {
            Node::new(
                NodeAddressBytes::from_bytes([i as u8 + 1; 32]),
                PublicKey::from(sk),
            )
        })
        .collect();
    let nym_dest = Destination::new(DestinationAddressBytes::from_bytes([0x33; 32]), [0x44; 16]);
    let nym_delays = vec![NymDelay::new_from_millis(10); HOPS];
    let nym_builder = SphinxPacketBuilder::new().with_payload_size(PAYLOAD_LEN);
    let nym_first = nym_builder
        .build_packet(&msg, &nym_route, &nym_dest, &nym_delays)
        .expect("nym accepts a 5-hop route and a message that fits")
        .to_bytes();

    // Correctness, once, before timing: every hop of both paths.
    if let Err(e) = check_ours(&g, &net, &cmds, &ours_first, &msg) {
        eprintln!("peer-compare: our packet failed its check: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = check_nym(&nym_secrets, &nym_route, &nym_first, &msg) {
        eprintln!("peer-compare: nym's packet failed its check: {e}");
        return ExitCode::FAILURE;
    }

    // X25519 reference keys.
    let x_secret = &net[0].secret;
    let x_peer = net[1].secret.public_key();
    let agree_key =
        agreement::PrivateKey::from_private_key(&agreement::X25519, &net[0].secret.to_bytes())
            .expect("a 32-byte X25519 key");
    let agree_peer_bytes = *x_peer.as_bytes();
    let route_pub = net[2].secret.public_key();

    let mut ours_buf = vec![0u8; g.packet_len()];
    let mut ours_out = vec![0u8; g.packet_len()];
    let secret0 = &net[0].secret;
    let nym_sk0 = &nym_secrets[0];
    let mut ops: Vec<Op<'_>> = vec![
        Op {
            key: "ours_hop_us",
            label: "hop, ours (copy + unwrap + finish)",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                ours_buf.copy_from_slice(black_box(&ours_first));
                let u = sphinx::unwrap(&g, secret0, &ours_buf).expect("authentic packet");
                black_box(u.replay_tag());
                black_box(u.finish(&mut ours_buf).expect("authentic packet"));
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "nym_hop_us",
            label: "hop, nym (from_bytes + process)",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                let p = SphinxPacket::from_bytes(black_box(&nym_first)).expect("nym packet bytes");
                black_box(p.process(nym_sk0).expect("authentic nym packet"));
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "nym_parse_us",
            label: "nym from_bytes alone (in nym hop)",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                black_box(
                    SphinxPacket::from_bytes(black_box(&nym_first)).expect("nym packet bytes"),
                );
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "ours_create5_us",
            label: "create 5 hops, ours (route keys ready)",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                sphinx::build(
                    &g,
                    black_box(&path),
                    black_box(&msg),
                    &mut OsRng,
                    &mut ours_out,
                )
                .expect("a valid Loopix path");
                black_box(&ours_out);
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "nym_create5_us",
            label: "create 5 hops, nym",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                black_box(
                    nym_builder
                        .build_packet(
                            black_box(&msg),
                            black_box(&nym_route),
                            &nym_dest,
                            &nym_delays,
                        )
                        .expect("nym accepts the route"),
                );
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "x25519_us",
            label: "x25519, SecretKey::diffie_hellman",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                black_box(
                    x_secret
                        .diffie_hellman(black_box(&x_peer))
                        .expect("an honest peer key"),
                );
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "x25519_agreement_api_us",
            label: "x25519, aws_lc_rs::agreement::agree",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                let peer = agreement::UnparsedPublicKey::new(
                    &agreement::X25519,
                    black_box(&agree_peer_bytes),
                );
                let shared = agreement::agree(&agree_key, peer, "agreement failed", |k| {
                    let mut out = [0u8; 32];
                    out.copy_from_slice(k);
                    Ok(out)
                })
                .expect("an honest peer key");
                black_box(shared);
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "ours_route_key_prepare_us",
            label: "RouteKey::new, per node, once/topology",
            iters: (opts.iters / 20).max(1),
            run: Box::new(|| {
                let t = Instant::now();
                black_box(RouteKey::new(black_box(&route_pub)).expect("an honest key"));
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
        Op {
            key: "timer_overhead_us",
            label: "clock reads alone (in every sample)",
            iters: opts.iters,
            run: Box::new(|| {
                let t = Instant::now();
                t.elapsed()
            }),
            samples: Vec::new(),
            round_means: Vec::new(),
        },
    ];

    let load_before = load_average();
    let started = Instant::now();
    for round in 0..opts.warmup + opts.rounds {
        let measured = round >= opts.warmup;
        let count = ops.len();
        for k in 0..count {
            let op = &mut ops[(round + k) % count];
            let mut sum = 0.0;
            for _ in 0..op.iters {
                let us = (op.run)().as_secs_f64() * 1e6;
                if measured {
                    op.samples.push(us);
                }
                sum += us;
            }
            if measured {
                op.round_means.push(sum / op.iters as f64);
            }
        }
    }
    let wall = started.elapsed();
    let load_after = load_average();

    // Per operation: median, p10 and p90 of the per-iteration times, and the
    // median of the round means (what a batch-timed loop would report).
    struct Row {
        key: &'static str,
        label: &'static str,
        iters: usize,
        median: f64,
        p10: f64,
        p90: f64,
        round_mean: f64,
    }
    let rows: Vec<Row> = ops
        .iter_mut()
        .map(|op| {
            let med = median(&mut op.samples);
            Row {
                key: op.key,
                label: op.label,
                iters: op.iters,
                median: med,
                p10: quantile(&op.samples, 0.1),
                p90: quantile(&op.samples, 0.9),
                round_mean: median(&mut op.round_means),
            }
        })
        .collect();
    let get = |key: &str| {
        rows.iter()
            .find(|r| r.key == key)
            .map(|r| r.median)
            .expect("every key is measured")
    };
    let ours_hop = get("ours_hop_us");
    let nym_hop = get("nym_hop_us");
    let x25519 = get("x25519_us");
    let ours_create5 = get("ours_create5_us");
    let nym_create5 = get("nym_create5_us");
    let hop_over_x = ours_hop / x25519;
    let nym_over_ours = nym_hop / ours_hop;
    let create_over_x = ours_create5 / x25519;
    let met_hop = hop_over_x <= TARGET_HOP_OVER_X25519_MAX;
    let met_nym = nym_over_ours >= TARGET_NYM_OVER_OURS_HOP_MIN;
    let met_create = create_over_x <= TARGET_CREATE5_OVER_X25519_MAX;

    let mut out = String::new();
    say!(
        out,
        "peer-compare: payload {PAYLOAD_LEN} B, {HOPS}-hop paths, {} rounds x {} iters after {} warm-up rounds, pinned core: {}, {:.1} s",
        opts.rounds,
        opts.iters,
        opts.warmup,
        pinned.map_or("none".to_string(), |c| c.to_string()),
        wall.as_secs_f64()
    );
    say!(
        out,
        "load average (1 min): {} before, {} after; per-iteration times in us",
        load_before.map_or("?".to_string(), |l| format!("{l:.2}")),
        load_after.map_or("?".to_string(), |l| format!("{l:.2}"))
    );
    say!(
        out,
        "{:<40} {:>5} {:>9} {:>9} {:>9} {:>11}",
        "operation",
        "iters",
        "median",
        "p10",
        "p90",
        "round-mean"
    );
    for r in &rows {
        say!(
            out,
            "{:<40} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>11.3}",
            r.label,
            r.iters,
            r.median,
            r.p10,
            r.p90,
            r.round_mean
        );
    }
    let verdict = |m: bool| if m { "met" } else { "NOT MET" };
    say!(
        out,
        "ours hop / x25519     = {hop_over_x:.2}  (target <= {TARGET_HOP_OVER_X25519_MAX}: {})",
        verdict(met_hop)
    );
    say!(out,
        "nym hop / ours hop    = {nym_over_ours:.2}  (target >= {TARGET_NYM_OVER_OURS_HOP_MIN}: {})",
        verdict(met_nym)
    );
    say!(out,
        "ours create5 / x25519 = {create_over_x:.2}  (target <= {TARGET_CREATE5_OVER_X25519_MAX}: {})",
        verdict(met_create)
    );
    say!(out,
        "nym create5 / ours create5 = {:.2}; crypto floor of one core: {:.0} hops/s (not node throughput)",
        nym_create5 / ours_create5,
        1e6 / ours_hop
    );

    if opts.json {
        let mut json = String::from("{\"tool\":\"peer-compare\"");
        json.push_str(&format!(
            ",\"payload_len\":{PAYLOAD_LEN},\"hops\":{HOPS},\"rounds\":{},\"iters\":{},\"warmup\":{},\"pinned_core\":{}",
            opts.rounds,
            opts.iters,
            opts.warmup,
            pinned.map_or("null".to_string(), |c| c.to_string())
        ));
        json.push_str(&format!(
            ",\"load_avg_before\":{},\"load_avg_after\":{},\"statistic\":\"median of per-iteration times\"",
            load_before.map_or("null".to_string(), num),
            load_after.map_or("null".to_string(), num)
        ));
        for r in &rows {
            json.push_str(&format!(",\"{}\":{}", r.key, num(r.median)));
        }
        json.push_str(",\"round_mean_medians\":{");
        for (i, r) in rows.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            json.push_str(&format!("{sep}\"{}\":{}", r.key, num(r.round_mean)));
        }
        json.push('}');
        json.push_str(&format!(
            ",\"hop_over_x25519\":{},\"nym_over_ours_hop\":{},\"create5_over_x25519\":{},\"nym_create5_over_ours\":{}",
            num(hop_over_x),
            num(nym_over_ours),
            num(create_over_x),
            num(nym_create5 / ours_create5)
        ));
        json.push_str(&format!(
            ",\"targets\":{{\"hop_over_x25519_max\":{TARGET_HOP_OVER_X25519_MAX},\"hop_over_x25519_met\":{met_hop},\"nym_over_ours_hop_min\":{TARGET_NYM_OVER_OURS_HOP_MIN},\"nym_over_ours_hop_met\":{met_nym},\"create5_over_x25519_max\":{TARGET_CREATE5_OVER_X25519_MAX},\"create5_over_x25519_met\":{met_create}}}"
        ));
        let floor = 1e6 / ours_hop;
        json.push_str(&format!(
            ",\"crypto_floor_hops_per_s_one_core\":{}}}",
            if floor.is_finite() {
                format!("{floor:.0}")
            } else {
                "null".to_string()
            }
        ));
        say!(out, "{json}");
    }
    emit(&out);
    ExitCode::SUCCESS
}

/// A finite number with three decimals, or `null` (JSON has no NaN).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".to_string()
    }
}

/// Our packet: each hop reads the command it was given, the recipient reads
/// the message back.
fn check_ours(
    g: &Geometry,
    net: &[loopix_bench::Node],
    cmds: &[RoutingCommand],
    first: &[u8],
    msg: &[u8],
) -> Result<(), String> {
    let mut pkt = first.to_vec();
    for (i, node) in net.iter().enumerate() {
        let out =
            sphinx::process(g, &node.secret, &mut pkt).map_err(|e| format!("hop {i}: {e}"))?;
        if out.command != cmds[i] {
            return Err(format!("hop {i} read {:?}", out.command));
        }
        if i == 0 && !matches!(out.command, RoutingCommand::Relay { next, .. } if next == net[1].id)
        {
            return Err("first hop is not a Relay to the second node".into());
        }
    }
    let got = loopix_crypto::payload::decode(&pkt[g.header_len()..])
        .map_err(|e| format!("recipient: {e}"))?;
    if got != msg {
        return Err("recipient read another message".into());
    }
    Ok(())
}

/// Nym's packet: every hop but the last is a `ForwardHop` to the next node,
/// the last a `FinalHop` whose payload is the message.
fn check_nym(
    secrets: &[PrivateKey],
    route: &[Node],
    first: &[u8],
    msg: &[u8],
) -> Result<(), String> {
    let mut pkt = SphinxPacket::from_bytes(first).map_err(|e| format!("parse: {e:?}"))?;
    for (i, sk) in secrets.iter().enumerate() {
        let out = pkt.process(sk).map_err(|e| format!("hop {i}: {e:?}"))?;
        match out.data {
            ProcessedPacketData::ForwardHop {
                next_hop_packet,
                next_hop_address,
                ..
            } if i + 1 < secrets.len() => {
                if next_hop_address != route[i + 1].address {
                    return Err(format!("hop {i} forwards to the wrong node"));
                }
                pkt = next_hop_packet;
            }
            ProcessedPacketData::FinalHop { payload, .. } if i + 1 == secrets.len() => {
                let got = payload
                    .recover_plaintext()
                    .map_err(|e| format!("final payload: {e:?}"))?;
                return if got == msg {
                    Ok(())
                } else {
                    Err("final hop read another message".into())
                };
            }
            _ => return Err(format!("hop {i}: unexpected kind of hop")),
        }
    }
    Err("the path ended before a final hop".into())
}
