//! Fixtures shared by the criterion benches, `peer-compare` and
//! `sphinx-demo`: a set of nodes with keys, Loopix message paths, delays
//! drawn from an exponential distribution, medians, hex formatting and
//! output that survives a closed pipe; the binaries' command-line parsing
//! helpers ([`parse_options`], [`Io`]); (`node`) the node process the
//! node benchmarks run; and (`provider`) the provider process, emulated
//! pulling clients and one open-loop step for `provider-bench` and the
//! provider capacity test.
//!
//! Nothing here is timed; it only prepares what the timed code consumes.

pub mod node;
pub mod provider;

use core::time::Duration;

use loopix_crypto::{
    Delay, Hop, MailboxId, NodeId, RecipientKind, RouteKey, RoutingCommand, SecretKey,
};
use rand_core::{CryptoRngCore, RngCore};

/// One node (or client) of a benchmark network.
pub struct Node {
    /// Its X25519 secret key.
    pub secret: SecretKey,
    /// Its public key as a sender prepares it (built once per topology).
    pub route: RouteKey,
    /// Its id inside routing commands.
    pub id: NodeId,
}

/// `count` nodes with keys and ids drawn from `rng`.
pub fn nodes(rng: &mut impl CryptoRngCore, count: usize) -> Vec<Node> {
    (0..count)
        .map(|_| {
            let secret = SecretKey::generate(rng);
            let route = RouteKey::new(&secret.public_key())
                .expect("a key made by SecretKey::generate is a valid route key");
            let mut id = [0u8; 16];
            rng.fill_bytes(&mut id);
            Node {
                secret,
                route,
                id: NodeId(id),
            }
        })
        .collect()
}

/// The commands of a real message along `nodes`: `Relay` to the next node
/// with `delays[i]` at every hop but the last two, `Deliver` into `mailbox`
/// at the second to last (the recipient's provider), and
/// `Recipient { Message, message_id }` at the last (the recipient).
///
/// `nodes` must have at least two entries and `delays` at least
/// `nodes.len() - 2`.
pub fn message_commands(
    nodes: &[Node],
    delays: &[Delay],
    mailbox: MailboxId,
    message_id: [u8; 16],
) -> Vec<RoutingCommand> {
    let n = nodes.len();
    assert!(n >= 2, "a message path has at least Deliver and Recipient");
    assert!(delays.len() + 2 >= n, "one delay per relaying hop");
    (0..n)
        .map(|i| {
            if i + 1 == n {
                RoutingCommand::Recipient {
                    kind: RecipientKind::Message,
                    id: message_id,
                }
            } else if i + 2 == n {
                RoutingCommand::Deliver {
                    mailbox,
                    delay: delays.get(i).copied().unwrap_or(Delay::ZERO),
                }
            } else {
                RoutingCommand::Relay {
                    next: nodes[i + 1].id,
                    delay: delays[i],
                }
            }
        })
        .collect()
}

/// Pair `nodes` with `commands` into the hops `sphinx::build` takes.
pub fn hops<'a>(nodes: &'a [Node], commands: &[RoutingCommand]) -> Vec<Hop<'a>> {
    nodes
        .iter()
        .zip(commands)
        .map(|(node, command)| Hop {
            key: &node.route,
            command: *command,
        })
        .collect()
}

/// A uniform `f64` in `[0, 1)` from the top 53 bits of one `u64`.
pub fn uniform_f64(rng: &mut impl RngCore) -> f64 {
    // 2^-53: every value is an exact multiple of it.
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    (rng.next_u64() >> 11) as f64 * SCALE
}

/// A delay drawn from the exponential distribution with mean `mean`
/// (inverse transform: `-ln(1 - u) * mean`), saturating at the largest
/// delay a routing command holds (about 71 minutes).
pub fn exp_delay(rng: &mut impl RngCore, mean: Duration) -> Delay {
    let u = uniform_f64(rng);
    // 1 - u is in (0, 1], so the logarithm is finite and <= 0.
    let us = -(1.0 - u).ln() * mean.as_secs_f64() * 1e6;
    // `as` saturates float-to-int casts: huge draws become u32::MAX.
    Delay::from_micros(us.round() as u32)
}

/// The median of `samples` (sorted in place); NaN for an empty slice.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Append one formatted line to a `String` (writing to a `String` cannot
/// fail). The tools collect their output and [`emit`] it once.
#[macro_export]
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        use ::core::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Write `text` to stdout at once. A closed stdout (say, piped into `head`)
/// drops the rest instead of panicking as `println!` would.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// A JSON number for `--json` reports: rounded to 0.1 at and above 100,
/// to 0.001 below; `null` for NaN and infinities.
pub fn json_num(x: f64) -> serde_json::Value {
    if !x.is_finite() {
        return serde_json::Value::Null;
    }
    let r = if x.abs() >= 100.0 {
        (x * 10.0).round() / 10.0
    } else {
        (x * 1000.0).round() / 1000.0
    };
    serde_json::json!(r)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse the command line `args` (the program's name first) into the
/// clap command `C`, then turn it into the binary's options with `check`,
/// which checks what one flag's parser cannot (two flags that must
/// differ, say). A failed check is a usage error like clap's own. The
/// binaries call `.unwrap_or_else(|e| e.exit())` on the result: `--help`
/// and `--version` print and exit 0, usage errors print the error and the
/// usage and exit 2.
pub fn parse_options<C, O, I, T>(
    args: I,
    check: impl FnOnce(C) -> Result<O, String>,
) -> Result<O, clap::Error>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = C::try_parse_from(args)?;
    check(cli).map_err(|e| C::command().error(clap::error::ErrorKind::ValueValidation, e))
}

/// A flag's value that must be a finite number above 0.
pub fn positive(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("needs a positive number".into()),
    }
}

/// `--io`: a node's datagram backend, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Io {
    /// io_uring if the host allows it, else portable.
    Auto,
    /// io_uring, or fail at start.
    Uring,
    /// `recvmmsg`/`sendmmsg`.
    Portable,
}

impl From<Io> for loopix_engine::config::IoChoice {
    fn from(io: Io) -> Self {
        match io {
            Io::Auto => Self::Auto,
            Io::Uring => Self::Uring,
            Io::Portable => Self::Portable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn exp_delay_mean_is_close() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mean = Duration::from_millis(50);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| f64::from(exp_delay(&mut rng, mean).as_micros()))
            .sum();
        let avg_ms = total / f64::from(n) / 1000.0;
        assert!((avg_ms - 50.0).abs() < 2.0, "average {avg_ms} ms");
    }

    #[test]
    fn message_path_shape() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let net = nodes(&mut rng, 5);
        let d = [Delay::from_micros(1); 3];
        let cmds = message_commands(&net, &d, MailboxId([1; 16]), [2; 16]);
        assert!(matches!(cmds[0], RoutingCommand::Relay { next, .. } if next == net[1].id));
        assert!(matches!(cmds[3], RoutingCommand::Deliver { .. }));
        assert!(matches!(
            cmds[4],
            RoutingCommand::Recipient {
                kind: RecipientKind::Message,
                ..
            }
        ));
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
