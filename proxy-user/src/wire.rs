//! Framings that carry one byte stream inside another (DESIGN.md §4), each turned back into
//! a plain byte stream by a pump task, so the rest of the proxy (and the client's local
//! proxies) never see frames:
//!
//! - [`websocket`]: binary WebSocket messages, the `websocket` connection upgrade through a
//!   layer-7 balancer. The server side sends a ping frame every `ping` interval
//!   (`alpn-ping`), so an idle tunnel survives the balancer's idle timeout. Frames and
//!   messages are bounded; an oversize one is answered with close code 1009 (`Size`),
//!   text messages with 1003 (`Unsupported`). Masking rules, fragment reassembly (bounded by
//!   the message limit), ping/pong and the close handshake are tungstenite's.
//! - [`ping_framed`]: the ping framing, a big-endian `u32` length then the payload, where a
//!   zero length is a ping. Used by the legacy `alpn-ping` upgrade and inside TLS by the
//!   `-ping` ALPNs. The length-delimited codec is tokio-util's.
//!
//! Both return a [`WireStream`]: what is written to it goes out framed, what arrives
//! unframed comes out of it; the peer's end shows up as EOF. Ending it: the ping framing
//! has a half-close, so a write shutdown on the stream shuts down the framed stream's
//! sending side. WebSocket has none (a close frame ends both directions), so a write
//! shutdown sends nothing (the inner TLS `close_notify` already says it), and the close
//! frame goes out when the [`WireStream`] is dropped.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, error::CapacityError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::{debug, Instrument, Span};

/// Capacity of the in-process pipe between a pump and its user.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest chunk read from the user and sent as one frame.
const CHUNK_BYTES: usize = 16 * 1024;
/// How long a closing WebSocket waits to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How a framed stream ended abnormally (logged at debug by the pump; the user of the
/// stream sees EOF or a broken pipe).
#[derive(Debug, Error)]
pub enum WireError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("frame of {size} bytes is larger than the limit of {max} bytes")]
    Oversize { size: usize, max: usize },
    #[error("websocket text message refused: the tunnel carries binary frames only")]
    Text,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// The user's end of a pump: a byte stream; dropping it tells the pump the user is gone.
#[derive(Debug)]
pub struct WireStream {
    io: DuplexStream,
    /// Dropped with the stream: the pump's `gone` receiver then resolves.
    _alive: oneshot::Sender<()>,
}

/// The pump's end: the pipe, and a signal that resolves when the user dropped its end.
struct PumpEnd {
    pipe: DuplexStream,
    gone: oneshot::Receiver<()>,
}

fn pipe() -> (WireStream, PumpEnd) {
    let (user, pipe) = tokio::io::duplex(PIPE_BYTES);
    let (alive, gone) = oneshot::channel();
    (
        WireStream {
            io: user,
            _alive: alive,
        },
        PumpEnd { pipe, gone },
    )
}

impl AsyncRead for WireStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WireStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The WebSocket configuration for a tunnel: frames and messages bounded by `max_frame`.
pub fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame))
}

/// Bridges a WebSocket to a byte stream; `ping` is the server's keep-alive interval.
pub fn websocket<S>(ws: WebSocketStream<S>, ping: Option<Duration>) -> WireStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = pipe();
    tokio::spawn(
        async move {
            if let Err(e) = pump_ws(ws, pump, ping).await {
                debug!("websocket tunnel ended: {e}");
            }
        }
        .instrument(Span::current()),
    );
    user
}

/// Bridges a ping-framed stream to a byte stream; `ping` is the keep-alive interval of the
/// side that sends pings (the server), `max_frame` bounds incoming frames.
pub fn ping_framed<S>(io: S, ping: Option<Duration>, max_frame: usize) -> WireStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = pipe();
    let codec = ping_codec(max_frame);
    tokio::spawn(
        async move {
            if let Err(e) = pump_ping(Framed::new(io, codec), pump.pipe, ping).await {
                debug!("ping-framed stream ended: {e}");
            }
        }
        .instrument(Span::current()),
    );
    user
}

/// A stream without framing (the legacy `alpn` upgrade) behind the same type.
pub fn raw<S>(io: S) -> WireStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = pipe();
    tokio::spawn(
        async move {
            let (mut pipe, mut io) = (pump.pipe, io);
            if let Err(e) = tokio::io::copy_bidirectional(&mut pipe, &mut io).await {
                debug!("tunnel ended: {e}");
            }
        }
        .instrument(Span::current()),
    );
    user
}

/// The ping framing's codec: u32 big-endian length, payload, at most `max_frame` bytes.
fn ping_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

fn ticker(every: Option<Duration>) -> Option<Interval> {
    every.filter(|d| !d.is_zero()).map(|d| {
        let mut t = interval_at(Instant::now() + d, d);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    })
}

async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

// Each pump runs its receiving and its sending half concurrently: a send blocked by a
// slow peer must never stop the receiving half, or two pumps facing each other through a
// balancer's buffers could each wait for the other to read (a deadlock under bulk load).

async fn pump_ws<S>(
    ws: WebSocketStream<S>,
    pump: PumpEnd,
    ping: Option<Duration>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let PumpEnd { pipe, gone } = pump;
    let (mut from_user, mut to_user) = tokio::io::split(pipe);
    let (mut sink, mut stream) = ws.split();
    let receive = async {
        loop {
            match stream.next().await {
                None | Some(Err(tungstenite::Error::ConnectionClosed)) => break,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(data))) => to_user.write_all(&data).await?,
                Some(Ok(Message::Text(_))) => return Err(WireError::Text),
                // The close reply, like pongs, is queued by tungstenite and sent with the
                // next read or write.
                Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
        to_user.shutdown().await?;
        // Done receiving; the pump now ends with the sending half (when the user leaves).
        std::future::pending::<Result<(), WireError>>().await
    };
    // Sends until the user drops its end (its EOF alone is no reason to close: the
    // other direction may still be flowing).
    let send = async {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut ticker = ticker(ping);
        let mut reading = true;
        let mut gone = gone;
        loop {
            tokio::select! {
                n = from_user.read(&mut buf), if reading => match n? {
                    0 => reading = false,
                    n => sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await?,
                },
                _ = tick(&mut ticker) => sink.send(Message::Ping(Bytes::new())).await?,
                // After EOF only: what the user wrote before leaving (a TLS alert, say)
                // goes out first.
                _ = &mut gone, if !reading => break,
            }
        }
        Ok(())
    };
    // The pump ends when the user is gone, or at the first error of either half.
    let result = tokio::select! {
        r = receive => r,
        r = send => r,
    };
    let frame = match &result {
        Ok(()) => None,
        Err(WireError::WebSocket(tungstenite::Error::Capacity(
            CapacityError::MessageTooLong { size, max_size },
        ))) => {
            let (size, max) = (*size, *max_size);
            Some((CloseCode::Size, WireError::Oversize { size, max }))
        }
        Err(WireError::Text) => Some((CloseCode::Unsupported, WireError::Text)),
        Err(_) => return result,
    };
    match frame {
        // The user is gone: the closing handshake (a no-op if the peer closed first).
        None => {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
            Ok(())
        }
        Some((code, error)) => {
            let reason = match code {
                CloseCode::Size => "frame too large",
                _ => "binary frames only",
            };
            let close = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(close))).await;
            Err(error)
        }
    }
}

async fn pump_ping<S>(
    framed: Framed<S, LengthDelimitedCodec>,
    pipe: DuplexStream,
    ping: Option<Duration>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_user, mut to_user) = tokio::io::split(pipe);
    let (mut sink, mut stream) = framed.split::<Bytes>();
    let receive = async {
        while let Some(frame) = stream.next().await {
            let payload = frame?;
            // A zero-length frame is a ping.
            if !payload.is_empty() {
                to_user.write_all(&payload).await?;
            }
        }
        to_user.shutdown().await?;
        Ok(())
    };
    let send = async {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut ticker = ticker(ping);
        loop {
            tokio::select! {
                n = from_user.read(&mut buf) => match n? {
                    // Flushes and shuts down the framed stream's write side (half-close).
                    0 => break sink.close().await.map_err(WireError::from),
                    n => sink.send(Bytes::copy_from_slice(&buf[..n])).await?,
                },
                _ = tick(&mut ticker) => sink.send(Bytes::new()).await?,
            }
        }
    };
    match crate::relay::both_directions(receive, send).await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn ping_framing_round_trip_skips_pings_and_half_closes() {
        let (a, mut raw) = duplex(1 << 16);
        let mut user = ping_framed(a, Some(Duration::from_millis(20)), 1024);
        user.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 9];
        raw.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\0\0\0\x05hello");
        // A ping arrives within the interval: four zero bytes.
        let mut ping = [1u8; 4];
        raw.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping, [0, 0, 0, 0]);
        // Incoming: a ping, then a frame; the user sees only the payload.
        raw.write_all(b"\0\0\0\0\0\0\0\x03abc").await.unwrap();
        let mut three = [0u8; 3];
        user.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"abc");
        // The peer's EOF is the user's EOF, and the user can still send.
        raw.shutdown().await.unwrap();
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        user.write_all(b"z").await.unwrap();
        user.shutdown().await.unwrap();
        let mut tail = Vec::new();
        raw.read_to_end(&mut tail).await.unwrap();
        // Possibly pings before the frame; the last frame is ours.
        assert!(tail.ends_with(b"\0\0\0\x01z"), "{tail:?}");
        assert!(tail[..tail.len() - 5].chunks(4).all(|c| c == [0, 0, 0, 0]));
    }

    #[tokio::test]
    async fn ping_framing_refuses_oversize_frames() {
        let (a, mut raw) = duplex(1 << 16);
        let mut user = ping_framed(a, None, 8);
        raw.write_all(b"\0\0\0\x09123456789").await.unwrap();
        let mut rest = Vec::new();
        // The pump ends: the user's stream closes without delivering the frame.
        let _ = user.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn websocket_carries_bytes_both_ways_and_pings() {
        let (a, b) = duplex(1 << 16);
        let server =
            WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config(1 << 16))).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let mut user = websocket(server, Some(Duration::from_millis(20)));
        client
            .send(Message::Binary(Bytes::from_static(b"up")))
            .await
            .unwrap();
        let mut two = [0u8; 2];
        user.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"up");
        user.write_all(b"down").await.unwrap();
        let mut saw_ping = false;
        let mut data = Vec::new();
        while data.len() < 4 || !saw_ping {
            match client.next().await.unwrap().unwrap() {
                Message::Ping(_) => saw_ping = true,
                Message::Binary(b) => data.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(data, b"down");
        // A write shutdown sends nothing (WebSocket has no half-close): data still flows
        // to the user afterwards.
        user.shutdown().await.unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"late")))
            .await
            .unwrap();
        let mut late = [0u8; 4];
        user.read_exact(&mut late).await.unwrap();
        assert_eq!(&late, b"late");
        // Dropping the stream is the close frame.
        drop(user);
        loop {
            match client.next().await {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn websocket_oversize_message_gets_close_1009() {
        let (a, b) = duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config(16))).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let _user = websocket(server, None);
        client
            .send(Message::Binary(Bytes::from(vec![7u8; 64])))
            .await
            .unwrap();
        match client.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Size),
            other => panic!("expected close 1009, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn websocket_refuses_unmasked_client_frames() {
        let (a, mut raw) = duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config(1024))).await;
        let mut user = websocket(server, None);
        // FIN + binary, no mask bit, 3 bytes.
        raw.write_all(&[0x82, 0x03, b'a', b'b', b'c'])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = user.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "unmasked frame must not be delivered");
    }
}
