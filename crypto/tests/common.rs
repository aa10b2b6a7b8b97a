//! Shared fixtures for the integration tests: a small set of nodes with
//! deterministic keys, and path builders for each kind of Loopix packet.
#![allow(dead_code)] // reason: each test binary uses a different subset

use loopix_crypto::{
    Delay, Geometry, Hop, MailboxId, NodeId, RecipientKind, RouteKey, RoutingCommand, SecretKey,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A node of the test network: secret key, prepared public key, id.
pub struct TestNode {
    /// The node's Sphinx secret key.
    pub secret: SecretKey,
    /// Its public key prepared for senders.
    pub route: RouteKey,
    /// Its id in routing commands.
    pub id: NodeId,
}

/// `count` nodes whose keys come from `seed`.
pub fn nodes(seed: u64, count: usize) -> Vec<TestNode> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let secret = SecretKey::generate(&mut rng);
            let route = RouteKey::new(&secret.public_key()).expect("honest key");
            let mut id = [0u8; 16];
            id[0] = i as u8;
            rng.fill_bytes(&mut id[1..]);
            TestNode {
                secret,
                route,
                id: NodeId(id),
            }
        })
        .collect()
}

/// Commands for a real message along `nodes`: relays with the given delays,
/// `Deliver` at the second to last, `Recipient` at the last.
pub fn message_commands(nodes: &[TestNode], delays_us: &[u32]) -> Vec<RoutingCommand> {
    let n = nodes.len();
    (0..n)
        .map(|i| {
            if i + 1 == n {
                RoutingCommand::Recipient {
                    kind: RecipientKind::Message,
                    id: [0x11; 16],
                }
            } else if i + 2 == n {
                RoutingCommand::Deliver {
                    mailbox: MailboxId([0x22; 16]),
                    delay: Delay::from_micros(delays_us[i % delays_us.len()]),
                }
            } else {
                RoutingCommand::Relay {
                    next: nodes[i + 1].id,
                    delay: Delay::from_micros(delays_us[i % delays_us.len()]),
                }
            }
        })
        .collect()
}

/// Pair nodes with commands into hops.
pub fn hops<'a>(nodes: &'a [TestNode], commands: &[RoutingCommand]) -> Vec<Hop<'a>> {
    nodes
        .iter()
        .zip(commands)
        .map(|(n, c)| Hop {
            key: &n.route,
            command: *c,
        })
        .collect()
}

/// A seeded RNG for packet construction.
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Both standard geometries.
pub fn geometries() -> [Geometry; 2] {
    [Geometry::DEFAULT, Geometry::JUMBO]
}
