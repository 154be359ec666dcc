//! One direction of a plaintext pair as a state machine polled by hand: the memory of an
//! idle relayed pair is what this holds between bursts, so it holds as little as it can.
//!
//! A direction waits for its source to turn readable with `TcpStream::poll_read_ready`,
//! which keeps the task's waker in the socket's own readiness slot (no future, no waiter
//! node stored here). When bytes arrive a *burst* begins: a pipe lent by the pool
//! (`splice(2)`), or a buffer that starts at [`FIRST_BUFFER`] and doubles up to the relay
//! buffer while reads fill it (the copy, or a splice burst that could get no pipe). The
//! burst lasts as long as reads return bytes; when a read would block with nothing left to
//! write, the pipe goes back to the pool, the buffer is freed, and the direction holds
//! nothing again. EOF is passed on as a write shutdown once every byte read is written.
//!
//! Each direction uses one readiness slot per socket (its source's read side, its
//! destination's write side), so the two directions of a pair never take each other's
//! wake-ups. The `poll_*_ready` calls take part in tokio's cooperative budget, so a busy
//! pair yields to the other tasks of its worker.
//!
//! A kTLS end (a terminated client whose session the kernel holds, `io::ktls`) differs
//! in two places ([`Ends`]): a read that stops at a control record (`EINVAL` from
//! `splice`, `EIO` from `read`) reads that record, where a `close_notify` is the client's
//! EOF and anything else ends the pair with its reason; and EOF passed on to it is a
//! `close_notify` before the write shutdown.

use std::io;
use std::task::{ready, Context, Poll};

use std::os::fd::AsFd;

use rustix::net::Shutdown;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::io::ktls::{control, kernel};

use super::pipe_pool::{Lent, Pool};
use super::splice_pipe::{splice, Mover};

/// The first buffer of a copied burst: an interactive burst costs a page.
pub(crate) const FIRST_BUFFER: usize = 4096;

/// What a direction holds while its bytes move.
enum Burst {
    /// Between bursts: nothing.
    Idle,
    /// `splice(2)` through a lent pipe (`Lent::pending` bytes in it).
    Spliced(Lent),
    /// Through a buffer: `buf[start..end]` read and not yet written.
    Copied {
        buf: Vec<u8>,
        start: usize,
        end: usize,
    },
}

/// One direction: its burst, whether its source has ended, and the bytes written on.
pub(crate) struct Direction {
    burst: Burst,
    eof: bool,
    done: bool,
    /// A kTLS destination has been sent its `close_notify`.
    notified: bool,
    /// Bytes that reached the destination.
    pub(crate) count: u64,
}

/// How the bursts of a pair move and where their pipes come from.
#[derive(Clone, Copy)]
pub(crate) struct Movers {
    pub(crate) mover: Mover,
    pub(crate) pool: &'static Pool,
    /// The largest buffer a copied burst grows to.
    pub(crate) buffer: usize,
}

/// Which of a direction's sockets are kTLS sockets.
#[derive(Clone, Copy, Default)]
pub(crate) struct Ends {
    pub(crate) src_ktls: bool,
    pub(crate) dst_ktls: bool,
}

impl Direction {
    pub(crate) fn new() -> Direction {
        Direction {
            burst: Burst::Idle,
            eof: false,
            done: false,
            notified: false,
            count: 0,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Between bursts: no pipe, no buffer.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        matches!(self.burst, Burst::Idle)
    }

    /// Moves what `src` has to `dst` until both would block (`Pending`) or the direction
    /// has ended: `Ready(Ok)` once EOF has been passed on, `Ready(Err)` at the first error
    /// (a pipe still holding bytes is then closed with them, never reused).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        how: Movers,
        ends: Ends,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if ready!(self.poll_write_out(cx, dst))? {
                continue;
            }
            // Nothing is waiting to be written.
            if self.eof {
                self.burst = Burst::Idle;
                if ends.dst_ktls && !self.notified {
                    ready!(dst.poll_write_ready(cx))?;
                    match dst.try_io(Interest::WRITABLE, || kernel::send_close_notify(dst)) {
                        Ok(()) => self.notified = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                self.done = true;
                return Poll::Ready(shutdown_write(dst));
            }
            ready!(src.poll_read_ready(cx))?;
            if let Burst::Idle = self.burst {
                self.burst = start(how);
            }
            match self.read_in(src, how.buffer) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                // The burst is over: its pipe goes back, its buffer is freed.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.burst = Burst::Idle,
                Err(e) if ends.src_ktls => match ktls_stop(src, e) {
                    Ok(()) => self.eof = true,
                    Err(e) => return Poll::Ready(Err(e)),
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what the burst holds: `Ready(true)` after some progress (call again),
    /// `Ready(false)` when nothing is left to write, `Pending` while `dst` is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, dst: &TcpStream) -> Poll<io::Result<bool>> {
        let written = match &mut self.burst {
            Burst::Spliced(pipe) if pipe.pending > 0 => {
                ready!(dst.poll_write_ready(cx))?;
                let left = pipe.pending;
                let n =
                    match dst.try_io(Interest::WRITABLE, || splice(&pipe.pipe().read, dst, left)) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => n,
                        // Readiness is cleared: the next poll registers the waker.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                pipe.pending -= n;
                n
            }
            Burst::Copied { buf, start, end } if *start < *end => {
                ready!(dst.poll_write_ready(cx))?;
                let n = match dst.try_write(&buf[*start..*end]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                *start += n;
                n
            }
            _ => return Poll::Ready(Ok(false)),
        };
        self.count += written as u64;
        Poll::Ready(Ok(true))
    }

    /// One read from `src` into the burst (whose pending bytes are all written); a copy
    /// buffer grows up to `limit`.
    fn read_in(&mut self, src: &TcpStream, limit: usize) -> io::Result<usize> {
        match &mut self.burst {
            Burst::Idle => Err(io::ErrorKind::WouldBlock.into()),
            Burst::Spliced(pipe) => {
                let capacity = pipe.pipe().capacity;
                let n = src.try_io(Interest::READABLE, || {
                    splice(src, &pipe.pipe().write, capacity)
                })?;
                pipe.pending = n;
                Ok(n)
            }
            Burst::Copied { buf, start, end } => {
                // The last read filled the buffer: the next gets twice the room.
                if *end == buf.len() && buf.len() < limit {
                    buf.resize((buf.len() * 2).min(limit), 0);
                }
                let n = src.try_read(buf)?;
                (*start, *end) = (0, n);
                Ok(n)
            }
        }
    }
}

/// A burst's means: a lent pipe, else (or for the copy) a first buffer.
fn start(how: Movers) -> Burst {
    if how.mover == Mover::Splice {
        match how.pool.take() {
            Ok(pipe) => return Burst::Spliced(pipe),
            Err(e) => tracing::debug!("no pipe for splice(2) ({e}); copying this burst"),
        }
    }
    Burst::Copied {
        buf: vec![0u8; FIRST_BUFFER.min(how.buffer)],
        start: 0,
        end: 0,
    }
}

/// A read of a kTLS socket failed with `e`: at a control record (`EINVAL` from `splice`,
/// `EIO` from `read`), that record is read; `Ok` for the client's `close_notify` (its
/// EOF), the reason the pair ends otherwise.
fn ktls_stop(src: &TcpStream, e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::EIO) => {
            let (kind, content) = kernel::read_control(src.as_fd())?;
            control::classify(kind, &content).map_err(io::Error::other)
        }
        Some(libc::EBADMSG) => Err(io::Error::other(
            "a TLS record from the client failed to decrypt in the kernel (bad record MAC)",
        )),
        _ => Err(e),
    }
}

/// Passes the half-close on: `shutdown(SHUT_WR)`, as `AsyncWriteExt::shutdown` does on a
/// `TcpStream`.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    Ok(rustix::net::shutdown(s, Shutdown::Write)?)
}
