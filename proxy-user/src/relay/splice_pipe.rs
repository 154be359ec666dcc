//! The `splice(2)` relay: the plaintext relay when the eBPF front end is not attached.
//!
//! Bytes go from the source socket into a pipe and from the pipe into the destination
//! socket with `splice(2)`, so the kernel moves page references instead of the proxy
//! copying through a userspace buffer. A direction holds a pipe only while its bytes move
//! (`pipe_pool`): an idle pair holds its two sockets and nothing else. When no pipe can be
//! had (the descriptor limit), that burst is copied through a small buffer instead. The contract is the userspace
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

use super::pipe_pool::{Lent, Pool, POOL};
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

/// How a plaintext pair's bursts move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mover {
    /// `splice(2)` through a lent pipe (a copy when none can be made).
    Splice,
    /// Through a userspace buffer, held only during the burst (`SWITCHYARD_RELAY=copy`).
    Copy,
}

/// Relays `client` and `upstream` with `splice(2)` or a copy (`mover`). `buffer` bounds a
/// copied burst's buffer.
pub(crate) async fn relay_splice(
    client: TcpStream,
    upstream: TcpStream,
    buffer: usize,
    mover: Mover,
) -> RelayStats {
    relay_with(client, upstream, buffer, mover, &POOL).await
}

/// [`relay_splice`] with pipes from `pool`.
async fn relay_with(
    client: TcpStream,
    upstream: TcpStream,
    buffer: usize,
    mover: Mover,
    pool: &'static Pool,
) -> RelayStats {
    let to_upstream = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let error = both_directions(
        half(&client, &upstream, buffer, (mover, pool), &to_upstream),
        half(&upstream, &client, buffer, (mover, pool), &to_client),
    )
    .await;
    let copied = Copied {
        a_to_b: to_upstream.load(Ordering::Relaxed),
        b_to_a: to_client.load(Ordering::Relaxed),
        error,
    };
    let mode = match mover {
        Mover::Splice => "splice",
        Mover::Copy => "userspace",
    };
    RelayStats::copied(mode, copied)
}

/// What one burst of a direction ended with.
enum Burst {
    /// The source has nothing more for now.
    Idle,
    /// The source sent its EOF.
    Eof,
}

/// One direction: `src` → pipe → `dst` until EOF, then `dst`'s write side is shut down.
/// `count` is the bytes that reached `dst`.
async fn half(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    (mover, pool): (Mover, &'static Pool),
    count: &AtomicU64,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let pipe = match mover {
            Mover::Splice => pool.take().map_err(|e| {
                tracing::debug!("no pipe for splice(2) ({e}); copying this burst");
            }),
            Mover::Copy => Err(()),
        };
        // Boxed: between bursts, the pair's task holds no room for one.
        let burst = match pipe {
            Ok(pipe) => Box::pin(spliced_burst(src, dst, pipe, count)).await?,
            Err(()) => Box::pin(copied_burst(src, dst, buffer, count)).await?,
        };
        if let Burst::Eof = burst {
            return shutdown_write(dst);
        }
    }
}

/// Splices what `src` has through `pipe` into `dst`, as long as reads return bytes; the
/// pipe goes back to the pool empty when `src` would block.
async fn spliced_burst(
    src: &TcpStream,
    dst: &TcpStream,
    mut pipe: Lent,
    count: &AtomicU64,
) -> io::Result<Burst> {
    loop {
        // The pipe is empty here, so EAGAIN can only be the socket's.
        let capacity = pipe.pipe().capacity;
        let n = match src.try_io(Interest::READABLE, || {
            splice(src, &pipe.pipe().write, capacity)
        }) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle),
            Err(e) => return Err(e),
        };
        pipe.pending = n;
        while pipe.pending > 0 {
            dst.writable().await?;
            let left = pipe.pending;
            match dst.try_io(Interest::WRITABLE, || splice(&pipe.pipe().read, dst, left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    pipe.pending -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies what `src` has into `dst` as long as reads return bytes, through a buffer that
/// starts at [`FIRST_BUFFER`] and doubles, up to `buffer`, each time a read fills it (an
/// interactive burst costs a page, a bulk one reaches the full size within a few reads).
async fn copied_burst(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    count: &AtomicU64,
) -> io::Result<Burst> {
    let mut buf = vec![0u8; FIRST_BUFFER.min(buffer)];
    loop {
        let n = match src.try_read(&mut buf) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle),
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            dst.writable().await?;
            match dst.try_write(data) {
                Ok(m) => data = &data[m..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < buffer {
            buf.resize((buf.len() * 2).min(buffer), 0);
        }
    }
}

/// The first buffer of a copied burst.
const FIRST_BUFFER: usize = 4096;

/// Passes the half-close on: `shutdown(SHUT_WR)`, as `AsyncWriteExt::shutdown` does on a
/// `TcpStream`.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    Ok(rustix::net::shutdown(s, rustix::net::Shutdown::Write)?)
}

#[cfg(test)]
#[path = "splice_pipe_tests.rs"]
mod tests;
