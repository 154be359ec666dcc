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
//! Both return a [`DuplexStream`]: what is written to it goes out framed, what arrives
//! unframed comes out of it. EOF on it ends the framed stream's sending side (a close frame
//! for WebSocket, a write shutdown for the ping framing); the peer's end shows up as EOF.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
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

/// The WebSocket configuration for a tunnel: frames and messages bounded by `max_frame`.
pub fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame))
}

/// Bridges a WebSocket to a byte stream; `ping` is the server's keep-alive interval.
pub fn websocket<S>(ws: WebSocketStream<S>, ping: Option<Duration>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = tokio::io::duplex(PIPE_BYTES);
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
pub fn ping_framed<S>(io: S, ping: Option<Duration>, max_frame: usize) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = tokio::io::duplex(PIPE_BYTES);
    let codec = ping_codec(max_frame);
    tokio::spawn(
        async move {
            if let Err(e) = pump_ping(Framed::new(io, codec), pump, ping).await {
                debug!("ping-framed stream ended: {e}");
            }
        }
        .instrument(Span::current()),
    );
    user
}

/// The ping framing's codec: u32 big-endian length, payload, at most `max_frame` bytes.
pub fn ping_codec(max_frame: usize) -> LengthDelimitedCodec {
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

async fn pump_ws<S>(
    mut ws: WebSocketStream<S>,
    pipe: DuplexStream,
    ping: Option<Duration>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_user, mut to_user) = tokio::io::split(pipe);
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut ticker = ticker(ping);
    // Whether we may still send (no close frame sent or received yet).
    let mut sending = true;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                None | Some(Err(tungstenite::Error::ConnectionClosed)) => break,
                Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    close(&mut ws, CloseCode::Size, "frame too large").await;
                    return Err(WireError::Oversize { size, max: max_size });
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(data))) => to_user.write_all(&data).await?,
                Some(Ok(Message::Text(_))) => {
                    close(&mut ws, CloseCode::Unsupported, "binary frames only").await;
                    return Err(WireError::Text);
                }
                // tungstenite queues the pong (or the close reply); flushing sends it.
                Some(Ok(Message::Ping(_))) => ws.flush().await?,
                Some(Ok(Message::Close(_))) => {
                    sending = false;
                    let _ = ws.flush().await;
                    to_user.shutdown().await?;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
            },
            n = from_user.read(&mut buf), if sending => match n? {
                0 => {
                    sending = false;
                    ws.close(None).await?;
                }
                n => ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await?,
            },
            _ = tick(&mut ticker), if sending => ws.send(Message::Ping(Bytes::new())).await?,
        }
    }
    let _ = to_user.shutdown().await;
    Ok(())
}

/// Sends a close frame, best effort: the connection is ending anyway.
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = ws.close(Some(frame)).await;
}

async fn pump_ping<S>(
    mut framed: Framed<S, LengthDelimitedCodec>,
    pipe: DuplexStream,
    ping: Option<Duration>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_user, mut to_user) = tokio::io::split(pipe);
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut ticker = ticker(ping);
    let (mut sending, mut receiving) = (true, true);
    while sending || receiving {
        tokio::select! {
            frame = framed.next(), if receiving => match frame {
                None => {
                    receiving = false;
                    to_user.shutdown().await?;
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(payload)) if payload.is_empty() => {} // a ping
                Some(Ok(payload)) => to_user.write_all(&payload).await?,
            },
            n = from_user.read(&mut buf), if sending => match n? {
                0 => {
                    sending = false;
                    // Flushes and shuts down the framed stream's write side (half-close).
                    SinkExt::<Bytes>::close(&mut framed).await?;
                }
                n => framed.send(Bytes::copy_from_slice(&buf[..n])).await?,
            },
            _ = tick(&mut ticker), if sending => framed.send(Bytes::new()).await?,
        }
    }
    Ok(())
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
        // The user's EOF is a close frame.
        user.shutdown().await.unwrap();
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
