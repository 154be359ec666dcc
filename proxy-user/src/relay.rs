//! Moving bytes between a client and its upstream once a route is chosen.
//!
//! [`relay`] is the userspace copy: two directions with bounded buffers, half-close passed
//! on (EOF from one side becomes a write shutdown on the other while the reverse direction
//! keeps flowing), an error on either side ending both, and byte counts kept even when the
//! connection ends in an error. [`relay_plain`] is the seam for plaintext pairs: the kernel
//! splice of the eBPF front end (`ebpf::splice`) when it is attached, otherwise `splice(2)`
//! through a pipe per direction ([`splice_pipe`]), or this copy when `SWITCHYARD_RELAY=copy`
//! asks for it ([`PlainRelay`]).
//!
//! [`Prefixed`] replays bytes already read during detection to the next reader (the TLS
//! acceptor), the "peek, then replay" of DESIGN.md §8.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub mod splice_pipe;

/// What a finished relay moved, and how it ended.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Every byte each way, however it moved.
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    /// Of those, the bytes the kernel redirected (zero unless `mode` is `kernel_splice`).
    pub kernel_to_upstream: u64,
    pub kernel_to_client: u64,
    /// `userspace`, `splice` (`splice(2)` through pipes) or `kernel_splice`: the `mode`
    /// label of the metrics (bytes a kernel splice still copied in userspace, such as those
    /// sent before the switch, count as `userspace`).
    pub mode: &'static str,
    /// The first I/O error, if the relay did not end with both sides closing cleanly.
    pub error: Option<io::Error>,
}

impl RelayStats {
    /// What a relay without the kernel splice moved (`mode` `userspace` or `splice`): the
    /// two directions' counters, and how it ended.
    fn from_counters(
        mode: &'static str,
        to_upstream: &AtomicU64,
        to_client: &AtomicU64,
        error: Option<io::Error>,
    ) -> RelayStats {
        RelayStats {
            client_to_upstream: to_upstream.load(Ordering::Relaxed),
            upstream_to_client: to_client.load(Ordering::Relaxed),
            kernel_to_upstream: 0,
            kernel_to_client: 0,
            mode,
            error,
        }
    }
}

/// Relays two plaintext TCP sockets: the seam where the kernel splice plugs in.
/// `client_read` is how many bytes were read from the client before (detection, PROXY
/// header, ClientHello) and already dealt with; the splice needs it to switch over in order.
pub async fn relay_plain(
    client: TcpStream,
    upstream: TcpStream,
    client_read: u64,
    buffer: usize,
) -> RelayStats {
    match crate::ebpf::frontend() {
        Some(f) => {
            crate::ebpf::splice::relay_spliced(f, client, upstream, client_read, buffer).await
        }
        None => match PlainRelay::chosen() {
            PlainRelay::Splice => splice_pipe::relay_splice(client, upstream, buffer).await,
            PlainRelay::Copy => relay(client, upstream, buffer).await,
        },
    }
}

/// How plaintext pairs are relayed when the eBPF front end is not attached:
/// `SWITCHYARD_RELAY=copy` forces the userspace copy (for measurements and as an escape
/// hatch); anything else, or nothing, means `splice(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainRelay {
    Splice,
    Copy,
}

impl PlainRelay {
    /// The environment variable read once per process.
    pub const ENV: &'static str = "SWITCHYARD_RELAY";

    /// Parses the variable's value (`None` when unset).
    pub fn parse(value: Option<&str>) -> PlainRelay {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("copy") => PlainRelay::Copy,
            _ => PlainRelay::Splice,
        }
    }

    /// The process's choice, from [`PlainRelay::ENV`] at first use.
    pub fn chosen() -> PlainRelay {
        static CHOSEN: std::sync::OnceLock<PlainRelay> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| PlainRelay::parse(std::env::var(Self::ENV).ok().as_deref()))
    }

    /// What the start-up log line calls it.
    pub fn describe(self) -> &'static str {
        match self {
            PlainRelay::Splice => "splice(2) through pipes",
            PlainRelay::Copy => "userspace copies (SWITCHYARD_RELAY=copy)",
        }
    }
}

/// Copies both directions until both have ended or either fails.
pub async fn relay<A, B>(client: A, upstream: B, buffer: usize) -> RelayStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let to_upstream = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let error = both_directions(
        copy_half(&mut client_r, &mut upstream_w, buffer, &to_upstream),
        copy_half(&mut upstream_r, &mut client_w, buffer, &to_client),
    )
    .await;
    RelayStats::from_counters("userspace", &to_upstream, &to_client, error)
}

/// Drives both directions of a relay until each has ended; the first error ends both
/// (the other direction's future is dropped) and is returned. Also drives the two halves
/// of a framing pump (`wire`), whose errors are its own.
pub async fn both_directions<U, D, E>(up: U, down: D) -> Option<E>
where
    U: std::future::Future<Output = Result<(), E>>,
    D: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let result = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
        };
        if let Err(e) = result {
            return Some(e);
        }
    }
    None
}

/// Copies `r` to `w` until EOF, then shuts `w` down (passing the half-close on).
async fn copy_half<R, W>(r: &mut R, w: &mut W, buffer: usize, count: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buffer];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        // A TLS writer may accept bytes into its buffer without sending them (its socket or
        // pipe was full); without a flush they would wait for the next write, which may
        // never come. On a plain socket this is a no-op.
        w.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An I/O object whose reads first return `prefix`, then the inner reads.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// `from` sends `data` and shuts down its write half; `to` reads exactly `data`, then
    /// EOF. Shared with the `splice_pipe` tests.
    pub(super) async fn send_then_half_close<W, R>(from: &mut W, to: &mut R, data: &[u8])
    where
        W: AsyncWrite + Unpin,
        R: AsyncRead + Unpin,
    {
        from.write_all(data).await.unwrap();
        from.shutdown().await.unwrap();
        let mut got = Vec::new();
        to.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
    }

    /// The relay moved `(client_to_upstream, upstream_to_client)` bytes and ended without
    /// an error. Shared with the `splice_pipe` tests.
    pub(super) fn assert_clean_counts(stats: &RelayStats, counts: (u64, u64)) {
        assert_eq!((stats.client_to_upstream, stats.upstream_to_client), counts);
        assert!(stats.error.is_none());
    }

    #[test]
    fn plain_relay_is_splice_unless_copy_is_asked_for() {
        assert_eq!(PlainRelay::parse(None), PlainRelay::Splice);
        assert_eq!(PlainRelay::parse(Some("splice")), PlainRelay::Splice);
        assert_eq!(PlainRelay::parse(Some("")), PlainRelay::Splice);
        assert_eq!(PlainRelay::parse(Some("copy")), PlainRelay::Copy);
        assert_eq!(PlainRelay::parse(Some(" COPY ")), PlainRelay::Copy);
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_inner() {
        let (a, mut b) = duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(b"hello".to_vec(), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn relay_counts_and_passes_half_close() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        let task = tokio::spawn(relay(client, upstream, 16));
        // The upstream sees the request then EOF, and can still answer.
        send_then_half_close(&mut client_peer, &mut upstream_peer, b"request").await;
        send_then_half_close(
            &mut upstream_peer,
            &mut client_peer,
            b"response after half-close",
        )
        .await;
        assert_clean_counts(&task.await.unwrap(), (7, 25));
    }
}
