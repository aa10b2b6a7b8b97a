//! The client's network driver: one [`Client`] over a blocking
//! `std::net::UdpSocket` to its provider. This is the only file of the
//! crate with a socket or a clock; the core stays sans-IO.
//!
//! What it does, in one loop ([`Driver::run_until`]):
//! - runs the core's due stream events ([`Client::handle_timeout`]) and sends
//!   each resulting packet at once, in order, as a `KIND_CLIENT_PACKET`
//!   frame: the core hands out a packet only once its scheduled time has
//!   come, so a packet is never early, never skipped and never reordered,
//!   and a late one (the driver was busy) leaves as soon as it can;
//! - on each [`Event::Pull`] sends a pull request carrying the ids of the
//!   messages received since the last pull (at most
//!   [`access::max_acks`]; the rest wait for the next pull);
//! - receives the provider's delivery frames, checks the source address
//!   and hands each to its [`AccessSession`] (length, kind, counter window,
//!   tag, request id, re-delivery: `session.rs`, shared with the load
//!   generator), and feeds each message not handled yet to
//!   [`Client::handle_packet`];
//! - hands every other event to the caller's callback.
//!
//! Invariants: bytes from the network never panic the driver; each drop is
//! counted under its reason in [`DriverStats`]. Frame counters (packets and
//! pulls share one sequence) start at the wall clock in microseconds, so a
//! restarted client's counters are above what its provider last saw. Every
//! table is bounded ([`SessionLimits::CLIENT`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loopix_crypto::access;
use loopix_crypto::Geometry;
use rand_core::OsRng;

use crate::session::{AccessSession, Received, SessionLimits, SessionStats};
use crate::{Client, Event, Registration};

/// Message ids remembered as handled (to ignore re-deliveries).
pub const HANDLED_IDS: usize = SessionLimits::CLIENT.handled_ids;
/// Pull requests whose answers are still accepted.
pub const RECENT_REQUESTS: usize = SessionLimits::CLIENT.recent_requests;
/// A packet sent more than this after its scheduled time counts as late.
pub const LATE_US: u64 = 1_000;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The driver's clock: microseconds on a monotonic clock, from the first
/// call in this process. Create the [`Client`] a driver runs with this
/// clock's `now_us()`.
pub fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

fn instant_of(us: u64) -> Instant {
    origin() + Duration::from_micros(us)
}

/// What a failed `recv_from` means to a loop that keeps receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Timed out, would block, or interrupted by a signal: nothing yet.
    NoData,
    /// An ICMP error from an earlier send (refused, reset, unreachable):
    /// count it and receive again.
    Transient,
    /// Anything else: retrying cannot fix it.
    Fatal,
}

/// Classify a receive error (shared by every receive loop over UDP).
pub fn recv_error(e: &io::Error) -> RecvError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
            RecvError::NoData
        }
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable => RecvError::Transient,
        _ => RecvError::Fatal,
    }
}

/// What the event callback wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep running.
    Continue,
    /// Return from [`Driver::run_until`] now (events not yet handed out stay
    /// queued for the next call).
    Stop,
}

/// Why [`Driver::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The callback returned [`Flow::Stop`].
    Stopped,
    /// The deadline passed.
    Deadline,
}

/// What the driver sent, received and dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DriverStats {
    /// Sphinx packets sent (every stream).
    pub packets_sent: u64,
    /// Packets sent more than [`LATE_US`] after their scheduled time.
    pub packets_late: u64,
    /// Largest lateness seen, microseconds.
    pub late_us_max: u64,
    /// Pull requests sent.
    pub pulls_sent: u64,
    /// Datagrams that failed to leave (`send_to` errors).
    pub send_errors: u64,
    /// Datagrams received, good or bad.
    pub frames_received: u64,
    /// Dropped: not from the provider's address.
    pub drop_wrong_source: u64,
    /// What the access session sealed, received and refused.
    pub link: SessionStats,
    /// Receive errors other than timeouts.
    pub recv_errors: u64,
}

/// One [`Client`] online: the core, its access-link state and the socket.
pub struct Driver {
    client: Client,
    socket: UdpSocket,
    provider: SocketAddr,
    session: AccessSession,
    rng: OsRng,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    stats: DriverStats,
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Driver {
    /// Put `client` online through `socket` with the access link of
    /// `registration` (which must be the client's: same mailbox and
    /// provider). The socket is switched to blocking mode.
    pub fn new(
        client: Client,
        registration: &Registration,
        geometry: Geometry,
        socket: UdpSocket,
    ) -> io::Result<Driver> {
        let me = client.address();
        if me.mailbox != registration.mailbox || me.provider != registration.provider_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the registration's mailbox or provider_id is not the client's",
            ));
        }
        socket.set_nonblocking(false)?;
        Ok(Driver {
            client,
            socket,
            provider: registration.provider_address,
            session: AccessSession::new(
                geometry,
                &registration.access_key,
                registration.slot,
                registration.mailbox,
                wall_clock_us(),
                SessionLimits::CLIENT,
            ),
            rng: OsRng,
            send_buf: vec![0u8; geometry.frame_len()],
            // One byte more than a delivery frame, to see longer datagrams.
            recv_buf: vec![0u8; access::delivery_frame_len(&geometry) + 1],
            stats: DriverStats::default(),
        })
    }

    /// The core.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The core, to send, reply or change the topology.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Counters.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            link: self.session.stats(),
            ..self.stats
        }
    }

    /// Acknowledgements waiting for the next pull.
    pub fn acks_pending(&self) -> usize {
        self.session.acks_pending()
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Run until `deadline` or until `on_event` returns [`Flow::Stop`]:
    /// send what is due, pull when due, receive and handle deliveries, and
    /// hand out messages, replies and returned loops. Errors are socket
    /// errors that retrying cannot fix; everything a peer can cause is
    /// counted instead.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut on_event: impl FnMut(&mut Client, Event) -> Flow,
    ) -> io::Result<RunEnd> {
        loop {
            self.client.handle_timeout(now_us(), &mut self.rng);
            self.flush_transmits();
            if self.dispatch(&mut on_event) == Flow::Stop {
                return Ok(RunEnd::Stopped);
            }
            if Instant::now() >= deadline {
                return Ok(RunEnd::Deadline);
            }
            let until = match self.client.poll_timeout() {
                Some(t) => instant_of(t).min(deadline),
                None => deadline,
            };
            if self.receive_until(until, &mut on_event)? == Flow::Stop {
                return Ok(RunEnd::Stopped);
            }
        }
    }

    fn send_frame(&mut self) {
        match self.socket.send_to(&self.send_buf, self.provider) {
            Ok(_) => {}
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Send every packet the core has released, in order. Each was due
    /// when released (its time is at or before the `now` given to
    /// `handle_timeout`).
    fn flush_transmits(&mut self) {
        while let Some(tx) = self.client.poll_transmit() {
            let late = now_us().saturating_sub(tx.at_us);
            if late > LATE_US {
                self.stats.packets_late += 1;
            }
            self.stats.late_us_max = self.stats.late_us_max.max(late);
            match self.session.seal_packet(&tx.packet, &mut self.send_buf) {
                Ok(()) => {
                    self.send_frame();
                    self.stats.packets_sent += 1;
                }
                // The core's packets are always `packet_len`; counted in
                // case that ever breaks rather than panicking.
                Err(_) => self.stats.send_errors += 1,
            }
        }
    }

    fn send_pull(&mut self) {
        match self.session.seal_pull(&mut self.send_buf) {
            Ok(_) => {
                self.send_frame();
                self.stats.pulls_sent += 1;
            }
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Hand out queued events: pulls are the driver's own, the rest go to
    /// the callback.
    fn dispatch(&mut self, on_event: &mut impl FnMut(&mut Client, Event) -> Flow) -> Flow {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::Pull { .. } => self.send_pull(),
                other => {
                    if on_event(&mut self.client, other) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        }
        Flow::Continue
    }

    fn receive_until(
        &mut self,
        until: Instant,
        on_event: &mut impl FnMut(&mut Client, Event) -> Flow,
    ) -> io::Result<Flow> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(Flow::Continue);
            }
            // A zero timeout means "block forever" to the OS: never pass it.
            let wait = (until - now).max(Duration::from_micros(1));
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    self.stats.frames_received += 1;
                    self.handle_datagram(n, from);
                    if self.dispatch(on_event) == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    // `until` still holds: what the callback queues leaves
                    // on the core's own stream events, not earlier.
                }
                Err(e) => match recv_error(&e) {
                    // Nothing yet, or a signal: let the caller look at its
                    // flags.
                    RecvError::NoData => return Ok(Flow::Continue),
                    RecvError::Transient => {
                        self.stats.recv_errors += 1;
                        return Ok(Flow::Continue);
                    }
                    RecvError::Fatal => return Err(e),
                },
            }
        }
    }

    /// Check and handle one datagram of `n` bytes in `recv_buf`.
    fn handle_datagram(&mut self, n: usize, from: SocketAddr) {
        if from != self.provider {
            self.stats.drop_wrong_source += 1;
            return;
        }
        if let Received::Message { packet, .. } = self.session.handle_frame(&mut self.recv_buf[..n])
        {
            self.client.handle_packet(now_us(), packet);
        }
    }
}
