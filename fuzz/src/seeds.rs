//! The seed corpus: for each target, inputs that reach its deep code
//! (packets that verify under the fixed node key, frames under the fixed
//! link and access keys, documents signed by the fixed operator). Written to
//! `corpus/<target>/seed_*.bin` by the ignored test `write_corpus` in
//! `tests/corpus.rs`; inputs found by the fuzzer are kept beside them as
//! `bug_*.bin`, named after the bug they found, and never rewritten.

use std::path::Path;

use loopix_crypto::access::PullRequest;
use loopix_crypto::sphinx::{self, Hop};
use loopix_crypto::{
    Delay, Geometry, LinkKey, MailboxId, NodeId, PublicKey, RecipientKind, RouteKey, RoutingCommand,
};
use loopix_directory::descriptor::{epoch_at, NodeDescriptor};
use loopix_directory::topology::{BuildParams, Role, TopologyFile};
use loopix_directory::{Address, Registration};
use loopix_engine::keyfile;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::files::{operator, NOW_S};
use crate::fixed;

/// Seeds of one target: (file stem, bytes).
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Every target's seeds, by target name. `scratch` is an empty directory
/// for key generation (topology and descriptor seeds).
pub fn all(repo: &Path, scratch: &Path) -> Vec<(&'static str, Seeds)> {
    vec![
        ("node_datagram", node_datagram()),
        ("access_session", access_session()),
        ("provider_pull", provider_pull()),
        ("config_file", config_file(repo)),
        ("topology_file", topology_file(scratch)),
        ("registration_file", registration_file()),
        ("key_files", key_files(scratch)),
    ]
}

/// A Sphinx packet whose first hop is the fuzzed node with `first`, then
/// (unless `first` ends a path) the node again with a loop's final command.
fn packet(first: RoutingCommand, seed: u64) -> Vec<u8> {
    let g = Geometry::DEFAULT;
    let route = RouteKey::new(&fixed::node_secret().public_key()).unwrap();
    let hops = [
        Hop {
            key: &route,
            command: first,
        },
        Hop {
            key: &route,
            command: RoutingCommand::Recipient {
                kind: RecipientKind::Loop,
                id: *b"fuzz-recipient-1",
            },
        },
    ];
    // Drop and recipient commands end a path.
    let hops = match first {
        RoutingCommand::Drop | RoutingCommand::Recipient { .. } => &hops[..1],
        _ => &hops[..],
    };
    let mut out = vec![0u8; g.packet_len()];
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    sphinx::build(&g, hops, b"seed", &mut rng, &mut out).unwrap();
    out
}

fn relay(to: NodeId, us: u32) -> RoutingCommand {
    RoutingCommand::Relay {
        next: to,
        delay: Delay::from_micros(us),
    }
}

fn op_peer(sender: u8, counter: u64, packet: &[u8]) -> Vec<u8> {
    let mut v = vec![1, sender];
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(packet);
    v
}

fn op_client(slot: u8, counter: u64, packet: &[u8]) -> Vec<u8> {
    let mut v = vec![2, slot];
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(packet);
    v
}

fn op_pull(slot: u8, counter: u64, other: u8, acks: &[u64]) -> Vec<u8> {
    let mut v = vec![4, slot];
    v.extend_from_slice(&counter.to_be_bytes());
    v.push(other | acks.len() as u8);
    for a in acks {
        v.extend_from_slice(&a.to_be_bytes());
    }
    v
}

fn op_time(units_of_64_us: u16) -> Vec<u8> {
    let mut v = vec![5];
    v.extend_from_slice(&units_of_64_us.to_be_bytes());
    v
}

/// The plaintext body of a pull request frame.
fn pull_body(request: &PullRequest) -> Vec<u8> {
    let g = Geometry::DEFAULT;
    let key = LinkKey::from_bytes(&fixed::access_key(0));
    let mut frame = vec![0u8; g.frame_len()];
    request.seal(&g, &key, 0, 1, &mut frame).unwrap();
    let (_, body) = key.open_in_place(&mut frame).unwrap();
    body.to_vec()
}

fn node_datagram() -> Seeds {
    let to3 = packet(relay(fixed::peer_id(3), 1_000), 1);
    let to1_long = packet(relay(fixed::peer_id(1), 1_000_000), 2);
    let to2 = packet(relay(fixed::peer_id(2), 10), 3);
    let deliver = packet(
        RoutingCommand::Deliver {
            mailbox: fixed::mailbox(0),
            delay: Delay::from_micros(10),
        },
        4,
    );
    let drop = packet(RoutingCommand::Drop, 5);
    let over_cap = packet(relay(fixed::peer_id(3), u32::MAX), 6);
    let loop_back = packet(
        RoutingCommand::Recipient {
            kind: RecipientKind::Loop,
            id: *b"fuzz-recipient-1",
        },
        7,
    );
    let body = pull_body(&PullRequest {
        request_id: 9,
        mailbox: fixed::mailbox(1),
        rates: fixed::RATES,
        acks: vec![1, 2, 3],
    });
    let mut raw_pull = vec![3, 1];
    raw_pull.extend_from_slice(&44u64.to_be_bytes());
    raw_pull.extend_from_slice(&body);
    let cat = |parts: &[Vec<u8>]| parts.concat();
    vec![
        (
            "seed_relay_from_peer".into(),
            cat(&[op_peer(1, 100, &to3), op_time(100)]),
        ),
        (
            "seed_deliver_then_pull".into(),
            cat(&[op_peer(2, 5, &deliver), op_pull(0, 9, 0, &[0, 1])]),
        ),
        (
            "seed_client_relay_then_replay".into(),
            cat(&[op_client(0, 7, &to3), op_time(40), vec![7]]),
        ),
        (
            "seed_reload_while_waiting".into(),
            cat(&[
                op_peer(1, 1, &to1_long),
                vec![6, 1],
                op_time(200),
                vec![6, 0],
            ]),
        ),
        (
            "seed_cover_and_refusals".into(),
            cat(&[
                op_peer(1, 2, &drop),
                op_peer(2, 3, &loop_back),
                op_peer(1, 4, &to2),
                op_peer(1, 5, &over_cap),
                op_peer(4, 6, &to3),
                op_client(2, 1, &to3),
                op_client(1, 1, &deliver),
            ]),
        ),
        ("seed_raw_pull_body".into(), raw_pull),
        (
            "seed_junk".into(),
            cat(&[vec![0, 0, 20, 1], vec![0xab; 20], vec![0, 5, 0xcc, 2]]),
        ),
        ("seed_foreign_pull".into(), op_pull(1, 3, 0x80 | 0x10, &[7])),
    ]
}

fn op_delivery(counter: u64, pick: u8, index: u8, k: u8, id: u64, real: bool) -> Vec<u8> {
    let mut v = vec![2];
    v.extend_from_slice(&counter.to_be_bytes());
    v.push(pick);
    v.push(index);
    v.push(k);
    v.extend_from_slice(&id.to_be_bytes());
    v.push(u8::from(real));
    v.extend_from_slice(&vec![0x5a; Geometry::DEFAULT.packet_len()]);
    v
}

fn access_session() -> Seeds {
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let mut flipped = op_delivery(9, 0, 0, 2, 77, true);
    flipped[0] = 3;
    flipped.extend_from_slice(&100u16.to_be_bytes());
    let many: Vec<Vec<u8>> = (0..12u64)
        .map(|i| op_delivery(20 + i, 0, 0, 1, i, true))
        .collect();
    vec![
        (
            "seed_message_duplicate_dummy_replay".into(),
            cat(&[
                vec![0],
                op_delivery(1, 0, 0, 3, 42, true),
                op_delivery(2, 0, 1, 3, 42, true),
                op_delivery(3, 0, 2, 3, 0, false),
                vec![4],
                vec![0],
            ]),
        ),
        (
            "seed_bit_flip_and_unknown_request".into(),
            cat(&[vec![0], flipped, op_delivery(10, 0x80, 0, 1, 1, true)]),
        ),
        (
            "seed_tables_fill".into(),
            cat(&[vec![0], many.concat(), vec![0, 0]]),
        ),
        (
            "seed_raw".into(),
            cat(&[
                vec![1, 0, 8],
                vec![4; 8],
                vec![0],
                op_delivery(5, 0, 3, 2, 1, true),
            ]),
        ),
    ]
}

fn provider_pull() -> Seeds {
    let g = Geometry::DEFAULT;
    let stores = |which: &[u8]| {
        let mut v = vec![which.len() as u8];
        for (i, w) in which.iter().enumerate() {
            v.push(*w);
            v.extend_from_slice(&vec![i as u8 + 1; g.packet_len()]);
        }
        v
    };
    let pull = |acks: Vec<u64>, mailbox: MailboxId| {
        pull_body(&PullRequest {
            request_id: 5,
            mailbox,
            rates: fixed::RATES,
            acks,
        })
    };
    vec![
        (
            "seed_three_stored".into(),
            [stores(&[0, 0, 1]), pull(vec![], fixed::mailbox(0))].concat(),
        ),
        (
            "seed_acks".into(),
            [
                stores(&[0, 0, 0, 2]),
                pull(vec![0, 1, 2, 3, u64::MAX], fixed::mailbox(0)),
            ]
            .concat(),
        ),
        (
            "seed_over_k".into(),
            [stores(&[0; 7]), pull(vec![1], fixed::mailbox(0))].concat(),
        ),
        (
            "seed_foreign_mailbox".into(),
            [stores(&[1]), pull(vec![0], fixed::mailbox(1))].concat(),
        ),
    ]
}

fn config_file(repo: &Path) -> Seeds {
    ["mix.example.toml", "provider.example.toml"]
        .iter()
        .map(|name| {
            let text = std::fs::read(repo.join("systemd").join(name)).unwrap();
            (format!("seed_{}", name.replace('.', "_")), text)
        })
        .collect()
}

/// Key directories and descriptors for a small network, in `scratch`.
fn descriptors(scratch: &Path) -> Vec<NodeDescriptor> {
    let epoch_s = 3600;
    let first = epoch_at(NOW_S, epoch_s);
    (0..4u16)
        .map(|i| {
            let dir = scratch.join(format!("node{i}"));
            keyfile::keygen_at(&dir, Some(fixed::addr(9000 + i)), epoch_s, first, 2)
                .unwrap()
                .descriptor
        })
        .collect()
}

fn topology_file(scratch: &Path) -> Seeds {
    let d = descriptors(scratch);
    let placed = vec![
        (d[0].clone(), Role::Provider, 0),
        (d[1].clone(), Role::Mix, 1),
        (d[2].clone(), Role::Mix, 2),
        (d[3].clone(), Role::Provider, 0),
    ];
    let params = BuildParams {
        serial: 1,
        valid_from: NOW_S - 60,
        valid_until: NOW_S + 86_400,
        layers: 2,
        network: loopix_directory::NetworkParams::for_layers(2),
    };
    let file = TopologyFile::build(params, &placed, &operator()).unwrap();
    let text = file.to_toml().unwrap();
    let tampered = text.replacen("serial = 1", "serial = 2", 1);
    vec![
        ("seed_signed_document".into(), text.into_bytes()),
        ("seed_tampered_serial".into(), tampered.into_bytes()),
    ]
}

fn registration_file() -> Seeds {
    let registration = Registration {
        provider_id: NodeId([0x41; 16]),
        provider_address: fixed::addr(7000),
        slot: 3,
        mailbox: fixed::mailbox(0),
        access_key: fixed::access_key(0),
        operator_key: operator().public(),
    };
    let address = Address {
        provider: NodeId([0x41; 16]),
        mailbox: fixed::mailbox(0),
        key: PublicKey::from_bytes([9; 32]),
    };
    let entry = format!(
        "slot = 3\nname = \"alice\"\nmailbox = \"{}\"\naccess_key = \"{}\"\n",
        "30".repeat(16),
        "20".repeat(16)
    );
    let with = |b: u8, t: String| [vec![b], t.into_bytes()].concat();
    vec![
        ("seed_registration".into(), with(0, registration.to_toml())),
        ("seed_registry_entry".into(), with(1, entry)),
        ("seed_address_file".into(), with(2, address.to_toml())),
        ("seed_address_id".into(), with(3, address.to_id())),
    ]
}

fn key_files(scratch: &Path) -> Seeds {
    let d = descriptors(&scratch.join("keys"));
    let node =
        std::fs::read_to_string(scratch.join("keys").join("node0").join("node.toml")).unwrap();
    drop(d);
    let with = |b: u8, t: String| [vec![b], t.into_bytes()].concat();
    vec![
        (
            "seed_secret_hex".into(),
            with(0, format!("{}\n", "ab".repeat(32))),
        ),
        (
            "seed_identity".into(),
            with(1, operator().to_hex().to_string()),
        ),
        ("seed_public".into(), with(2, "cd".repeat(32))),
        ("seed_descriptor".into(), with(3, node)),
    ]
}
