//! One connection upgrade on an open stream (the outer TLS to the balancer): write the
//! request, read the answer's head ([`super::request::parse_head`]), and on `101` return
//! the inner byte stream in the framing the server chose: WebSocket binary messages,
//! the `alpn-ping` `u32` framing, or raw bytes ([`crate::io::wire`]). A refusal is named
//! with its status and the first line of its body.

use super::request::{
    body_line, check_legacy, check_websocket, legacy_request, parse_head, refusal,
    websocket_request, Head, UpgradeMode,
};
use crate::client::transport::Transport;
use crate::io::wire;
use crate::io::Prefixed;
use crate::protocol::UPGRADE_ALPN_PING as PING;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Largest WebSocket message / ping frame accepted from the server (it sends at most
/// 16 KiB per frame).
const MAX_FRAME: usize = 1 << 20;
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How long to wait for the body of a refusal, for its first line.
const BODY_WAIT: Duration = Duration::from_millis(300);

/// An open tunnel and what the server chose.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) stream: wire::WireStream,
    /// `alpn-ping` or `alpn` (the WebSocket subprotocol, or the legacy `Upgrade` value).
    pub(crate) protocol: String,
    /// From writing the request to reading the `101` head.
    pub(crate) took: Duration,
}

impl Tunnel {
    pub(crate) fn transport(self) -> Transport {
        Transport::Tunnel(self.stream)
    }
}

/// Sends the upgrade request on `stream` (the outer TLS) and, on `101`, returns the inner
/// byte stream; `authority` is the `Host` header.
pub(crate) async fn upgrade<S>(
    mut stream: S,
    mode: UpgradeMode,
    authority: &str,
) -> Result<Tunnel, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let key = generate_key();
    let request = match mode {
        UpgradeMode::Websocket => websocket_request(authority, &key),
        UpgradeMode::Legacy => legacy_request(authority),
    };
    let start = Instant::now();
    let io = |what: &str, e: io::Error| format!("{what}: {e}");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io("sending the upgrade request", e))?;
    stream
        .flush()
        .await
        .map_err(|e| io("sending the upgrade request", e))?;
    let head = read_head(&mut stream).await?;
    let took = start.elapsed();
    if head.status != 101 {
        let line = first_body_line(&head, &mut stream).await;
        return Err(refusal(&head, &line));
    }
    let protocol = match mode {
        UpgradeMode::Websocket => check_websocket(&head, &key)?,
        UpgradeMode::Legacy => check_legacy(&head)?,
    };
    let rest = Prefixed::new(head.rest, stream);
    let tunnel = match (mode, protocol.as_str()) {
        (UpgradeMode::Websocket, _) => {
            let ws = WebSocketStream::from_raw_socket(
                rest,
                Role::Client,
                Some(wire::ws_config(MAX_FRAME)),
            )
            .await;
            wire::websocket(ws, None)
        }
        (UpgradeMode::Legacy, PING) => wire::ping_framed(rest, None, MAX_FRAME),
        (UpgradeMode::Legacy, _) => wire::raw(rest),
    };
    Ok(Tunnel {
        stream: tunnel,
        protocol,
        took,
    })
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Head, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the upgrade response: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "the server closed the connection without answering the upgrade request".into()
            } else {
                format!(
                    "the server closed the connection in the middle of the response head: {:?}",
                    String::from_utf8_lossy(&buf[..buf.len().min(80)])
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
    }
}

/// The first non-empty line of a refusal's body, read briefly (bounded).
async fn first_body_line<S: AsyncRead + Unpin>(head: &Head, stream: &mut S) -> String {
    let mut body = head.rest.clone();
    let want = head
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(512)
        .min(512);
    let _ = tokio::time::timeout(BODY_WAIT, async {
        let mut chunk = [0u8; 512];
        while body.len() < want && !body.contains(&b'\n') {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    body_line(&body)
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
