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
//! what it handed the inbox writer is checked. Pulls are answered by the
//! shard from an empty inbox (one per process; nothing is committed to it).
//!
//! At the end time moves past the largest delay: nothing may stay on the
//! wheel, every datagram the shard received is accounted for (forwarded,
//! given to the inbox, answered as a pull, consumed or dropped under a
//! reason), every frame it sent went to an outbound neighbour, sealed under
//! that neighbour's key, and every answer is `PULL_FRAMES` frames to the
//! client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{bounded, Receiver, Sender};
use loopix_crypto::access::{self, PullRequest};
use loopix_crypto::link::{FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_PULL, TAG_LEN};
use loopix_crypto::{Geometry, LinkKey, MailboxId};
use loopix_engine::io::sim::SimNet;
use loopix_engine::metrics::{DropReason, ProviderMetrics, ShardMetrics};
use loopix_engine::provider::inbox::{Inbox, InboxConfig, InboxReader};
use loopix_engine::provider::{Answerer, PullShared, WriterWork};
use loopix_engine::shard::{Clock, Control, EpochKey, ProviderHooks, Shard, ShardSettings};

use crate::fixed::{self, CLIENT_SLOTS, PULL_FRAMES, SENDER_INDICES};
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
        aqm: loopix_engine::aqm::AqmSettings::OFF,
    }
}

/// What the inbox writer was handed, checked as it arrives.
#[derive(Default)]
struct InboxSeen {
    stores: u64,
    acks: u64,
}

fn check_inbox(rx: &Receiver<WriterWork>, seen: &mut InboxSeen) {
    let g = Geometry::DEFAULT;
    while let Ok(work) = rx.try_recv() {
        match work {
            WriterWork::Store(_, packet, _) => {
                assert_eq!(packet.len(), g.packet_len(), "stored packet length");
                seen.stores += 1;
            }
            WriterWork::Acks(acks) => {
                for (mailbox, _, ids) in acks {
                    let own = (0..CLIENT_SLOTS - 1).any(|s| fixed::mailbox(s) == mailbox);
                    assert!(own, "acknowledgements for a foreign mailbox");
                    assert!(!ids.is_empty() && ids.len() <= access::max_acks(&g));
                    seen.acks += 1;
                }
            }
        }
    }
}

/// An empty inbox for every run in this process (answers read it; nothing
/// is committed to it).
fn empty_inbox() -> InboxReader {
    static INBOX: OnceLock<Inbox> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let path = crate::pull::scratch_path("node-inbox.redb");
            let _ = std::fs::remove_file(&path);
            Inbox::open(InboxConfig::new(path, 8, 1 << 20, 3600)).unwrap()
        })
        .reader()
}

/// What one run did, for tests that check the seeds reach deep code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeOutcome {
    /// Frames forwarded to neighbours.
    pub forwarded: u64,
    /// Packets handed to the inbox for storage.
    pub stored: u64,
    /// Pulls answered.
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

/// The fuzzed node and everything around it.
struct Harness {
    net: SimNet,
    now: Arc<AtomicU64>,
    t: u64,
    shard: Shard,
    control: Sender<Control>,
    inbox: Receiver<WriterWork>,
    metrics: Arc<ShardMetrics>,
    provider: Arc<ProviderMetrics>,
    seen: InboxSeen,
    injected: u64,
    last: Option<Vec<u8>>,
    frame: Vec<u8>,
}

impl Harness {
    fn new() -> Harness {
        let net = SimNet::new();
        for i in 1..SENDER_INDICES {
            net.bind(fixed::peer_addr(i), 4096);
        }
        let backend = net.backend(fixed::node_addr(), 4096, 16);
        let now = Arc::new(AtomicU64::new(0));
        let (control, control_rx) = bounded(4);
        let (inbox_tx, inbox) = bounded(64);
        let metrics = Arc::new(ShardMetrics::default());
        let provider = Arc::new(ProviderMetrics::default());
        net.bind(fixed::addr(fixed::CLIENT_PORT), 1 << 16);
        net.bind(fixed::addr(fixed::CLIENT_PORT + 1), 1 << 16);
        let shard = Shard::new(
            settings(),
            Box::new(backend),
            Arc::new(fixed::links(None)),
            vec![EpochKey {
                epoch: fixed::EPOCH,
                secret: fixed::node_secret(),
            }],
            // In memory, built by the shard: nothing here restarts.
            Vec::new(),
            control_rx,
            Arc::new(AtomicBool::new(false)),
            Arc::clone(&metrics),
        )
        .unwrap()
        .with_provider(ProviderHooks {
            clients: Arc::new(fixed::client_table()),
            writer: inbox_tx.clone(),
            answerer: Answerer::new(
                empty_inbox(),
                PullShared::new(1),
                inbox_tx,
                Arc::clone(&provider),
                Geometry::DEFAULT,
                PULL_FRAMES,
            ),
            answer_delay_us: 1_000,
            rates: Some(fixed::RATES),
        })
        .with_clock(Clock::Sim(Arc::clone(&now)), 1);
        Harness {
            net,
            now,
            t: 0,
            shard,
            control,
            inbox,
            metrics,
            provider,
            seen: InboxSeen::default(),
            injected: 0,
            last: None,
            frame: vec![0u8; Geometry::DEFAULT.frame_len()],
        }
    }

    /// Read one operation's arguments; the datagram it makes, if any.
    fn datagram(&mut self, op: u8, input: &mut Input<'_>) -> Option<(SocketAddr, Vec<u8>)> {
        let g = Geometry::DEFAULT;
        let frame_len = g.frame_len();
        let client_addr = fixed::addr(fixed::CLIENT_PORT);
        let frame = &mut self.frame;
        match op % 8 {
            0 => {
                let len = usize::from(input.u16()) % (frame_len + 16);
                let from = fixed::peer_addr(u32::from(input.byte()) % SENDER_INDICES);
                Some((from, input.take(len).to_vec()))
            }
            1 => {
                let sender = u32::from(input.byte()) % SENDER_INDICES;
                let counter = input.u64();
                let packet = input.padded(g.packet_len());
                fixed::peer_key(sender)
                    .seal(sender, counter, &packet, frame)
                    .unwrap();
                Some((fixed::peer_addr(sender), frame.clone()))
            }
            2 => {
                let slot = u32::from(input.byte()) % CLIENT_SLOTS;
                let counter = input.u64();
                let packet = input.padded(g.packet_len());
                let key = LinkKey::from_bytes(&fixed::access_key(slot));
                access::seal_client_packet(&key, slot, counter, &packet, frame).unwrap();
                Some((client_addr, frame.clone()))
            }
            3 => {
                let slot = u32::from(input.byte()) % CLIENT_SLOTS;
                let counter = input.u64();
                let body = input.padded(frame_len - FRAME_OVERHEAD);
                frame[FRAME_HEADER_LEN..frame_len - TAG_LEN].copy_from_slice(&body);
                let key = LinkKey::from_bytes(&fixed::access_key(slot));
                key.seal_kind(KIND_PULL, slot, counter, frame).unwrap();
                Some((client_addr, frame.clone()))
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
                    rates: if other & 0x40 == 0 {
                        fixed::RATES
                    } else {
                        [other; 8]
                    },
                    acks,
                };
                let key = LinkKey::from_bytes(&fixed::access_key(slot));
                request.seal(&g, &key, slot, counter, frame).unwrap();
                Some((client_addr, frame.clone()))
            }
            5 => {
                self.t += u64::from(input.u16()) * 64;
                None
            }
            6 => {
                let without = match input.byte() % 4 {
                    0 => None,
                    k => Some(u32::from(k)),
                };
                // A full control channel only delays the reload.
                let _ = self
                    .control
                    .try_send(Control::Links(Arc::new(fixed::links(without))));
                None
            }
            _ => self
                .last
                .clone()
                .map(|d| (fixed::addr(fixed::CLIENT_PORT + 1), d)),
        }
    }

    /// The node takes its turns at the current time.
    fn settle(&mut self) {
        self.now.store(self.t, Ordering::Relaxed);
        while self.shard.turn(self.t) > 0 {}
        check_inbox(&self.inbox, &mut self.seen);
    }

    /// Time moves past every deadline; then the accounting must balance.
    fn finish(mut self) -> NodeOutcome {
        // Everything scheduled falls due within the cap (plus the wheel's
        // granularity): nothing may stay behind.
        self.t += DELAY_CAP_US + 1_000_000;
        self.settle();
        self.shard.turn(self.t);
        check_inbox(&self.inbox, &mut self.seen);
        assert_eq!(
            self.shard.waiting(),
            0,
            "packets left on the wheel after every deadline"
        );

        let m = &self.metrics;
        let received = m.received.load(Ordering::Relaxed);
        assert_eq!(
            received, self.injected,
            "every injected datagram is received once"
        );
        let drops: u64 = DropReason::ALL.iter().map(|r| m.drops(*r)).sum();
        let forwarded = m.forwarded.load(Ordering::Relaxed);
        let consumed =
            m.loops_received.load(Ordering::Relaxed) + m.cover_discarded.load(Ordering::Relaxed);
        let stored = m.to_inbox.load(Ordering::Relaxed);
        let pulls = self.provider.pulls.load(Ordering::Relaxed);
        assert_eq!(
            forwarded + consumed + stored + pulls + drops,
            received,
            "a datagram is forwarded, consumed, stored, a pull, or dropped under a reason"
        );
        assert_eq!(stored, self.seen.stores);
        assert!(self.seen.acks <= pulls, "acknowledgements only with pulls");
        // Every answer is k frames of one length to the client's address.
        let dlen = access::delivery_frame_len(&Geometry::DEFAULT);
        let mut answers = 0u64;
        for port in [fixed::CLIENT_PORT, fixed::CLIENT_PORT + 1] {
            for (_, bytes) in self.net.take(fixed::addr(port)) {
                assert_eq!(bytes.len(), dlen, "a delivery frame's length");
                answers += 1;
            }
        }
        assert_eq!(answers, pulls * u64::from(PULL_FRAMES), "k frames per pull");

        // Frames sent: only to outbound neighbours, sealed under their keys
        // with this node's index.
        let mut out = 0u64;
        for i in 1..SENDER_INDICES {
            for (_, bytes) in self.net.take(fixed::peer_addr(i)) {
                assert_eq!(bytes.len(), Geometry::DEFAULT.frame_len());
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
            stored,
            pulls,
            consumed,
            dropped: drops,
        }
    }
}

/// [`node_datagram`], returning what the run did.
pub fn run(data: &[u8]) -> NodeOutcome {
    let mut h = Harness::new();
    let mut input = Input::new(data);
    for _ in 0..MAX_OPS {
        let Some(op) = input.next_byte() else { break };
        if let Some((from, bytes)) = h.datagram(op, &mut input) {
            if h.net.inject(from, fixed::node_addr(), &bytes) {
                h.injected += 1;
            }
            h.last = Some(bytes);
        }
        h.settle();
    }
    h.finish()
}
