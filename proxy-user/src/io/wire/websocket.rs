//! Binary WebSocket messages as a byte stream: the `websocket` connection upgrade through a
//! layer-7 balancer. The server side sends a ping frame every `ping` interval
//! (`alpn-ping`), so an idle tunnel survives the balancer's idle timeout. Frames and
//! messages are bounded; an oversize one is answered with close code 1009 (`Size`), text
//! messages with 1003 (`Unsupported`). Masking rules, fragment reassembly (bounded by the
//! message limit), ping/pong and the close handshake are tungstenite's.

use super::{pipe, tick, ticker, PumpEnd, WireError, WireStream, CHUNK_BYTES};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, error::CapacityError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument, Span};

/// How long a closing WebSocket waits to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The WebSocket configuration for a tunnel: frames and messages bounded by `max_frame`.
pub(crate) fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame))
}

/// Bridges a WebSocket to a byte stream; `ping` is the server's keep-alive interval.
pub(crate) fn websocket<S>(ws: WebSocketStream<S>, ping: Option<Duration>) -> WireStream
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

/// Runs one WebSocket pump: binary messages to the user, the user's bytes as binary
/// messages, pings every `ping`, the close handshake when the user is gone.
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio_tungstenite::tungstenite::protocol::Role;

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
