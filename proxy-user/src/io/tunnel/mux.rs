//! The stream multiplexer inside a tunnel: a yamux session driven by one task
//! ([`start`]). Either side opens streams through an [`Opener`]; streams the peer opens
//! arrive on [`Session::inbound`]. yamux keeps no keepalive of its own (the control
//! stream's heartbeats do that), tunes each stream's window itself (256 KiB at first),
//! and bounds the session by [`Limits`]: streams at once and the receive window across
//! all of them, which caps the memory a peer can make this side buffer.

use futures_util::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// One stream of a session, as a tokio byte stream.
pub(crate) type MuxStream = Compat<yamux::Stream>;

pub(crate) use yamux::Mode;

/// yamux's own per-stream starting window: every stream may need this much.
const STREAM_WINDOW: usize = 256 * 1024;

/// Bounds of one session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Streams open at once; the peer's further opens are refused by yamux.
    pub(crate) max_streams: usize,
    /// Receive window across all streams, bytes (raised to 256 KiB × `max_streams` when
    /// lower, as yamux requires).
    pub(crate) window_bytes: usize,
}

impl Limits {
    fn yamux(self) -> yamux::Config {
        let mut c = yamux::Config::default();
        let window = self.window_bytes.max(STREAM_WINDOW * self.max_streams);
        // yamux checks the pair at each step: lift the window, set streams, then bound it.
        c.set_max_connection_receive_window(None);
        c.set_max_num_streams(self.max_streams);
        c.set_max_connection_receive_window(Some(window));
        c
    }
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// Opens streams on a running session; cheap to clone.
#[derive(Clone)]
pub(crate) struct Opener {
    tx: mpsc::Sender<OpenReply>,
}

impl Opener {
    /// A new stream, or an error once the session is gone.
    pub(crate) async fn open(&self) -> io::Result<MuxStream> {
        let gone = || io::Error::new(io::ErrorKind::NotConnected, "tunnel closed");
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| gone())?;
        match rx.await {
            Ok(Ok(stream)) => Ok(stream.compat()),
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
    let mut conn = yamux::Connection::new(io.compat(), limits.yamux(), mode);
    let (open_tx, mut open_rx) = mpsc::channel::<OpenReply>(64);
    let (in_tx, in_rx) = mpsc::channel(inbound_queue.max(1));
    let (close_tx, mut close_rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let mut pending: Option<OpenReply> = None;
        let mut accepting = true;
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
                    Poll::Ready(r) => {
                        let _ = pending.take().expect("a request is pending").send(r);
                    }
                    Poll::Pending => break,
                }
            }
            while accepting {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        // Full or no taker: the stream is dropped, which resets it.
                        let _ = in_tx.try_send(stream.compat());
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        accepting = false;
                        return Poll::Ready(Some(Ok(())));
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
        opener: Opener { tx: open_tx },
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
}
