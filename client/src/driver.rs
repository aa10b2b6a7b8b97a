//! The client's network driver: one [`Client`] over a non-blocking
//! `std::net::UdpSocket` to its provider. This is the only file of the
//! crate with a socket or a clock; the core stays sans-IO.
//!
//! What it does, in one loop ([`Driver::run_until`]):
//! - runs the core's stream events [`BUILD_AHEAD_US`] before they are due
//!   ([`Client::handle_timeout`]), so every packet, a drop or a real
//!   message with a SURB, is built before its time; holds each, in order,
//!   and sends it as a `KIND_CLIENT_PACKET` frame at its scheduled time to
//!   within tens of microseconds (a `ppoll` that ends [`SPIN_US`] early,
//!   then a spin): a packet is never early, never skipped and never
//!   reordered, its departure does not depend on its kind, and a late one
//!   (the driver was busy) leaves as soon as it can;
//! - at each [`Event::Pull`]'s time sends a pull request carrying the ids
//!   of the messages received since the last pull (at most
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

/// How long before a departure the driver stops sleeping and spins: a
/// sleeping wait wakes up to ~0.2 ms late on a busy virtual machine.
pub const SPIN_US: u64 = 300;
const SPIN: Duration = Duration::from_micros(SPIN_US);

/// Wait up to `wait` for `socket` to be readable; `Ok(false)` on time-out.
fn wait_readable(socket: &UdpSocket, wait: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: wait.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: wait.subsec_nanos().into(),
    };
    let mut fds = [PollFd::new(socket, PollFlags::IN)];
    Ok(poll(&mut fds, Some(&timeout))? > 0)
}

/// How far ahead of its time the driver builds a packet: several Sphinx
/// builds (each up to a millisecond with a SURB) on a busy machine. A `lambda_p`
/// event decides between a queued message and a drop this much early.
pub const BUILD_AHEAD_US: u64 = 10_000;

/// No build starts when a departure is due within this: it would make the
/// departure late.
const BUILD_MARGIN_US: u64 = 1_500;

/// Something built ahead, waiting for its time.
enum Held {
    Packet(crate::Transmit),
    Pull { at_us: u64 },
}

impl Held {
    fn at_us(&self) -> u64 {
        match self {
            Held::Packet(tx) => tx.at_us,
            Held::Pull { at_us } => *at_us,
        }
    }
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
    /// Packets and pulls built ahead, in order of their times.
    held: std::collections::VecDeque<Held>,
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Driver {
    /// Put `client` online through `socket` with the access link of
    /// `registration` (which must be the client's: same mailbox and
    /// provider). The socket is switched to non-blocking mode: the driver
    /// waits in `ppoll`, never in a receive.
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
        socket.set_nonblocking(true)?;
        let rates = client.rates().announced().digest();
        Ok(Driver {
            client,
            socket,
            provider: registration.provider_address,
            session: AccessSession::new(
                geometry,
                &registration.access_key,
                registration.slot,
                registration.mailbox,
                rates,
                wall_clock_us(),
                SessionLimits::CLIENT,
            ),
            rng: OsRng,
            send_buf: vec![0u8; geometry.frame_len()],
            // One byte more than a delivery frame, to see longer datagrams.
            recv_buf: vec![0u8; access::delivery_frame_len(&geometry) + 1],
            stats: DriverStats::default(),
            held: std::collections::VecDeque::new(),
        })
    }

    /// The core.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Messages and replies not sent yet: fragments queued in the core
    /// plus packets built ahead and held for their time. A caller that
    /// waits for its messages to leave waits for this to reach 0.
    pub fn queued(&self) -> usize {
        let held = self
            .held
            .iter()
            .filter(|h| {
                matches!(h, Held::Packet(tx) if matches!(tx.kind, crate::PacketKind::Real | crate::PacketKind::Reply))
            })
            .count();
        self.client.queued() + held
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
        // Waits end within 1 us of their time-out, not 50 us (the default
        // timer slack); best effort.
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
        loop {
            // What is due leaves first, and no build starts just before a
            // departure: building a packet takes hundreds of microseconds.
            self.send_due();
            self.build_ahead();
            if self.dispatch(&mut on_event) == Flow::Stop {
                return Ok(RunEnd::Stopped);
            }
            self.send_due();
            if Instant::now() >= deadline {
                return Ok(RunEnd::Deadline);
            }
            // Wake for the next departure on time (spinning its last
            // stretch), or for the next build, which has slack; builds
            // wait while a departure is near.
            let next_send = self.next_send_us();
            let next_build = self
                .client
                .poll_timeout()
                .map(|t| t.saturating_sub(BUILD_AHEAD_US));
            let (until, spin) = match (next_send, next_build) {
                (Some(s), Some(b)) if b < s && s > now_us() + BUILD_MARGIN_US => {
                    (instant_of(b), false)
                }
                (Some(s), _) => (instant_of(s), true),
                (None, Some(b)) => (instant_of(b), false),
                (None, None) => (deadline, false),
            };
            let (until, spin) = if deadline < until {
                (deadline, false)
            } else {
                (until, spin)
            };
            if self.receive_until(until, spin, &mut on_event)? == Flow::Stop {
                return Ok(RunEnd::Stopped);
            }
        }
    }

    /// Build the core's events due within [`BUILD_AHEAD_US`], one event
    /// time at a time, while no departure is due within
    /// [`BUILD_MARGIN_US`].
    fn build_ahead(&mut self) {
        loop {
            let now = now_us();
            if self
                .next_send_us()
                .is_some_and(|t| t <= now + BUILD_MARGIN_US)
            {
                return;
            }
            match self.client.poll_timeout() {
                Some(t) if t <= now + BUILD_AHEAD_US => {
                    self.client.handle_timeout(t, &mut self.rng);
                    self.hold_transmits();
                }
                _ => return,
            }
        }
    }

    /// The time of the next held packet or pull, if any.
    fn next_send_us(&self) -> Option<u64> {
        self.held.front().map(Held::at_us)
    }

    fn send_frame(&mut self) {
        match self.socket.send_to(&self.send_buf, self.provider) {
            Ok(_) => {}
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Hold every packet the core has built, in order of its time.
    fn hold_transmits(&mut self) {
        while let Some(tx) = self.client.poll_transmit() {
            self.hold(Held::Packet(tx));
        }
    }

    /// Insert `h` after everything held with a time at or before its own.
    fn hold(&mut self, h: Held) {
        let at = h.at_us();
        let i = self.held.partition_point(|x| x.at_us() <= at);
        self.held.insert(i, h);
    }

    /// Send every held packet and pull whose time has come, in order.
    fn send_due(&mut self) {
        while self.held.front().is_some_and(|h| h.at_us() <= now_us()) {
            match self.held.pop_front() {
                Some(Held::Packet(tx)) => self.send_packet(&tx),
                Some(Held::Pull { .. }) => self.send_pull(),
                None => break,
            }
        }
    }

    fn send_packet(&mut self, tx: &crate::Transmit) {
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

    fn send_pull(&mut self) {
        // The rates may have changed since the last pull (`client_mut`).
        let rates = self.client.rates().announced().digest();
        self.session.announce_rates(rates);
        match self.session.seal_pull(&mut self.send_buf) {
            Ok(_) => {
                self.send_frame();
                self.stats.pulls_sent += 1;
            }
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Hand out queued events: pulls are the driver's own (held for their
    /// time), the rest go to the callback.
    fn dispatch(&mut self, on_event: &mut impl FnMut(&mut Client, Event) -> Flow) -> Flow {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::Pull { at_us } => self.hold(Held::Pull { at_us }),
                other => {
                    if on_event(&mut self.client, other) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Receive and handle deliveries until `until`, and return at `until`
    /// to within tens of microseconds: the time of the next departure.
    ///
    /// A socket receive time-out cannot do that: it runs on kernel ticks
    /// and woke the driver 1-8 ms late, which put every departure on a
    /// millisecond grid an observer could see. The wait is a `ppoll` with a
    /// nanosecond time-out (and 1 us of timer slack) that ends
    /// [`SPIN_US`] early; the last stretch spins on the clock.
    fn receive_until(
        &mut self,
        until: Instant,
        spin: bool,
        on_event: &mut impl FnMut(&mut Client, Event) -> Flow,
    ) -> io::Result<Flow> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(Flow::Continue);
            }
            let left = until - now;
            // Only departures need the spin; a build has slack.
            if spin && left <= SPIN {
                // What arrives meanwhile is read in the next round.
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                return Ok(Flow::Continue);
            }
            let wait = if spin { left - SPIN } else { left };
            match wait_readable(&self.socket, wait) {
                Ok(false) => continue,
                Ok(true) => {}
                // A signal: let the caller look at its flags.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Flow::Continue),
                Err(e) => return Err(e),
            }
            // Readable: take every datagram queued (the socket does not block).
            loop {
                match self.socket.recv_from(&mut self.recv_buf) {
                    Ok((n, from)) => {
                        self.stats.frames_received += 1;
                        self.handle_datagram(n, from);
                        if self.dispatch(on_event) == Flow::Stop {
                            return Ok(Flow::Stop);
                        }
                        // `until` still holds: what the callback queues
                        // leaves on the core's own stream events, not
                        // earlier.
                    }
                    Err(e) => match recv_error(&e) {
                        RecvError::NoData => break,
                        RecvError::Transient => {
                            self.stats.recv_errors += 1;
                            break;
                        }
                        RecvError::Fatal => return Err(e),
                    },
                }
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
