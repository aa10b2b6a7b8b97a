//! UDP socket set-up: `SO_REUSEPORT` groups, socket buffers, and the classic
//! BPF program that steers each datagram to a shard by a byte of the Sphinx
//! group element.
//!
//! Why steer by packet bytes: a replayed packet carries the same group
//! element whatever address it comes from, so it always reaches the same
//! shard. The node's replay filter is shared by its shards, but two copies
//! checked at the same moment by two shards could each find the other's
//! bits half set and both pass; on one shard they are checked in turn.
//!
//! Beside it, each shard's socket carries a classic BPF socket filter
//! ([`admission_program`]) that refuses, before the datagram is queued, any
//! datagram that is not exactly one frame long or whose kind byte the node
//! does not take. The kernel counts what it refuses in the socket's drop
//! counter ([`kernel_drops`]), with receive-queue overflows.

#![allow(unsafe_code)] // reason: setsockopt with a BPF program; audited below

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// `SO_ATTACH_REUSEPORT_CBPF` from `<asm-generic/socket.h>`.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Open a non-blocking UDP socket bound to `addr` with `SO_REUSEPORT`, and
/// socket buffers of about `buffer_bytes` (the kernel may cap them at
/// `net.core.rmem_max`; as root we ask to exceed it).
pub fn bind_reuseport(addr: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if socket.set_recv_buffer_size(buffer_bytes).is_err() {
        // Not fatal: the default buffer works, just with less headroom.
    }
    let _ = socket.set_send_buffer_size(buffer_bytes);
    force_buffer(&socket, libc::SO_RCVBUFFORCE, buffer_bytes);
    force_buffer(&socket, libc::SO_SNDBUFFORCE, buffer_bytes);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Root (or CAP_NET_ADMIN) may exceed `rmem_max`; anyone else keeps what
/// `set_*_buffer_size` got.
fn force_buffer(socket: &Socket, option: libc::c_int, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket fd and a pointer to a c_int that lives for the
    // call, with its exact size; failure is reported through the return
    // value, which we ignore on purpose (see above).
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The steering program: `return frame[offset] % shards`. A datagram too
/// short to have that byte makes the load fail, the program return 0, and
/// the datagram go to shard 0, which drops it for its length.
pub fn steering_program(offset: u32, shards: u32) -> Vec<libc::sock_filter> {
    assert!(shards >= 1);
    const BPF_LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const BPF_ALU_MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const BPF_RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    vec![
        libc::sock_filter {
            code: BPF_LD_B_ABS,
            jt: 0,
            jf: 0,
            k: offset,
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: shards,
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ]
}

/// The shard a steering program sends `frame` to (the same arithmetic, for
/// tests and for senders that want to predict it).
pub fn steer(frame: &[u8], offset: usize, shards: u32) -> u32 {
    frame.get(offset).map_or(0, |&b| u32::from(b) % shards)
}

/// Attach the steering program to one socket of the reuseport group (the
/// kernel applies it to the whole group). Sockets are indexed in the order
/// they were bound, so shard `i` must bind `i`-th.
pub fn attach_steering(socket: &UdpSocket, offset: u32, shards: u32) -> io::Result<()> {
    attach(
        socket,
        SO_ATTACH_REUSEPORT_CBPF,
        steering_program(offset, shards),
    )
}

/// Attach a classic BPF `program` to `socket` with the socket option
/// `option` (`SO_ATTACH_FILTER` or `SO_ATTACH_REUSEPORT_CBPF`).
fn attach(
    socket: &UdpSocket,
    option: libc::c_int,
    mut program: Vec<libc::sock_filter>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the
    // kernel copies the program during setsockopt and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket filter: accept a datagram only if its UDP payload is exactly
/// `frame_len` bytes and its first byte is one of `kinds`; refuse anything
/// else (return 0). A socket filter sees the datagram from its UDP header
/// on: the length includes the header's 8 bytes, and the payload starts at
/// offset 8.
pub fn admission_program(frame_len: u32, kinds: &[u8]) -> Vec<libc::sock_filter> {
    const UDP_HEADER: u32 = 8;
    const BPF_LD_W_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
    const BPF_LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    assert!(!kinds.is_empty() && kinds.len() < 200, "1 to 199 kinds");
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = kinds.len() as u8;
    // Layout: 0 len, 1 length test, 2 load kind, 3.. one test per kind,
    // then refuse, then accept. Jumps count from the next instruction.
    let mut p = vec![
        op(BPF_LD_W_LEN, 0, 0, 0),
        // Not one frame: jump over the kind load and tests to "refuse".
        op(BPF_JEQ_K, 0, n + 1, frame_len + UDP_HEADER),
        op(BPF_LD_B_ABS, 0, 0, UDP_HEADER),
    ];
    for (i, &kind) in kinds.iter().enumerate() {
        // Equal: jump over the remaining tests and "refuse" to "accept".
        let to_accept = n - i as u8;
        p.push(op(BPF_JEQ_K, to_accept, 0, u32::from(kind)));
    }
    p.push(op(BPF_RET_K, 0, 0, 0));
    p.push(op(BPF_RET_K, 0, 0, u32::MAX));
    p
}

/// Attach [`admission_program`] to `socket` (`SO_ATTACH_FILTER`).
pub fn attach_admission(socket: &UdpSocket, frame_len: u32, kinds: &[u8]) -> io::Result<()> {
    attach(
        socket,
        libc::SO_ATTACH_FILTER,
        admission_program(frame_len, kinds),
    )
}

/// The kernel's drop counter of `socket` (`sk_drops`: datagrams refused by
/// a full receive queue or by the socket filter), read with `SO_MEMINFO`.
pub fn kernel_drops(socket: &UdpSocket) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    /// `SK_MEMINFO_VARS` from `<linux/sock_diag.h>`.
    const MEMINFO_VARS: usize = 9;
    let mut info = [0u32; MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: SO_MEMINFO writes at most `len` bytes (SK_MEMINFO_VARS u32s)
    // into `info`, a live local of that size, and stores the length written
    // into `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    info.get(libc::SK_MEMINFO_DROPS as usize)
        .copied()
        .filter(|_| len as usize > libc::SK_MEMINFO_DROPS as usize * 4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "SO_MEMINFO without drops"))
}

/// `UDP_GRO` from `<linux/udp.h>`.
const UDP_GRO: libc::c_int = 104;

/// Ask the kernel to hand `socket` runs of same-sized datagrams from one
/// sender (a pull answer's k frames) as one buffer: UDP generic receive
/// offload, one system call and one pass through the stack for the run.
/// Returns whether the kernel took it; read with [`recv_segments`] either
/// way.
pub fn enable_gro(socket: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&on`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Receive into `buf` (make it 64 KiB with GRO on): returns the bytes, the
/// sender, and the length of each datagram in them: with GRO, `buf` may hold
/// several datagrams of that length back to back (the last may be
/// shorter); without, it is the one datagram's length. A datagram longer
/// than `buf` is cut (its length is then `buf.len()`).
pub fn recv_segments(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: `msg` points at `ss`, `iov` (over `buf`) and `control`, all
    // alive and writable for the call; the kernel writes at most their
    // stated lengths. The cmsg walk stays within `msg_controllen`, which the
    // kernel set, and reads the GRO cmsg's int unaligned.
    let (rc, segment) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let rc = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
        let mut segment = None;
        if rc >= 0 {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    segment = usize::try_from(v).ok().filter(|&v| v > 0);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        (rc, segment)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = rc as usize;
    let from = super::portable::sockaddr_to_std(&ss)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "sender of unknown family"))?;
    Ok((n, from, segment.unwrap_or(n).min(n.max(1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Datagrams waiting on `rx`, each as received.
    fn drain(rx: &UdpSocket) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn segmented_sends_arrive_as_ordinary_datagrams_and_both_backends_agree() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        // 100 datagrams of 1394 bytes (more than one offloaded send may
        // carry) and a short last one, each marked with its index.
        let seg = 1394;
        let mut data = vec![0u8; 100 * seg + 10];
        for (i, d) in data.chunks_mut(seg).enumerate() {
            d.fill(i as u8);
        }
        let want: Vec<Vec<u8>> = data.chunks(seg).map(<[u8]>::to_vec).collect();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.set_nonblocking(true).expect("nonblocking");
        let b_addr = tx.local_addr().expect("addr");
        let mut buffer = 1 << 21;
        let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(buffer);
        buffer = socket2::SockRef::from(&rx)
            .recv_buffer_size()
            .unwrap_or(buffer);
        assert!(buffer > data.len(), "receive buffer {buffer}");
        match send_gso(&tx, to, &data, seg) {
            Ok((sent, failed)) => {
                assert_eq!((sent, failed), (101, 0));
                assert_eq!(drain(&rx), want, "offloaded");
            }
            Err(GsoUnsupported) => eprintln!("this kernel does not segment: fallback only"),
        }
        let mut b = super::super::portable::Portable::new(tx, 8, seg).expect("backend");
        assert_eq!(
            super::super::send_one_by_one(&mut b, to, &data, seg),
            (101, 0)
        );
        assert_eq!(drain(&rx), want, "one by one");
        use super::super::Backend;
        assert_eq!(b.send_segments(to, &data, seg), (101, 0));
        assert_eq!(drain(&rx), want, "through the backend");

        // The receiving side with GRO: runs come back as one buffer, cut
        // at the segment length they report, to the same datagrams.
        let gro = enable_gro(&rx);
        assert_eq!(b.send_segments(to, &data, seg), (101, 0));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((n, from, len)) = recv_segments(&rx, &mut buf) {
            assert_eq!(from, b_addr);
            got.extend(buf[..n].chunks(len).map(<[u8]>::to_vec));
        }
        assert_eq!(got, want, "received with GRO {gro}");
    }

    #[test]
    fn steer_arithmetic() {
        let mut f = vec![0u8; 40];
        f[13] = 7;
        assert_eq!(steer(&f, 13, 2), 1);
        assert_eq!(steer(&f, 13, 4), 3);
        assert_eq!(steer(&f[..5], 13, 4), 0);
    }

    /// The socket filter on a real socket: only datagrams of exactly one
    /// frame with an accepted kind byte are queued; the kernel's drop
    /// counter counts every other one, and a full receive queue too.
    #[test]
    fn kernel_refuses_wrong_lengths_and_kinds_and_counts_them() {
        let rx = bind_reuseport("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("bind");
        let addr = rx.local_addr().expect("addr");
        attach_admission(&rx, 100, &[1, 3]).expect("attach");
        assert_eq!(kernel_drops(&rx).expect("meminfo"), 0);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let frame = |len: usize, kind: u8| {
            let mut f = vec![0u8; len];
            if let Some(b) = f.first_mut() {
                *b = kind;
            }
            f
        };
        let sent = [
            (frame(100, 1), true),
            (frame(100, 3), true),
            (frame(100, 2), false),
            (frame(100, 0), false),
            (frame(99, 1), false),
            (frame(101, 1), false),
            (frame(108, 1), false),
            (frame(92, 1), false),
            (frame(1, 1), false),
            (frame(0, 0), false),
            (frame(9000, 1), false),
        ];
        for (f, _) in &sent {
            tx.send_to(f, addr).expect("send");
        }
        rx.set_nonblocking(false).expect("blocking");
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 10_000];
        while let Ok((n, _)) = rx.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        let want: Vec<Vec<u8>> = sent.iter().filter(|s| s.1).map(|s| s.0.clone()).collect();
        assert_eq!(got, want);
        let refused = sent.iter().filter(|s| !s.1).count() as u32;
        assert_eq!(kernel_drops(&rx).expect("meminfo"), refused);
        // Overflow: a small queue, a burst of good frames, none read.
        let small = bind_reuseport("127.0.0.1:0".parse().expect("addr"), 4096).expect("bind");
        let to = small.local_addr().expect("addr");
        for _ in 0..2000 {
            tx.send_to(&frame(100, 1), to).expect("send");
        }
        assert!(kernel_drops(&small).expect("meminfo") > 1000);
        let p = admission_program(100, &[1]);
        assert_eq!(p.len(), 6);
    }

    /// Two sockets in one reuseport group with the program attached: each
    /// datagram lands on the socket its byte picks, whatever its source.
    #[test]
    fn kernel_steers_by_packet_byte() {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let s0 = bind_reuseport(addr, 1 << 20).expect("bind 0");
        let s1 = bind_reuseport(addr, 1 << 20).expect("bind 1");
        attach_steering(&s0, 13, 2).expect("attach");
        for (i, s) in [&s0, &s1].iter().enumerate() {
            s.set_nonblocking(false).expect("blocking");
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap_or_else(|e| panic!("timeout {i}: {e}"));
        }
        for byte in [0u8, 1, 2, 3, 200, 201] {
            let mut frame = vec![0u8; 64];
            frame[13] = byte;
            // A fresh source port each time: steering must not depend on it.
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
            tx.send_to(&frame, addr).expect("send");
            let want = steer(&frame, 13, 2) as usize;
            let mut buf = [0u8; 128];
            let sockets = [&s0, &s1];
            let (n, _) = sockets[want]
                .recv_from(&mut buf)
                .expect("arrives at chosen shard");
            assert_eq!(buf[13], byte);
            assert_eq!(n, 64);
        }
    }
}

/// `SOL_UDP` and `UDP_SEGMENT` from `<linux/udp.h>` (not in the libc crate
/// for glibc targets).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams one segmented send may carry (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one segmented send may carry (an IP datagram's payload).
const GSO_MAX_BYTES: usize = 65_000;

/// The kernel does not segment for this socket (an old kernel, or a device
/// without checksum offload): send datagram by datagram instead.
#[derive(Debug)]
pub struct GsoUnsupported;

/// Send `data` to `to` as `seg_len`-byte datagrams (the last may be
/// shorter) with UDP generic segmentation offload: one `sendmsg` per up to
/// 64 datagrams instead of one pass through the stack per datagram. On the
/// wire these are ordinary datagrams, back to back. Returns (sent, failed)
/// datagrams, or `GsoUnsupported` if the first send says the kernel cannot
/// do it (then nothing was sent).
pub fn send_gso(
    socket: &UdpSocket,
    to: SocketAddr,
    data: &[u8],
    seg_len: usize,
) -> Result<(usize, usize), GsoUnsupported> {
    use std::os::fd::AsRawFd;
    let Ok(seg) = u16::try_from(seg_len) else {
        return Err(GsoUnsupported);
    };
    if seg_len == 0 {
        return Ok((0, 0));
    }
    let per_send = (GSO_MAX_BYTES / seg_len).clamp(1, GSO_MAX_SEGMENTS) * seg_len;
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let name_len = super::portable::std_to_sockaddr(to, &mut ss);
    let (mut sent, mut failed) = (0, 0);
    for (i, chunk) in data.chunks(per_send).enumerate() {
        let n = chunk.len().div_ceil(seg_len);
        let mut iov = libc::iovec {
            iov_base: chunk.as_ptr() as *mut libc::c_void,
            iov_len: chunk.len(),
        };
        // Room for one cmsg carrying a u16, 8-byte aligned.
        let mut control = [0u64; 4];
        // SAFETY: `msg` points at `ss`, `iov` and `control`, all alive for
        // the call; the cmsg header and its u16 fit in `control` (CMSG_SPACE
        // of 2 bytes is at most 24 on 64-bit Linux, `control` is 32); the
        // kernel only reads them.
        let rc = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = name_len;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(2) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
            libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_DONTWAIT)
        };
        if rc >= 0 {
            sent += n;
            continue;
        }
        let err = io::Error::last_os_error().raw_os_error();
        let unsupported = matches!(
            err,
            Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
        );
        if unsupported && i == 0 && n > 1 {
            return Err(GsoUnsupported);
        }
        failed += n;
    }
    Ok((sent, failed))
}
