//! The `splice(2)` relay: the plaintext relay when the eBPF front end is not attached.
//!
//! Each direction owns a pipe; bytes go from the source socket into the pipe and from the
//! pipe into the destination socket with `splice(2)`, so the kernel moves page references
//! instead of the proxy copying through a userspace buffer. The contract is the userspace
//! relay's (`relay::relay`): EOF from one side becomes a write shutdown on the other while
//! the reverse direction keeps flowing, the first error ends both, and the byte counts
//! (bytes written to the destination) are kept even when the relay ends in an error.
//!
//! Readiness comes from tokio (`TcpStream::readable`/`writable` + `try_io`); the sockets
//! are non-blocking and every `splice` call carries `SPLICE_F_NONBLOCK`, so `EAGAIN` always
//! means "the socket is not ready" — a direction empties its pipe before it reads again,
//! so the pipe is never what blocks.
//!
//! `splice` into a socket cannot pass `MSG_NOSIGNAL`: a write to a connection the peer has
//! reset raises `SIGPIPE` as well as returning `EPIPE`. The Rust runtime ignores `SIGPIPE`
//! before `main`, so the error comes back here like any other; a binary that restored the
//! default action would be killed instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::RelayStats;
use crate::io::both_directions;
use crate::io::copy::Copied;

/// Pipe capacity asked for with `F_SETPIPE_SZ` (the unprivileged maximum by default,
/// `/proc/sys/fs/pipe-max-size`); a refusal keeps the kernel's default (64 KiB).
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// One direction's pipe: `[read end, write end]`, and its capacity.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe of up to `size` bytes.
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // A refusal (above pipe-max-size without CAP_SYS_RESOURCE) keeps the default.
        let _ = fcntl_setpipe_size(&write, size);
        let capacity = fcntl_getpipe_size(&write)?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// `splice(from → to)` of up to `len` bytes, non-blocking; `EINTR` retried.
fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        match rustix::pipe::splice(&from, None, &to, None, len, flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Relays `client` and `upstream` with `splice(2)`; falls back to the userspace copy when
/// the pipes cannot be made (descriptor limits).
pub(crate) async fn relay_splice(
    client: TcpStream,
    upstream: TcpStream,
    buffer: usize,
) -> RelayStats {
    let pipes = Pipe::new(PIPE_SIZE).and_then(|up| Ok((up, Pipe::new(PIPE_SIZE)?)));
    let (up_pipe, down_pipe) = match pipes {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("splice(2) relay unavailable, copying: {e}");
            return super::relay(client, upstream, buffer).await;
        }
    };
    let to_upstream = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let error = both_directions(
        half(&client, &upstream, &up_pipe, &to_upstream),
        half(&upstream, &client, &down_pipe, &to_client),
    )
    .await;
    let copied = Copied {
        a_to_b: to_upstream.load(Ordering::Relaxed),
        b_to_a: to_client.load(Ordering::Relaxed),
        error,
    };
    RelayStats::copied("splice", copied)
}

/// One direction: `src` → pipe → `dst` until EOF, then `dst`'s write side is shut down.
/// `count` is the bytes that reached `dst`.
async fn half(src: &TcpStream, dst: &TcpStream, pipe: &Pipe, count: &AtomicU64) -> io::Result<()> {
    loop {
        // The pipe is empty here, so EAGAIN can only be the socket's.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, &pipe.write, pipe.capacity)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return shutdown_write(dst);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(&pipe.read, dst, left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Passes the half-close on: `shutdown(SHUT_WR)`, as `AsyncWriteExt::shutdown` does on a
/// `TcpStream`.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    Ok(rustix::net::shutdown(s, rustix::net::Shutdown::Write)?)
}

#[cfg(test)]
#[path = "splice_pipe_tests.rs"]
mod tests;
