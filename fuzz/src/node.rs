//! `node_datagram`: a real provider shard (`loopix_engine::shard::Shard`)
//! on the simulated backend and a simulated clock, fed a program of
//! datagrams read from the input.
//!
//! Each operation is one byte (mod 8) and its arguments:
//! 0 a raw datagram (u16 length, bytes) from a neighbour's address;
//! 1 a link frame from sender index `b % 5` with a u64 counter around the
//!   packet's bytes, sealed with that index's key (index 4's key is nobody's);
//! 2 a client packet from slot `b % 3`, sealed with that slot's access key;
//! 3 a pull frame from slot `b % 3` whose body is the input's bytes;
//! 4 a well-formed pull request (own or another mailbox, up to 7 acks);
//! 5 time moves on by a u16 times 64 us;
//! 6 a topology reload (all neighbours, or one left out);
//! 7 the last datagram again, from another address (a replay).
//! After each operation the shard takes its turns at the current time, and
//! what it handed the inbox is checked.
//!
//! At the end time moves past the largest delay: nothing may stay on the
//! wheel, every datagram the shard received is accounted for (forwarded,
//! given to the inbox, consumed or dropped under a reason), and every frame
//! it sent went to an outbound neighbour, sealed under that neighbour's key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver};
use loopix_crypto::access::{self, PullRequest};
use loopix_crypto::link::{FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_PULL, TAG_LEN};
use loopix_crypto::{Geometry, MailboxId};
use loopix_engine::io::sim::SimNet;
use loopix_engine::metrics::{DropReason, ShardMetrics};
use loopix_engine::shard::{
    Clock, Control, EpochKey, InboxWork, ProviderHooks, Shard, ShardSettings,
};

use crate::fixed::{self, CLIENT_SLOTS, SENDER_INDICES};
use crate::Input;

/// Largest per-hop delay the node accepts.
const DELAY_CAP_US: u64 = 2_000_000;
/// Operations read from one input at most.
const MAX_OPS: usize = 256;

fn settings() -> ShardSettings {
    ShardSettings {
        index: 0,
        geometry: Geometry::DEFAULT,
        pool_packets: 32,
        batch: 16,
        delay_cap_us: DELAY_CAP_US,
        drain_us: 0,
        filter_items: 4096,
        filter_fp: 1e-6,
        filter_max_bytes: 1 << 20,
    }
}

/// What the inbox was handed, checked as it arrives.
#[derive(Default)]
struct InboxSeen {
    stores: u64,
    pulls: u64,
}

fn check_inbox(rx: &Receiver<InboxWork>, seen: &mut InboxSeen) {
    let g = Geometry::DEFAULT;
    while let Ok(work) = rx.try_recv() {
        match work {
            InboxWork::Store(_, packet) => {
                assert_eq!(packet.len(), g.packet_len(), "stored packet length");
                seen.stores += 1;
            }
            InboxWork::Pull { slot, request, .. } => {
                assert!(
                    slot < CLIENT_SLOTS - 1,
                    "pull from unregistered slot {slot}"
                );
                assert_eq!(
                    request.mailbox,
                    fixed::mailbox(slot),
                    "pull for a foreign mailbox"
                );
                assert!(request.acks.len() <= access::max_acks(&g));
                seen.pulls += 1;
            }
        }
    }
}

/// What one run did, for tests that check the seeds reach deep code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeOutcome {
    /// Frames forwarded to neighbours.
    pub forwarded: u64,
    /// Packets handed to the inbox for storage.
    pub stored: u64,
    /// Pulls handed to the inbox.
    pub pulls: u64,
    /// Loops that came back, and cover discarded.
    pub consumed: u64,
    /// Datagrams dropped, under any reason.
    pub dropped: u64,
}

/// See the module documentation.
pub fn node_datagram(data: &[u8]) {
    run(data);
}

/// [`node_datagram`], returning what the run did.
pub fn run(data: &[u8]) -> NodeOutcome {
    let g = Geometry::DEFAULT;
    let frame_len = g.frame_len();
    let net = SimNet::new();
    for i in 1..SENDER_INDICES {
        net.bind(fixed::peer_addr(i), 4096);
    }
    let backend = net.backend(fixed::node_addr(), 4096, 16);
    let now = Arc::new(AtomicU64::new(0));
    let (control, control_rx) = bounded(4);
    let (inbox_tx, inbox_rx) = bounded(64);
    let metrics = Arc::new(ShardMetrics::default());
    let mut shard = Shard::new(
        settings(),
        Box::new(backend),
        Arc::new(fixed::links(None)),
        vec![EpochKey {
            epoch: fixed::EPOCH,
            secret: fixed::node_secret(),
        }],
        control_rx,
        Arc::new(AtomicBool::new(false)),
        Arc::clone(&metrics),
    )
    .unwrap()
    .with_provider(ProviderHooks {
        clients: Arc::new(fixed::client_table()),
        inbox: inbox_tx,
    })
    .with_clock(Clock::Sim(Arc::clone(&now)), 1);

    let mut input = Input::new(data);
    let mut seen = InboxSeen::default();
    let mut last: Option<Vec<u8>> = None;
    let mut injected = 0u64;
    let mut t = 0u64;
    let mut frame = vec![0u8; frame_len];
    for _ in 0..MAX_OPS {
        let Some(op) = input.next_byte() else { break };
        let mut datagram: Option<(std::net::SocketAddr, Vec<u8>)> = None;
        match op % 8 {
            0 => {
                let len = usize::from(input.u16()) % (frame_len + 16);
                let from = fixed::peer_addr(u32::from(input.byte()) % SENDER_INDICES);
                datagram = Some((from, input.take(len).to_vec()));
            }
            1 => {
                let sender = u32::from(input.byte()) % SENDER_INDICES;
                let counter = input.u64();
                let packet = input.padded(g.packet_len());
                fixed::peer_key(sender)
                    .seal(sender, counter, &packet, &mut frame)
                    .unwrap();
                datagram = Some((fixed::peer_addr(sender), frame.clone()));
            }
            2 => {
                let slot = u32::from(input.byte()) % CLIENT_SLOTS;
                let counter = input.u64();
                let packet = input.padded(g.packet_len());
                let key = loopix_crypto::LinkKey::from_bytes(&fixed::access_key(slot));
                access::seal_client_packet(&key, slot, counter, &packet, &mut frame).unwrap();
                datagram = Some((fixed::addr(fixed::CLIENT_PORT), frame.clone()));
            }
            3 => {
                let slot = u32::from(input.byte()) % CLIENT_SLOTS;
                let counter = input.u64();
                let body = input.padded(frame_len - FRAME_OVERHEAD);
                frame[FRAME_HEADER_LEN..frame_len - TAG_LEN].copy_from_slice(&body);
                let key = loopix_crypto::LinkKey::from_bytes(&fixed::access_key(slot));
                key.seal_kind(KIND_PULL, slot, counter, &mut frame).unwrap();
                datagram = Some((fixed::addr(fixed::CLIENT_PORT), frame.clone()));
            }
            4 => {
                let slot = u32::from(input.byte()) % CLIENT_SLOTS;
                let counter = input.u64();
                let other = input.byte();
                let acks = (0..other % 8).map(|_| input.u64()).collect();
                let request = PullRequest {
                    request_id: counter,
                    mailbox: if other & 0x80 == 0 {
                        fixed::mailbox(slot)
                    } else {
                        MailboxId([other; 16])
                    },
                    acks,
                };
                let key = loopix_crypto::LinkKey::from_bytes(&fixed::access_key(slot));
                request.seal(&g, &key, slot, counter, &mut frame).unwrap();
                datagram = Some((fixed::addr(fixed::CLIENT_PORT), frame.clone()));
            }
            5 => t += u64::from(input.u16()) * 64,
            6 => {
                let without = match input.byte() % 4 {
                    0 => None,
                    k => Some(u32::from(k)),
                };
                // A full control channel only delays the reload.
                let _ = control.try_send(Control::Links(Arc::new(fixed::links(without))));
            }
            _ => {
                if let Some(d) = &last {
                    datagram = Some((fixed::addr(fixed::CLIENT_PORT + 1), d.clone()));
                }
            }
        }
        if let Some((from, bytes)) = datagram {
            if net.inject(from, fixed::node_addr(), &bytes) {
                injected += 1;
            }
            last = Some(bytes);
        }
        now.store(t, Ordering::Relaxed);
        while shard.turn(t) > 0 {}
        check_inbox(&inbox_rx, &mut seen);
    }

    // Everything scheduled falls due within the cap (plus the wheel's
    // granularity): nothing may stay behind.
    t += DELAY_CAP_US + 1_000_000;
    now.store(t, Ordering::Relaxed);
    while shard.turn(t) > 0 {}
    shard.turn(t);
    check_inbox(&inbox_rx, &mut seen);
    assert_eq!(
        shard.waiting(),
        0,
        "packets left on the wheel after every deadline"
    );

    let m = &metrics;
    let received = m.received.load(Ordering::Relaxed);
    assert_eq!(
        received, injected,
        "every injected datagram is received once"
    );
    let drops: u64 = DropReason::ALL.iter().map(|r| m.drops(*r)).sum();
    let forwarded = m.forwarded.load(Ordering::Relaxed);
    let consumed = m.loops_received.load(Ordering::Relaxed)
        + m.to_inbox.load(Ordering::Relaxed)
        + m.cover_discarded.load(Ordering::Relaxed);
    assert_eq!(
        forwarded + consumed + seen.pulls + drops,
        received,
        "a datagram is forwarded, consumed, a pull, or dropped under a reason"
    );
    assert_eq!(m.to_inbox.load(Ordering::Relaxed), seen.stores);

    // Frames sent: only to outbound neighbours, sealed under their keys
    // with this node's index.
    let mut out = 0u64;
    for i in 1..SENDER_INDICES {
        for (_, bytes) in net.take(fixed::peer_addr(i)) {
            assert_eq!(bytes.len(), frame_len);
            assert!(i == 1 || i == 3, "sent to index {i}, which is not outbound");
            let (header, _) = fixed::peer_key(i).open(&bytes).unwrap();
            assert_eq!(header.sender, 0);
            out += 1;
        }
    }
    assert_eq!(
        out, forwarded,
        "forwarded frames are the frames on the wire"
    );
    NodeOutcome {
        forwarded,
        stored: seen.stores,
        pulls: seen.pulls,
        consumed: m.loops_received.load(Ordering::Relaxed)
            + m.cover_discarded.load(Ordering::Relaxed),
        dropped: drops,
    }
}
