//! The io_uring backend: one multishot `recvmsg` kept armed over a ring of
//! provided buffers, and batched `sendmsg` submissions.
//!
//! What it owns:
//! - the io_uring instance (`ring`);
//! - a provided-buffer ring (`BufRing`): one anonymous page-aligned mapping
//!   holding the `io_uring_buf` entry array (registered with
//!   `IORING_REGISTER_PBUF_RING`, group `BGID`) followed by the buffers. The
//!   multishot receive writes `[io_uring_recvmsg_out | name | payload]` into
//!   a buffer the kernel picks from the ring;
//! - the receive `msghdr` template (only its name and control lengths are
//!   read by the kernel);
//! - `batch` send slots (`msghdr`, `iovec`, `sockaddr_storage`) and their
//!   payload buffers.
//!
//! Invariants:
//! - everything the kernel reads or writes through a pointer is allocated
//!   in `new` and never moves, grows or is freed while the ring can reach
//!   it: `Drop` unregisters the buffer ring, then the ring is closed (it is
//!   the first field), and only then are the buffers and slots freed;
//! - a provided buffer belongs to the kernel from the moment its ring entry
//!   is published (tail store with release ordering) until a completion
//!   names it; it is handed to the callback and only then given back, so
//!   the kernel never writes a buffer that a `Datagram` borrows;
//! - send slots are written by `send` only while no send is in flight:
//!   `flush` waits for every completion of what it submitted, and `send`
//!   refuses while any remains (which happens only after a hard ring error);
//! - receive completions reaped by `flush` are kept in `stash` (their
//!   buffers still owned by us) and delivered, in order, by the next `recv`.
//!   At most one receive completion per buffer, plus the terminating ones,
//!   can exist, so the stash never outgrows the capacity reserved in `new`;
//! - the multishot receive is armed lazily by `recv`, from the thread that
//!   runs the backend, so its task work runs there; it is re-armed whenever
//!   a completion arrives without `IORING_CQE_F_MORE` (e.g. after `ENOBUFS`
//!   when every buffer was in use, or a CQ overflow);
//! - the ring is set up with `IORING_SETUP_COOP_TASKRUN` and
//!   `IORING_SETUP_TASKRUN_FLAG` where the kernel has them: completions are
//!   posted only when we enter the kernel, which every waiting `recv` and
//!   every `flush` does, and a zero-timeout `recv` does when the kernel
//!   flags pending work.

#![allow(unsafe_code)] // reason: io_uring submissions, a kernel-shared buffer ring and raw msghdr pointers; audited per block

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::portable::{sockaddr_to_std, std_to_sockaddr};
use super::{Backend, Datagram, IoKind};

/// Buffer group id of the provided-buffer ring (one ring per io_uring).
const BGID: u16 = 0;
/// `user_data` of the multishot receive.
const UD_RECV: u64 = 1;
/// `user_data` of every send.
const UD_SEND: u64 = 2;
/// Bytes in front of the name in each provided buffer.
const RECVMSG_OUT_LEN: usize = std::mem::size_of::<RecvMsgOutHeader>();
/// Bytes reserved for the source address in each provided buffer.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_storage>();
/// Most entries a provided-buffer ring may have.
const MAX_RING_ENTRIES: usize = 32768;
/// Longest single wait handed to the kernel (longer ones are waited in
/// pieces), well inside what a `__kernel_timespec` holds.
const MAX_WAIT: Duration = Duration::from_secs(1 << 30);

/// Layout of `struct io_uring_recvmsg_out` (only its size is used here;
/// `RecvMsgOut::parse` reads it).
#[repr(C)]
struct RecvMsgOutHeader {
    _namelen: u32,
    _controllen: u32,
    _payloadlen: u32,
    _flags: u32,
}

/// Layout of `struct io_uring_buf`. In entry 0, `resv` is the ring tail.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<BufEntry>() == 16);
const _: () = assert!(RECVMSG_OUT_LEN == 16);

/// A provided-buffer ring and its buffers, in one anonymous mapping.
struct BufRing {
    /// Start of the mapping: the entry array (page-aligned, as the kernel
    /// requires).
    map: *mut u8,
    map_len: usize,
    /// Start of the buffers, `entries * stride` bytes.
    bufs: *mut u8,
    entries: usize,
    /// Distance between buffers (`entry_len` rounded up to 64).
    stride: usize,
    /// Bytes of each buffer offered to the kernel.
    entry_len: usize,
    /// Our copy of the tail, published by `publish`.
    tail: u16,
    /// The tail last published.
    published: u16,
    /// Set if unregistering failed: the kernel may still reach the mapping,
    /// so it is leaked rather than unmapped.
    leak: bool,
}

impl BufRing {
    /// Map `entries` (a power of two, at most 32768) buffers of `entry_len`
    /// bytes and fill the ring with all of them.
    fn new(entries: usize, entry_len: usize) -> io::Result<Self> {
        debug_assert!(entries.is_power_of_two() && entries <= MAX_RING_ENTRIES);
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).unwrap_or(4096).max(4096);
        let ring_bytes = (entries * std::mem::size_of::<BufEntry>()).next_multiple_of(page);
        let stride = entry_len.next_multiple_of(64);
        let map_len = entries
            .checked_mul(stride)
            .and_then(|b| b.checked_add(ring_bytes))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large"))?;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is affected. MAP_POPULATE faults the
        // pages in now, not on the packet path.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = map.cast::<u8>();
        // SAFETY: `ring_bytes < map_len`, so the result is inside the mapping.
        let bufs = unsafe { map.add(ring_bytes) };
        let mut ring = BufRing {
            map,
            map_len,
            bufs,
            entries,
            stride,
            entry_len,
            tail: 0,
            published: 0,
            leak: false,
        };
        for bid in 0..entries {
            ring.give_back(bid as u16);
        }
        ring.publish();
        Ok(ring)
    }

    /// The tail field shared with the kernel (`resv` of entry 0).
    fn tail_atomic(&self) -> &AtomicU16 {
        // SAFETY: entry 0 lies at the start of the mapping, which lives as
        // long as `self`; its `resv` field is a 2-aligned u16 that only this
        // atomic writes (the kernel reads it with acquire ordering), and
        // AtomicU16 has the layout of u16.
        unsafe {
            let e = self.map.cast::<BufEntry>();
            &*std::ptr::addr_of_mut!((*e).resv).cast::<AtomicU16>()
        }
    }

    /// Put buffer `bid` back in the ring (visible to the kernel after
    /// `publish`). Each buffer must be given back at most once per use.
    fn give_back(&mut self, bid: u16) {
        let idx = usize::from(self.tail) & (self.entries - 1);
        let addr = self.bufs as u64 + u64::from(bid) * self.stride as u64;
        // SAFETY: `idx < entries`, so the entry lies in the entry array of
        // our live mapping. The kernel consumes entries only up to the
        // published tail, and this one is past it (at most `entries`
        // buffers are ever in the ring), so nothing reads it concurrently.
        // The fields are written one by one so that entry 0's `resv` (the
        // tail, which the kernel may be reading) is never touched.
        unsafe {
            let e = self.map.cast::<BufEntry>().add(idx);
            std::ptr::addr_of_mut!((*e).addr).write(addr);
            std::ptr::addr_of_mut!((*e).len).write(self.entry_len as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every buffer given back so far available to the kernel.
    fn publish(&mut self) {
        if self.tail != self.published {
            self.tail_atomic().store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }

    /// The whole of buffer `bid` (`entry_len` bytes).
    ///
    /// Only for a buffer that a completion has handed to us and that has not
    /// been given back: the kernel does not write it meanwhile.
    fn buffer(&self, bid: u16) -> &[u8] {
        debug_assert!(usize::from(bid) < self.entries);
        // SAFETY: `bid < entries` (checked by the caller), so the buffer
        // lies inside the mapping, which lives as long as `self`; per the
        // contract above no one writes it while the slice is borrowed.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.add(usize::from(bid) * self.stride),
                self.entry_len,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: `map`/`map_len` are exactly what mmap returned; the ring
        // was unregistered and closed before this runs (see `Uring`'s field
        // order and Drop), so the kernel no longer references it, and no
        // slice into it outlives `self`.
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

/// One send slot: the header the kernel reads and what it points at.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
}

/// The io_uring backend over one socket.
pub struct Uring {
    // Field order matters: the ring is dropped (closed) before the memory
    // it can reach.
    ring: IoUring,
    bufs: BufRing,
    /// The receive header template given to the multishot receive.
    recv_msg: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    tx_bufs: Box<[u8]>,
    socket: UdpSocket,
    /// A second handle for segmented sends; `None` once the kernel refused.
    gso: Option<UdpSocket>,
    /// Receive completions (result, flags) reaped by `flush`, oldest first.
    stash: VecDeque<(i32, u32)>,
    batch: usize,
    buf_len: usize,
    /// A multishot receive is submitted (or queued to be) and not finished.
    armed: bool,
    /// How many times the receive was armed (1 + re-arms).
    arms: u64,
    tx_queued: usize,
    /// Sends pushed to the SQ whose completion has not been reaped.
    tx_inflight: usize,
    /// Send completions reaped outside `flush`, reported by the next one.
    late_sent: usize,
    late_failed: usize,
}

// SAFETY: the raw pointers inside (`BufRing`, the msghdrs) point only into
// allocations owned by this value, which do not move with it; the ring is
// not tied to a thread (no IORING_SETUP_SINGLE_ISSUER), and `IoUring` is
// itself Send. Nothing is shared with another thread.
unsafe impl Send for Uring {}

impl Uring {
    /// A backend with `batch` send slots of `buf_len` bytes and a ring of at
    /// least `max(2 * batch, 64)` provided receive buffers of `buf_len`
    /// payload bytes. Fails (never panics) where io_uring is unavailable.
    pub fn new(socket: UdpSocket, batch: usize, buf_len: usize) -> io::Result<Self> {
        if batch == 0 || buf_len == 0 || buf_len > 1 << 20 || batch > MAX_RING_ENTRIES / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("uring backend: batch {batch} or buffer length {buf_len} out of range"),
            ));
        }
        socket.set_nonblocking(true)?;
        let ring_entries = (batch * 2)
            .max(64)
            .next_power_of_two()
            .min(MAX_RING_ENTRIES);
        // Sends of one flush plus the receive re-arm; larger batches are
        // submitted in pieces.
        let sq_entries = (batch + 1).next_power_of_two().clamp(8, 4096);
        // Room for one completion per provided buffer, every send and the
        // terminating receive completions, so the CQ does not overflow.
        let cq_entries = (ring_entries + batch + 16)
            .next_power_of_two()
            .max(2 * sq_entries);
        let build = |coop: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq_entries as u32).setup_clamp();
            if coop {
                // Completion work runs when we enter the kernel rather than
                // interrupting us (an IPI per wake-up): measurably cheaper
                // for the sender of every datagram we receive.
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            b.build(sq_entries as u32)
        };
        let ring: IoUring = match build(true) {
            // Kernels before 5.19 refuse those flags; multishot receive
            // needs 6.0 anyway, but fail on that rather than here.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => build(false)?,
            r => r?,
        };
        let entry_len = RECVMSG_OUT_LEN + NAME_LEN + buf_len;
        let bufs = BufRing::new(ring_entries, entry_len)?;
        // SAFETY: the entry array is page-aligned, `ring_entries` long and
        // lives in `bufs`, which is kept alive until after the ring is
        // unregistered and closed (Uring's Drop and field order).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.map as u64,
                ring_entries as u16,
                BGID,
                0,
            )?;
        }
        // SAFETY: all-zero bytes are a valid value for these plain C structs.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_msg.msg_controllen = 0;
        let slots = (0..batch)
            .map(|_| SendSlot {
                // SAFETY: as above.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                // SAFETY: as above.
                addr: unsafe { std::mem::zeroed() },
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(Uring {
            ring,
            bufs,
            recv_msg,
            slots,
            tx_bufs: vec![0u8; batch * buf_len].into_boxed_slice(),
            gso: socket.try_clone().ok(),
            socket,
            stash: VecDeque::with_capacity(ring_entries + 16),
            batch,
            buf_len,
            armed: false,
            arms: 0,
            tx_queued: 0,
            tx_inflight: 0,
            late_sent: 0,
            late_failed: 0,
        })
    }

    /// Queue the multishot receive if none is armed.
    fn arm(&mut self) -> io::Result<()> {
        if self.armed {
            return Ok(());
        }
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            &*self.recv_msg as *const libc::msghdr,
            BGID,
        )
        .build()
        .user_data(UD_RECV);
        self.push(&entry)?;
        self.armed = true;
        self.arms += 1;
        Ok(())
    }

    /// Push one SQE, submitting first if the SQ is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in the entries we build (the receive
            // template, send slots and their buffers, the buffer ring) lives
            // in `self` until the ring is closed, and send slots are not
            // rewritten until their completion is reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submitter().submit() {
                Ok(_) => {}
                Err(e) if transient(&e) => self.reap(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Move every completion out of the CQ: sends are counted (as late
    /// results), receives are stashed for `recv`.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            match cqe.user_data() {
                UD_SEND => {
                    self.tx_inflight = self.tx_inflight.saturating_sub(1);
                    if cqe.result() < 0 {
                        self.late_failed += 1;
                    } else {
                        self.late_sent += 1;
                    }
                }
                UD_RECV => self.stash.push_back((cqe.result(), cqe.flags())),
                _ => {}
            }
        }
    }

    /// Hand over up to `batch` datagrams from the stash, then the CQ;
    /// count send completions met on the way; give the buffers back.
    /// Returns (datagrams handed over, completions consumed).
    fn drain(
        &mut self,
        on_datagram: &mut dyn FnMut(Datagram<'_>),
        error: &mut Option<io::Error>,
    ) -> (usize, usize) {
        let mut handed = 0;
        let mut consumed = 0;
        while handed < self.batch {
            let Some((res, flags)) = self.stash.pop_front() else {
                break;
            };
            consumed += 1;
            let delivered = Self::complete_recv(
                &mut self.bufs,
                &self.recv_msg,
                &mut self.armed,
                res,
                flags,
                on_datagram,
                error,
            );
            handed += usize::from(delivered);
        }
        if handed < self.batch {
            for cqe in &mut self.ring.completion() {
                consumed += 1;
                match cqe.user_data() {
                    UD_SEND => {
                        self.tx_inflight = self.tx_inflight.saturating_sub(1);
                        if cqe.result() < 0 {
                            self.late_failed += 1;
                        } else {
                            self.late_sent += 1;
                        }
                    }
                    UD_RECV => {
                        let delivered = Self::complete_recv(
                            &mut self.bufs,
                            &self.recv_msg,
                            &mut self.armed,
                            cqe.result(),
                            cqe.flags(),
                            on_datagram,
                            error,
                        );
                        handed += usize::from(delivered);
                        if handed == self.batch {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.bufs.publish();
        (handed, consumed)
    }

    /// Handle one receive completion: deliver its datagram, give its buffer
    /// back. Returns whether a datagram was handed over.
    fn complete_recv(
        bufs: &mut BufRing,
        recv_msg: &libc::msghdr,
        armed: &mut bool,
        res: i32,
        flags: u32,
        on_datagram: &mut dyn FnMut(Datagram<'_>),
        error: &mut Option<io::Error>,
    ) -> bool {
        if !cqueue::more(flags) {
            *armed = false;
        }
        let bid = cqueue::buffer_select(flags).filter(|&b| usize::from(b) < bufs.entries);
        if res < 0 {
            if let Some(bid) = bid {
                bufs.give_back(bid);
            }
            match -res {
                // Out of buffers (re-armed once some are back), cancelled,
                // interrupted: not errors for the caller.
                libc::ENOBUFS | libc::ECANCELED | libc::EINTR | libc::EAGAIN => {}
                errno => {
                    error.get_or_insert_with(|| io::Error::from_raw_os_error(errno));
                }
            }
            return false;
        }
        let Some(bid) = bid else {
            return false;
        };
        let mut delivered = false;
        if let Ok(out) = types::RecvMsgOut::parse(bufs.buffer(bid), recv_msg) {
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let name = out.name_data();
            let n = name.len().min(NAME_LEN);
            // SAFETY: copies `n <= size_of::<sockaddr_storage>()` bytes from
            // the name slice into the local storage; they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    name.as_ptr(),
                    (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
                    n,
                );
            }
            if let Some(from) = sockaddr_to_std(&ss) {
                on_datagram(Datagram {
                    from,
                    data: out.payload_data(),
                    // MSG_TRUNC in the flags the kernel reported.
                    truncated: out.is_payload_truncated(),
                });
                delivered = true;
            }
        }
        bufs.give_back(bid);
        delivered
    }
}

/// Errors after which an `io_uring_enter` is simply tried again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Unregister first so the kernel lets go of the buffer ring; the
        // ring itself is closed next (first field), the mapping freed last.
        if self.ring.submitter().unregister_buf_ring(BGID).is_err() {
            self.bufs.leak = true;
        }
    }
}

/// Check that io_uring works here: the ring can be set up, the opcodes this
/// backend needs exist, a provided-buffer ring registers, and a datagram
/// makes a round trip over loopback. The error names what failed and why.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                " (kernel.io_uring_disabled or a seccomp profile)"
            }
            Some(libc::ENOSYS) => " (a kernel without io_uring, or a seccomp profile)",
            _ => "",
        };
        format!("io_uring_setup: {e}{hint}")
    })?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "IORING_OP_RECVMSG"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("{name} not supported by this kernel"));
        }
    }
    {
        let bufs = BufRing::new(8, 64).map_err(|e| format!("mmap for a buffer ring: {e}"))?;
        // SAFETY: `bufs` is page-aligned, 8 entries long, and outlives the
        // registration: it is unregistered (or the ring dropped) below,
        // before `bufs` goes out of scope.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.map as u64, 8, BGID, 0)
        }
        .map_err(|e| format!("IORING_REGISTER_PBUF_RING: {e}"))?;
        let unregistered = ring.submitter().unregister_buf_ring(BGID);
        // No request was ever submitted on this ring, so nothing writes
        // into `bufs`: close the ring, then unmap.
        drop(ring);
        drop(bufs);
        unregistered.map_err(|e| format!("IORING_UNREGISTER_PBUF_RING: {e}"))?;
    }
    // End to end: multishot receive and send over loopback. Skipped where
    // loopback is unusable (that is no fault of io_uring).
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return Ok(());
    };
    let Ok(addr) = socket.local_addr() else {
        return Ok(());
    };
    let mut u = Uring::new(socket, 8, 64).map_err(|e| format!("uring backend: {e}"))?;
    // Arm the receive before sending.
    u.recv(Some(Duration::ZERO), &mut |_| {})
        .map_err(|e| format!("multishot recvmsg: {e}"))?;
    if !u.send(addr, b"loopix io_uring probe") {
        return Err("uring backend: send refused".into());
    }
    let (sent, _) = u.flush();
    if sent != 1 {
        return Err("IORING_OP_SENDMSG failed on loopback".into());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut got = false;
    while !got && std::time::Instant::now() < deadline {
        u.recv(Some(Duration::from_millis(100)), &mut |d| {
            got |= d.data == b"loopix io_uring probe";
        })
        .map_err(|e| format!("multishot recvmsg: {e}"))?;
    }
    if got {
        Ok(())
    } else {
        Err("multishot recvmsg received nothing over loopback".into())
    }
}

impl Backend for Uring {
    fn kind(&self) -> IoKind {
        IoKind::Uring
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_datagram: &mut dyn FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        // Fixed when a wait first starts (inner None: too far to represent,
        // wait as long as it takes); later passes wait out what is left.
        let mut deadline: Option<Option<Instant>> = None;
        let mut pass = 0;
        loop {
            self.arm()?;
            let ready = !self.stash.is_empty() || !self.ring.completion().is_empty();
            // Entries to submit, or completion work the kernel holds until
            // we enter (IORING_SETUP_TASKRUN_FLAG).
            let pending_sqe = {
                let sq = self.ring.submission();
                !sq.is_empty() || sq.taskrun()
            };
            let wait = match timeout {
                _ if ready => Some(Duration::ZERO),
                Some(d) if !d.is_zero() => {
                    match *deadline.get_or_insert_with(|| Instant::now().checked_add(d)) {
                        None => None,
                        Some(dl) => {
                            let left = dl.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Ok(0);
                            }
                            Some(left.min(MAX_WAIT))
                        }
                    }
                }
                t => t,
            };
            let waited = match wait {
                Some(Duration::ZERO) if pending_sqe => self.ring.submitter().submit(),
                Some(Duration::ZERO) => Ok(0),
                None => self.ring.submitter().submit_and_wait(1),
                Some(d) => {
                    let ts = types::Timespec::from(d);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            if let Err(e) = waited {
                match e.raw_os_error() {
                    Some(libc::EINTR) => return Ok(0),
                    // Timed out (the next pass finds the deadline passed),
                    // or the kernel asks us to drain the CQ first.
                    Some(libc::ETIME) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                    _ => return Err(e),
                }
            }
            let mut error = None;
            let (handed, consumed) = self.drain(on_datagram, &mut error);
            if !self.armed {
                // Re-arm now (buffers were just given back), so the kernel
                // goes on receiving while the caller handles this batch.
                self.arm()?;
                match self.ring.submitter().submit() {
                    Ok(_) => {}
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            if handed > 0 {
                return Ok(handed);
            }
            if let Some(e) = error {
                return Err(e);
            }
            // Nothing handed over: a timeout, or only completions without a
            // datagram (the receive ending for want of buffers, a send).
            // Wait out the rest of the timeout (the next pass returns once
            // it has passed); with a zero timeout, take one more look after
            // such completions (the re-armed receive may have found
            // datagrams at once).
            if timeout == Some(Duration::ZERO) && (consumed == 0 || pass > 0) {
                return Ok(0);
            }
            pass += 1;
        }
    }

    fn send(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let i = self.tx_queued;
        if i >= self.batch || data.len() > self.buf_len || self.tx_inflight > 0 {
            return false;
        }
        let start = i * self.buf_len;
        let buf = &mut self.tx_bufs[start..start + data.len()];
        buf.copy_from_slice(data);
        let base = buf.as_mut_ptr();
        let slot = &mut self.slots[i];
        let addr_len = std_to_sockaddr(to, &mut slot.addr);
        slot.iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: data.len(),
        };
        slot.hdr.msg_name = (&mut slot.addr as *mut libc::sockaddr_storage).cast();
        slot.hdr.msg_namelen = addr_len;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.hdr.msg_control = std::ptr::null_mut();
        slot.hdr.msg_controllen = 0;
        slot.hdr.msg_flags = 0;
        self.tx_queued += 1;
        true
    }

    fn flush(&mut self) -> (usize, usize) {
        let fd = types::Fd(self.socket.as_raw_fd());
        let queued = std::mem::take(&mut self.tx_queued);
        let mut failed_to_queue = 0;
        for i in 0..queued {
            let entry = opcode::SendMsg::new(fd, &self.slots[i].hdr as *const libc::msghdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(UD_SEND);
            if self.push(&entry).is_ok() {
                self.tx_inflight += 1;
            } else {
                failed_to_queue = queued - i;
                break;
            }
        }
        while self.tx_inflight > 0 {
            match self.ring.submitter().submit_and_wait(self.tx_inflight) {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                // The ring is unusable: what is in flight stays counted and
                // `send` refuses until a later flush or recv reaps it.
                Err(_) => break,
            }
            self.reap();
        }
        let sent = std::mem::take(&mut self.late_sent);
        let failed = std::mem::take(&mut self.late_failed) + failed_to_queue;
        (sent, failed)
    }

    fn input_pending(&mut self) -> bool {
        // Completions not handed over yet, or a receive that ended for want
        // of buffers (datagrams may then wait in the socket).
        !self.stash.is_empty() || !self.ring.completion().is_empty() || !self.armed
    }

    fn queued(&self) -> usize {
        self.tx_queued
    }

    fn send_segments(&mut self, to: SocketAddr, data: &[u8], seg_len: usize) -> (usize, usize) {
        let mut gso = self.gso.take();
        let r = super::send_segments_on(self, &mut gso, to, data, seg_len);
        self.gso = gso;
        r
    }

    fn kernel_drops(&self) -> Option<u32> {
        super::socket::kernel_drops(&self.socket).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// io_uring may be blocked (seccomp, sysctl): then these tests skip.
    fn available() -> bool {
        match probe() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipping io_uring test: {e}");
                false
            }
        }
    }

    fn bind() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let a = s.local_addr().expect("addr");
        (s, a)
    }

    /// Receive until `want` datagrams arrived or `limit` passed.
    fn collect(rx: &mut Uring, want: usize, limit: Duration) -> Vec<(SocketAddr, Vec<u8>, bool)> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            rx.recv(Some(Duration::from_millis(50)), &mut |d| {
                got.push((d.from, d.data.to_vec(), d.truncated));
            })
            .expect("recv");
        }
        got
    }

    /// Where io_uring can be set up at all, every later stage of the probe
    /// must pass; where setup is refused (seccomp, sysctl) the test skips.
    #[test]
    fn probe_succeeds_here() {
        match probe() {
            Ok(()) => {}
            Err(e) if e.starts_with("io_uring_setup") => {
                eprintln!("skipping: io_uring unavailable here: {e}");
            }
            Err(e) => panic!("io_uring sets up but the probe fails: {e}"),
        }
    }

    #[test]
    fn batch_round_trip_over_loopback() {
        if !available() {
            return;
        }
        let (a, a_addr) = bind();
        let (b, b_addr) = bind();
        let mut tx = Uring::new(a, 8, 64).expect("backend");
        let mut rx = Uring::new(b, 8, 64).expect("backend");
        assert_eq!(rx.kind(), IoKind::Uring);
        // Nothing yet: arms the receive.
        assert_eq!(rx.recv(Some(Duration::ZERO), &mut |_| {}).expect("recv"), 0);
        for i in 0..5u8 {
            assert!(tx.send(b_addr, &[i; 10]));
        }
        assert_eq!(tx.queued(), 5);
        assert_eq!(tx.flush(), (5, 0));
        assert_eq!(tx.queued(), 0);
        let got = collect(&mut rx, 5, Duration::from_secs(2));
        assert_eq!(got.len(), 5);
        for (i, (from, data, truncated)) in got.iter().enumerate() {
            assert_eq!(*from, a_addr);
            assert_eq!(*data, vec![i as u8; 10]);
            assert!(!truncated);
        }
        assert!(!tx.send(b_addr, &[0u8; 65]), "oversized send refused");
        for _ in 0..8 {
            assert!(tx.send(b_addr, &[1u8; 64]));
        }
        assert!(!tx.send(b_addr, &[1u8; 1]), "full queue refuses");
        assert_eq!(tx.flush(), (8, 0));
        assert_eq!(collect(&mut rx, 8, Duration::from_secs(2)).len(), 8);
    }

    #[test]
    fn receives_from_plain_socket() {
        if !available() {
            return;
        }
        let (b, b_addr) = bind();
        let mut rx = Uring::new(b, 4, 1500).expect("backend");
        let (c, c_addr) = bind();
        for i in 0..10u8 {
            c.send_to(&[i; 1373], b_addr).expect("send");
        }
        let got = collect(&mut rx, 10, Duration::from_secs(2));
        assert_eq!(got.len(), 10);
        for (i, (from, data, truncated)) in got.iter().enumerate() {
            assert_eq!(*from, c_addr);
            assert_eq!(data.len(), 1373);
            assert!(data.iter().all(|&x| x == i as u8));
            assert!(!truncated);
        }
    }

    #[test]
    fn receives_over_ipv6() {
        if !available() {
            return;
        }
        let Ok(b) = UdpSocket::bind("[::1]:0") else {
            eprintln!("skipping: no IPv6 loopback");
            return;
        };
        let b_addr = b.local_addr().expect("addr");
        let c = UdpSocket::bind("[::1]:0").expect("bind c");
        let c_addr = c.local_addr().expect("addr");
        let mut rx = Uring::new(b, 4, 64).expect("backend");
        let mut tx = Uring::new(c, 4, 64).expect("backend");
        assert!(tx.send(b_addr, b"six"));
        assert_eq!(tx.flush(), (1, 0));
        let got = collect(&mut rx, 1, Duration::from_secs(2));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, c_addr);
        assert_eq!(got[0].1, b"six");
    }

    #[test]
    fn truncation_is_reported() {
        if !available() {
            return;
        }
        let (b, b_addr) = bind();
        let mut rx = Uring::new(b, 8, 64).expect("backend");
        let (c, _) = bind();
        c.send_to(&[9u8; 100], b_addr).expect("send");
        c.send_to(&[7u8; 64], b_addr).expect("send");
        let got = collect(&mut rx, 2, Duration::from_secs(2));
        assert_eq!(got.len(), 2);
        assert!(got[0].2, "100 bytes into 64: truncated");
        assert_eq!(got[0].1, vec![9u8; 64]);
        assert!(!got[1].2, "exactly 64 bytes: whole");
        assert_eq!(got[1].1, vec![7u8; 64]);
    }

    #[test]
    fn timeout_with_nothing_to_read() {
        if !available() {
            return;
        }
        let (b, _) = bind();
        let mut rx = Uring::new(b, 8, 64).expect("backend");
        let t = Instant::now();
        assert_eq!(rx.recv(Some(Duration::ZERO), &mut |_| {}).expect("recv"), 0);
        let n = rx
            .recv(Some(Duration::from_millis(20)), &mut |_| {})
            .expect("recv");
        assert_eq!(n, 0);
        let elapsed = t.elapsed();
        assert!(elapsed >= Duration::from_millis(15), "waited {elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "waited {elapsed:?}");
    }

    /// 2000 datagrams in bursts of 64, with the receiver idle for stretches
    /// so that every provided buffer gets used, the multishot receive ends
    /// with ENOBUFS and must be re-armed, and buffers are recycled many
    /// times over.
    #[test]
    fn many_datagrams_recycle_buffers_and_rearm() {
        if !available() {
            return;
        }
        const TOTAL: u32 = 2000;
        let b = super::super::socket::bind_reuseport("127.0.0.1:0".parse().expect("addr"), 8 << 20)
            .expect("bind");
        let b_addr = b.local_addr().expect("addr");
        let (a, _) = bind();
        let mut tx = Uring::new(a, 64, 256).expect("backend");
        let mut rx = Uring::new(b, 16, 256).expect("backend");
        assert_eq!(rx.bufs.entries, 64);
        rx.recv(Some(Duration::ZERO), &mut |_| {}).expect("arm");
        let mut seen = vec![false; TOTAL as usize];
        let mut received = 0usize;
        let mut on = |d: Datagram<'_>| {
            assert!(!d.truncated);
            assert_eq!(d.data.len(), 200);
            let seq = u32::from_le_bytes(d.data[..4].try_into().expect("4 bytes"));
            assert!(d.data[4..].iter().all(|&x| x == seq as u8));
            assert!(!seen[seq as usize], "duplicate {seq}");
            seen[seq as usize] = true;
        };
        let mut seq = 0u32;
        let mut burst = 0;
        while seq < TOTAL {
            while seq < TOTAL && tx.queued() < 64 {
                let mut frame = [seq as u8; 200];
                frame[..4].copy_from_slice(&seq.to_le_bytes());
                assert!(tx.send(b_addr, &frame));
                seq += 1;
            }
            let n = tx.queued();
            assert_eq!(tx.flush(), (n, 0));
            burst += 1;
            // Read only every third burst: 192 datagrams against 64 buffers.
            if burst % 3 == 0 {
                loop {
                    let n = rx.recv(Some(Duration::ZERO), &mut on).expect("recv");
                    received += n;
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while received < TOTAL as usize && Instant::now() < deadline {
            received += rx
                .recv(Some(Duration::from_millis(20)), &mut on)
                .expect("recv");
        }
        assert_eq!(received, TOTAL as usize);
        assert!(
            rx.arms > 1,
            "multishot receive was re-armed ({} arms)",
            rx.arms
        );
    }

    #[test]
    fn at_most_batch_per_recv() {
        if !available() {
            return;
        }
        let (b, b_addr) = bind();
        let mut rx = Uring::new(b, 4, 64).expect("backend");
        rx.recv(Some(Duration::ZERO), &mut |_| {}).expect("arm");
        let (c, _) = bind();
        for _ in 0..10 {
            c.send_to(&[1u8; 8], b_addr).expect("send");
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut total = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while total < 10 && Instant::now() < deadline {
            let n = rx
                .recv(Some(Duration::from_millis(50)), &mut |_| {})
                .expect("recv");
            assert!(n <= 4);
            total += n;
        }
        assert_eq!(total, 10);
    }

    #[test]
    fn sends_interleaved_with_receives_on_one_socket() {
        if !available() {
            return;
        }
        // Send to itself: flush reaps receive completions and stashes them.
        let (a, a_addr) = bind();
        let mut u = Uring::new(a, 8, 64).expect("backend");
        u.recv(Some(Duration::ZERO), &mut |_| {}).expect("arm");
        let mut got = 0;
        for round in 0..20u8 {
            for _ in 0..8 {
                assert!(u.send(a_addr, &[round; 32]));
            }
            assert_eq!(u.flush(), (8, 0));
            while u
                .recv(Some(Duration::ZERO), &mut |d| {
                    assert_eq!(d.from, a_addr);
                    got += 1;
                })
                .expect("recv")
                > 0
            {}
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while got < 160 && Instant::now() < deadline {
            u.recv(Some(Duration::from_millis(20)), &mut |_| got += 1)
                .expect("recv");
        }
        assert_eq!(got, 160);
    }

    /// A receive that ended for want of buffers is re-armed within the same
    /// call: a caller never sees a spurious 0 while datagrams are queued.
    #[test]
    fn no_empty_return_while_datagrams_wait() {
        if !available() {
            return;
        }
        let b = super::super::socket::bind_reuseport("127.0.0.1:0".parse().expect("addr"), 8 << 20)
            .expect("bind");
        let b_addr = b.local_addr().expect("addr");
        let mut rx = Uring::new(b, 16, 64).expect("backend");
        rx.recv(Some(Duration::ZERO), &mut |_| {}).expect("arm");
        let (c, _) = bind();
        for i in 0..200u32 {
            c.send_to(&i.to_le_bytes(), b_addr).expect("send");
        }
        let mut total = 0;
        while total < 200 {
            let n = rx
                .recv(Some(Duration::from_secs(1)), &mut |_| {})
                .expect("recv");
            assert!(n > 0, "empty return with {} of 200 received", total);
            total += n;
        }
        assert!(rx.arms > 1);
    }

    /// `None` waits until a datagram comes; a huge timeout does not
    /// overflow; the backend works from a thread other than its creator's.
    #[test]
    fn blocking_waits_and_moves_between_threads() {
        if !available() {
            return;
        }
        let (b, b_addr) = bind();
        let mut rx = Uring::new(b, 8, 64).expect("backend");
        for timeout in [None, Some(Duration::MAX)] {
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let (c, _) = bind();
                c.send_to(b"late", b_addr).expect("send");
            });
            let mut got = Vec::new();
            while got.is_empty() {
                rx.recv(timeout, &mut |d| got.push(d.data.to_vec()))
                    .expect("recv");
            }
            assert_eq!(got, vec![b"late".to_vec()]);
            sender.join().expect("sender");
        }
        let (c, c_addr) = bind();
        let t = std::thread::spawn(move || {
            c.send_to(b"moved", b_addr).expect("send");
            let mut got = Vec::new();
            while got.is_empty() {
                rx.recv(Some(Duration::from_secs(2)), &mut |d| got.push(d.from))
                    .expect("recv");
            }
            assert_eq!(got, vec![c_addr]);
        });
        t.join().expect("receiver thread");
    }

    /// Dropping a backend with its receive armed and buffers in use, over
    /// and over, leaks nothing and upsets nothing.
    #[test]
    fn drop_while_armed() {
        if !available() {
            return;
        }
        for _ in 0..50 {
            let (b, b_addr) = bind();
            let mut rx = Uring::new(b, 8, 64).expect("backend");
            rx.recv(Some(Duration::ZERO), &mut |_| {}).expect("arm");
            let (c, _) = bind();
            for _ in 0..100 {
                let _ = c.send_to(&[0u8; 32], b_addr);
            }
            drop(rx);
            let _ = c.send_to(&[0u8; 32], b_addr);
        }
    }

    #[test]
    fn invalid_sizes_are_errors() {
        let (a, _) = bind();
        assert!(Uring::new(a, 0, 64).is_err());
    }
}
