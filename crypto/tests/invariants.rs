//! The packet format's invariants, each a test that fails if it breaks:
//! constant length, header MAC catches every header bit flip, payload
//! tampering is detected by the recipient, replays give the same tag, SURB
//! replies round-trip, bad bytes give errors.

mod common;

use common::*;
use loopix_crypto::sphinx::{self, BETA_OFFSET};
use loopix_crypto::{payload, Geometry, RecipientKind, RoutingCommand, SphinxError, Surb};

/// Build a 6-hop message packet, then run it through every hop, checking
/// the command each hop reads and that the length never changes.
#[test]
fn six_hop_message_round_trip_every_geometry() {
    for g in geometries() {
        let net = nodes(1, 6);
        let cmds = message_commands(&net, &[1000, 250_000, 7]);
        let path = hops(&net, &cmds);
        let msg = b"the recipient is the last sphinx layer";
        let mut pkt = vec![0u8; g.packet_len()];
        sphinx::build(&g, &path, msg, &mut rng(2), &mut pkt).expect("valid path");
        for (i, node) in net.iter().enumerate() {
            assert_eq!(pkt.len(), g.packet_len());
            let out = sphinx::process(&g, &node.secret, &mut pkt).expect("authentic");
            assert_eq!(out.command, cmds[i], "hop {i}");
        }
        let body = &pkt[g.header_len()..];
        assert_eq!(payload::decode(body), Ok(&msg[..]));
    }
}

#[test]
fn every_path_length_round_trips() {
    let g = Geometry::DEFAULT;
    let net = nodes(3, 6);
    for n in 1..=6 {
        let mut cmds = message_commands(&net[..n], &[10]);
        if n == 1 {
            cmds[0] = RoutingCommand::Drop;
        }
        let path = hops(&net[..n], &cmds);
        let mut pkt = vec![0u8; g.packet_len()];
        sphinx::build(&g, &path, b"x", &mut rng(n as u64), &mut pkt).expect("valid");
        for (i, node) in net[..n].iter().enumerate() {
            let out = sphinx::process(&g, &node.secret, &mut pkt).expect("authentic");
            assert_eq!(out.command, cmds[i], "path of {n}, hop {i}");
        }
    }
}

#[test]
fn drop_cover_ends_at_provider() {
    let g = Geometry::DEFAULT;
    let net = nodes(4, 5);
    let mut cmds = message_commands(&net, &[5]);
    cmds[3] = RoutingCommand::Relay {
        next: net[4].id,
        delay: loopix_crypto::Delay::ZERO,
    };
    cmds[4] = RoutingCommand::Drop;
    let path = hops(&net, &cmds);
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, &[], &mut rng(5), &mut pkt).expect("valid");
    for (i, node) in net.iter().enumerate() {
        let out = sphinx::process(&g, &node.secret, &mut pkt).expect("authentic");
        assert_eq!(out.command, cmds[i]);
    }
}

#[test]
fn header_bit_flip_fails_mac_at_next_hop() {
    let g = Geometry::DEFAULT;
    let net = nodes(6, 6);
    let cmds = message_commands(&net, &[100]);
    let path = hops(&net, &cmds);
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, b"m", &mut rng(7), &mut pkt).expect("valid");
    // Also test the packet as it leaves hop 0 (alpha blinded, beta shifted).
    let mut after_one = pkt.clone();
    sphinx::process(&g, &net[0].secret, &mut after_one).expect("authentic");
    for (start, next) in [(&pkt, 0usize), (&after_one, 1usize)] {
        for byte in 0..g.header_len() {
            for bit in 0..8 {
                let mut bad = start.clone();
                bad[byte] ^= 1 << bit;
                let r = sphinx::process(&g, &net[next].secret, &mut bad);
                assert!(
                    matches!(
                        r,
                        Err(SphinxError::BadMac
                            | SphinxError::NonCanonicalPoint
                            | SphinxError::LowOrderPoint)
                    ),
                    "flip of byte {byte} bit {bit} at hop {next}: {r:?}"
                );
                // The buffer is unchanged on error.
                let mut expect = start.clone();
                expect[byte] ^= 1 << bit;
                assert_eq!(bad, expect);
            }
        }
    }
}

#[test]
fn payload_bit_flip_is_noise_for_recipient() {
    let g = Geometry::DEFAULT;
    let net = nodes(8, 6);
    let cmds = message_commands(&net, &[100]);
    let path = hops(&net, &cmds);
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, b"do not tag me", &mut rng(9), &mut pkt).expect("valid");
    for pos in [0usize, 1, 31, 32, 33, 500, g.payload_len() - 1] {
        for tamper_at in [0usize, 3] {
            let mut p = pkt.clone();
            for (i, node) in net.iter().enumerate() {
                if i == tamper_at {
                    p[g.header_len() + pos] ^= 0x80;
                }
                // Mixes cannot see payload tampering: only the header is MACed.
                sphinx::process(&g, &node.secret, &mut p).expect("header intact");
            }
            assert_eq!(
                payload::decode(&p[g.header_len()..]),
                Err(SphinxError::BadPayload),
                "flip at payload byte {pos} before hop {tamper_at}"
            );
        }
    }
}

#[test]
fn replayed_packet_has_same_tag_other_packets_do_not() {
    let g = Geometry::DEFAULT;
    let net = nodes(10, 6);
    let cmds = message_commands(&net, &[100]);
    let path = hops(&net, &cmds);
    let mut a = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, b"a", &mut rng(11), &mut a).expect("valid");
    let mut b = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, b"a", &mut rng(12), &mut b).expect("valid");
    let tag_a1 = sphinx::unwrap(&g, &net[0].secret, &a)
        .expect("ok")
        .replay_tag();
    let tag_a2 = sphinx::unwrap(&g, &net[0].secret, &a.clone())
        .expect("ok")
        .replay_tag();
    let tag_b = sphinx::unwrap(&g, &net[0].secret, &b)
        .expect("ok")
        .replay_tag();
    assert_eq!(tag_a1, tag_a2);
    assert_ne!(tag_a1, tag_b);
    // The tag does not depend on the MAC or payload: a replay with a forged
    // tail still maps to the same tag, and is caught by the filter before the
    // second scalar mult.
    let mut forged = a.clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    forged[BETA_OFFSET] ^= 1;
    let tag_forged = sphinx::unwrap(&g, &net[0].secret, &forged)
        .expect("ok")
        .replay_tag();
    assert_eq!(tag_a1, tag_forged);
    // Processing reports the same tag it exposed before the MAC check.
    let out = sphinx::process(&g, &net[0].secret, &mut a).expect("authentic");
    assert_eq!(out.replay_tag, tag_a1);
}

#[test]
fn surb_reply_round_trips() {
    for g in geometries() {
        let net = nodes(13, 6);
        // Alice (net[5]) builds a SURB back to herself through net[0..5].
        let reply_id = [0x77u8; 16];
        let mut cmds = message_commands(&net, &[10, 20]);
        cmds[5] = RoutingCommand::Recipient {
            kind: RecipientKind::Reply,
            id: reply_id,
        };
        let path = hops(&net, &cmds);
        let (surb, keys) = Surb::new(&g, net[0].id, &path, &mut rng(14)).expect("valid");
        assert_eq!(keys.id(), reply_id);
        // The SURB travels inside a message as bytes.
        let bytes = surb.to_bytes();
        assert_eq!(bytes.len(), loopix_crypto::surb::surb_len(&g));
        let surb = Surb::from_bytes(&g, &bytes).expect("well formed");
        assert_eq!(surb.first_hop(), net[0].id);
        // Bob replies without knowing the path.
        let mut pkt = vec![0u8; g.packet_len()];
        surb.write_reply(&g, b"reply from bob", &mut pkt)
            .expect("fits");
        for (i, node) in net.iter().enumerate() {
            let out = sphinx::process(&g, &node.secret, &mut pkt).expect("authentic");
            assert_eq!(out.command, cmds[i]);
        }
        let body = &mut pkt[g.header_len()..];
        assert_eq!(keys.open_reply(body), Ok(&b"reply from bob"[..]));
        assert!(Surb::from_bytes(&g, &bytes[1..]).is_err());
    }
}

#[test]
fn invalid_paths_are_refused() {
    let g = Geometry::DEFAULT;
    let net = nodes(15, 7);
    let mut pkt = vec![0u8; g.packet_len()];
    let mut r = rng(16);
    let too_long = message_commands(&net, &[1]);
    assert_eq!(
        sphinx::build(&g, &hops(&net, &too_long), b"", &mut r, &mut pkt),
        Err(SphinxError::PathLength { hops: 7, max: 6 })
    );
    assert_eq!(
        sphinx::build(&g, &[], b"", &mut r, &mut pkt),
        Err(SphinxError::PathLength { hops: 0, max: 6 })
    );
    let mut relay_last = message_commands(&net[..3], &[1]);
    relay_last[2] = relay_last[0];
    assert!(matches!(
        sphinx::build(&g, &hops(&net[..3], &relay_last), b"", &mut r, &mut pkt),
        Err(SphinxError::InvalidPath(_))
    ));
    let mut drop_first = message_commands(&net[..3], &[1]);
    drop_first[0] = RoutingCommand::Drop;
    assert!(matches!(
        sphinx::build(&g, &hops(&net[..3], &drop_first), b"", &mut r, &mut pkt),
        Err(SphinxError::InvalidPath(_))
    ));
    let mut deliver_then_drop = message_commands(&net[..3], &[1]);
    deliver_then_drop[2] = RoutingCommand::Drop;
    assert!(matches!(
        sphinx::build(
            &g,
            &hops(&net[..3], &deliver_then_drop),
            b"",
            &mut r,
            &mut pkt
        ),
        Err(SphinxError::InvalidPath(_))
    ));
    let ok = message_commands(&net[..3], &[1]);
    let big = vec![0u8; g.message_capacity() + 1];
    assert!(matches!(
        sphinx::build(&g, &hops(&net[..3], &ok), &big, &mut r, &mut pkt),
        Err(SphinxError::MessageTooLong { .. })
    ));
    assert!(matches!(
        sphinx::build(&g, &hops(&net[..3], &ok), b"", &mut r, &mut pkt[1..]),
        Err(SphinxError::WrongLength { .. })
    ));
}

/// Every class of bad bytes named in the issue gets an error value.
#[test]
fn bad_bytes_are_errors_not_panics() {
    let g = Geometry::DEFAULT;
    let net = nodes(17, 6);
    let sk = &net[0].secret;
    let len = g.packet_len();
    // Truncated, oversized, empty.
    for l in [0, 1, 31, 32, len - 1, len + 1, 2 * len] {
        let mut v = vec![0x42u8; l];
        assert_eq!(
            sphinx::process(&g, sk, &mut v),
            Err(SphinxError::WrongLength {
                expected: len,
                got: l
            })
        );
    }
    // All zeros: alpha = 0 is a low-order point.
    let mut zeros = vec![0u8; len];
    assert_eq!(
        sphinx::process(&g, sk, &mut zeros),
        Err(SphinxError::LowOrderPoint)
    );
    // Other low-order points: u = 1 and the order-8 point.
    let order8 = hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
        .expect("hex");
    for alpha in [
        {
            let mut a = [0u8; 32];
            a[0] = 1;
            a.to_vec()
        },
        order8,
    ] {
        let mut p = vec![0u8; len];
        p[..32].copy_from_slice(&alpha);
        assert_eq!(
            sphinx::process(&g, sk, &mut p),
            Err(SphinxError::LowOrderPoint)
        );
    }
    // Non-canonical: top bit set, or u >= p.
    let mut p = vec![0xffu8; len];
    assert_eq!(
        sphinx::process(&g, sk, &mut p),
        Err(SphinxError::NonCanonicalPoint)
    );
    let mut p = vec![0u8; len];
    p[0] = 0xee; // p + 1
    p[1..31].fill(0xff);
    p[31] = 0x7f;
    assert_eq!(
        sphinx::process(&g, sk, &mut p),
        Err(SphinxError::NonCanonicalPoint)
    );
    // Random bytes with a valid point: bad MAC.
    let mut good = vec![0u8; len];
    let cmds = message_commands(&net, &[1]);
    sphinx::build(&g, &hops(&net, &cmds), b"", &mut rng(18), &mut good).expect("valid");
    let mut junk = good.clone();
    junk[40..].fill(0x5a);
    assert_eq!(sphinx::process(&g, sk, &mut junk), Err(SphinxError::BadMac));
    // A packet for another node: bad MAC.
    let mut other = good.clone();
    assert_eq!(
        sphinx::process(&g, &net[1].secret, &mut other),
        Err(SphinxError::BadMac)
    );
}

/// The shortest path: one hop that drops. (Forged command bytes under a
/// valid MAC are tested in `sphinx.rs`, which can build them.)
#[test]
fn single_hop_drop() {
    let g = Geometry::DEFAULT;
    let net = nodes(19, 1);
    let path = hops(&net, &[RoutingCommand::Drop]);
    let mut pkt = vec![0u8; g.packet_len()];
    sphinx::build(&g, &path, b"", &mut rng(20), &mut pkt).expect("valid");
    assert_eq!(
        sphinx::process(&g, &net[0].secret, &mut pkt).map(|p| p.command),
        Ok(RoutingCommand::Drop)
    );
}
