//! The few socket facts the splice needs from the kernel: the socket cookie (the key of
//! every per-socket map, through rustix) and how many bytes have been written into a TCP
//! socket so far, by anyone (userspace `write`s and kernel redirects) — `TCP_INFO` and
//! `SIOCOUTQ`, which rustix does not wrap, by raw `getsockopt`/`ioctl` — and, for the
//! switch, how much waits in the receive queue and whether a read stopped at urgent data.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, RawFd};

/// `SIOCOUTQ` (= `TIOCOUTQ`): bytes in the send queue not yet acknowledged.
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;

/// `SIOCATMARK` (asm-generic/sockios.h): whether the next byte to read is urgent data.
const SIOCATMARK: libc::Ioctl = 0x8905;

/// TCP states (the kernel's `enum tcp_state`) where the socket still sends.
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;
/// Closed: a socket in a sockmap has lost its psock (and what was queued in it).
const TCP_CLOSE: u8 = 7;

/// The socket cookie, as `bpf_get_socket_cookie` sees it.
pub(crate) fn cookie(socket: &impl AsFd) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(socket)?)
}

/// Bytes in the socket's receive queue, not read yet (`FIONREAD`).
pub(crate) fn unread(socket: &impl AsFd) -> io::Result<u64> {
    Ok(rustix::io::ioctl_fionread(socket)?)
}

/// Whether the next byte to read is the urgent mark (`SIOCATMARK`): a read stops there,
/// possibly in the middle of a segment, even with room left in its buffer.
pub(crate) fn at_urgent_mark(fd: RawFd) -> io::Result<bool> {
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int.
    if unsafe { libc::ioctl(fd, SIOCATMARK, &mut at) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(at != 0)
}

/// Bytes written into the socket so far and whether it can still send: acknowledged
/// bytes plus what waits in the send queue (`tcpi_bytes_acked` + `SIOCOUTQ`). The count
/// may include the SYN, so only differences between two readings are meaningful.
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) sending: bool,
    pub(crate) closed: bool,
}

/// Reads [`Written`] for a TCP socket.
pub(crate) fn written(fd: RawFd) -> io::Result<Written> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, zero-initialised.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised plain integers, partly filled by the kernel.
    let info = unsafe { info.assume_init() };
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(fd, SIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Written {
        bytes: info.tcpi_bytes_acked + queued.max(0) as u64,
        sending: matches!(info.tcpi_state, TCP_ESTABLISHED | TCP_CLOSE_WAIT),
        closed: info.tcpi_state == TCP_CLOSE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn cookies_differ_and_written_counts_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut b, _) = listener.accept().unwrap();
        assert_ne!(cookie(&a).unwrap(), cookie(&b).unwrap());
        // Only differences matter: the acknowledged SYN may count as one byte.
        let before = written(a.as_raw_fd()).unwrap().bytes;
        a.write_all(&[7u8; 1000]).unwrap();
        let mut got = [0u8; 1000];
        b.read_exact(&mut got).unwrap();
        let w = written(a.as_raw_fd()).unwrap();
        assert_eq!(w.bytes - before, 1000);
        assert!(w.sending);
    }

    #[test]
    fn unread_counts_the_receive_queue_and_a_read_stops_at_the_urgent_mark() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut b, _) = listener.accept().unwrap();
        assert_eq!(unread(&b).unwrap(), 0);
        // 100 bytes, then 1 urgent byte (the last of a MSG_OOB send), then 100 more.
        a.set_nodelay(true).unwrap();
        let send = |bytes: &[u8], flags| {
            // SAFETY: sends from a live buffer of that length.
            let n = unsafe { libc::send(a.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), flags) };
            assert_eq!(n, bytes.len() as isize);
        };
        send(&[1u8; 101], libc::MSG_OOB);
        send(&[2u8; 100], 0);
        let mut fd = libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one pollfd, 10 s.
        assert_eq!(
            unsafe { libc::poll(&mut fd, 1, 10_000) },
            1,
            "urgent data arrives"
        );
        assert!(!at_urgent_mark(b.as_raw_fd()).unwrap());
        // A read with room for everything stops short, at the mark.
        let mut buf = [0u8; 1000];
        assert_eq!(b.read(&mut buf).unwrap(), 100);
        assert!(at_urgent_mark(b.as_raw_fd()).unwrap());
        let mut rest = [0u8; 100];
        b.read_exact(&mut rest).unwrap();
        assert_eq!(rest, [2u8; 100]);
        assert_eq!(unread(&b).unwrap(), 0);
    }
}
