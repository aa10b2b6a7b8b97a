//! The emulator: many [`Client`] cores in one process, each with its own
//! registration (slot, access key, mailbox at a provider), driven by one
//! timer structure, a few sockets and a few threads.
//!
//! A step has two phases:
//! - [`Emulator::prepare`] drives the cores over *virtual* time for the
//!   step's duration, from one binary heap of `(next deadline, client)`
//!   per preparing thread (no thread or task per client), and keeps every
//!   packet the cores release as a [`Schedule`] of `(at_us, client, packet)`
//!   in memory. Building a packet costs several scalar multiplications
//!   (~120 µs), so live generation would cap the offered load at ~8k
//!   packets/s per core; preparing first removes that cap. The schedule
//!   costs [`Schedule::BYTES_PER_PACKET_OVERHEAD`] + `packet_len` bytes a
//!   packet; a step whose estimate exceeds the configured cap is refused
//!   before anything is built.
//! - [`Emulator::replay`] sends the schedule open loop: each packet at its
//!   scheduled time mapped onto the real clock, never waiting for answers
//!   (no coordinated omission). Lateness (send time minus scheduled time)
//!   is measured and reported, and every latency counts from the scheduled
//!   time. Frames are sealed at send time (one AEAD, cheap) with the
//!   client's own strictly increasing counter. Pulls are sent at their
//!   scheduled times too, with the acknowledgements known then.
//!   Deliveries are received live by one thread per socket, demultiplexed by
//!   provider address and [`access::addressed_slot`], checked by each
//!   client's [`AccessSession`] (the state machine a real client's driver
//!   runs: length, kind, replay window, tag, request id, re-delivery) and
//!   fed to
//!   [`Client::handle_packet`]; returned loops and real messages are timed.
//!
//! Real messages: a share `s` of the `lambda_p` slots carries a real
//! message. Each client gets messages at Poisson rate `s * lambda_p` into
//! its FIFO buffer (the core sends the head of the buffer on its next
//! `lambda_p` event), addressed to the next emulated client in a ring.
//! Each message is tagged with the step and a sequence number, so its
//! delivery and latency are measured end to end from the scheduled time of
//! the packet that carried it.
//!
//! After the step's duration, a drain period keeps pulling (no new packets
//! are sent) so messages in flight can arrive; what has not arrived by then
//! counts as lost.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use loopix_client::driver::{now_us, recv_error, RecvError};
use loopix_client::{
    AccessSession, Address, Client, ClientLimits, ClientTopology, Event, PacketKind, Rates,
    Received, Refusal, Registration, SessionLimits,
};
use loopix_crypto::access;
use loopix_crypto::link::{FrameHeader, KIND_DELIVERY};
use loopix_crypto::{Geometry, SecretKey};
use loopix_engine::io::socket;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Prefix of a real message's body: tells our messages from anything else.
pub const MESSAGE_MAGIC: [u8; 4] = *b"LGm1";
/// Bounds of one emulated client's access-link session (handled ids,
/// recent requests, pending acknowledgements).
pub const SESSION_LIMITS: SessionLimits = SessionLimits::EMULATED;
/// Receive buffer asked for on each socket, bytes.
pub const RECV_BUFFER: usize = 8 << 20;
/// Highest trackable latency or lateness, microseconds (one hour).
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// Memory limits of one emulated client's core: smaller than a standalone
/// client's, since thousands live in one process and each sends only
/// single-fragment messages to one partner.
pub const EMULATED_LIMITS: ClientLimits = ClientLimits {
    queue_fragments: 256,
    partial_messages: 4,
    fragments_per_message: 1,
    surbs: 4,
    loops: 256,
};

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("bounds 1..1h with 3 digits are valid")
}

/// What the emulator is made of.
pub struct EmulatorSpec {
    /// Packet geometry of the network.
    pub geometry: Geometry,
    /// The network as clients see it (current key epoch).
    pub topology: Arc<ClientTopology>,
    /// One registration per emulated client.
    pub registrations: Vec<Registration>,
    /// Rates every client starts with.
    pub rates: Rates,
    /// Seed of the clients' Sphinx keys and of every random choice.
    pub seed: u64,
    /// Threads for creating clients and preparing packets.
    pub threads: usize,
}

/// One emulated client: the core and its access-link state.
struct Emu {
    client: Client,
    /// The access link, the same state machine as a real client's.
    session: AccessSession,
    /// Index of its provider in [`Emulator::providers`].
    provider: usize,
    partner: Option<Address>,
    /// Sequence numbers of the real messages in the core's FIFO buffer,
    /// in the same order.
    queued_real: VecDeque<u64>,
    next_message: Option<u64>,
    messages_made: u32,
}

/// Kinds of a schedule entry.
const KIND_REAL: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_DROP: u8 = 2;
const KIND_LOOP: u8 = 3;
const KIND_PULL: u8 = 4;

fn kind_code(kind: PacketKind) -> u8 {
    match kind {
        PacketKind::Real => KIND_REAL,
        PacketKind::Reply => KIND_REPLY,
        PacketKind::Drop => KIND_DROP,
        PacketKind::Loop => KIND_LOOP,
    }
}

/// One scheduled departure.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at_us: u64,
    client: u32,
    /// Packet index in its part's arena (unused for pulls).
    index: u32,
    part: u16,
    kind: u8,
}

/// What one step sends, prepared ahead of time.
pub struct Schedule {
    /// The step (tags its real messages).
    pub step: u32,
    /// Virtual time the step starts.
    pub start_us: u64,
    /// Virtual time the last packet may leave (start + duration).
    pub end_us: u64,
    /// Virtual time the drain ends (pulls only after `end_us`).
    pub drain_end_us: u64,
    packet_len: usize,
    entries: Vec<Entry>,
    parts: Vec<Vec<u8>>,
    /// Real messages sent: sequence number to scheduled send time.
    ledger: HashMap<u64, u64>,
    /// Messages the cores refused (buffer full): the offered real load was
    /// higher than what left.
    pub real_refused: u64,
}

impl Schedule {
    /// Bytes a packet takes in a schedule besides the packet itself.
    pub const BYTES_PER_PACKET_OVERHEAD: usize = std::mem::size_of::<Entry>() + 16;

    /// Packets (not pulls) in it.
    pub fn packets(&self) -> usize {
        self.entries.iter().filter(|e| e.kind != KIND_PULL).count()
    }

    /// Pulls in it.
    pub fn pulls(&self) -> usize {
        self.entries.iter().filter(|e| e.kind == KIND_PULL).count()
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Vec::capacity).sum::<usize>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.ledger.capacity() * 24
    }

    /// Real messages in it.
    pub fn real_messages(&self) -> usize {
        self.ledger.len()
    }

    /// The scheduled departure times of packets (not pulls), sorted.
    pub fn departure_times(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|e| e.kind != KIND_PULL)
            .map(|e| e.at_us)
            .collect()
    }
}

/// What one step asks for.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// Step number (0, 1, ...).
    pub step: u32,
    /// Per-client rates of this step.
    pub rates: Rates,
    /// Emulated clients taking part (the first `active` registrations).
    pub active: usize,
    /// Sending time, microseconds.
    pub duration_us: u64,
    /// Pull-only time after it, microseconds.
    pub drain_us: u64,
    /// Share of `lambda_p` slots that carry a real message, 0..=1.
    pub real_share: f64,
    /// Refuse to prepare more than this many bytes of schedule.
    pub memory_cap_bytes: u64,
}

impl StepSpec {
    /// Expected schedule size in bytes (mean plus five standard deviations
    /// of the Poisson packet count), for the memory check.
    pub fn estimated_bytes(&self, geometry: &Geometry) -> u64 {
        let per_client = self.rates.lambda_p + self.rates.lambda_l + self.rates.lambda_d;
        let mean = per_client * self.active as f64 * self.duration_us as f64 / 1e6;
        let packets = mean + 5.0 * mean.sqrt() + 1.0;
        let per_packet = (geometry.packet_len() + Schedule::BYTES_PER_PACKET_OVERHEAD) as f64;
        (packets * per_packet) as u64
    }
}

/// Counters of one replay. Drops are by reason, like the client driver's.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplayCounts {
    /// Sphinx packets sent, every stream.
    pub packets_sent: u64,
    /// Of which real messages.
    pub real_sent: u64,
    /// Of which loops.
    pub loops_sent: u64,
    /// Of which drops.
    pub drops_sent: u64,
    /// Pull requests sent.
    pub pulls_sent: u64,
    /// Datagrams that failed to leave.
    pub send_errors: u64,
    /// Datagrams received.
    pub frames_received: u64,
    /// Delivery frames with a message.
    pub deliveries_real: u64,
    /// Dummy delivery frames.
    pub deliveries_dummy: u64,
    /// Messages delivered again after being handled.
    pub duplicates: u64,
    /// Our real messages received (first time).
    pub real_received: u64,
    /// Real messages of another step or unknown sequence (late stragglers).
    pub real_unmatched: u64,
    /// Loops that came back.
    pub loops_received: u64,
    /// Dropped: not from the provider's address.
    pub drop_wrong_source: u64,
    /// Dropped: not the length of a delivery frame.
    pub drop_wrong_length: u64,
    /// Dropped: wrong kind or not a provider's frame.
    pub drop_wrong_kind: u64,
    /// Dropped: a slot no emulated client has at that provider.
    pub drop_unknown_slot: u64,
    /// Dropped: replayed counter.
    pub drop_replayed: u64,
    /// Dropped: bad tag.
    pub drop_bad_tag: u64,
    /// Dropped: malformed body.
    pub drop_malformed: u64,
    /// Dropped: answer to a pull not sent recently.
    pub drop_unknown_request: u64,
    /// Packets the core failed to process (`ClientStats::bad_packets` delta).
    pub bad_packets: u64,
    /// Receive errors other than timeouts.
    pub recv_errors: u64,
}

impl ReplayCounts {
    fn add(&mut self, o: &ReplayCounts) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            packets_sent,
            real_sent,
            loops_sent,
            drops_sent,
            pulls_sent,
            send_errors,
            frames_received,
            deliveries_real,
            deliveries_dummy,
            duplicates,
            real_received,
            real_unmatched,
            loops_received,
            drop_wrong_source,
            drop_wrong_length,
            drop_wrong_kind,
            drop_unknown_slot,
            drop_replayed,
            drop_bad_tag,
            drop_malformed,
            drop_unknown_request,
            bad_packets,
            recv_errors
        );
    }
}

/// What one replay measured.
pub struct Measured {
    /// Counters.
    pub counts: ReplayCounts,
    /// Send time minus scheduled time, microseconds, per packet and pull.
    pub lateness: Histogram<u64>,
    /// End-to-end latency of real messages from their scheduled send time
    /// to their processing after a pull, microseconds.
    pub latency: Histogram<u64>,
    /// Loop round trips from scheduled send time, microseconds.
    pub loop_rtt: Histogram<u64>,
    /// Real send times of packets, microseconds on the sending clock
    /// (only with [`ReplayOptions::record_departures`]).
    pub departures: Vec<u64>,
    /// Wall time the sending took, seconds.
    pub send_seconds: f64,
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Keep every packet's real send time.
    pub record_departures: bool,
    /// Print a progress line to stderr once a second.
    pub progress: bool,
    /// Label of the progress line.
    pub label: String,
}

/// The socket the clients of the provider at `provider` share.
fn client_socket(provider: SocketAddr) -> Result<UdpSocket, String> {
    let bind = if provider.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let s = UdpSocket::bind(bind).map_err(|e| format!("bind a UDP socket: {e}"))?;
    // Pull answers arrive in bursts (k frames per pull, many clients): a
    // large receive buffer keeps them from being lost here. The kernel caps
    // it at net.core.rmem_max; best effort.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(RECV_BUFFER);
    // An answer's k frames leave the provider in one segmented send: take
    // each run in one read where the kernel can (`recv_segments` either way).
    socket::enable_gro(&s);
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| format!("socket timeout: {e}"))?;
    Ok(s)
}

/// What one receiving socket counted.
struct Tally {
    c: ReplayCounts,
    latency: Histogram<u64>,
    loop_rtt: Histogram<u64>,
    seen: HashSet<u64>,
}

/// Many clients, their sockets and their shared tables.
pub struct Emulator {
    geometry: Geometry,
    emus: Vec<Mutex<Emu>>,
    providers: Vec<SocketAddr>,
    sockets: Vec<Arc<UdpSocket>>,
    by_slot: HashMap<(usize, u32), u32>,
    seed: u64,
    threads: usize,
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn exp_us(rng: &mut ChaCha20Rng, rate_per_s: f64) -> u64 {
    loopix_client::exp_sample(rng, 1e6 / rate_per_s).round() as u64
}

/// A real message's body: magic, step, sequence number.
pub fn message_body(step: u32, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&MESSAGE_MAGIC);
    b[4..8].copy_from_slice(&step.to_be_bytes());
    b[8..].copy_from_slice(&seq.to_be_bytes());
    b
}

/// Parse [`message_body`]: `(step, seq)`.
pub fn parse_message_body(data: &[u8]) -> Option<(u32, u64)> {
    if data.len() != 16 || data[..4] != MESSAGE_MAGIC {
        return None;
    }
    let step = u32::from_be_bytes(data[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(data[8..].try_into().ok()?);
    Some((step, seq))
}

impl Emulator {
    /// Create every client (its Sphinx key from the seed, its core at
    /// virtual time 0) and one UDP socket per provider address. Clients
    /// are created on `spec.threads` threads: each prepares its own key
    /// (~30 KB, ~1 ms).
    pub fn new(spec: EmulatorSpec) -> Result<Emulator, String> {
        if spec.registrations.is_empty() {
            return Err("no registrations: the emulator needs at least one client".into());
        }
        let mut providers: Vec<SocketAddr> = Vec::new();
        let mut by_slot = HashMap::new();
        let mut provider_of = Vec::with_capacity(spec.registrations.len());
        for (i, r) in spec.registrations.iter().enumerate() {
            let p = match providers.iter().position(|a| *a == r.provider_address) {
                Some(p) => p,
                None => {
                    providers.push(r.provider_address);
                    providers.len() - 1
                }
            };
            if by_slot.insert((p, r.slot), i as u32).is_some() {
                return Err(format!(
                    "registration {i}: slot {} at {} is used by another registration; \
                     each client needs its own slot",
                    r.slot, r.provider_address
                ));
            }
            provider_of.push(p);
        }
        let threads = spec.threads.max(1);
        let n = spec.registrations.len();
        let chunk = n.div_ceil(threads);
        let mut made: Vec<Result<Vec<Emu>, String>> = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (spec, provider_of) = (&spec, &provider_of);
                    s.spawn(move || {
                        let lo = (t * chunk).min(n);
                        let hi = ((t + 1) * chunk).min(n);
                        let mut out = Vec::with_capacity(hi - lo);
                        for (i, r) in spec.registrations.iter().enumerate().take(hi).skip(lo) {
                            let mut rng =
                                ChaCha20Rng::seed_from_u64(spec.seed ^ (i as u64).rotate_left(32));
                            let secret = SecretKey::generate(&mut rng);
                            let client = Client::new(
                                spec.geometry,
                                Arc::clone(&spec.topology),
                                spec.rates,
                                EMULATED_LIMITS,
                                secret,
                                r.mailbox,
                                r.provider_id,
                                0,
                                &mut rng,
                            )
                            .map_err(|e| format!("registration {i}: {e}"))?;
                            out.push(Emu {
                                client,
                                session: AccessSession::new(
                                    spec.geometry,
                                    &r.access_key,
                                    r.slot,
                                    r.mailbox,
                                    spec.rates.announced().digest(),
                                    wall_clock_us(),
                                    SESSION_LIMITS,
                                ),
                                provider: provider_of[i],
                                partner: None,
                                queued_real: VecDeque::new(),
                                next_message: None,
                                messages_made: 0,
                            });
                        }
                        Ok(out)
                    })
                })
                .collect();
            for h in handles {
                made.push(
                    h.join()
                        .unwrap_or_else(|_| Err("a client-creating thread panicked".into())),
                );
            }
        });
        let mut emus = Vec::with_capacity(n);
        for part in made {
            emus.extend(part?.into_iter().map(Mutex::new));
        }
        let sockets = providers
            .iter()
            .map(|p| client_socket(*p).map(Arc::new))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Emulator {
            geometry: spec.geometry,
            emus,
            providers,
            sockets,
            by_slot,
            seed: spec.seed,
            threads,
        })
    }

    /// Number of emulated clients.
    pub fn len(&self) -> usize {
        self.emus.len()
    }

    /// Whether there are none (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.emus.is_empty()
    }

    /// Provider addresses, one socket each.
    pub fn providers(&self) -> &[SocketAddr] {
        &self.providers
    }

    /// Drive the first `spec.active` cores over virtual time
    /// `[start_us, start_us + duration)` and keep what they send; pulls
    /// continue through the drain. Refuses (before building anything) a
    /// step whose estimated schedule exceeds the memory cap.
    pub fn prepare(&mut self, start_us: u64, spec: &StepSpec) -> Result<Schedule, String> {
        let estimate = spec.estimated_bytes(&self.geometry);
        if estimate > spec.memory_cap_bytes {
            return Err(format!(
                "step {}: the prepared packets would take about {} MB ({} clients x {:.3} \
                 packets/s x {:.1} s x {} bytes), above memory_cap_mb = {}; lower the rates, \
                 the clients or duration_s, or raise memory_cap_mb",
                spec.step,
                estimate >> 20,
                spec.active,
                spec.rates.lambda_p + spec.rates.lambda_l + spec.rates.lambda_d,
                spec.duration_us as f64 / 1e6,
                self.geometry.packet_len() + Schedule::BYTES_PER_PACKET_OVERHEAD,
                spec.memory_cap_bytes >> 20,
            ));
        }
        let active = spec.active.min(self.emus.len());
        if active == 0 {
            return Err("a step needs at least one active client".into());
        }
        // Partners: a ring over the active clients; each keeps the prepared
        // key of its partner (shared, not copied).
        let routes: Vec<_> = self.emus[..active]
            .iter_mut()
            .map(|m| {
                let e = m.get_mut().unwrap_or_else(|p| p.into_inner());
                (e.client.address(), e.client.own_route_key())
            })
            .collect();
        for (i, m) in self.emus[..active].iter_mut().enumerate() {
            let e = m.get_mut().unwrap_or_else(|p| p.into_inner());
            let (addr, key) = &routes[(i + 1) % active];
            e.client.add_contact(addr.key, Arc::clone(key));
            e.partner = Some(*addr);
        }
        drop(routes);
        let end_us = start_us + spec.duration_us;
        let drain_end_us = end_us + spec.drain_us;
        let threads = self.threads.min(active);
        let chunk = active.div_ceil(threads);
        let packet_len = self.geometry.packet_len();
        let cap = spec.memory_cap_bytes;
        let used = AtomicU64::new(0);
        let seed = self.seed ^ (u64::from(spec.step) << 48) ^ 0x5eed;
        let mut results: Vec<Result<PartOut, String>> = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = self.emus[..active]
                .chunks_mut(chunk)
                .enumerate()
                .map(|(t, emus)| {
                    let used = &used;
                    s.spawn(move || {
                        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (t as u64 + 1));
                        prepare_part(
                            emus,
                            t * chunk,
                            spec,
                            start_us,
                            end_us,
                            drain_end_us,
                            packet_len,
                            cap,
                            used,
                            &mut rng,
                        )
                    })
                })
                .collect();
            for h in handles {
                results.push(
                    h.join()
                        .unwrap_or_else(|_| Err("a preparing thread panicked".into())),
                );
            }
        });
        let mut schedule = Schedule {
            step: spec.step,
            start_us,
            end_us,
            drain_end_us,
            packet_len,
            entries: Vec::new(),
            parts: Vec::new(),
            ledger: HashMap::new(),
            real_refused: 0,
        };
        for (part, r) in results.into_iter().enumerate() {
            let mut out = r?;
            for e in &mut out.entries {
                e.part = part as u16;
            }
            schedule.entries.append(&mut out.entries);
            schedule.parts.push(out.arena);
            schedule.ledger.extend(out.ledger);
            schedule.real_refused += out.real_refused;
        }
        schedule.entries.sort_by_key(|e| (e.at_us, e.client));
        Ok(schedule)
    }

    /// Send `schedule` open loop, starting now, and receive until its drain
    /// ends. Only socket errors that retrying cannot fix are errors.
    pub fn replay(&self, schedule: &Schedule, opts: &ReplayOptions) -> io::Result<Measured> {
        let stop = AtomicBool::new(false);
        // Real time (driver clock) at which virtual `start_us` happens; the
        // receivers get 20 ms to start first.
        let base = now_us() + 20_000;
        let clock = Clock {
            base,
            start: schedule.start_us,
        };
        let progress = Progress::new(opts);
        let out = std::thread::scope(|s| -> io::Result<Measured> {
            let receivers: Vec<_> = (0..self.sockets.len())
                .map(|p| {
                    let stop = &stop;
                    s.spawn(move || self.receive(p, schedule, clock, stop))
                })
                .collect();
            let sent = self.send(schedule, clock, opts, &progress);
            stop.store(true, Ordering::Relaxed);
            let mut m = sent;
            for r in receivers {
                let (counts, latency, loop_rtt) = r
                    .join()
                    .map_err(|_| io::Error::other("a receiving thread panicked"))??;
                m.counts.add(&counts);
                m.latency
                    .add(&latency)
                    .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
                m.loop_rtt
                    .add(&loop_rtt)
                    .map_err(|e| io::Error::other(format!("histogram: {e}")))?;
            }
            Ok(m)
        })?;
        progress.finish(&out);
        Ok(out)
    }

    fn send(
        &self,
        schedule: &Schedule,
        clock: Clock,
        opts: &ReplayOptions,
        progress: &Progress,
    ) -> Measured {
        let mut m = Measured {
            counts: ReplayCounts::default(),
            lateness: histogram(),
            latency: histogram(),
            loop_rtt: histogram(),
            departures: Vec::new(),
            send_seconds: 0.0,
        };
        let mut frame = vec![0u8; self.geometry.frame_len()];
        let mut pacer = Pacer::new();
        let t0 = now_us();
        let mut next_progress = t0 + 1_000_000;
        for (i, e) in schedule.entries.iter().enumerate() {
            let due = clock.real(e.at_us);
            pacer.wait_until(due);
            let now = now_us();
            if now >= next_progress {
                progress.show(i, schedule.entries.len(), &m);
                next_progress = now + 1_000_000;
            }
            let late = now.saturating_sub(due).max(1);
            m.lateness.saturating_record(late);
            let mut emu = self.emus[e.client as usize]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let sealed = if e.kind == KIND_PULL {
                emu.session.seal_pull(&mut frame).is_ok()
            } else {
                let off = e.index as usize * schedule.packet_len;
                let packet = &schedule.parts[usize::from(e.part)][off..off + schedule.packet_len];
                emu.session.seal_packet(packet, &mut frame).is_ok()
            };
            let p = emu.provider;
            drop(emu);
            if !sealed {
                m.counts.send_errors += 1;
                continue;
            }
            match self.sockets[p].send_to(&frame, self.providers[p]) {
                Ok(_) => match e.kind {
                    KIND_PULL => m.counts.pulls_sent += 1,
                    k => {
                        m.counts.packets_sent += 1;
                        match k {
                            KIND_REAL => m.counts.real_sent += 1,
                            KIND_LOOP => m.counts.loops_sent += 1,
                            KIND_DROP => m.counts.drops_sent += 1,
                            _ => {}
                        }
                        if opts.record_departures {
                            m.departures.push(now);
                        }
                    }
                },
                Err(_) => m.counts.send_errors += 1,
            }
        }
        pacer.wait_until(clock.real(schedule.drain_end_us));
        m.send_seconds = (now_us() - t0) as f64 / 1e6;
        m
    }

    /// One socket's receiving loop, until `stop`.
    fn receive(
        &self,
        p: usize,
        schedule: &Schedule,
        clock: Clock,
        stop: &AtomicBool,
    ) -> io::Result<(ReplayCounts, Histogram<u64>, Histogram<u64>)> {
        let mut t = Tally {
            c: ReplayCounts::default(),
            latency: histogram(),
            loop_rtt: histogram(),
            seen: HashSet::new(),
        };
        // With GRO an answer's k frames come as one buffer.
        let mut buf = vec![0u8; 1 << 16];
        let socket = &self.sockets[p];
        while !stop.load(Ordering::Relaxed) {
            let (n, from, seg) = match socket::recv_segments(socket, &mut buf) {
                Ok(x) => x,
                Err(e) => match recv_error(&e) {
                    RecvError::NoData => continue,
                    RecvError::Transient => {
                        t.c.recv_errors += 1;
                        continue;
                    }
                    RecvError::Fatal => return Err(e),
                },
            };
            for frame in buf[..n].chunks_mut(seg) {
                t.c.frames_received += 1;
                if from != self.providers[p] {
                    t.c.drop_wrong_source += 1;
                    continue;
                }
                self.take_frame(p, frame, schedule, clock, &mut t);
            }
        }
        Ok((t.c, t.latency, t.loop_rtt))
    }

    /// One delivery frame from provider `p`'s address: checks, the
    /// client's session, then what the client makes of the packet.
    fn take_frame(
        &self,
        p: usize,
        frame: &mut [u8],
        schedule: &Schedule,
        clock: Clock,
        t: &mut Tally,
    ) {
        let c = &mut t.c;
        if frame.len() != access::delivery_frame_len(&self.geometry) {
            c.drop_wrong_length += 1;
            return;
        }
        let Ok(header) = FrameHeader::peek(frame) else {
            c.drop_wrong_kind += 1;
            return;
        };
        let slot = match access::addressed_slot(header.sender) {
            Some(s) if header.kind == KIND_DELIVERY => s,
            _ => {
                c.drop_wrong_kind += 1;
                return;
            }
        };
        let Some(&idx) = self.by_slot.get(&(p, slot)) else {
            c.drop_unknown_slot += 1;
            return;
        };
        let mut emu = self.emus[idx as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let emu = &mut *emu;
        let packet = match emu.session.handle_frame(frame) {
            Received::Message { packet, .. } => {
                c.deliveries_real += 1;
                packet
            }
            Received::Dummy => {
                c.deliveries_dummy += 1;
                return;
            }
            Received::Duplicate => {
                c.deliveries_real += 1;
                c.duplicates += 1;
                return;
            }
            Received::Refused(why) => {
                match why {
                    Refusal::WrongLength => c.drop_wrong_length += 1,
                    Refusal::WrongKind => c.drop_wrong_kind += 1,
                    Refusal::Replayed => c.drop_replayed += 1,
                    Refusal::BadTag => c.drop_bad_tag += 1,
                    Refusal::Malformed => c.drop_malformed += 1,
                    Refusal::UnknownRequest => c.drop_unknown_request += 1,
                }
                return;
            }
        };
        let vnow = clock.virtual_now();
        let bad_before = emu.client.stats().bad_packets;
        emu.client.handle_packet(vnow, packet);
        c.bad_packets += emu.client.stats().bad_packets - bad_before;
        while let Some(ev) = emu.client.poll_event() {
            match ev {
                Event::LoopReturned { rtt_us } => {
                    c.loops_received += 1;
                    t.loop_rtt.saturating_record(rtt_us.max(1));
                }
                // The ledger, not the tag's step, says whether it was
                // sent in this step: a message queued near the end of
                // one step leaves in the next. Sequence numbers are
                // unique across steps.
                Event::Message { data, .. } => match parse_message_body(&data)
                    .and_then(|(_, seq)| schedule.ledger.get(&seq).map(|&at| (seq, at)))
                {
                    Some((seq, at)) if t.seen.insert(seq) => {
                        c.real_received += 1;
                        t.latency.saturating_record(vnow.saturating_sub(at).max(1));
                    }
                    _ => c.real_unmatched += 1,
                },
                _ => {}
            }
        }
    }
}

/// Maps virtual time of a step onto the real (driver) clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Real time of virtual `start`.
    base: u64,
    start: u64,
}

impl Clock {
    fn real(&self, virtual_us: u64) -> u64 {
        self.base + virtual_us.saturating_sub(self.start)
    }

    fn virtual_now(&self) -> u64 {
        (self.start + now_us()).saturating_sub(self.base)
    }
}

/// How the sender waits for each departure: it sleeps until
/// [`Pacer::SPIN_US`] before it, then spins the last stretch (the OS wakes a
/// sleeper up to ~100-200 us late; spinning keeps departures on time), but
/// spins for at most [`Pacer::SPIN_SHARE_PERCENT`] of each
/// [`Pacer::WINDOW_US`] window of wall time; past that it sleeps to the due
/// time and departs as late as the OS wakes it (counted in the lateness
/// histogram).
///
/// The budget is there because the generator shares its machine with the
/// nodes it measures: at paper-fig9 rates (10,000 pulls/s and more) the
/// gaps are shorter than the spinning stretch, and an unbounded spin kept
/// one of a 2-core machine's cores busy doing nothing.
struct Pacer {
    window_start_us: u64,
    spun_us: u64,
}

impl Pacer {
    const SPIN_US: u64 = 150;
    const WINDOW_US: u64 = 100_000;
    const SPIN_SHARE_PERCENT: u64 = 10;

    fn new() -> Pacer {
        // Tight timer wake-ups (1 us of slack instead of 50 us) make the
        // sleeping part end closer to its time; without them, only later.
        let _ = loopix_engine::io::set_timer_slack_ns(1_000);
        Pacer {
            window_start_us: now_us(),
            spun_us: 0,
        }
    }

    /// Return at `due` on the driver clock, or as soon after as the budget
    /// allows.
    fn wait_until(&mut self, due: u64) {
        loop {
            let now = now_us();
            if now >= due {
                return;
            }
            if now - self.window_start_us >= Self::WINDOW_US {
                self.window_start_us = now;
                self.spun_us = 0;
            }
            let may_spin = self.spun_us * 100 < Self::WINDOW_US * Self::SPIN_SHARE_PERCENT;
            let left = due - now;
            if !may_spin {
                std::thread::sleep(Duration::from_micros(left));
            } else if left > Self::SPIN_US + 50 {
                std::thread::sleep(Duration::from_micros(left - Self::SPIN_US));
            } else {
                // Not `yield_now`: on a busy machine it gives away whole
                // time slices, and departures bunch up.
                let mut t = now;
                while t < due {
                    std::hint::spin_loop();
                    t = now_us();
                }
                self.spun_us += t - now;
                return;
            }
        }
    }
}

struct PartOut {
    entries: Vec<Entry>,
    arena: Vec<u8>,
    ledger: HashMap<u64, u64>,
    real_refused: u64,
}

/// What the loop in [`prepare_part`] must respect for every packet.
struct Bounds<'a> {
    step: u32,
    end_us: u64,
    drain_end_us: u64,
    packet_len: usize,
    /// Memory one prepared packet takes, arena and schedule entry.
    per_packet: u64,
    cap: u64,
    used: &'a AtomicU64,
}

impl PartOut {
    /// Take the packets and pulls `e`'s core made ready into the part: its
    /// schedule entries, packet bytes and the real messages' ledger.
    fn collect(&mut self, e: &mut Emu, client_index: u32, b: &Bounds) -> Result<(), String> {
        while let Some(tx) = e.client.poll_transmit() {
            let seq = (tx.kind == PacketKind::Real)
                .then(|| e.queued_real.pop_front())
                .flatten();
            // Packets drawn during the drain are not sent: the drain only
            // pulls. Their messages count as neither sent nor lost.
            if tx.at_us >= b.end_us {
                continue;
            }
            if tx.packet.len() != b.packet_len {
                return Err(format!(
                    "a core built a packet of {} bytes, expected {}",
                    tx.packet.len(),
                    b.packet_len
                ));
            }
            if b.used.fetch_add(b.per_packet, Ordering::Relaxed) + b.per_packet > b.cap {
                return Err(format!(
                    "step {}: prepared packets passed memory_cap_mb = {} (the estimate was \
                     below it: an unlucky draw); raise memory_cap_mb or shorten duration_s",
                    b.step,
                    b.cap >> 20
                ));
            }
            if let Some(seq) = seq {
                if let MapEntry::Vacant(v) = self.ledger.entry(seq) {
                    v.insert(tx.at_us);
                }
            }
            let index = (self.arena.len() / b.packet_len) as u32;
            self.arena.extend_from_slice(&tx.packet);
            self.entries.push(Entry {
                at_us: tx.at_us,
                client: client_index,
                index,
                part: 0,
                kind: kind_code(tx.kind),
            });
        }
        while let Some(ev) = e.client.poll_event() {
            if let Event::Pull { at_us } = ev {
                if at_us < b.drain_end_us {
                    self.entries.push(Entry {
                        at_us,
                        client: client_index,
                        index: u32::MAX,
                        part: 0,
                        kind: KIND_PULL,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Heap item: (time, client index within the part, 0 = core, 1 = message).
type Due = std::cmp::Reverse<(u64, u32, u8)>;

#[allow(clippy::too_many_arguments)] // reason: the part's slice plus the step's fixed inputs
fn prepare_part(
    emus: &mut [Mutex<Emu>],
    first: usize,
    spec: &StepSpec,
    start_us: u64,
    end_us: u64,
    drain_end_us: u64,
    packet_len: usize,
    cap: u64,
    used: &AtomicU64,
    rng: &mut ChaCha20Rng,
) -> Result<PartOut, String> {
    let mut out = PartOut {
        entries: Vec::new(),
        arena: Vec::new(),
        ledger: HashMap::new(),
        real_refused: 0,
    };
    let mut heap: BinaryHeap<Due> = BinaryHeap::with_capacity(emus.len() * 2);
    let message_rate = spec.real_share * spec.rates.lambda_p;
    for (i, m) in emus.iter_mut().enumerate() {
        let e = m.get_mut().unwrap_or_else(|p| p.into_inner());
        e.client.set_rates(spec.rates, start_us, rng);
        e.session.announce_rates(spec.rates.announced().digest());
        if let Some(t) = e.client.poll_timeout() {
            heap.push(std::cmp::Reverse((t, i as u32, 0)));
        }
        e.next_message = (message_rate > 0.0).then(|| start_us + exp_us(rng, message_rate));
        if let Some(t) = e.next_message {
            heap.push(std::cmp::Reverse((t, i as u32, 1)));
        }
    }
    let bounds = Bounds {
        step: spec.step,
        end_us,
        drain_end_us,
        packet_len,
        per_packet: (packet_len + Schedule::BYTES_PER_PACKET_OVERHEAD) as u64,
        cap,
        used,
    };
    while let Some(std::cmp::Reverse((t, i, what))) = heap.pop() {
        if t >= drain_end_us {
            break;
        }
        let e = emus[i as usize]
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        let client_index = (first + i as usize) as u32;
        if what == 1 {
            if t < end_us {
                let seq = (u64::from(client_index) << 32) | u64::from(e.messages_made);
                e.messages_made = e.messages_made.wrapping_add(1);
                let body = message_body(spec.step, seq);
                let to = e.partner.ok_or("a client without a partner")?;
                match e.client.send(to, &body, false, rng) {
                    Ok(_) => e.queued_real.push_back(seq),
                    Err(_) => out.real_refused += 1,
                }
                let next = t + exp_us(rng, message_rate);
                e.next_message = Some(next);
                heap.push(std::cmp::Reverse((next, i, 1)));
            }
            continue;
        }
        e.client.handle_timeout(t, rng);
        out.collect(e, client_index, &bounds)?;
        if let Some(next) = e.client.poll_timeout() {
            heap.push(std::cmp::Reverse((next, i, 0)));
        }
    }
    out.arena.shrink_to_fit();
    Ok(out)
}

/// The progress line: a bar when stderr is a terminal, else one line a
/// second.
struct Progress {
    on: bool,
    tty: bool,
    label: String,
    started: u64,
}

impl Progress {
    fn new(opts: &ReplayOptions) -> Progress {
        Progress {
            on: opts.progress,
            tty: io::stderr().is_terminal(),
            label: opts.label.clone(),
            started: now_us(),
        }
    }

    fn show(&self, done: usize, total: usize, m: &Measured) {
        if !self.on {
            return;
        }
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let secs = (now_us() - self.started) as f64 / 1e6;
        let text = format!(
            "{} {:5.1}% {:.0}s sent {} pkts {} pulls, lateness p99 {:.2} ms",
            self.label,
            frac * 100.0,
            secs,
            m.counts.packets_sent,
            m.counts.pulls_sent,
            m.lateness.value_at_quantile(0.99) as f64 / 1000.0
        );
        let mut err = io::stderr().lock();
        if self.tty {
            let filled = (frac * 30.0).round() as usize;
            let _ = write!(
                err,
                "\r[{}{}] {text}\x1b[K",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30))
            );
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    fn finish(&self, m: &Measured) {
        if !self.on {
            return;
        }
        let mut err = io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(
            err,
            "{} done: sent {} packets, {} pulls; received {} loops, {} messages",
            self.label,
            m.counts.packets_sent,
            m.counts.pulls_sent,
            m.counts.loops_received,
            m.counts.real_received
        );
    }
}
