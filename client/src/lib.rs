//! The Loopix client core, sans-IO in the quinn-proto sense: the caller
//! passes the time (`now_us`, microseconds on its monotonic clock) and the
//! RNG, and drives it with `handle_*` for inputs and `poll_*` for outputs.
//! The same core serves the command-line client and each of the load
//! generator's emulated clients.
//!
//! What it does (paper section 2.1 and 4.1.2):
//! - three independent Poisson streams: `lambda_p` sends the head of the
//!   FIFO buffer if there is one, else a drop; `lambda_l` sends a loop back
//!   to this client; `lambda_d` sends a drop; plus a pull every
//!   `pull_period_us`;
//! - each packet takes a fresh random path (own provider, one mix per layer,
//!   then the destination's provider) with per-hop delays drawn from
//!   `Exp(mu)`;
//! - messages longer than one payload are split into fragments and
//!   reassembled by the recipient, with the sender's SURB when one was
//!   attached; loops are recognised on return and timed.
//!
//! Invariants: the departure process does not depend on whether messages
//! are queued (real messages only replace drops of the `lambda_p` stream);
//! every buffer and table is bounded (`ClientLimits`); bytes from the
//! network never panic the core: bad ones are counted and dropped.
//!
//! [`driver`] puts one core online over a UDP socket; it is the only module
//! of this crate with a socket or a clock.

#![forbid(unsafe_code)]

pub mod driver;
mod fragment;
pub mod session;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use loopix_crypto::sphinx::{self, Hop};
use loopix_crypto::{
    Delay, Geometry, MailboxId, NodeId, PublicKey, RecipientKind, RouteKey, RoutingCommand,
    SecretKey, SphinxError, Surb, SurbKeys,
};
use rand_core::CryptoRngCore;

pub use fragment::{Fragment, FRAGMENT_HEADER_LEN};
pub use loopix_directory::{
    Address, AddressFile, ClientRates, NetworkParams, Registration, RegistrationFile,
};
pub use session::{AccessSession, Received, Refusal, SessionLimits, SessionStats};

pub use loopix_directory::routes::{
    route_table as client_topology, NodeInfo, RouteTable as ClientTopology,
};

/// Rates and delays, from the paper's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Payload stream: real messages or drops, per second.
    pub lambda_p: f64,
    /// Loop stream, per second.
    pub lambda_l: f64,
    /// Drop stream, per second.
    pub lambda_d: f64,
    /// Mean per-hop delay (1 / mu), microseconds.
    pub mean_delay_us: f64,
    /// Pull period, microseconds (0: never pull).
    pub pull_period_us: u64,
}

impl Rates {
    /// The network's rates, from its signed topology document: what every
    /// client of the network uses.
    pub fn of_network(p: &NetworkParams) -> Rates {
        Rates {
            lambda_p: p.lambda_p,
            lambda_l: p.lambda_l,
            lambda_d: p.lambda_d,
            mean_delay_us: p.mean_delay_ms * 1000.0,
            pull_period_us: p.pull_period_ms * 1000,
        }
    }

    /// These rates as the client announces them to its provider (in every
    /// pull request; `ClientRates::digest`).
    pub fn announced(&self) -> ClientRates {
        ClientRates {
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            mean_delay_ms: self.mean_delay_us / 1000.0,
            pull_period_ms: self.pull_period_us / 1000,
        }
    }
}

/// Bounds on the client's memory.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Fragments waiting in the FIFO buffer.
    pub queue_fragments: usize,
    /// Partly received messages being reassembled.
    pub partial_messages: usize,
    /// Fragments one message may have.
    pub fragments_per_message: u16,
    /// SURB keys kept for replies.
    pub surbs: usize,
    /// Loops in flight remembered for timing.
    pub loops: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            queue_fragments: 4096,
            partial_messages: 256,
            fragments_per_message: 1024,
            surbs: 1024,
            loops: 4096,
        }
    }
}

/// Sphinx hops of the longest path beyond one per mix layer: the sender's
/// provider, the recipient's provider and the recipient (messages, loops,
/// and SURBs alike).
pub use loopix_directory::params::PATH_HOPS_BEYOND_LAYERS;

/// Every mix layer has a node, and a path through all of them fits in
/// `geometry`. Refused here because a path that does not fit would make
/// every message a drop and stop the loop stream, silently.
fn check_layers(topology: &ClientTopology, geometry: &Geometry) -> Result<(), ClientError> {
    if topology.layers.is_empty() || topology.layers.iter().any(|l| l.is_empty()) {
        return Err(ClientError::Topology("every mix layer needs a node"));
    }
    check_path_fits(topology.layers.len(), geometry)
}

/// A path through `layers` mix layers fits in `geometry`'s hops; the error
/// names the hops needed and held. Commands that make a network or a
/// topology document refuse the same through `NetworkParams::check`, which
/// every document passes before a client sees it; this guards a core given
/// a geometry of its caller's choosing.
fn check_path_fits(layers: usize, geometry: &Geometry) -> Result<(), ClientError> {
    let needed = layers + PATH_HOPS_BEYOND_LAYERS;
    if needed > geometry.max_hops() {
        return Err(ClientError::PathTooLong {
            layers,
            needed,
            max_hops: geometry.max_hops(),
        });
    }
    Ok(())
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The FIFO buffer cannot take the message's fragments.
    #[error("send buffer full ({queued} fragments queued, limit {limit})")]
    QueueFull {
        /// Fragments queued now.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The message needs more fragments than allowed.
    #[error("message of {len} bytes needs {needed} fragments, at most {max} allowed")]
    TooLong {
        /// Message length.
        len: usize,
        /// Fragments it needs.
        needed: usize,
        /// The limit.
        max: u16,
    },
    /// The topology lacks something a path needs.
    #[error("topology: {0}")]
    Topology(&'static str),
    /// The packet geometry cannot hold a path through every layer.
    #[error(
        "a path through {layers} mix layers needs {needed} Sphinx hops (own provider, one mix \
         a layer, the recipient's provider, the recipient), but the packet geometry holds at \
         most {max_hops}: use at most {} layers, or a geometry with more hops",
        max_hops.saturating_sub(PATH_HOPS_BEYOND_LAYERS)
    )]
    PathTooLong {
        /// Mix layers in the topology.
        layers: usize,
        /// Hops a path needs.
        needed: usize,
        /// Hops the geometry holds.
        max_hops: usize,
    },
    /// A recipient key or provider that cannot be used.
    #[error("address: {0}")]
    Address(&'static str),
    /// Packet construction failed.
    #[error("sphinx: {0}")]
    Sphinx(#[from] SphinxError),
}

/// Which stream a packet belongs to (for the caller's statistics only:
/// nothing of it is visible on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A fragment of a real message (in place of a `lambda_p` drop).
    Real,
    /// A reply through a SURB (also in place of a `lambda_p` drop).
    Reply,
    /// Cover: a drop from the `lambda_p` or `lambda_d` stream.
    Drop,
    /// Cover: a loop back to this client.
    Loop,
}

/// Something for the caller to send, to this client's provider.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The scheduled departure time: the Poisson event time, not the time
    /// the caller got around to it.
    pub at_us: u64,
    /// What it is.
    pub kind: PacketKind,
    /// The Sphinx packet (one `geometry.packet_len()`).
    pub packet: Vec<u8>,
}

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// Time to pull the inbox from the provider.
    Pull {
        /// Scheduled time.
        at_us: u64,
    },
    /// A whole message arrived.
    Message {
        /// The sender's message id.
        id: [u8; 16],
        /// The bytes.
        data: Vec<u8>,
        /// The sender's reply block, if it attached one.
        surb: Option<Surb>,
    },
    /// A reply through one of our SURBs arrived.
    Reply {
        /// The SURB id.
        surb_id: [u8; 16],
        /// The bytes.
        data: Vec<u8>,
    },
    /// One of our loops came back.
    LoopReturned {
        /// Send to receipt, microseconds.
        rtt_us: u64,
    },
}

/// Counters of what the client did and dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientStats {
    /// Packets emitted by kind.
    pub sent_real: u64,
    /// Replies emitted.
    pub sent_reply: u64,
    /// Drops emitted.
    pub sent_drop: u64,
    /// Loops emitted.
    pub sent_loop: u64,
    /// Messages delivered whole.
    pub messages_received: u64,
    /// Loops back.
    pub loops_received: u64,
    /// Received packets that failed to process or decode.
    pub bad_packets: u64,
    /// Partial messages evicted for space.
    pub partial_evicted: u64,
    /// Replies for SURBs we no longer hold.
    pub unknown_surbs: u64,
}

/// A queued outgoing item: one fragment to a recipient, or a SURB reply.
enum Queued {
    Fragment {
        to: Address,
        fragment: Vec<u8>,
        surb_first_hop: Option<NodeId>,
    },
    Reply {
        surb: Surb,
        fragment: Vec<u8>,
    },
}

/// Prepared keys of recipients kept at once.
const CONTACT_CACHE: usize = 1024;

/// Draw an exponential variate with the given mean (the crypto crate's
/// sampler, re-exported for the client's users).
pub use loopix_crypto::exp_sample;

fn next_after(rng: &mut impl CryptoRngCore, now_us: u64, rate_per_s: f64) -> Option<u64> {
    (rate_per_s > 0.0).then(|| now_us + exp_sample(rng, 1e6 / rate_per_s).round() as u64)
}

/// The client.
pub struct Client {
    geometry: Geometry,
    topology: Arc<ClientTopology>,
    rates: Rates,
    limits: ClientLimits,
    secret: SecretKey,
    me: Address,
    my_route: Arc<RouteKey>,
    provider: usize,
    queue: VecDeque<Queued>,
    next_p: Option<u64>,
    next_l: Option<u64>,
    next_d: Option<u64>,
    next_pull: Option<u64>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    partial: fragment::Reassembly,
    surbs: HashMap<[u8; 16], SurbKeys>,
    surb_order: VecDeque<[u8; 16]>,
    loops: HashMap<[u8; 16], u64>,
    loop_order: VecDeque<[u8; 16]>,
    contacts: HashMap<PublicKey, Arc<RouteKey>>,
    stats: ClientStats,
}

impl Client {
    /// A client of the provider `me.provider` (which must be in the
    /// topology), starting its streams at `now_us`.
    #[allow(clippy::too_many_arguments)] // reason: each is a distinct, required input
    pub fn new(
        geometry: Geometry,
        topology: Arc<ClientTopology>,
        rates: Rates,
        limits: ClientLimits,
        secret: SecretKey,
        mailbox: MailboxId,
        provider: NodeId,
        now_us: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Client, ClientError> {
        check_layers(&topology, &geometry)?;
        let provider_index = topology
            .providers
            .iter()
            .position(|p| p.id == provider)
            .ok_or(ClientError::Topology("own provider not in the topology"))?;
        let public = secret.public_key();
        let my_route = Arc::new(
            RouteKey::new(&public).map_err(|_| ClientError::Address("own key is not valid"))?,
        );
        let me = Address {
            provider,
            mailbox,
            key: public,
        };
        let mut client = Client {
            geometry,
            topology,
            rates,
            limits,
            secret,
            me,
            my_route,
            provider: provider_index,
            queue: VecDeque::new(),
            next_p: None,
            next_l: None,
            next_d: None,
            next_pull: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            partial: fragment::Reassembly::new(
                limits.partial_messages,
                limits.fragments_per_message,
            ),
            surbs: HashMap::new(),
            surb_order: VecDeque::new(),
            loops: HashMap::new(),
            loop_order: VecDeque::new(),
            contacts: HashMap::new(),
            stats: ClientStats::default(),
        };
        client.next_p = next_after(rng, now_us, rates.lambda_p);
        client.next_l = next_after(rng, now_us, rates.lambda_l);
        client.next_d = next_after(rng, now_us, rates.lambda_d);
        client.next_pull = (rates.pull_period_us > 0).then_some(now_us + rates.pull_period_us);
        Ok(client)
    }

    /// Replace the topology (a new key epoch, nodes joining or leaving).
    /// Own provider must still be in it; packets already built keep the
    /// old keys, and the queue, SURBs and loops in flight are kept.
    pub fn set_topology(&mut self, topology: Arc<ClientTopology>) -> Result<(), ClientError> {
        check_layers(&topology, &self.geometry)?;
        let provider = topology
            .providers
            .iter()
            .position(|p| p.id == self.me.provider)
            .ok_or(ClientError::Topology("own provider not in the topology"))?;
        self.topology = topology;
        self.provider = provider;
        Ok(())
    }

    /// The rates this client runs at.
    pub fn rates(&self) -> Rates {
        self.rates
    }

    /// Change the stream rates from `now_us` on: every stream's next event
    /// is drawn afresh from `now_us` (memoryless, so this is the same
    /// process as a client started then with the new rates) and the next
    /// pull is at a uniformly random point of the new period, so that
    /// clients whose rates change together do not pull in lockstep. Queue,
    /// SURBs and loops in flight are kept. The load generator's sweep
    /// raises rates this way between steps.
    pub fn set_rates(&mut self, rates: Rates, now_us: u64, rng: &mut impl CryptoRngCore) {
        self.rates = rates;
        self.next_p = next_after(rng, now_us, rates.lambda_p);
        self.next_l = next_after(rng, now_us, rates.lambda_l);
        self.next_d = next_after(rng, now_us, rates.lambda_d);
        self.next_pull =
            (rates.pull_period_us > 0).then(|| now_us + 1 + rng.next_u64() % rates.pull_period_us);
    }

    /// The prepared form of this client's own public key (shared, not
    /// copied): another client given it by [`Client::add_contact`] need not
    /// prepare it again (about 30 KB and 1 ms each).
    pub fn own_route_key(&self) -> Arc<RouteKey> {
        Arc::clone(&self.my_route)
    }

    /// Remember `prepared` as the prepared form of `key`, so that sending to
    /// it does not prepare it again. The caller vouches that `prepared` was
    /// made from `key` (e.g. by [`Client::own_route_key`] of its holder).
    pub fn add_contact(&mut self, key: PublicKey, prepared: Arc<RouteKey>) {
        if self.contacts.len() >= CONTACT_CACHE {
            self.contacts.clear();
        }
        self.contacts.insert(key, prepared);
    }

    /// This client's address, to give to others.
    pub fn address(&self) -> Address {
        self.me
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Fragments waiting in the FIFO buffer.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of message one fragment carries.
    pub fn fragment_capacity(&self) -> usize {
        fragment::data_capacity(&self.geometry, false)
    }

    /// Whether a message of `len` bytes can be sent in one [`send`](Self::send)
    /// under `limits`: checked before going online, so that a message that
    /// can never leave is refused without a trace on the wire.
    pub fn check_length(
        geometry: &Geometry,
        limits: &ClientLimits,
        len: usize,
        with_surb: bool,
    ) -> Result<(), ClientError> {
        let needed = fragment::fragments_needed(geometry, len, with_surb);
        if needed > usize::from(limits.fragments_per_message) {
            return Err(ClientError::TooLong {
                len,
                needed,
                max: limits.fragments_per_message,
            });
        }
        Ok(())
    }

    /// Queue `data` for `to`, split into fragments; with `with_surb`, the
    /// first fragment carries a SURB so the recipient can reply. Fragments
    /// leave one per `lambda_p` event, in order.
    pub fn send(
        &mut self,
        to: Address,
        data: &[u8],
        with_surb: bool,
        rng: &mut impl CryptoRngCore,
    ) -> Result<[u8; 16], ClientError> {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let pieces = fragment::split(
            &self.geometry,
            id,
            data,
            with_surb,
            self.limits.fragments_per_message,
        )
        .map_err(|needed| ClientError::TooLong {
            len: data.len(),
            needed,
            max: self.limits.fragments_per_message,
        })?;
        if self.queue.len() + pieces.len() > self.limits.queue_fragments {
            return Err(ClientError::QueueFull {
                queued: self.queue.len(),
                limit: self.limits.queue_fragments,
            });
        }
        self.contact(&to.key)?;
        for (i, fragment) in pieces.into_iter().enumerate() {
            self.queue.push_back(Queued::Fragment {
                to,
                fragment,
                surb_first_hop: (with_surb && i == 0).then_some(to.provider),
            });
        }
        Ok(id)
    }

    /// Queue a reply through `surb` (one fragment; longer replies are cut to
    /// `fragment_capacity`, which the caller can check first).
    pub fn reply(&mut self, surb: Surb, data: &[u8]) -> Result<(), ClientError> {
        if self.queue.len() >= self.limits.queue_fragments {
            return Err(ClientError::QueueFull {
                queued: self.queue.len(),
                limit: self.limits.queue_fragments,
            });
        }
        let pieces =
            fragment::split(&self.geometry, [0u8; 16], data, false, 1).map_err(|needed| {
                ClientError::TooLong {
                    len: data.len(),
                    needed,
                    max: 1,
                }
            })?;
        for fragment in pieces {
            self.queue.push_back(Queued::Reply {
                surb: surb.clone(),
                fragment,
            });
        }
        Ok(())
    }

    fn contact(&mut self, key: &PublicKey) -> Result<Arc<RouteKey>, ClientError> {
        if let Some(k) = self.contacts.get(key) {
            return Ok(Arc::clone(k));
        }
        let k = Arc::new(
            RouteKey::new(key).map_err(|_| ClientError::Address("recipient key is not valid"))?,
        );
        if self.contacts.len() >= CONTACT_CACHE {
            // Bounded: tables are rebuilt on demand (about 1 ms each).
            self.contacts.clear();
        }
        self.contacts.insert(*key, Arc::clone(&k));
        Ok(k)
    }

    /// The next time `handle_timeout` has work, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        [self.next_p, self.next_l, self.next_d, self.next_pull]
            .into_iter()
            .flatten()
            .min()
    }

    /// Run every stream event due at or before `now_us`, each at its own
    /// scheduled time.
    pub fn handle_timeout(&mut self, now_us: u64, rng: &mut impl CryptoRngCore) {
        loop {
            let due = [
                (self.next_p, 0u8),
                (self.next_l, 1),
                (self.next_d, 2),
                (self.next_pull, 3),
            ]
            .into_iter()
            .filter_map(|(t, s)| t.filter(|&t| t <= now_us).map(|t| (t, s)))
            .min();
            let Some((at, stream)) = due else { break };
            match stream {
                0 => {
                    self.emit_payload_stream(at, rng);
                    self.next_p = next_after(rng, at, self.rates.lambda_p);
                }
                1 => {
                    self.emit_loop(at, rng);
                    self.next_l = next_after(rng, at, self.rates.lambda_l);
                }
                2 => {
                    self.emit_drop(at, rng, PacketKind::Drop);
                    self.next_d = next_after(rng, at, self.rates.lambda_d);
                }
                _ => {
                    self.events.push_back(Event::Pull { at_us: at });
                    self.next_pull = Some(at + self.rates.pull_period_us);
                }
            }
        }
    }

    /// The next packet to send to the provider.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn delay(&self, rng: &mut impl CryptoRngCore) -> Delay {
        Delay::sample_exp(rng, self.rates.mean_delay_us)
    }

    /// `first`, then one random mix from each layer.
    fn through_layers(&self, first: NodeInfo, rng: &mut impl CryptoRngCore) -> Vec<NodeInfo> {
        let mut route = Vec::with_capacity(self.topology.layers.len() + 3);
        route.push(first);
        for layer in &self.topology.layers {
            let i = (rng.next_u64() % layer.len() as u64) as usize;
            route.push(layer[i].clone());
        }
        route
    }

    /// Own provider, then one mix per layer: the prefix every packet this
    /// client sends shares.
    fn mix_route(&self, rng: &mut impl CryptoRngCore) -> Vec<NodeInfo> {
        self.through_layers(self.topology.providers[self.provider].clone(), rng)
    }

    fn emit_payload_stream(&mut self, at: u64, rng: &mut impl CryptoRngCore) {
        match self.queue.pop_front() {
            None => self.emit_drop(at, rng, PacketKind::Drop),
            Some(Queued::Fragment {
                to,
                mut fragment,
                surb_first_hop,
            }) => {
                if let Some(first_hop) = surb_first_hop {
                    match self.make_surb(first_hop, rng) {
                        Ok(bytes) => fragment::attach_surb(&mut fragment, &bytes),
                        Err(_) => fragment::attach_surb(&mut fragment, &[]),
                    }
                }
                match self.message_packet(to, &fragment, rng) {
                    Ok(packet) => {
                        self.stats.sent_real += 1;
                        self.transmits.push_back(Transmit {
                            at_us: at,
                            kind: PacketKind::Real,
                            packet,
                        });
                    }
                    // Could not build (a bad address): the event still
                    // leaves as a drop, so timing is unchanged.
                    Err(_) => self.emit_drop(at, rng, PacketKind::Drop),
                }
            }
            Some(Queued::Reply { surb, fragment }) => {
                let mut packet = vec![0u8; self.geometry.packet_len()];
                match surb.write_reply(&self.geometry, &fragment, &mut packet) {
                    Ok(()) => {
                        self.stats.sent_reply += 1;
                        self.transmits.push_back(Transmit {
                            at_us: at,
                            kind: PacketKind::Reply,
                            packet,
                        });
                    }
                    Err(_) => self.emit_drop(at, rng, PacketKind::Drop),
                }
            }
        }
    }

    fn provider_info(&self, id: NodeId) -> Result<NodeInfo, ClientError> {
        self.topology
            .providers
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or(ClientError::Address(
                "recipient's provider is not in the topology",
            ))
    }

    fn message_packet(
        &mut self,
        to: Address,
        fragment: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, ClientError> {
        let mut route = self.mix_route(rng);
        // The recipient's provider ends the route: it delivers to the mailbox.
        route.push(self.provider_info(to.provider)?);
        let key = self.contact(&to.key)?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let recipient = [(
            key,
            RoutingCommand::Recipient {
                kind: RecipientKind::Message,
                id,
            },
        )];
        // Its delay is drawn in `path_hops`.
        let deliver = RoutingCommand::Deliver {
            mailbox: to.mailbox,
            delay: Delay::ZERO,
        };
        self.build_tail(&route, &recipient, deliver, fragment, rng)
    }

    /// Hops for `route` relaying each to the next with fresh `Exp(mu)`
    /// delays, its last node executing `last_command`, then `tail`.
    fn path_hops<'a>(
        &self,
        route: &'a [NodeInfo],
        tail: &'a [(Arc<RouteKey>, RoutingCommand)],
        last_command: RoutingCommand,
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Hop<'a>> {
        let n = route.len();
        let mut hops = Vec::with_capacity(n + tail.len());
        for (i, node) in route.iter().enumerate() {
            let command = if i + 1 < n {
                RoutingCommand::Relay {
                    next: route[i + 1].id,
                    delay: self.delay(rng),
                }
            } else if let RoutingCommand::Deliver { mailbox, .. } = last_command {
                // The egress provider mixes like every hop: its own draw.
                RoutingCommand::Deliver {
                    mailbox,
                    delay: self.delay(rng),
                }
            } else {
                last_command
            };
            hops.push(Hop {
                key: &node.key,
                command,
            });
        }
        for (k, c) in tail {
            hops.push(Hop {
                key: k,
                command: *c,
            });
        }
        hops
    }

    /// Build a packet along `path_hops(route, tail, last_command)`.
    fn build_tail(
        &mut self,
        route: &[NodeInfo],
        tail: &[(Arc<RouteKey>, RoutingCommand)],
        last_command: RoutingCommand,
        message: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, ClientError> {
        let hops = self.path_hops(route, tail, last_command, rng);
        let mut pkt = vec![0u8; self.geometry.packet_len()];
        sphinx::build(&self.geometry, &hops, message, rng, &mut pkt)?;
        Ok(pkt)
    }

    fn emit_drop(&mut self, at: u64, rng: &mut impl CryptoRngCore, kind: PacketKind) {
        let mut route = self.mix_route(rng);
        let p = (rng.next_u64() % self.topology.providers.len() as u64) as usize;
        route.push(self.topology.providers[p].clone());
        match self.build_tail(&route, &[], RoutingCommand::Drop, &[], rng) {
            Ok(packet) => {
                self.stats.sent_drop += 1;
                self.transmits.push_back(Transmit {
                    at_us: at,
                    kind,
                    packet,
                });
            }
            Err(e) => debug_assert!(false, "a drop path is always valid: {e}"),
        }
    }

    fn emit_loop(&mut self, at: u64, rng: &mut impl CryptoRngCore) {
        let mut route = self.mix_route(rng);
        route.push(self.topology.providers[self.provider].clone());
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let tail = [(
            Arc::clone(&self.my_route),
            RoutingCommand::Recipient {
                kind: RecipientKind::Loop,
                id,
            },
        )];
        let deliver = RoutingCommand::Deliver {
            mailbox: self.me.mailbox,
            delay: Delay::ZERO,
        };
        match self.build_tail(&route, &tail, deliver, &[], rng) {
            Ok(packet) => {
                self.stats.sent_loop += 1;
                if self.loops.len() >= self.limits.loops {
                    if let Some(old) = self.loop_order.pop_front() {
                        self.loops.remove(&old);
                    }
                }
                self.loops.insert(id, at);
                self.loop_order.push_back(id);
                self.transmits.push_back(Transmit {
                    at_us: at,
                    kind: PacketKind::Loop,
                    packet,
                });
            }
            Err(e) => debug_assert!(false, "a loop path is always valid: {e}"),
        }
    }

    /// A SURB back to this client whose first hop is `first_hop` (the
    /// replier's provider); its keys are kept for the reply.
    fn make_surb(
        &mut self,
        first_hop: NodeId,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, ClientError> {
        let first = self.provider_info(first_hop)?;
        let mut route = self.through_layers(first, rng);
        route.push(self.topology.providers[self.provider].clone());
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let me = [(
            Arc::clone(&self.my_route),
            RoutingCommand::Recipient {
                kind: RecipientKind::Reply,
                id,
            },
        )];
        let deliver = RoutingCommand::Deliver {
            mailbox: self.me.mailbox,
            delay: Delay::ZERO,
        };
        let hops = self.path_hops(&route, &me, deliver, rng);
        let (surb, keys) = Surb::new(&self.geometry, first_hop, &hops, rng)?;
        if self.surbs.len() >= self.limits.surbs {
            if let Some(old) = self.surb_order.pop_front() {
                self.surbs.remove(&old);
            }
        }
        self.surbs.insert(id, keys);
        self.surb_order.push_back(id);
        Ok(surb.to_bytes())
    }

    /// A packet pulled from the provider: process our layer and act on it.
    /// Bad packets are counted, never a panic.
    pub fn handle_packet(&mut self, now_us: u64, packet: &mut [u8]) {
        let processed = match sphinx::process(&self.geometry, &self.secret, packet) {
            Ok(p) => p,
            Err(_) => {
                self.stats.bad_packets += 1;
                return;
            }
        };
        let header_len = self.geometry.header_len();
        match processed.command {
            RoutingCommand::Recipient {
                kind: RecipientKind::Loop,
                id,
            } => match self.loops.remove(&id) {
                Some(sent) => {
                    self.stats.loops_received += 1;
                    self.events.push_back(Event::LoopReturned {
                        rtt_us: now_us.saturating_sub(sent),
                    });
                }
                None => self.stats.bad_packets += 1,
            },
            RoutingCommand::Recipient {
                kind: RecipientKind::Message,
                ..
            } => match loopix_crypto::payload::decode(&packet[header_len..]) {
                Ok(body) => self.take_fragment(body.to_vec()),
                Err(_) => self.stats.bad_packets += 1,
            },
            RoutingCommand::Recipient {
                kind: RecipientKind::Reply,
                id,
            } => {
                let Some(keys) = self.surbs.remove(&id) else {
                    self.stats.unknown_surbs += 1;
                    return;
                };
                match keys.open_reply(&mut packet[header_len..]) {
                    Ok(body) => match fragment::Fragment::parse(body) {
                        Ok(f) => {
                            self.events.push_back(Event::Reply {
                                surb_id: id,
                                data: f.data.to_vec(),
                            });
                        }
                        Err(_) => self.stats.bad_packets += 1,
                    },
                    Err(_) => self.stats.bad_packets += 1,
                }
            }
            _ => self.stats.bad_packets += 1,
        }
    }

    fn take_fragment(&mut self, body: Vec<u8>) {
        match self.partial.add(&self.geometry, &body) {
            Ok(Some(done)) => {
                self.stats.messages_received += 1;
                self.events.push_back(Event::Message {
                    id: done.id,
                    data: done.data,
                    surb: done.surb,
                });
            }
            Ok(None) => {}
            Err(_) => self.stats.bad_packets += 1,
        }
        self.stats.partial_evicted = self.partial.evicted();
    }
}
