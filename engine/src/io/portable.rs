//! The portable backend: `recvmmsg` and `sendmmsg` in batches, `ppoll` to
//! wait with a nanosecond timeout. Works wherever UDP sockets do, including
//! containers whose seccomp profile blocks io_uring.
//!
//! Invariants: every array handed to the kernel (`mmsghdr`, `iovec`,
//! `sockaddr_storage`, buffers) is allocated in `new` and never moves or
//! grows; the pointers inside the headers are re-written before each call
//! because the kernel updates lengths in place.

#![allow(unsafe_code)] // reason: recvmmsg/sendmmsg/ppoll FFI; audited per call

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{Backend, Datagram, IoKind};

/// A batch of message headers with their buffers and address slots.
struct Batch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    buf_len: usize,
}

// SAFETY: the raw pointers inside point only into this struct's own heap
// allocations, which move with it; nothing else aliases them.
unsafe impl Send for Batch {}

impl Batch {
    fn new(batch: usize, buf_len: usize) -> Self {
        // SAFETY: all-zero bytes are a valid value for these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Batch {
            headers: vec![zero_hdr; batch],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                batch
            ],
            addrs: vec![zero_addr; batch],
            bufs: vec![0u8; batch * buf_len],
            lens: vec![0; batch],
            buf_len,
        }
    }

    /// Point header `i` at its buffer (`len` bytes) and address slot.
    fn prepare(&mut self, i: usize, len: usize, addr_len: libc::socklen_t) {
        let buf = self.bufs[i * self.buf_len..].as_mut_ptr();
        self.iovecs[i] = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        let h = &mut self.headers[i];
        h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = addr_len;
        h.msg_hdr.msg_iov = &mut self.iovecs[i];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        h.msg_len = 0;
    }
}

/// The portable backend over one socket.
pub struct Portable {
    socket: UdpSocket,
    /// A second handle for segmented sends; `None` once the kernel refused.
    gso: Option<UdpSocket>,
    rx: Batch,
    tx: Batch,
    tx_queued: usize,
}

impl Portable {
    /// A backend with `batch` receive and `batch` send slots of `buf_len`.
    pub fn new(socket: UdpSocket, batch: usize, buf_len: usize) -> io::Result<Self> {
        assert!(batch >= 1 && buf_len >= 1);
        socket.set_nonblocking(true)?;
        Ok(Portable {
            gso: socket.try_clone().ok(),
            socket,
            rx: Batch::new(batch, buf_len),
            tx: Batch::new(batch, buf_len),
            tx_queued: 0,
        })
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one valid pollfd, a timespec (or null) that outlives the
        // call, and no signal mask change.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(rc > 0)
    }
}

impl Backend for Portable {
    fn kind(&self) -> IoKind {
        IoKind::Portable
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        on_datagram: &mut dyn FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        if timeout != Some(Duration::ZERO) && !self.wait_readable(timeout)? {
            return Ok(0);
        }
        let batch = self.rx.headers.len();
        let addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..batch {
            self.rx.prepare(i, self.rx.buf_len, addr_len);
        }
        // SAFETY: `batch` headers, each pointing at its own iovec, buffer
        // and address slot inside `self.rx`, all alive and unaliased for the
        // call; MSG_DONTWAIT so it never blocks; null timeout.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                self.rx.headers.as_mut_ptr(),
                batch as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.rx.headers[i];
            let len = h.msg_len as usize;
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let Some(from) = sockaddr_to_std(&self.rx.addrs[i]) else {
                continue;
            };
            let start = i * self.rx.buf_len;
            on_datagram(Datagram {
                from,
                data: &self.rx.bufs[start..start + len.min(self.rx.buf_len)],
                truncated,
            });
        }
        Ok(n)
    }

    fn send(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let i = self.tx_queued;
        if i >= self.tx.headers.len() || data.len() > self.tx.buf_len {
            return false;
        }
        let start = i * self.tx.buf_len;
        self.tx.bufs[start..start + data.len()].copy_from_slice(data);
        self.tx.lens[i] = data.len();
        let len = std_to_sockaddr(to, &mut self.tx.addrs[i]);
        self.tx.prepare(i, data.len(), len);
        self.tx_queued += 1;
        true
    }

    fn flush(&mut self) -> (usize, usize) {
        let mut sent = 0;
        let mut failed = 0;
        let mut start = 0;
        while start < self.tx_queued {
            let count = self.tx_queued - start;
            // SAFETY: headers start..tx_queued were prepared by `send` and
            // point into `self.tx`, which is alive and not touched during
            // the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    self.tx.headers[start..].as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first message of the rest failed: count it, skip it.
                failed += 1;
                start += 1;
                continue;
            }
            sent += n as usize;
            start += n as usize;
        }
        self.tx_queued = 0;
        (sent, failed)
    }

    fn input_pending(&mut self) -> bool {
        let mut next: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int (for UDP, the length of the next
        // datagram, 0 if none) through a pointer to a live local.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::FIONREAD, &mut next) };
        // On an error, assume input waits: the AQM then errs towards
        // seeing a queue, never towards missing one.
        rc != 0 || next > 0
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

/// Convert a kernel socket address to `SocketAddr` (IPv4 and IPv6 only).
pub(crate) fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in,
            // which is smaller than sockaddr_storage and suitably aligned.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Write `addr` into `ss`; returns the length to pass to the kernel.
pub(crate) fn std_to_sockaddr(
    addr: SocketAddr,
    ss: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in and is aligned for sockaddr_storage.
            let sin =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 fits in and is aligned for sockaddr_storage.
            let sin6 =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let b_addr = b.local_addr().expect("addr");
        let mut tx = Portable::new(a, 8, 64).expect("backend");
        let mut rx = Portable::new(b, 8, 64).expect("backend");
        for i in 0..5u8 {
            assert!(tx.send(b_addr, &[i; 10]));
        }
        assert_eq!(tx.queued(), 5);
        assert_eq!(tx.flush(), (5, 0));
        let mut got = Vec::new();
        while got.len() < 5 {
            rx.recv(Some(Duration::from_secs(2)), &mut |d| {
                assert!(!d.truncated);
                got.push(d.data.to_vec());
            })
            .expect("recv");
        }
        assert_eq!(got[4], vec![4u8; 10]);
        // Too long for the receive buffer: reported truncated.
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind c");
        c.send_to(&[9u8; 100], b_addr).expect("send");
        let mut truncated = false;
        rx.recv(Some(Duration::from_secs(2)), &mut |d| {
            truncated = d.truncated
        })
        .expect("recv");
        assert!(truncated);
        // Timeout with nothing to read.
        let n = rx
            .recv(Some(Duration::from_millis(5)), &mut |_| {})
            .expect("recv");
        assert_eq!(n, 0);
        assert!(!tx.send(b_addr, &[0u8; 65]), "oversized send refused");
    }
}
