//! `sphinx-demo`: one message through a 6-hop Loopix path, hop by hop, then
//! a SURB reply back. The project's runnable "main job" until a `testnet`
//! command exists.
//!
//! Usage: `cargo run --release -p loopix-bench --bin sphinx-demo -- [--message
//! TEXT] [--mean-delay-ms MS] [--geometry default|jumbo] [--seed N]`.
//!
//! It makes random keys for five nodes and a recipient (sender's provider,
//! three mix layers, recipient's provider, recipient), draws each relay's
//! delay from Exp(mean) (`-ln(1 - u) * mean`), builds the packet, then
//! processes it at every hop, printing the command each hop reads, its
//! replay tag, the packet length and the time the hop took. It exits 1 if
//! the recipient does not read back the message sent (or the reply), 2 on a
//! bad argument.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use loopix_bench::{emit, exp_delay, hex, hops, message_commands, nodes, parse_options, say, Node};
use loopix_crypto::{
    payload, sphinx, Geometry, Hop, MailboxId, RecipientKind, RoutingCommand, SphinxError, Surb,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "sphinx-demo",
    version,
    about = "One message through a 6-hop Loopix path, hop by hop, then a \
             SURB reply back.",
    after_help = "Exit status: 0 the message and the reply came back intact, \
                  1 they did not, 2 a bad argument."
)]
struct Cli {
    /// The message to send.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "Hello from the sender, through six Sphinx layers."
    )]
    message: String,
    /// Mean of the exponential per-hop delay, milliseconds (0 to 3600000).
    #[arg(long, value_name = "MS", default_value_t = 50.0, value_parser = mean_delay_ms, allow_negative_numbers = true)]
    mean_delay_ms: f64,
    /// default (1344-byte packets) or jumbo (2368-byte).
    #[arg(long, value_name = "G", value_enum, default_value_t = GeometryName::Default)]
    geometry: GeometryName,
    /// Seed the RNG (default: from the OS), to repeat a run.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

/// `--geometry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GeometryName {
    /// 1344-byte packets.
    Default,
    /// 2368-byte packets.
    Jumbo,
}

/// `--mean-delay-ms`: 0 to 3600000.
fn mean_delay_ms(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(ms) if (0.0..=3_600_000.0).contains(&ms) => Ok(ms),
        Ok(_) => Err("must be 0 to 3600000".into()),
        Err(_) => Err("needs a number".into()),
    }
}

const ROLES: [&str; 6] = [
    "sender's provider",
    "mix, layer 1",
    "mix, layer 2",
    "mix, layer 3",
    "recipient's provider",
    "recipient",
];

struct Options {
    message: String,
    mean_delay: Duration,
    geometry: (&'static str, Geometry),
    seed: Option<u64>,
}

fn options(c: Cli) -> Result<Options, String> {
    let geometry = match c.geometry {
        GeometryName::Default => ("default", Geometry::DEFAULT),
        GeometryName::Jumbo => ("jumbo", Geometry::JUMBO),
    };
    let (gname, g) = geometry;
    if c.message.len() > g.message_capacity() {
        return Err(format!(
            "the message is {} bytes; a {gname} packet carries at most {}",
            c.message.len(),
            g.message_capacity()
        ));
    }
    Ok(Options {
        message: c.message,
        mean_delay: Duration::from_secs_f64(c.mean_delay_ms / 1000.0),
        geometry,
        seed: c.seed,
    })
}

fn describe(c: &RoutingCommand) -> String {
    match c {
        RoutingCommand::Relay { next, delay } => format!(
            "Relay   next {}.. delay {:>9.3} ms",
            &next.to_string()[..8],
            f64::from(delay.as_micros()) / 1000.0
        ),
        RoutingCommand::Deliver { mailbox, delay } => {
            format!(
                "Deliver mailbox {}.. after {:.1} ms",
                &mailbox.to_string()[..8],
                f64::from(delay.as_micros()) / 1000.0
            )
        }
        RoutingCommand::Drop => "Drop".to_string(),
        RoutingCommand::Recipient { kind, id } => {
            format!("Recipient {kind:?} id {}..", hex(&id[..4]))
        }
    }
}

/// Process `pkt` at every node of `net` in turn, printing one line per hop
/// (when `print`), and return the total processing time.
fn run_path(
    g: &Geometry,
    net: &[&Node],
    expected: &[RoutingCommand],
    pkt: &mut [u8],
    mut out: Option<&mut String>,
) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    for (i, node) in net.iter().enumerate() {
        let t = Instant::now();
        let done = sphinx::unwrap(g, &node.secret, pkt)
            .and_then(|u| u.finish(pkt))
            .map_err(|e: SphinxError| format!("hop {i} refused the packet: {e}"))?;
        let took = t.elapsed();
        total += took;
        if done.command != expected[i] {
            return Err(format!("hop {i} read {:?}", done.command));
        }
        if let Some(out) = out.as_deref_mut() {
            say!(
                out,
                "{i:>3}  {:<20}  {:<43}  {}..  {:>5}  {:>7.1}",
                ROLES[i],
                describe(&done.command),
                hex(&done.replay_tag.0[..6]),
                pkt.len(),
                took.as_secs_f64() * 1e6
            );
        }
    }
    Ok(total)
}

fn run(o: &Options, out: &mut String) -> Result<(), String> {
    let (gname, g) = o.geometry;
    let mut rng = match o.seed {
        Some(s) => ChaCha20Rng::seed_from_u64(s),
        None => ChaCha20Rng::from_rng(rand_core::OsRng)
            .map_err(|e| format!("no randomness from the OS: {e}"))?,
    };
    let msg = o.message.as_bytes();

    // Keys: prepared route keys are what a client holds per topology.
    let t = Instant::now();
    let net = nodes(&mut rng, ROLES.len());
    let keygen = t.elapsed();
    let delays: Vec<_> = (0..ROLES.len() - 2)
        .map(|_| exp_delay(&mut rng, o.mean_delay))
        .collect();
    let mut mailbox = [0u8; 16];
    rng.fill_bytes(&mut mailbox);
    let mut message_id = [0u8; 16];
    rng.fill_bytes(&mut message_id);
    let cmds = message_commands(&net, &delays, MailboxId(mailbox), message_id);
    let path = hops(&net, &cmds);

    let mut pkt = vec![0u8; g.packet_len()];
    let t = Instant::now();
    sphinx::build(&g, &path, msg, &mut rng, &mut pkt).map_err(|e| format!("build: {e}"))?;
    let build = t.elapsed();

    say!(
        out,
        "sphinx-demo: {gname} geometry, {}-byte packets, {}-hop path, mean delay {:.1} ms",
        g.packet_len(),
        net.len(),
        o.mean_delay.as_secs_f64() * 1e3
    );
    say!(
        out,
        "keys for {} parties + route keys: {:.2} ms; packet built in {:.1} us",
        net.len(),
        keygen.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e6
    );
    say!(out,
        "hop  role                  command                                      replay tag      bytes       us"
    );
    let forward: Vec<&Node> = net.iter().collect();
    let total = run_path(&g, &forward, &cmds, &mut pkt, Some(out))?;
    let got =
        payload::decode(&pkt[g.header_len()..]).map_err(|e| format!("recipient payload: {e}"))?;
    let sum_delay: u64 = delays.iter().map(|d| u64::from(d.as_micros())).sum();
    say!(
        out,
        "processing, all hops: {:.1} us; delays drawn, total: {:.3} ms",
        total.as_secs_f64() * 1e6,
        sum_delay as f64 / 1000.0
    );
    say!(out, "recovered: {:?}", String::from_utf8_lossy(got));
    if got != msg {
        return Err("the recipient read another message".into());
    }
    say!(out, "message matches the original: yes");

    // SURB: the sender asked for a reply. Its SURB runs from the
    // recipient's provider back through the mixes to the sender's provider
    // (Deliver) and the sender (Recipient { Reply }); the recipient fills
    // it in without learning that path.
    let sender = nodes(&mut rng, 1);
    let back: Vec<&Node> = vec![&net[4], &net[3], &net[2], &net[1], &net[0], &sender[0]];
    let mut reply_id = [0u8; 16];
    rng.fill_bytes(&mut reply_id);
    let mut sender_mailbox = [0u8; 16];
    rng.fill_bytes(&mut sender_mailbox);
    let surb_cmds: Vec<RoutingCommand> = (0..back.len())
        .map(|i| match i {
            5 => RoutingCommand::Recipient {
                kind: RecipientKind::Reply,
                id: reply_id,
            },
            4 => RoutingCommand::Deliver {
                mailbox: MailboxId(sender_mailbox),
                delay: exp_delay(&mut rng, o.mean_delay),
            },
            _ => RoutingCommand::Relay {
                next: back[i + 1].id,
                delay: exp_delay(&mut rng, o.mean_delay),
            },
        })
        .collect();
    let surb_path: Vec<Hop<'_>> = back
        .iter()
        .zip(&surb_cmds)
        .map(|(n, c)| Hop {
            key: &n.route,
            command: *c,
        })
        .collect();
    let t = Instant::now();
    let (surb, keys) =
        Surb::new(&g, net[4].id, &surb_path, &mut rng).map_err(|e| format!("SURB: {e}"))?;
    let surb_build = t.elapsed();
    let surb_bytes = surb.to_bytes();
    let surb = Surb::from_bytes(&g, &surb_bytes).map_err(|e| format!("SURB bytes: {e}"))?;
    let reply = b"reply through a single-use reply block";
    let mut rpkt = vec![0u8; g.packet_len()];
    surb.write_reply(&g, reply, &mut rpkt)
        .map_err(|e| format!("reply: {e}"))?;
    let rtotal = run_path(&g, &back, &surb_cmds, &mut rpkt, None)?;
    let rgot = keys
        .open_reply(&mut rpkt[g.header_len()..])
        .map_err(|e| format!("open reply: {e}"))?;
    say!(
        out,
        "SURB: {} bytes, built in {:.1} us; reply through {} hops in {:.1} us; id {}..",
        surb_bytes.len(),
        surb_build.as_secs_f64() * 1e6,
        back.len(),
        rtotal.as_secs_f64() * 1e6,
        hex(&keys.id()[..4])
    );
    say!(out, "reply recovered: {:?}", String::from_utf8_lossy(rgot));
    if rgot != reply {
        return Err("the SURB creator read another reply".into());
    }
    say!(out, "reply matches: yes");
    Ok(())
}

fn main() -> ExitCode {
    let opts = parse_options(std::env::args_os(), options).unwrap_or_else(|e| e.exit());
    let mut out = String::new();
    let result = run(&opts, &mut out);
    emit(&out);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sphinx-demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
