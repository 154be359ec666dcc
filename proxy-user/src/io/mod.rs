//! I/O that both sides of Switchyard share (`docs/architecture.md` §3):
//! the router and the client import from here, never from each other.
//!
//! - [`prefixed`]: replaying bytes already read to the next reader ("peek, then replay").
//! - [`copy`]: copying both directions of a pair of streams with half-close, the core of
//!   the router's userspace relay and of the client's local proxies.
//! - [`wire`]: the framings that carry a byte stream inside another (WebSocket, the `u32`
//!   ping framing) behind a plain byte stream.
//! - [`tls`]: the rustls crypto provider and the identity read from a certificate.
//! - [`ktls`]: handing a terminated session to the kernel's TLS after the handshake.
//! - [`records`]: the proxy's own record layer for a terminated session after the
//!   handshake (decrypting in place in the relay's buffer).
//! - [`insecure`]: a server-certificate verifier that accepts anything (explicit opt-ins).
//! - [`listen`]: listening sockets with a backlog for bursts of clients.
//! - [`tunnel`]: the reverse tunnel's wire (control messages, stream headers) and its
//!   yamux session, shared by the agent and the proxy's tunnel service.

pub(crate) mod copy;
pub(crate) mod insecure;
pub(crate) mod ktls;
pub(crate) mod prefixed;
pub(crate) mod records;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod wire;

pub(crate) use copy::both_directions;
pub(crate) use prefixed::Prefixed;

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};

/// Pending connections a listener keeps for `accept` (the kernel caps it at
/// `net.core.somaxconn`); tokio's default of 128 overflows under a burst of clients.
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's
/// own `bind`).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listen_with(addr, LISTEN_BACKLOG)
}

/// [`listen`] with another backlog (`limits.listen_backlog`).
pub(crate) fn listen_with(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// `TCP_DEFER_ACCEPT` on a listener: a connection is handed to accept only once its first
/// bytes have arrived, or after about `wait` without them (the kernel counts it in SYN-ACK
/// retransmissions, so it is rounded up); `0s` turns it off. Only for protocols where the
/// client speaks first.
pub(crate) fn set_defer_accept(listener: &impl AsFd, wait: Duration) -> std::io::Result<()> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor and a pointer to a c_int that outlives the call,
    // with its size.
    let r = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A byte stream that can be held behind a pointer and sent between tasks.
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}

/// A boxed byte stream, whatever carries it (a connection upgrade's framing, say).
pub(crate) type BoxedIo = Box<dyn AsyncIo>;
