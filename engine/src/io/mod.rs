//! Everything that makes system calls on the packet path: sockets, the
//! reuseport steering program, and the two datagram backends; beside them
//! the simulated backend (`sim`), which makes none and moves datagrams
//! through memory for tests on simulated time. Two non-packet owners of
//! system calls live here too: the shared file mappings of the persistent
//! replay filters (`mapped`) and the one-instance directory lock (`lock`).
//!
//! This module is the one owner of `unsafe` in the engine (STYLE.md item 2).
//! A backend moves whole datagrams between one UDP socket and the shard:
//! `recv` waits (up to a deadline) for at least one datagram and hands each
//! to the shard as a borrowed slice, `send` queues a datagram (copied into a
//! backend-owned buffer) and `flush` submits the queue in one batch.
//!
//! Invariants: buffers are allocated when the backend is created, never on
//! the packet path; at most `batch` datagrams are received or queued per
//! call; a datagram longer than the receive buffer is reported truncated,
//! not delivered in part.

pub mod lock;
pub mod mapped;
pub mod portable;
pub mod sim;
pub mod socket;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// One received datagram, borrowed from the backend until the callback
/// returns.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// Source address.
    pub from: SocketAddr,
    /// The bytes (whole datagram unless `truncated`).
    pub data: &'a [u8],
    /// The datagram was longer than the receive buffer.
    pub truncated: bool,
}

/// Which backend a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// io_uring: multishot receive with provided buffers, batched sends.
    Uring,
    /// `recvmmsg`/`sendmmsg` with `ppoll`.
    Portable,
    /// In-memory queues on simulated time (tests, fuzzing); never chosen by
    /// a node's config.
    Sim,
}

impl IoKind {
    /// Name used in config, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            IoKind::Uring => "uring",
            IoKind::Portable => "portable",
            IoKind::Sim => "sim",
        }
    }
}

/// A datagram backend bound to one socket.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> IoKind;

    /// Wait at most `timeout` (`None`: wait until a datagram arrives; zero:
    /// do not wait) for datagrams, then hand each available one, at most the
    /// backend's batch size, to `on_datagram`. Returns how many were handed
    /// over. An interrupted wait returns `Ok(0)`.
    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_datagram: &mut dyn FnMut(Datagram<'_>),
    ) -> io::Result<usize>;

    /// Queue a datagram for `to`. Returns `false` (and queues nothing) if
    /// the send queue is full: call `flush` first.
    fn send(&mut self, to: SocketAddr, data: &[u8]) -> bool;

    /// Submit every queued datagram. Returns (sent, failed); failures are
    /// counted by the caller, not retried.
    fn flush(&mut self) -> (usize, usize);

    /// Datagrams queued and not yet flushed.
    fn queued(&self) -> usize;

    /// Send `data` to `to` as back-to-back datagrams of `seg_len` bytes
    /// (a pull answer's k frames), after everything queued. Returns (sent,
    /// failed) datagrams, the flushed ones included. Socket backends hand
    /// the kernel the whole run at once (UDP segmentation offload); this
    /// default queues and flushes datagram by datagram.
    fn send_segments(&mut self, to: SocketAddr, data: &[u8], seg_len: usize) -> (usize, usize) {
        send_one_by_one(self, to, data, seg_len)
    }

    /// Whether more received datagrams wait to be handed over (checked
    /// after a full batch: the shard's AQM needs to know when its input was
    /// last empty). Cheap: a look at the completion queue, or one `ioctl`.
    fn input_pending(&mut self) -> bool;

    /// Datagrams the kernel dropped for this socket since it was opened
    /// (receive queue full, or refused by its socket filter), as the
    /// kernel's 32-bit counter: the caller accumulates wrapping deltas.
    /// `None` where there is no kernel socket (the simulator).
    fn kernel_drops(&self) -> Option<u32> {
        None
    }
}

/// Create the backend `kind` over `socket`, with `batch` slots of
/// `buf_len` bytes each for receiving and for sending.
pub fn open(
    kind: IoKind,
    socket: std::net::UdpSocket,
    batch: usize,
    buf_len: usize,
) -> io::Result<Box<dyn Backend + Send>> {
    Ok(match kind {
        IoKind::Portable => Box::new(portable::Portable::new(socket, batch, buf_len)?),
        IoKind::Uring => Box::new(uring::Uring::new(socket, batch, buf_len)?),
        IoKind::Sim => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the simulated backend has no socket: build it from a SimNet",
            ))
        }
    })
}

/// [`Backend::send_segments`] without segmentation offload.
pub(crate) fn send_one_by_one<B: Backend + ?Sized>(
    b: &mut B,
    to: SocketAddr,
    data: &[u8],
    seg_len: usize,
) -> (usize, usize) {
    let (mut sent, mut failed) = (0, 0);
    for frame in data.chunks(seg_len.max(1)) {
        if b.send(to, frame) {
            continue;
        }
        let (s, f) = b.flush();
        sent += s;
        failed += f;
        if !b.send(to, frame) {
            failed += 1;
        }
    }
    let (s, f) = b.flush();
    (sent + s, failed + f)
}

/// Segmented send for a socket backend whose socket (a second handle on
/// it) is in `gso`: flush what is queued, then offloaded sends, or datagram
/// by datagram where the kernel cannot (found once: `gso` is emptied).
pub(crate) fn send_segments_on<B: Backend + ?Sized>(
    b: &mut B,
    gso: &mut Option<std::net::UdpSocket>,
    to: SocketAddr,
    data: &[u8],
    seg_len: usize,
) -> (usize, usize) {
    let Some(sock) = gso.take() else {
        return send_one_by_one(b, to, data, seg_len);
    };
    let (sent, failed) = b.flush();
    match socket::send_gso(&sock, to, data, seg_len) {
        Ok((s, f)) => {
            *gso = Some(sock);
            (sent + s, failed + f)
        }
        Err(socket::GsoUnsupported) => {
            let (s, f) = send_one_by_one(b, to, data, seg_len);
            (sent + s, failed + f)
        }
    }
}

/// Ask the kernel for tight timer wake-ups on this thread (1 us of slack
/// instead of the default 50 us), so waits for wheel deadlines end on time.
#[allow(unsafe_code)] // reason: prctl with integer arguments only
pub fn set_timer_slack_ns(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Send `signal` to process `pid` (a child this process started).
#[allow(unsafe_code)] // reason: kill(2) with integer arguments only
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes two integers and no pointers.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
