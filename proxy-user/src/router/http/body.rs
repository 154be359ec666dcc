//! Counting, for the logs and the limits: [`Counted`] counts the bytes of the client's
//! connection, [`Stats`] the requests in flight and when the connection last went idle,
//! and [`Logged`] wraps a response body so that the request's access-log line (status,
//! bytes, duration) is written when the body ends — or is dropped because the client left.

use super::pool::{Body, BoxError};
use crate::router::metrics::HttpRoute;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::{info, Span};

/// Bytes read from and written to the client.
#[derive(Debug, Default)]
pub(crate) struct IoBytes {
    read: AtomicU64,
    written: AtomicU64,
}

impl IoBytes {
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// A client stream whose bytes are counted into an [`IoBytes`].
pub(crate) struct Counted<S> {
    inner: S,
    bytes: Arc<IoBytes>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, bytes: Arc<IoBytes>) -> Counted<S> {
        Counted { inner, bytes }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        self.bytes.read.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.bytes.written.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Requests of one connection: how many began, how many are in flight, since when idle.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) io: Arc<IoBytes>,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            io: Arc::default(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }
}

impl Stats {
    pub(crate) fn begin(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Ok(mut t) = self.idle_since.lock() {
                *t = Instant::now();
            }
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn idle_start(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        self.idle_since.lock().ok().map(|t| *t)
    }

    /// Whether no request has been in flight for `idle`.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        self.idle_start().is_some_and(|t| t.elapsed() >= idle)
    }

    /// When the watchdog should look again: the first request's deadline, else when the
    /// connection would have been idle for `idle`.
    pub(crate) fn wake(&self, first_by: Instant, idle: Duration) -> Instant {
        if self.requests() == 0 {
            return first_by.min(Instant::now() + idle);
        }
        match self.idle_start() {
            Some(t) => t + idle,
            None => Instant::now() + idle,
        }
    }
}

/// What the access-log line of one request says (`host` and `path` are left empty when
/// the access log is off: they are copies).
pub(crate) struct Line {
    pub(crate) span: Span,
    pub(crate) route: Arc<HttpRoute>,
    pub(crate) method: http::Method,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) identity: Option<String>,
    pub(crate) started: Instant,
    /// Request body bytes, counted as they are read.
    pub(crate) received: Arc<AtomicU64>,
}

/// A response body that logs its request when it ends.
pub(crate) struct Logged {
    inner: Body,
    sent: u64,
    line: Option<(Line, Arc<Stats>)>,
}

impl Logged {
    pub(crate) fn new(inner: Body, line: Line, stats: Arc<Stats>) -> Logged {
        Logged {
            inner,
            sent: 0,
            line: Some((line, stats)),
        }
    }

    fn finish(&mut self, complete: bool) {
        let Some((l, stats)) = self.line.take() else {
            return;
        };
        stats.end();
        let seconds = l.started.elapsed().as_secs_f64();
        l.route.observe(l.status, seconds);
        let _enter = l.span.enter();
        info!(
            target: "switchyard::access",
            route = %l.route.name,
            method = %l.method,
            host = %l.host,
            path = %l.path,
            status = l.status,
            bytes_in = l.received.load(Ordering::Relaxed),
            bytes_out = self.sent,
            duration_ms = (seconds * 1000.0) as u64,
            identity = l.identity.as_deref(),
            complete,
            "request"
        );
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            None => self.finish(true),
            Some(Err(_)) => self.finish(false),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose bytes are counted into `received` as the upstream reads them.
pub(crate) struct Received<B> {
    pub(crate) inner: B,
    pub(crate) received: Arc<AtomicU64>,
}

impl<B> HttpBody for Received<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                self.received.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
