//! The fuzz targets' checked-in seed corpus as a regression suite on stable:
//! every file under `crypto/fuzz/corpus/<target>/` goes through the same
//! body as the libFuzzer target (`crypto/fuzz/src/bodies.rs`), and the
//! valid seeds must still be accepted by the fixed keys.
//!
//! The seeds are generated here, deterministically:
//! `LOOPIX_WRITE_CORPUS=1 cargo test -p loopix-crypto --release --test
//! fuzz_corpus -- --ignored write_corpus` rewrites them (after a change of
//! the packet or frame format). Files named `bug_*` are inputs the fuzzer
//! found, named after their bug (rustls's habit); they are kept as they are.
//! `open_frame/bug_commit_above_highest_overflow.bin` is the input that
//! found `ReplayWindow::commit` subtracting before it compared (the same
//! bytes as `valid_empty_frame.bin`: its tag bytes, read as window steps,
//! move the counter above the highest seen).
//!
//! Owns: this file and the seed files under `crypto/fuzz/corpus/`.

#[path = "../fuzz/src/bodies.rs"]
mod bodies;

use std::fs;
use std::path::{Path, PathBuf};

use loopix_crypto::link::FRAME_OVERHEAD;
use loopix_crypto::sphinx::{self, Hop, BETA_OFFSET};
use loopix_crypto::{
    Delay, FrameHeader, Geometry, LinkKey, MailboxId, NodeId, RecipientKind, RouteKey,
    RoutingCommand, SecretKey, Surb,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Most seed files a target may keep in the tree.
const MAX_SEEDS: usize = 30;
/// Fewest seed files a target must have.
const MIN_SEEDS: usize = 5;
/// Largest seed file.
const MAX_SEED_BYTES: usize = 4096;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Every seed of `target`, sorted by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    out.sort();
    out
}

fn check_corpus_shape(target: &str, files: &[(String, Vec<u8>)]) {
    assert!(
        (MIN_SEEDS..=MAX_SEEDS).contains(&files.len()),
        "{target}: {} seeds; keep {MIN_SEEDS} to {MAX_SEEDS} (fuzzer growth belongs in a scratch directory)",
        files.len()
    );
    for (name, bytes) in files {
        assert!(
            bytes.len() < MAX_SEED_BYTES,
            "{target}/{name} is {} bytes",
            bytes.len()
        );
    }
}

#[test]
fn process_packet_corpus_runs_clean() {
    let files = seeds("process_packet");
    check_corpus_shape("process_packet", &files);
    for (_name, bytes) in &files {
        bodies::process_packet(bytes);
    }
}

#[test]
fn open_frame_corpus_runs_clean() {
    let files = seeds("open_frame");
    check_corpus_shape("open_frame", &files);
    for (_name, bytes) in &files {
        bodies::open_frame(bytes);
    }
}

/// The `valid_*` seeds still reach deep code: each packet is accepted by the
/// fixed node key at every hop, each frame by the fixed link key. If this
/// fails after a deliberate format change, regenerate the corpus (see the
/// module documentation).
#[test]
fn valid_seeds_are_still_valid() {
    let g = Geometry::DEFAULT;
    let secret = bodies::node_secret();
    let mut packets = 0;
    for (name, bytes) in seeds("process_packet") {
        if !name.starts_with("valid_") {
            continue;
        }
        packets += 1;
        let mut pkt = bytes.clone();
        for hop in 0..g.max_hops() {
            let out = sphinx::process(&g, &secret, &mut pkt).unwrap_or_else(|e| {
                panic!("{name} refused at hop {hop}: {e}; regenerate the corpus")
            });
            if !out.command.is_forwarding() {
                break;
            }
        }
    }
    assert!(packets >= 3, "too few valid packet seeds");
    let key = bodies::link_key();
    let mut frames = 0;
    for (name, bytes) in seeds("open_frame") {
        if name.starts_with("valid_") {
            frames += 1;
            key.open(&bytes)
                .unwrap_or_else(|e| panic!("{name} refused: {e}; regenerate the corpus"));
        }
    }
    assert!(frames >= 3, "too few valid frame seeds");
}

/// The fixed node's prepared key and an id for it.
fn fixed_node() -> (RouteKey, NodeId) {
    let route = RouteKey::new(&bodies::node_secret().public_key()).expect("honest key");
    (route, NodeId(*b"fuzz-node-id-001"))
}

/// Build a packet along `commands`, every hop the fixed node.
fn packet(route: &RouteKey, commands: &[RoutingCommand], msg: &[u8], seed: u64) -> Vec<u8> {
    let g = Geometry::DEFAULT;
    let hops: Vec<Hop<'_>> = commands
        .iter()
        .map(|c| Hop {
            key: route,
            command: *c,
        })
        .collect();
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(
        &g,
        &hops,
        msg,
        &mut ChaCha20Rng::seed_from_u64(seed),
        &mut pkt,
    )
    .expect("valid path");
    pkt
}

/// The seeds of `process_packet`, by file name.
fn packet_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let g = Geometry::DEFAULT;
    let (route, id) = fixed_node();
    let relay = |us: u32| RoutingCommand::Relay {
        next: id,
        delay: Delay::from_micros(us),
    };
    let deliver = RoutingCommand::Deliver {
        mailbox: MailboxId(*b"fuzz-mailbox-001"),
        delay: Delay::from_micros(1_000),
    };
    let recipient = |kind| RoutingCommand::Recipient {
        kind,
        id: *b"fuzz-recipient-1",
    };
    let six = packet(
        &route,
        &[
            relay(0),
            relay(1000),
            relay(250_000),
            relay(u32::MAX),
            deliver,
            recipient(RecipientKind::Message),
        ],
        b"a fuzz seed message through six hops of one node",
        1,
    );
    let drop1 = packet(&route, &[RoutingCommand::Drop], &[], 2);
    let loop3 = packet(
        &route,
        &[relay(7), relay(8), recipient(RecipientKind::Loop)],
        &[],
        3,
    );
    let full1 = packet(
        &route,
        &[recipient(RecipientKind::Message)],
        &vec![0x5a; g.message_capacity()],
        4,
    );

    // A SURB reply through the fixed node, and the SURB itself.
    let surb_path: Vec<Hop<'_>> = [relay(1), deliver, recipient(RecipientKind::Reply)]
        .iter()
        .map(|c| Hop {
            key: &route,
            command: *c,
        })
        .collect();
    let (surb, _keys) =
        Surb::new(&g, id, &surb_path, &mut ChaCha20Rng::seed_from_u64(5)).expect("valid SURB path");
    let mut reply = vec![0u8; g.packet_len()];
    surb.write_reply(&g, b"a fuzz seed reply", &mut reply)
        .expect("fits");

    // A valid packet for another node: refused with a bad MAC.
    let other = SecretKey::from_bytes([0x33; 32]);
    let other_route = RouteKey::new(&other.public_key()).expect("honest key");
    let for_other = packet(&other_route, &[RoutingCommand::Drop], b"", 6);

    let mut seeds = vec![
        ("valid_message_6hop.bin", six.clone()),
        ("valid_drop_1hop.bin", drop1),
        ("valid_loop_3hop.bin", loop3),
        ("valid_recipient_full_message.bin", full1.clone()),
        ("valid_reply_3hop.bin", reply),
    ];
    seeds.extend(broken_seeds(&six, &full1));
    seeds.push(("for_other_node.bin", for_other));
    seeds.push(("surb_bytes.bin", surb.to_bytes()));
    seeds
}

/// Damaged copies of the valid six-hop message `six` and of the full
/// one-hop message `full1`: wrong lengths, low-order and non-canonical
/// alphas, flipped header, MAC and payload bits.
fn broken_seeds(six: &[u8], full1: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let g = Geometry::DEFAULT;
    let with_alpha = |alpha: [u8; 32]| {
        let mut p = six.to_vec();
        p[..32].copy_from_slice(&alpha);
        p
    };
    let mut one = [0u8; 32];
    one[0] = 1;
    let order8: [u8; 32] =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
            .expect("hex")
            .try_into()
            .expect("32 bytes");
    let mut top_bit = [0u8; 32];
    top_bit.copy_from_slice(&six[..32]);
    top_bit[31] |= 0x80;
    let mut p_plus_1 = [0xffu8; 32];
    p_plus_1[0] = 0xee;
    p_plus_1[31] = 0x7f;

    let mut header_flip = six.to_vec();
    header_flip[BETA_OFFSET + 5] ^= 0x10;
    let mut payload_flip = full1.to_vec();
    payload_flip[g.header_len() + 100] ^= 0x01;
    let mut gamma_flip = six.to_vec();
    gamma_flip[sphinx::GAMMA_OFFSET] ^= 0x80;

    vec![
        ("truncated_by_one.bin", six[..six.len() - 1].to_vec()),
        ("longer_by_one.bin", [six, &[0]].concat()),
        ("alpha_only.bin", six[..32].to_vec()),
        ("empty.bin", Vec::new()),
        ("all_zeros.bin", vec![0u8; g.packet_len()]),
        ("all_ff.bin", vec![0xffu8; g.packet_len()]),
        ("low_order_alpha_one.bin", with_alpha(one)),
        ("low_order_alpha_order8.bin", with_alpha(order8)),
        ("noncanonical_alpha_top_bit.bin", with_alpha(top_bit)),
        ("noncanonical_alpha_p_plus_1.bin", with_alpha(p_plus_1)),
        ("header_bit_flipped.bin", header_flip),
        ("gamma_bit_flipped.bin", gamma_flip),
        ("payload_bit_flipped.bin", payload_flip),
    ]
}

fn seal(key: &LinkKey, sender: u32, counter: u64, packet: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_OVERHEAD + packet.len()];
    key.seal(sender, counter, packet, &mut frame)
        .expect("sized exactly");
    frame
}

/// The seeds of `open_frame`, by file name.
fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let key = bodies::link_key();
    let (route, _) = fixed_node();
    let pkt = packet(&route, &[RoutingCommand::Drop], b"", 10);
    let full = seal(&key, 7, 42, &pkt);

    // Window steps after the header: (flags, delta u16 BE); flags bit 0 =
    // behind the highest, bit 1 = not authentic (see `bodies::open_frame`).
    let steps: &[(u8, u16)] = &[
        (0, 1),    // ahead by one
        (1, 1),    // the previous counter: new
        (1, 1),    // the same again: replay
        (0, 1023), // ahead by the window less one
        (1, 1023), // at the window's edge: new
        (1, 1024), // just past the edge: too old
        (2, 5),    // ahead but forged: not committed
        (0, 5),    // the same, authentic: new
        (0, 2048), // jump past a whole window
        (1, 2048), // far behind: too old
        (1, 0),    // the highest itself: replay
    ];
    let walk: Vec<u8> = steps
        .iter()
        .flat_map(|&(f, d)| [f, (d >> 8) as u8, d as u8])
        .collect();

    let mut unknown_kind = full.clone();
    unknown_kind[0] = 0x02;
    let mut tag_flip = full.clone();
    let last = tag_flip.len() - 1;
    tag_flip[last] ^= 0x01;
    let mut alpha_flip = full.clone();
    alpha_flip[loopix_crypto::link::FRAME_ALPHA_OFFSET] ^= 0x01;
    let mut counter_flip = full.clone();
    counter_flip[12] ^= 0x01;
    let other = seal(&LinkKey::from_bytes(&[0x77; 16]), 7, 42, &pkt);
    let mut kind_then_zeros = vec![0u8; full.len()];
    kind_then_zeros[0] = loopix_crypto::link::KIND_PACKET;

    let frames = vec![
        ("valid_packet_frame.bin", full.clone()),
        ("valid_empty_frame.bin", seal(&key, 0, 0, &[])),
        (
            "valid_counter_max.bin",
            seal(&key, u32::MAX, u64::MAX, &[0xab; 64]),
        ),
        ("valid_window_walk.bin", seal(&key, 1, 5000, &walk)),
        ("valid_window_walk_from_zero.bin", seal(&key, 2, 0, &walk)),
        ("truncated_by_one.bin", full[..full.len() - 1].to_vec()),
        ("too_short.bin", full[..FRAME_OVERHEAD - 1].to_vec()),
        ("header_only.bin", full[..13].to_vec()),
        ("empty.bin", Vec::new()),
        ("unknown_kind.bin", unknown_kind),
        ("tag_bit_flipped.bin", tag_flip),
        ("alpha_bit_flipped.bin", alpha_flip),
        ("counter_bit_flipped.bin", counter_flip),
        ("other_key.bin", other),
        ("all_zeros.bin", vec![0u8; full.len()]),
        ("kind_then_zeros.bin", kind_then_zeros),
    ];
    for (name, f) in &frames {
        if name.starts_with("valid_") {
            assert!(FrameHeader::peek(f).is_ok());
        }
    }
    frames
}

/// Rewrite the seed corpus. Ignored: run it by hand with
/// `LOOPIX_WRITE_CORPUS=1` (see the module documentation).
#[test]
#[ignore = "writes files; run with LOOPIX_WRITE_CORPUS=1 to regenerate the seeds"]
fn write_corpus() {
    if std::env::var_os("LOOPIX_WRITE_CORPUS").is_none() {
        eprintln!("set LOOPIX_WRITE_CORPUS=1 to write the corpus");
        return;
    }
    for (target, files) in [
        ("process_packet", packet_seeds()),
        ("open_frame", frame_seeds()),
    ] {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for entry in fs::read_dir(&dir).expect("read the corpus directory") {
            let path = entry.expect("directory entry").path();
            // Inputs the fuzzer found (`bug_*`, named after their bug) stay.
            let found = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bug_"));
            if !found {
                fs::remove_file(path).expect("remove an old seed");
            }
        }
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
}

/// The generator and the checked-in seeds agree on what the seeds are for:
/// every generated seed also runs clean through the target bodies.
#[test]
fn generated_seeds_run_clean() {
    for (_, bytes) in packet_seeds() {
        bodies::process_packet(&bytes);
    }
    for (_, bytes) in frame_seeds() {
        bodies::open_frame(&bytes);
    }
}
