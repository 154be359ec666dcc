//! One direction of a spliced pair: forwards in userspace what the kernel passes up (before
//! the switch, or after a failed redirect), and passes the half-close on once everything
//! bound for the other socket, copied here or redirected by the kernel, has left.

use proxy_common::{SockKey, Splice};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::ebpf::sockopt::written;
use crate::ebpf::Frontend;

/// `e` with where it happened ("reading the client: Broken pipe"), same kind.
fn at(e: io::Error, stage: &str, side: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{stage} the {side}: {e}"))
}

/// One direction: `src` → `dst` (index 0 → 1 of the arrays).
pub(super) struct Half<'a> {
    pub(super) f: &'a Frontend,
    /// `client`/`upstream`, for error messages.
    pub(super) names: [&'static str; 2],
    pub(super) keys: [SockKey; 2],
    pub(super) fds: [RawFd; 2],
    /// Bytes written into `dst` before the relay started.
    pub(super) dst_base: u64,
    /// Bytes read from each socket and dealt with (forwarded, or consumed by detection);
    /// `dst`'s is the other direction's.
    pub(super) consumed: [&'a AtomicU64; 2],
    /// Bytes this direction copied in userspace.
    pub(super) copied: &'a AtomicU64,
}

/// Pause between looks at the kernel's counters while waiting for it.
const POLL: Duration = Duration::from_millis(1);

impl Half<'_> {
    /// Forwards what the kernel passes up (before the switch, or a failed redirect) until
    /// EOF, then passes the half-close on once the kernel's share has left too.
    pub(super) async fn run(
        self,
        src: ReadHalf<'_>,
        mut dst: WriteHalf<'_>,
        buffer: usize,
    ) -> io::Result<()> {
        // Only while bytes come up: a spliced pair's userspace sees EOF and little else,
        // so an idle pair holds no buffer.
        let mut buf: Option<Vec<u8>> = None;
        let [from, to] = self.names;
        loop {
            // `poll_read_ready` keeps the waker in the socket's readiness slot: the wait
            // stores no `Readiness` future (an idle pair's memory).
            std::future::poll_fn(|cx| src.as_ref().poll_read_ready(cx))
                .await
                .map_err(|e| at(e, "reading", from))?;
            let b = buf.get_or_insert_with(|| vec![0u8; buffer]);
            let n = match src.try_read(b) {
                Ok(n) => n,
                // Not a wasted wake-up to be slowed down: a read of a socket in the sockhash
                // first runs the verdict over skbs still in its receive queue, which is what
                // moves a backed-up spliced transfer on. A 1 ms pause here stalled 1 GiB
                // streams for minutes (docs/ebpf.md, "Not done / limits").
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf = None;
                    continue;
                }
                Err(e) => return Err(at(e, "reading", from)),
            };
            if n == 0 {
                // EOF is reported while passed skbs still wait in the psock backlog (the
                // receive buffer was full): they come first, then the real EOF.
                if let Some(lost) = self.pending(0) {
                    if written(self.fds[0])?.closed {
                        return Err(io::Error::other(format!(
                            "the kernel dropped {lost} bytes queued on a closed socket"
                        )));
                    }
                    Box::pin(tokio::time::sleep(POLL)).await;
                    continue;
                }
                // Boxed, as the write below: the future of an idle direction holds only
                // its wait for the source.
                Box::pin(self.drained())
                    .await
                    .map_err(|e| at(e, "waiting for the send queue of", to))?;
                return dst.shutdown().await.map_err(|e| at(e, "shutting down", to));
            }
            // Bytes passed up once the pair is spliced come after bytes the kernel
            // redirected (a redirect failed and fell back to pass): those may still wait
            // in `dst`'s psock backlog, and a direct write would overtake them.
            Box::pin(self.kernel_first())
                .await
                .map_err(|e| at(e, "waiting for the send queue of", to))?;
            Box::pin(dst.write_all(&b[..n]))
                .await
                .map_err(|e| at(e, "writing", to))?;
            self.copied.fetch_add(n as u64, Ordering::Relaxed);
            let forwarded = self.consumed[0].fetch_add(n as u64, Ordering::AcqRel) + n as u64;
            let splice = Splice {
                peer: self.keys[1],
                forwarded,
            };
            self.f
                .mark(self.keys[0], splice)
                .map_err(io::Error::other)?;
        }
    }

    /// Bytes the kernel passed up from socket `i` that userspace has not read yet.
    fn pending(&self, i: usize) -> Option<u64> {
        let passed = self.f.stats(self.keys[i])?.passed;
        let read = self.consumed[i].load(Ordering::Acquire);
        (passed > read).then(|| passed - read)
    }

    /// Waits until everything bound for `dst` so far, copied here or redirected by the
    /// kernel, is in its send queue — only when the kernel has redirected anything, so a
    /// pair that was never spliced writes at once. Stops waiting when `dst` cannot send.
    async fn kernel_first(&self) -> io::Result<()> {
        if self.f.stats(self.keys[0]).is_none_or(|s| s.spliced == 0) {
            return Ok(());
        }
        self.until(|h| h.sent_all(false)).await
    }

    /// Waits before shutting `dst` down until (1) everything bound for it, copied here or
    /// redirected by the kernel, is in its send queue, and (2) everything it received has
    /// been read by the other direction: our FIN may complete its close, and a socket that
    /// reaches TCP_CLOSE loses its psock and whatever still waits in it. Stops waiting when
    /// `dst` can no longer send.
    async fn drained(&self) -> io::Result<()> {
        self.until(|h| h.sent_all(true)).await
    }

    /// True when `dst` can no longer send, or everything bound for it is in its send
    /// queue (and, with `read_back`, nothing it received waits for the other direction).
    fn sent_all(&self, read_back: bool) -> io::Result<bool> {
        let spliced = self.f.stats(self.keys[0]).map_or(0, |s| s.spliced);
        let expected = self.dst_base + self.copied.load(Ordering::Relaxed) + spliced;
        let now = written(self.fds[1])?;
        Ok(!now.sending || (now.bytes >= expected && !(read_back && self.pending(1).is_some())))
    }

    /// Polls `done` with a backoff from 200 µs to 20 ms until it says so.
    async fn until(&self, done: impl Fn(&Self) -> io::Result<bool>) -> io::Result<()> {
        let mut pause = Duration::from_micros(200);
        while !done(self)? {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Ok(())
    }
}
