//! The upgrade over in-memory streams: bytes after the head replayed into the framing,
//! bulk echo both ways through both upgrades, a refusal named.

use super::*;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

#[tokio::test]
async fn legacy_upgrade_replays_bytes_after_the_head_into_the_ping_framing() {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let up = tokio::spawn(upgrade(client, UpgradeMode::Legacy, "lb:443"));
    let mut req = vec![0u8; 4096];
    let n = server.read(&mut req).await.unwrap();
    assert!(String::from_utf8_lossy(&req[..n]).contains("X-Teleport-Upgrade: alpn-ping"));
    // The head, a ping and a frame in one write.
    server
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: alpn-ping\r\n\r\n\0\0\0\0\0\0\0\x02hi",
        )
        .await
        .unwrap();
    let mut t = up.await.unwrap().unwrap();
    assert_eq!(t.protocol, "alpn-ping");
    let mut two = [0u8; 2];
    t.stream.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"hi");
    t.stream.write_all(b"yo").await.unwrap();
    let mut framed = [0u8; 6];
    server.read_exact(&mut framed).await.unwrap();
    assert_eq!(&framed, b"\0\0\0\x02yo");
}

/// A server side made of the same pieces as the proxy's: answers the upgrade, then
/// echoes what comes through the framing.
async fn echo_server(mut s: tokio::io::DuplexStream, mode: UpgradeMode) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = s.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let rest = buf[head_end..].to_vec();
    let inner = match mode {
        UpgradeMode::Websocket => {
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: alpn-ping\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            let ws = WebSocketStream::from_raw_socket(
                Prefixed::new(rest, s),
                Role::Server,
                Some(wire::ws_config(MAX_FRAME)),
            )
            .await;
            wire::websocket(ws, Some(Duration::from_millis(5)))
        }
        UpgradeMode::Legacy => {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: alpn-ping\r\n\r\n")
                .await
                .unwrap();
            wire::ping_framed(
                Prefixed::new(rest, s),
                Some(Duration::from_millis(5)),
                MAX_FRAME,
            )
        }
    };
    let (mut r, mut w) = tokio::io::split(inner);
    tokio::io::copy(&mut r, &mut w).await.unwrap();
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn bulk_echo_both_ways_at_once_through_both_upgrades() {
    for mode in [UpgradeMode::Websocket, UpgradeMode::Legacy] {
        let (client, server) = tokio::io::duplex(16 * 1024);
        tokio::spawn(echo_server(server, mode));
        let tunnel = upgrade(client, mode, "lb:443").await.unwrap();
        let (mut r, mut w) = tokio::io::split(tunnel.stream);
        let data: Vec<u8> = (0..(2usize << 20)).map(|i| (i * 7) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
            w
        });
        // Every byte back in order (the end of the tunnel is the framing's business).
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut back))
            .await
            .unwrap_or_else(|_| panic!("{mode}: stalled"))
            .unwrap();
        assert!(back == data, "{mode}: echoed bytes differ");
        drop(writer.await.unwrap());
    }
}

#[tokio::test]
async fn refused_upgrade_names_status_and_body() {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let up = tokio::spawn(upgrade(client, UpgradeMode::Websocket, "lb:443"));
    let mut req = vec![0u8; 4096];
    let _ = server.read(&mut req).await.unwrap();
    server
        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 20\r\n\r\nupstream unreachable")
        .await
        .unwrap();
    let e = up.await.unwrap().unwrap_err();
    assert_eq!(e, "answered 502 Bad Gateway: upstream unreachable");
}
