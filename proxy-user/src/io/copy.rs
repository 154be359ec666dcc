//! Copying both directions of a pair of byte streams: the one implementation behind the
//! router's userspace relay (`relay`) and the client's local proxies (`client::local`).
//!
//! The contract: bounded buffers; each write is flushed (a TLS writer may hold bytes that
//! would otherwise wait for a next write that never comes); EOF from one side becomes a
//! write shutdown of the other (a half-close) while the reverse direction keeps flowing;
//! the first error of either direction ends both; byte counts are kept however it ends.

use futures_util::FutureExt as _;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a finished copy moved, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    /// Bytes read from `a` and written to `b`.
    pub(crate) a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub(crate) b_to_a: u64,
    /// The first I/O error, if the copy did not end with both sides closing cleanly.
    pub(crate) error: Option<io::Error>,
}

/// When a copy is over, and which error it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// Both directions have ended, or the first error (the router's relay).
    BothEnd,
    /// Both directions have ended; an error of `a` → `b` waits up to [`EXPLAIN_GRACE`] for
    /// `b` → `a`, whose error is reported instead when it has one: `b` is the proxy, and a
    /// write it refused (a broken pipe) is explained by what it sent before closing (a TLS
    /// alert for a refused certificate arrives on the first read under TLS 1.3).
    BExplains,
    /// As [`Until::BExplains`], but the `b` → `a` direction ending ends the copy: for an
    /// `a` that never sends its EOF (an OpenSSH `ProxyCommand` keeps its stdin open until
    /// the command exits).
    BEnds,
}

/// How long a failed `a` → `b` direction waits for `b` to explain it.
pub(crate) const EXPLAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Copies `a` → `b` and `b` → `a` with buffers of `buffer` bytes until `until`.
pub(crate) async fn copy_both<A, B>(a: A, b: B, buffer: usize, until: Until) -> Copied
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_r, mut a_w) = tokio::io::split(a);
    let (mut b_r, mut b_w) = tokio::io::split(b);
    let to_b = AtomicU64::new(0);
    let to_a = AtomicU64::new(0);
    let up = copy_half(&mut a_r, &mut b_w, buffer, &to_b);
    let down = copy_half(&mut b_r, &mut a_w, buffer, &to_a);
    let error = match until {
        Until::BothEnd => both_directions(up, down).await,
        Until::BExplains | Until::BEnds => b_explains(up, down, until == Until::BEnds).await,
    };
    if until == Until::BEnds {
        // `a` never sent its end: say ours to `b` (a TLS close_notify), so `b` sees an
        // orderly close rather than a truncation.
        let _ = tokio::time::timeout(EXPLAIN_GRACE, b_w.shutdown()).await;
    }
    Copied {
        a_to_b: to_b.load(Ordering::Relaxed),
        b_to_a: to_a.load(Ordering::Relaxed),
        error,
    }
}

/// Drives `up` (a → b) and `down` (b → a) for [`Until::BExplains`] and [`Until::BEnds`]
/// (`down_ends`).
async fn b_explains<U, D>(up: U, down: D, down_ends: bool) -> Option<io::Error>
where
    U: Future<Output = io::Result<()>>,
    D: Future<Output = io::Result<()>>,
{
    tokio::pin!(up, down);
    let mut up_result: Option<io::Result<()>> = None;
    loop {
        tokio::select! {
            r = &mut up, if up_result.is_none() => match r {
                Ok(()) => up_result = Some(Ok(())),
                Err(e) => {
                    // The proxy's side of the story, if it tells one in time.
                    return match tokio::time::timeout(EXPLAIN_GRACE, &mut down).await {
                        Ok(Err(explained)) => Some(explained),
                        _ => Some(e),
                    };
                }
            },
            r = &mut down => {
                if let Err(e) = r {
                    return Some(e);
                }
                if down_ends {
                    return None;
                }
                return match up_result {
                    Some(_) => None,
                    None => up.await.err(),
                };
            }
        }
    }
}

/// Drives both directions of a relay until each has ended; the first error ends both
/// (the other direction's future is dropped) and is returned. Also drives the two halves
/// of a framing pump (`wire`), whose errors are its own. Not an `async fn`: that would
/// store `up` and `down` twice (as arguments, then pinned), and an idle relay's memory is
/// this future.
pub(crate) fn both_directions<U, D, E>(up: U, down: D) -> impl Future<Output = Option<E>>
where
    U: Future<Output = Result<(), E>>,
    D: Future<Output = Result<(), E>>,
{
    futures_util::future::try_join(up, down).map(|ended| ended.err())
}

/// The buffer a direction starts with: an interactive connection never needs more, so it
/// costs a page, not `relay_buffer_bytes`.
const FIRST_BUFFER: usize = 4096;

/// How long a direction waits with its buffer for the next bytes before giving the
/// buffer up: an idle connection holds none.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Copies `r` to `w` until EOF, then shuts `w` down (passing the half-close on). The
/// buffer starts at [`FIRST_BUFFER`] and doubles, up to `buffer`, each time a read fills
/// it: bulk transfers reach the full size within a few reads. A direction that has had
/// nothing to read for [`IDLE_AFTER`] frees its buffer and waits for one byte on the
/// stack instead (reads are cancel-safe: nothing is lost when the wait is dropped).
async fn copy_half<R, W>(r: &mut R, w: &mut W, buffer: usize, count: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut size = FIRST_BUFFER.min(buffer);
    let mut buf = Vec::new();
    loop {
        let n = if buf.is_empty() {
            let mut first = [0u8; 1];
            if r.read(&mut first).await? == 0 {
                return w.shutdown().await;
            }
            buf = vec![0u8; size];
            buf[0] = first[0];
            // Whatever came with it, without waiting.
            1 + r
                .read(&mut buf[1..])
                .now_or_never()
                .transpose()?
                .unwrap_or(0)
        } else {
            let ready = r.read(&mut buf).now_or_never().transpose()?;
            match ready {
                Some(n) => n,
                None => match tokio::time::timeout(IDLE_AFTER, r.read(&mut buf)).await {
                    Ok(read) => read?,
                    Err(_idle) => {
                        buf = Vec::new();
                        continue;
                    }
                },
            }
        };
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        // On a plain socket this is a no-op.
        w.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < buffer {
            size = (buf.len() * 2).min(buffer);
            buf.resize(size, 0);
        }
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
pub(crate) mod tests;
