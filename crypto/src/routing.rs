//! Loopix routing commands: what one hop learns from the header.
//!
//! Each command is encoded in `COMMAND_LEN` (24) bytes: a command byte, then
//! a body whose unused bytes must be zero. Integers are big-endian. The
//! encoding is only ever seen after decryption by the hop it is meant for.
//!
//! | byte 0 | command     | body (bytes 1..24)                                     |
//! |--------|-------------|--------------------------------------------------------|
//! | 0x01   | `Relay`     | next `NodeId` (16), delay in microseconds (u32 BE), 3 zero |
//! | 0x02   | `Deliver`   | `MailboxId` (16), delay in microseconds (u32 BE), 3 zero |
//! | 0x03   | `Drop`      | 23 zero                                                |
//! | 0x04   | `Recipient` | kind (1: 0x00 message, 0x01 loop, 0x02 reply), id (16), 6 zero |

use crate::error::SphinxError;
use crate::geometry::COMMAND_LEN;
use crate::keys::{MailboxId, NodeId};

const CMD_RELAY: u8 = 0x01;
const CMD_DELIVER: u8 = 0x02;
const CMD_DROP: u8 = 0x03;
const CMD_RECIPIENT: u8 = 0x04;

/// How long a mix holds a packet, in microseconds (at most about 71 minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Delay(u32);

impl Delay {
    /// The zero delay.
    pub const ZERO: Delay = Delay(0);
    /// A delay of `us` microseconds.
    pub const fn from_micros(us: u32) -> Self {
        Delay(us)
    }
    /// A delay from a duration, or `None` if it does not fit in `u32` us.
    pub fn from_duration(d: core::time::Duration) -> Option<Self> {
        u32::try_from(d.as_micros()).ok().map(Delay)
    }
    /// The delay in microseconds.
    pub const fn as_micros(&self) -> u32 {
        self.0
    }
    /// The delay as a duration.
    pub fn as_duration(&self) -> core::time::Duration {
        core::time::Duration::from_micros(u64::from(self.0))
    }
    /// A per-hop delay drawn from `Exp` of mean `mean_us` microseconds (the
    /// paper's `Exp(mu)`), rounded to the microsecond; a draw above the
    /// largest delay is the largest delay.
    pub fn sample_exp<R: rand_core::RngCore + ?Sized>(rng: &mut R, mean_us: f64) -> Delay {
        let us = exp_sample(rng, mean_us).round();
        Delay(us.min(f64::from(u32::MAX)) as u32)
    }
}

/// An exponential variate of mean `mean`, by inverse transform on 53
/// random bits: `u` in `[0, 1)`, so `1 - u` is in `(0, 1]` and the
/// logarithm is finite. The one sampler behind every Poisson departure and
/// `Exp(mu)` delay (clients, load generator, a node's own loops).
pub fn exp_sample<R: rand_core::RngCore + ?Sized>(rng: &mut R, mean: f64) -> f64 {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    -(1.0 - u).ln() * mean
}

/// What the recipient of a packet's last layer is looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecipientKind {
    /// A real message (or a fragment of one) from another client.
    Message,
    /// One of the recipient's own loop packets coming back.
    Loop,
    /// A reply sent through one of the recipient's SURBs.
    Reply,
}

impl RecipientKind {
    const fn to_byte(self) -> u8 {
        match self {
            RecipientKind::Message => 0x00,
            RecipientKind::Loop => 0x01,
            RecipientKind::Reply => 0x02,
        }
    }
    const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x00 => Some(RecipientKind::Message),
            0x01 => Some(RecipientKind::Loop),
            0x02 => Some(RecipientKind::Reply),
            _ => None,
        }
    }
}

/// The command one hop reads from its layer of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutingCommand {
    /// Hold the packet for `delay`, then send it to `next`.
    Relay {
        /// The next hop.
        next: NodeId,
        /// How long to hold the packet.
        delay: Delay,
    },
    /// (Recipient's provider) store the packet in `mailbox`; the recipient
    /// processes the last layer itself after pulling it.
    Deliver {
        /// The recipient's mailbox.
        mailbox: MailboxId,
        /// How long the provider holds the packet before storing it: the
        /// egress provider is a mixing hop like any other (`Exp(mu)`, drawn
        /// by the sender).
        delay: Delay,
    },
    /// (Destination provider) cover traffic: discard.
    Drop,
    /// (Recipient) the last layer: a message, a returning loop or a reply.
    Recipient {
        /// Which of the three.
        kind: RecipientKind,
        /// Loop or SURB identifier chosen by the recipient; message
        /// identifier for messages.
        id: [u8; 16],
    },
}

impl RoutingCommand {
    /// True for commands after which the packet goes on to another hop.
    pub const fn is_forwarding(&self) -> bool {
        matches!(
            self,
            RoutingCommand::Relay { .. } | RoutingCommand::Deliver { .. }
        )
    }

    /// Encode into the `COMMAND_LEN` bytes of a header slot.
    pub(crate) fn encode(&self, out: &mut [u8; COMMAND_LEN]) {
        *out = [0u8; COMMAND_LEN];
        match self {
            RoutingCommand::Relay { next, delay } => {
                out[0] = CMD_RELAY;
                out[1..17].copy_from_slice(&next.0);
                out[17..21].copy_from_slice(&delay.0.to_be_bytes());
            }
            RoutingCommand::Deliver { mailbox, delay } => {
                out[0] = CMD_DELIVER;
                out[1..17].copy_from_slice(&mailbox.0);
                out[17..21].copy_from_slice(&delay.0.to_be_bytes());
            }
            RoutingCommand::Drop => out[0] = CMD_DROP,
            RoutingCommand::Recipient { kind, id } => {
                out[0] = CMD_RECIPIENT;
                out[1] = kind.to_byte();
                out[2..18].copy_from_slice(id);
            }
        }
    }

    /// Decode a slot; unknown command bytes, unknown recipient kinds and
    /// non-zero reserved bytes are errors.
    pub(crate) fn decode(b: &[u8; COMMAND_LEN]) -> Result<Self, SphinxError> {
        let cmd = b[0];
        let zero_from = |i: usize| b[i..].iter().all(|&x| x == 0);
        let take16 = |i: usize| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&b[i..i + 16]);
            id
        };
        match cmd {
            CMD_RELAY if zero_from(21) => Ok(RoutingCommand::Relay {
                next: NodeId(take16(1)),
                delay: Delay(u32::from_be_bytes([b[17], b[18], b[19], b[20]])),
            }),
            CMD_DELIVER if zero_from(21) => Ok(RoutingCommand::Deliver {
                mailbox: MailboxId(take16(1)),
                delay: Delay(u32::from_be_bytes([b[17], b[18], b[19], b[20]])),
            }),
            CMD_DROP if zero_from(1) => Ok(RoutingCommand::Drop),
            CMD_RECIPIENT if zero_from(18) => match RecipientKind::from_byte(b[1]) {
                Some(kind) => Ok(RoutingCommand::Recipient {
                    kind,
                    id: take16(2),
                }),
                None => Err(SphinxError::MalformedCommand(cmd)),
            },
            CMD_RELAY | CMD_DELIVER | CMD_DROP | CMD_RECIPIENT => {
                Err(SphinxError::MalformedCommand(cmd))
            }
            other => Err(SphinxError::UnknownCommand(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_samples_have_their_mean_and_delays_saturate() {
        use rand_chacha::rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| exp_sample(&mut rng, 1000.0)).collect();
        assert!(xs.iter().all(|x| x.is_finite() && *x >= 0.0));
        let mean = xs.iter().sum::<f64>() / n as f64;
        // Standard error 1000 / sqrt(n) = 2.2: within 5 of them.
        assert!((mean - 1000.0).abs() < 11.0, "{mean}");
        // P(X > mean) = 1/e.
        let above = xs.iter().filter(|&&x| x > 1000.0).count() as f64 / n as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.005, "{above}");
        assert_eq!(Delay::sample_exp(&mut rng, 0.0), Delay::ZERO);
        let huge = Delay::sample_exp(&mut rng, 1e30);
        assert_eq!(huge.as_micros(), u32::MAX);
    }

    fn all() -> Vec<RoutingCommand> {
        vec![
            RoutingCommand::Relay {
                next: NodeId([0xab; 16]),
                delay: Delay::from_micros(0x0102_0304),
            },
            RoutingCommand::Deliver {
                mailbox: MailboxId([7; 16]),
                delay: Delay::from_micros(0x0a0b_0c0d),
            },
            RoutingCommand::Drop,
            RoutingCommand::Recipient {
                kind: RecipientKind::Loop,
                id: [3; 16],
            },
            RoutingCommand::Recipient {
                kind: RecipientKind::Reply,
                id: [4; 16],
            },
        ]
    }

    #[test]
    fn round_trip() {
        for c in all() {
            let mut b = [0u8; COMMAND_LEN];
            c.encode(&mut b);
            assert_eq!(RoutingCommand::decode(&b), Ok(c));
        }
    }

    #[test]
    fn delay_is_big_endian() {
        let mut b = [0u8; COMMAND_LEN];
        all()[0].encode(&mut b);
        assert_eq!(&b[17..21], &[1, 2, 3, 4]);
    }

    #[test]
    fn unknown_and_malformed_are_errors() {
        let mut b = [0u8; COMMAND_LEN];
        assert_eq!(
            RoutingCommand::decode(&b),
            Err(SphinxError::UnknownCommand(0))
        );
        b[0] = 0x7f;
        assert_eq!(
            RoutingCommand::decode(&b),
            Err(SphinxError::UnknownCommand(0x7f))
        );
        for c in all() {
            let mut b = [0u8; COMMAND_LEN];
            c.encode(&mut b);
            b[COMMAND_LEN - 1] = 1; // a reserved byte in every command
            assert!(matches!(
                RoutingCommand::decode(&b),
                Err(SphinxError::MalformedCommand(_))
            ));
        }
        let mut b = [0u8; COMMAND_LEN];
        b[0] = CMD_RECIPIENT;
        b[1] = 9;
        assert_eq!(
            RoutingCommand::decode(&b),
            Err(SphinxError::MalformedCommand(CMD_RECIPIENT))
        );
    }
}
