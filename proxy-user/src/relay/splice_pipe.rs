//! The `splice(2)` relay: the plaintext relay when the eBPF front end is not attached.
//!
//! Bytes go from the source socket into a pipe and from the pipe into the destination
//! socket with `splice(2)`, so the kernel moves page references instead of the proxy
//! copying through a userspace buffer. A direction holds a pipe only while its bytes move
//! (`pipe_pool`): an idle pair holds its two sockets and nothing else. When no pipe can be
//! had (the descriptor limit), that burst is copied through a small buffer instead. The
//! pair is a [`SpliceRelay`] polled by hand, one `burst::Direction` each way. The contract
//! is the userspace relay's (`relay::relay`): EOF from one side becomes a write shutdown on the other while
//! the reverse direction keeps flowing, the first error ends both, and the byte counts
//! (bytes written to the destination) are kept even when the relay ends in an error.
//!
//! Readiness comes from tokio (`TcpStream::poll_read_ready`/`poll_write_ready` +
//! `try_io`); the sockets
//! are non-blocking and every `splice` call carries `SPLICE_F_NONBLOCK`, so `EAGAIN` always
//! means "the socket is not ready" — a direction empties its pipe before it reads again,
//! so the pipe is never what blocks.
//!
//! `splice` into a socket cannot pass `MSG_NOSIGNAL`: a write to a connection the peer has
//! reset raises `SIGPIPE` as well as returning `EPIPE`. The Rust runtime ignores `SIGPIPE`
//! before `main`, so the error comes back here like any other; a binary that restored the
//! default action would be killed instead.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags, SpliceFlags};
use tokio::net::TcpStream;

use super::burst::{Direction, Ends, Movers};
use super::pipe_pool::{Pool, POOL};
use super::RelayStats;
use crate::io::copy::Copied;

/// Pipe capacity asked for with `F_SETPIPE_SZ` (the unprivileged maximum by default,
/// `/proc/sys/fs/pipe-max-size`); a refusal keeps the kernel's default (64 KiB).
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// One direction's pipe: `[read end, write end]`, and its capacity.
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    pub(crate) capacity: usize,
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
pub(crate) fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
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
    /// Through a userspace buffer, held only during the burst (`relay: copy`).
    Copy,
}

/// Relays `client` and `upstream` with `splice(2)` or a copy (`mover`). `buffer` bounds a
/// copied burst's buffer.
pub(crate) fn relay_splice(
    client: TcpStream,
    upstream: TcpStream,
    buffer: usize,
    mover: Mover,
) -> SpliceRelay {
    relay_with(client, upstream, buffer, mover, &POOL)
}

/// [`relay_splice`] with pipes from `pool`.
fn relay_with(
    client: TcpStream,
    upstream: TcpStream,
    buffer: usize,
    mover: Mover,
    pool: &'static Pool,
) -> SpliceRelay {
    SpliceRelay {
        sockets: [client, upstream],
        directions: [Direction::new(), Direction::new()],
        how: Movers {
            mover,
            pool,
            buffer,
        },
        ktls: false,
    }
}

/// Relays a kTLS `client` (the kernel holds its session, `io::ktls`) and its plaintext
/// `upstream` with `splice(2)` (`relay: copy`: through a buffer): the kernel decrypts
/// into the pipe and encrypts out of it. The pair's metrics `mode` is `ktls`.
pub(crate) fn relay_ktls(client: TcpStream, upstream: TcpStream, buffer: usize) -> SpliceRelay {
    let mover = match super::choice::chosen() {
        super::choice::Chosen::Copy => Mover::Copy,
        _ => Mover::Splice,
    };
    SpliceRelay {
        ktls: true,
        ..relay_with(client, upstream, buffer, mover, &POOL)
    }
}

/// A relayed pair, polled by hand (`burst`): an idle one holds its two sockets, two
/// small direction states and nothing else — no buffer, no pipe, no stored future.
pub(crate) struct SpliceRelay {
    /// `[client, upstream]`; direction 0 is client → upstream.
    sockets: [TcpStream; 2],
    directions: [Direction; 2],
    how: Movers,
    /// The client is a kTLS socket.
    ktls: bool,
}

impl Future for SpliceRelay {
    type Output = RelayStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayStats> {
        let this = self.get_mut();
        let ktls = this.ktls;
        let ends = [
            Ends {
                src_ktls: ktls,
                dst_ktls: false,
            },
            Ends {
                src_ktls: false,
                dst_ktls: ktls,
            },
        ];
        for (i, (src, dst)) in [(0, 1), (1, 0)].into_iter().enumerate() {
            let (src, dst) = (&this.sockets[src], &this.sockets[dst]);
            if let Poll::Ready(Err(e)) = this.directions[i].poll(cx, src, dst, this.how, ends[i]) {
                // The first error ends both directions.
                return Poll::Ready(this.stats(Some(e)));
            }
        }
        if this.directions.iter().all(Direction::done) {
            return Poll::Ready(this.stats(None));
        }
        Poll::Pending
    }
}

impl SpliceRelay {
    /// Whether both directions are between bursts (no pipe, no buffer).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.directions.iter().all(Direction::idle)
    }

    fn stats(&mut self, error: Option<io::Error>) -> RelayStats {
        // Whatever a direction still holds goes now (a pipe with bytes is closed).
        let [up, down] =
            std::mem::replace(&mut self.directions, [Direction::new(), Direction::new()]);
        let copied = Copied {
            a_to_b: up.count,
            b_to_a: down.count,
            error,
        };
        let mode = match (self.ktls, self.how.mover) {
            (true, _) => "ktls",
            (false, Mover::Splice) => "splice",
            (false, Mover::Copy) => "userspace",
        };
        RelayStats::copied(mode, copied)
    }
}

#[cfg(test)]
#[path = "splice_pipe_tests.rs"]
mod tests;
