//! Known-answer vectors for the packet format and the link frame.
//!
//! `tests/vectors/*.json` are generated from fixed seeds by this file. The
//! test regenerates every case and compares byte for byte, so any change to
//! the wire format (key derivation, layout, ciphers) fails here until the
//! vectors are regenerated on purpose with `LOOPIX_UPDATE_VECTORS=1 cargo
//! test -p loopix-crypto --test vectors` and the change is explained in the
//! commit. Separately, each stored packet is processed from the file's own
//! bytes, so the files also check the node side on their own, as another
//! implementation would use them. Also here: RFC 8452 vectors for the
//! AES-128-GCM-SIV that link frames use.

mod common;

use std::path::PathBuf;

use common::*;
use loopix_crypto::link::FRAME_OVERHEAD;
use loopix_crypto::sphinx::{self, Hop};
use loopix_crypto::{
    payload, Delay, Geometry, LinkKey, MailboxId, NodeId, RecipientKind, RouteKey, RoutingCommand,
    SecretKey, Surb,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn command_json(c: &RoutingCommand) -> Value {
    match c {
        RoutingCommand::Relay { next, delay } => {
            json!({"type": "relay", "next": hex::encode(next.0), "delay_us": delay.as_micros()})
        }
        RoutingCommand::Deliver { mailbox, delay } => {
            json!({"type": "deliver", "mailbox": hex::encode(mailbox.0), "delay_us": delay.as_micros()})
        }
        RoutingCommand::Drop => json!({"type": "drop"}),
        RoutingCommand::Recipient { kind, id } => {
            let kind = match kind {
                RecipientKind::Message => "message",
                RecipientKind::Loop => "loop",
                RecipientKind::Reply => "reply",
            };
            json!({"type": "recipient", "kind": kind, "id": hex::encode(id)})
        }
    }
}

/// A node key from a 32-byte seed value, so the files list secrets plainly.
fn node(i: u8) -> (SecretKey, RouteKey, NodeId) {
    let secret = SecretKey::from_bytes(*blake3::hash(&[b'n', i]).as_bytes());
    let route = RouteKey::new(&secret.public_key()).expect("honest key");
    (secret, route, NodeId([i; 16]))
}

fn commands(kind: &str, ids: &[NodeId]) -> Vec<RoutingCommand> {
    let n = ids.len();
    (0..n)
        .map(|i| {
            let last = i + 1 == n;
            match kind {
                "message" if i + 2 == n => RoutingCommand::Deliver {
                    mailbox: MailboxId([0xb0; 16]),
                    delay: Delay::from_micros(1_500),
                },
                "message" if last => RoutingCommand::Recipient {
                    kind: RecipientKind::Message,
                    id: [0x01; 16],
                },
                "loop" if last => RoutingCommand::Recipient {
                    kind: RecipientKind::Loop,
                    id: [0x02; 16],
                },
                "reply" if last => RoutingCommand::Recipient {
                    kind: RecipientKind::Reply,
                    id: [0x03; 16],
                },
                "drop" if last => RoutingCommand::Drop,
                _ => RoutingCommand::Relay {
                    next: ids[i + 1],
                    delay: Delay::from_micros(1_000 * (i as u32 + 1) + 7),
                },
            }
        })
        .collect()
}

/// Generate one forward-packet case: build with a seeded RNG, then process
/// at every hop and record what each hop sees.
fn forward_case(name: &str, g: Geometry, kind: &str, hops_n: u8, seed: u64) -> Value {
    let nodes: Vec<_> = (1..=hops_n).map(node).collect();
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.2).collect();
    let cmds = commands(kind, &ids);
    let path: Vec<Hop<'_>> = nodes
        .iter()
        .zip(&cmds)
        .map(|(n, c)| Hop {
            key: &n.1,
            command: *c,
        })
        .collect();
    let message = format!("known answer: {name}").into_bytes();
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(
        &g,
        &path,
        &message,
        &mut ChaCha20Rng::seed_from_u64(seed),
        &mut pkt,
    )
    .expect("valid path");
    let packet_hex = hex::encode(&pkt);
    let mut hops_json = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let out = sphinx::process(&g, &n.0, &mut pkt).expect("authentic");
        assert_eq!(out.command, cmds[i]);
        hops_json.push(json!({
            "replay_tag": hex::encode(out.replay_tag.0),
            "command": command_json(&out.command),
            "output": hex::encode(&pkt),
        }));
    }
    let plaintext = match kind {
        "message" | "loop" => {
            let m = payload::decode(&pkt[g.header_len()..]).expect("decodes");
            assert_eq!(m, &message[..]);
            hex::encode(m)
        }
        _ => String::new(),
    };
    json!({
        "name": name,
        "geometry": {"max_hops": g.max_hops(), "payload_len": g.payload_len()},
        "rng": format!("ChaCha20Rng::seed_from_u64({seed})"),
        "nodes": nodes.iter().map(|n| json!({
            "secret": hex::encode(n.0.to_bytes()),
            "public": hex::encode(n.0.public_key().as_bytes()),
            "id": hex::encode(n.2 .0),
        })).collect::<Vec<_>>(),
        "message": hex::encode(&message),
        "packet": packet_hex,
        "hops": hops_json,
        "recipient_plaintext": plaintext,
    })
}

fn surb_case() -> Value {
    let g = Geometry::DEFAULT;
    let nodes: Vec<_> = (1..=6).map(node).collect();
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.2).collect();
    let mut cmds = commands("message", &ids);
    cmds[5] = RoutingCommand::Recipient {
        kind: RecipientKind::Reply,
        id: [0x03; 16],
    };
    let path: Vec<Hop<'_>> = nodes
        .iter()
        .zip(&cmds)
        .map(|(n, c)| Hop {
            key: &n.1,
            command: *c,
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let (surb, keys) = Surb::new(&g, ids[0], &path, &mut rng).expect("valid");
    let reply = b"known answer: reply through a SURB";
    let mut pkt = vec![0u8; g.packet_len()];
    surb.write_reply(&g, reply, &mut pkt).expect("fits");
    let reply_packet = hex::encode(&pkt);
    let mut tags = Vec::new();
    for n in &nodes {
        tags.push(hex::encode(
            sphinx::process(&g, &n.0, &mut pkt)
                .expect("authentic")
                .replay_tag
                .0,
        ));
    }
    let got = keys
        .open_reply(&mut pkt[g.header_len()..])
        .expect("reply decodes");
    assert_eq!(got, reply);
    json!({
        "name": "surb-reply-6-hops-default",
        "rng": "ChaCha20Rng::seed_from_u64(77)",
        "surb": hex::encode(surb.to_bytes()),
        "reply": hex::encode(reply),
        "reply_packet": reply_packet,
        "replay_tags": tags,
    })
}

fn link_case() -> Value {
    let a = SecretKey::from_bytes(*blake3::hash(b"link a").as_bytes());
    let b = SecretKey::from_bytes(*blake3::hash(b"link b").as_bytes());
    let key = LinkKey::derive(&a, &b.public_key()).expect("valid");
    let packet: Vec<u8> = (0..64u8).collect();
    let mut frame = vec![0u8; FRAME_OVERHEAD + packet.len()];
    key.seal(0x0102_0304, 0x0a0b_0c0d_0e0f_1011, &packet, &mut frame)
        .expect("sized");
    json!({
        "name": "link-frame",
        "secret_a": hex::encode(a.to_bytes()),
        "public_a": hex::encode(a.public_key().as_bytes()),
        "secret_b": hex::encode(b.to_bytes()),
        "public_b": hex::encode(b.public_key().as_bytes()),
        "sender": 0x0102_0304u32,
        "counter": 0x0a0b_0c0d_0e0f_1011u64,
        "packet": hex::encode(&packet),
        "frame": hex::encode(&frame),
    })
}

fn generate() -> Vec<(&'static str, Value)> {
    vec![
        (
            "sphinx_forward.json",
            json!([
                forward_case("message-6-hops-default", Geometry::DEFAULT, "message", 6, 1),
                forward_case("drop-5-hops-default", Geometry::DEFAULT, "drop", 5, 2),
                forward_case("loop-4-hops-jumbo", Geometry::JUMBO, "loop", 4, 3),
            ]),
        ),
        ("sphinx_surb.json", json!([surb_case()])),
        ("link_frame.json", json!([link_case()])),
    ]
}

#[test]
fn vectors_regenerate_byte_for_byte() {
    let update = std::env::var_os("LOOPIX_UPDATE_VECTORS").is_some();
    for (file, value) in generate() {
        let path = vectors_dir().join(file);
        let text = serde_json::to_string_pretty(&value).expect("serializes") + "\n";
        if update {
            std::fs::write(&path, &text).expect("write vectors");
            continue;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run with LOOPIX_UPDATE_VECTORS=1", path.display())
        });
        assert!(
            stored == text,
            "{file} differs from what the code generates: the wire format changed. \
             If on purpose, regenerate with LOOPIX_UPDATE_VECTORS=1 and say why in the commit."
        );
    }
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// Process each stored packet from the file's own bytes and keys.
#[test]
fn stored_packets_process_as_recorded() {
    let text = std::fs::read_to_string(vectors_dir().join("sphinx_forward.json")).expect("read");
    let cases: Value = serde_json::from_str(&text).expect("json");
    for case in cases.as_array().expect("array") {
        let g = Geometry::new(
            case["geometry"]["max_hops"].as_u64().expect("n") as usize,
            case["geometry"]["payload_len"].as_u64().expect("n") as usize,
        )
        .expect("valid geometry");
        let mut pkt = unhex(&case["packet"]);
        let nodes = case["nodes"].as_array().expect("nodes");
        for (n, hop) in nodes.iter().zip(case["hops"].as_array().expect("hops")) {
            let secret: [u8; 32] = unhex(&n["secret"]).try_into().expect("32 bytes");
            let out = sphinx::process(&g, &SecretKey::from_bytes(secret), &mut pkt)
                .expect("stored packet authenticates");
            assert_eq!(hex::encode(out.replay_tag.0), hop["replay_tag"]);
            assert_eq!(command_json(&out.command), hop["command"]);
            assert_eq!(hex::encode(&pkt), hop["output"], "{}", case["name"]);
        }
    }
    let text = std::fs::read_to_string(vectors_dir().join("link_frame.json")).expect("read");
    let cases: Value = serde_json::from_str(&text).expect("json");
    let case = &cases[0];
    let b: [u8; 32] = unhex(&case["secret_b"]).try_into().expect("32 bytes");
    let a_pub: [u8; 32] = unhex(&case["public_a"]).try_into().expect("32 bytes");
    let key = LinkKey::derive(
        &SecretKey::from_bytes(b),
        &loopix_crypto::PublicKey::from_bytes(a_pub),
    )
    .expect("valid");
    let frame = unhex(&case["frame"]);
    let (h, p) = key.open(&frame).expect("stored frame authenticates");
    assert_eq!(u64::from(h.sender), case["sender"].as_u64().expect("n"));
    assert_eq!(h.counter, case["counter"].as_u64().expect("n"));
    assert_eq!(p, &unhex(&case["packet"])[..]);
}

/// RFC 8452 appendix C.1, AEAD_AES_128_GCM_SIV, through the same aws-lc-rs
/// AEAD that link frames use.
#[test]
fn rfc8452_aes128_gcm_siv() {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM_SIV};
    let key_bytes = hex::decode("01000000000000000000000000000000").expect("hex");
    let nonce: [u8; 12] = hex::decode("030000000000000000000000")
        .expect("hex")
        .try_into()
        .expect("12");
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM_SIV, &key_bytes).expect("key"));
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut [])
        .expect("seal");
    assert_eq!(
        hex::encode(tag.as_ref()),
        "dc20e2d83f25705bb49e439eca56de25"
    );
    let mut data = hex::decode("0100000000000000").expect("hex");
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .expect("seal");
    data.extend_from_slice(tag.as_ref());
    assert_eq!(
        hex::encode(&data),
        "b5d839330ac7b786578782fff6013b815b287c22493a364c"
    );
}

/// The fixture helpers build valid paths (keeps `common` honest).
#[test]
fn fixture_paths_are_valid() {
    let net = nodes(99, 6);
    let cmds = message_commands(&net, &[1]);
    let mut pkt = vec![0u8; Geometry::DEFAULT.packet_len()];
    sphinx::build(
        &Geometry::DEFAULT,
        &hops(&net, &cmds),
        b"",
        &mut rng(1),
        &mut pkt,
    )
    .expect("valid");
}
