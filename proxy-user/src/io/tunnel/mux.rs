//! The stream multiplexer inside a tunnel: a yamux session driven by one task
//! ([`start`]). Either side opens streams through an [`Opener`]; streams the peer opens
//! arrive on [`Session::inbound`]. yamux keeps no keepalive of its own (the control
//! stream's heartbeats do that), tunes each stream's window itself (256 KiB at first),
//! and bounds the session by [`Limits`]: streams at once and the receive window across
//! all of them, which caps the memory a peer can make this side buffer.
//!
//! The stream limit is this module's own, counted by permits that travel with each
//! stream this side opens: yamux, asked for a stream over its own limit, tears the whole
//! session down (every stream with it), so yamux's limit is set well above ours and an
//! open over ours fails alone, with [`OVER_LIMIT`].
//!
//! The peer's bytes reach yamux through [`Guard`], which ends the session on a frame that
//! yamux would mishandle (an opening window credit that overflows).

use futures_util::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::guard::Guard;

/// The error kind of an open refused by the stream limit (the session goes on).
pub(crate) const OVER_LIMIT: io::ErrorKind = io::ErrorKind::ResourceBusy;

/// One stream of a session, as a tokio byte stream; one this side opened holds its
/// permit until dropped.
pub(crate) struct MuxStream {
    inner: Compat<yamux::Stream>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) use yamux::Mode;

/// yamux's own per-stream starting window: every stream may need this much.
const STREAM_WINDOW: usize = 256 * 1024;
/// The largest TLS record's plaintext, and a yamux frame header.
const TLS_RECORD: usize = 16 * 1024;
const FRAME_HEADER: usize = 12;
/// The write buffer under yamux: it writes a frame's header and body apart and flushes
/// after each frame, so the buffer turns the two into one TLS record and one `sendto`.
const WRITE_BUFFER: usize = 64 * 1024;

/// Bounds of one session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Streams this side may have open at once (beyond them an open fails with
    /// [`OVER_LIMIT`]); the peer may open as many.
    pub(crate) max_streams: usize,
    /// Receive window across all streams, bytes (raised to what yamux requires for its
    /// stream limit when lower: 256 KiB for each).
    pub(crate) window_bytes: usize,
}

impl Limits {
    /// yamux's own stream limit: ours, and slack for the peer's few (the control stream)
    /// and for streams dropped but not yet collected.
    fn yamux_streams(self) -> usize {
        self.max_streams + 64
    }

    fn yamux(self) -> yamux::Config {
        let mut c = yamux::Config::default();
        let streams = self.yamux_streams();
        // yamux grows a stream's window only out of what the connection window leaves
        // above 256 KiB for every allowed stream: `window_bytes` is that budget.
        let window = STREAM_WINDOW * streams + self.window_bytes;
        // yamux checks the pair at each step: lift the window, set streams, then bound it.
        c.set_max_connection_receive_window(None);
        c.set_max_num_streams(streams);
        c.set_max_connection_receive_window(Some(window));
        // A frame's 12-byte header and its body in one TLS record of at most 16 KiB.
        c.set_split_send_size(TLS_RECORD - FRAME_HEADER);
        c
    }
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// Opens streams on a running session; cheap to clone.
#[derive(Clone)]
pub(crate) struct Opener {
    tx: mpsc::Sender<OpenReply>,
    permits: Arc<Semaphore>,
    max: usize,
}

impl Opener {
    /// A new stream; an error once the session is gone, or [`OVER_LIMIT`] while this side
    /// has `max_streams` open (the session and its streams go on).
    pub(crate) async fn open(&self) -> io::Result<MuxStream> {
        let gone = || io::Error::new(io::ErrorKind::NotConnected, "tunnel closed");
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let m = format!("the tunnel has its limit of {} streams open", self.max);
            return Err(io::Error::new(OVER_LIMIT, m));
        };
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| gone())?;
        match rx.await {
            Ok(Ok(stream)) => Ok(MuxStream {
                inner: stream.compat(),
                _permit: Some(permit),
            }),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(gone()),
        }
    }
}

/// A running session: open streams, take the peer's, and learn when it ends.
pub(crate) struct Session {
    pub(crate) opener: Opener,
    pub(crate) inbound: mpsc::Receiver<MuxStream>,
    /// Ends with the session: `Ok` for a clean close.
    pub(crate) done: tokio::task::JoinHandle<Result<(), yamux::ConnectionError>>,
    close: Option<oneshot::Sender<()>>,
}

impl Session {
    /// Closes the session (streams still open end too).
    pub(crate) fn close(&mut self) {
        if let Some(c) = self.close.take() {
            let _ = c.send(());
        }
    }
}

/// Starts the driver task of a session over `io`. Streams the peer opens beyond
/// `inbound_queue` not yet taken are dropped (yamux resets them).
pub(crate) fn start<T>(io: T, mode: Mode, limits: Limits, inbound_queue: usize) -> Session
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, Guard::new(io));
    let mut conn = yamux::Connection::new(io.compat(), limits.yamux(), mode);
    let (open_tx, mut open_rx) = mpsc::channel::<OpenReply>(64);
    let (in_tx, in_rx) = mpsc::channel(inbound_queue.max(1));
    let (close_tx, mut close_rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let mut pending: Option<OpenReply> = None;
        let mut accepting = true;
        // The error that ended the session, kept for `done` (an open that meets it gets
        // a plain "closed"): it may carry the TLS alert that says why.
        let mut failure: Option<yamux::ConnectionError> = None;
        let run = poll_fn(|cx| {
            if Pin::new(&mut close_rx).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            loop {
                if pending.is_none() {
                    match open_rx.poll_recv(cx) {
                        Poll::Ready(Some(reply)) => pending = Some(reply),
                        _ => break,
                    }
                }
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let _ = pending
                            .take()
                            .expect("a request is pending")
                            .send(Ok(stream));
                    }
                    Poll::Ready(Err(e)) => {
                        let closed = Err(yamux::ConnectionError::Closed);
                        let _ = pending.take().expect("a request is pending").send(closed);
                        failure.get_or_insert(e);
                    }
                    Poll::Pending => break,
                }
            }
            while accepting {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        // Full or no taker: the stream is dropped, which resets it.
                        let stream = MuxStream {
                            inner: stream.compat(),
                            _permit: None,
                        };
                        let _ = in_tx.try_send(stream);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Some(Err(failure.take().unwrap_or(e))))
                    }
                    Poll::Ready(None) => {
                        accepting = false;
                        return Poll::Ready(Some(failure.take().map_or(Ok(()), Err)));
                    }
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        });
        match run.await {
            Some(result) => result,
            // Asked to close: say goodbye to the peer.
            None => poll_fn(|cx| conn.poll_close(cx)).await,
        }
    });
    Session {
        opener: Opener {
            tx: open_tx,
            permits: Arc::new(Semaphore::new(limits.max_streams)),
            max: limits.max_streams,
        },
        inbound: in_rx,
        done,
        close: Some(close_tx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_streams: 64,
        window_bytes: 0,
    };

    #[tokio::test]
    async fn either_side_opens_streams_and_bytes_arrive_in_order() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut client = start(a, Mode::Client, LIMITS, 16);
        let mut server = start(b, Mode::Server, LIMITS, 16);
        let mut up = client.opener.open().await.unwrap();
        up.write_all(b"from the client").await.unwrap();
        up.shutdown().await.unwrap();
        let mut got = server.inbound.recv().await.unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "from the client");

        let mut down = server.opener.open().await.unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let send = payload.clone();
        let writer = tokio::spawn(async move {
            down.write_all(&send).await.unwrap();
            down.shutdown().await.unwrap();
        });
        let mut s = client.inbound.recv().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == payload, "3 MB arrived intact");
        client.close();
        client.done.await.unwrap().unwrap();
        // The server sees the session end.
        assert!(server.inbound.recv().await.is_none());
        server.close();
    }

    #[tokio::test]
    async fn opening_fails_cleanly_once_the_session_is_gone() {
        let (a, b) = tokio::io::duplex(1024);
        let mut client = start(a, Mode::Client, LIMITS, 1);
        drop(b);
        let _ = (&mut client.done).await;
        assert!(client.opener.open().await.is_err());
    }

    #[tokio::test]
    async fn an_open_over_the_limit_fails_alone_and_the_session_goes_on() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let limits = Limits {
            max_streams: 2,
            window_bytes: 0,
        };
        let server = start(a, Mode::Server, limits, 16);
        let mut client = start(b, Mode::Client, LIMITS, 16);
        let mut first = server.opener.open().await.unwrap();
        let second = server.opener.open().await.unwrap();
        let over = server.opener.open().await.err().expect("over the limit");
        assert_eq!(over.kind(), OVER_LIMIT);
        // The open streams still carry bytes.
        first.write_all(b"still up").await.unwrap();
        first.shutdown().await.unwrap();
        let mut got = client.inbound.recv().await.unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "still up");
        // A dropped stream gives its permit back.
        drop(second);
        assert!(server.opener.open().await.is_ok());
    }
}
