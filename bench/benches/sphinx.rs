//! Criterion benchmarks of the packet path: building a message packet (3 and
//! 5 hops), processing one hop (unwrap + finish on a fresh copy of a
//! first-hop packet), one X25519 for reference, and sealing / opening a link
//! frame, for the default and jumbo geometries.
//!
//! Run with `cargo bench -p loopix-bench`. Keys come from a seeded ChaCha20
//! RNG, so every run measures the same packets.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loopix_bench::{hops, message_commands, nodes};
use loopix_crypto::{sphinx, Delay, Geometry, LinkKey, MailboxId, RoutingCommand};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const GEOMETRIES: [(&str, Geometry); 2] =
    [("default", Geometry::DEFAULT), ("jumbo", Geometry::JUMBO)];
const DELAYS: [Delay; 4] = [Delay::from_micros(50_000); 4];
const MAILBOX: MailboxId = MailboxId([0x22; 16]);
const MESSAGE_ID: [u8; 16] = [0x11; 16];

/// Packet creation for a 3-hop and a 5-hop message path, with route keys
/// prepared once outside the timed loop (as a client does per topology).
fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("sphinx/build");
    group.throughput(Throughput::Elements(1));
    for (name, g) in GEOMETRIES {
        for n in [3usize, 5] {
            let net = nodes(&mut ChaCha20Rng::seed_from_u64(1), n);
            let cmds = message_commands(&net, &DELAYS, MAILBOX, MESSAGE_ID);
            let path = hops(&net, &cmds);
            let msg = vec![0x5a; g.message_capacity()];
            let mut out = vec![0u8; g.packet_len()];
            let mut rng = ChaCha20Rng::seed_from_u64(2);
            group.bench_function(BenchmarkId::new(name, format!("{n}-hops")), |b| {
                b.iter(|| {
                    sphinx::build(&g, black_box(&path), black_box(&msg), &mut rng, &mut out)
                        .expect("a valid Loopix path and a message that fits");
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

/// One hop: copy the first-hop packet of a 5-hop path into the working
/// buffer, then unwrap, read the replay tag, finish. The 1344-byte copy is
/// inside the timed loop (tens of nanoseconds), as in `peer-compare`.
fn hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("sphinx/hop");
    group.throughput(Throughput::Elements(1));
    for (name, g) in GEOMETRIES {
        let net = nodes(&mut ChaCha20Rng::seed_from_u64(3), 5);
        let cmds = message_commands(&net, &DELAYS, MAILBOX, MESSAGE_ID);
        let path = hops(&net, &cmds);
        let mut first = vec![0u8; g.packet_len()];
        sphinx::build(
            &g,
            &path,
            b"bench",
            &mut ChaCha20Rng::seed_from_u64(4),
            &mut first,
        )
        .expect("a valid Loopix path");
        let mut buf = first.clone();
        let out = sphinx::process(&g, &net[0].secret, &mut buf).expect("authentic packet");
        assert!(matches!(out.command, RoutingCommand::Relay { next, .. } if next == net[1].id));

        let secret = &net[0].secret;
        group.bench_function(BenchmarkId::new(name, "relay"), |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&first));
                let u = sphinx::unwrap(&g, secret, &buf).expect("authentic packet");
                black_box(u.replay_tag());
                black_box(u.finish(&mut buf).expect("authentic packet"))
            })
        });
    }
    group.finish();
}

/// One X25519 with a static key through `SecretKey::diffie_hellman`, the
/// same aws-lc call a hop makes twice: the floor a hop is compared with.
fn x25519(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let net = nodes(&mut rng, 2);
    let peer = net[1].secret.public_key();
    c.bench_function("x25519/diffie_hellman", |b| {
        b.iter(|| {
            net[0]
                .secret
                .diffie_hellman(black_box(&peer))
                .expect("an honest peer key")
        })
    });
}

/// Seal and open one link frame carrying a default-size packet.
fn link(c: &mut Criterion) {
    let g = Geometry::DEFAULT;
    let key = LinkKey::from_bytes(&[7u8; 16]);
    let packet = vec![0xa5u8; g.packet_len()];
    let mut frame = vec![0u8; g.frame_len()];
    let mut group = c.benchmark_group("link");
    group.throughput(Throughput::Bytes(g.frame_len() as u64));
    let mut counter = 0u64;
    group.bench_function("seal/default", |b| {
        b.iter(|| {
            counter += 1;
            key.seal(3, counter, black_box(&packet), &mut frame)
                .expect("frame buffer has the frame length");
        })
    });
    key.seal(3, 1, &packet, &mut frame)
        .expect("frame buffer has the frame length");
    group.bench_function("open/default", |b| {
        b.iter(|| {
            let (header, body) = key.open(black_box(&frame)).expect("authentic frame");
            black_box((header, body.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, build, hop, x25519, link);
criterion_main!(benches);
