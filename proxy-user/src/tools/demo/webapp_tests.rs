//! The web application over an in-memory connection: every endpoint's answer, the
//! WebSocket echo with a real client handshake, and no h2c.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A client end connected to the app named `name`.
fn connect(name: &str) -> DuplexStream {
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(server, name.to_owned()));
    client
}

/// Writes `request` and reads until the app closes (requests say `Connection: close`).
async fn exchange_bytes(name: &str, request: &[u8]) -> (String, Vec<u8>) {
    let mut client = connect(name);
    client.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).await.unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let body = raw.split_off(end);
    (String::from_utf8(raw).unwrap(), body)
}

async fn exchange(name: &str, request: &str) -> (String, String) {
    let (head, body) = exchange_bytes(name, request.as_bytes()).await;
    (head, String::from_utf8(body).unwrap())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.example.test\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn the_page_names_the_app_escaped_and_starts_pending() {
    let (head, body) = exchange("<b>&'\"", &get("/", "")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(body.contains("<title>&lt;b&gt;&amp;&#39;&quot; (Switchyard demo web app)</title>"));
    assert!(!body.contains("<b>&"), "{body}");
    for id in [
        "<p id=\"status\">pending",
        "<pre id=\"fetch\">pending",
        "<pre id=\"ws\">pending",
    ] {
        assert!(body.contains(id), "{id} in {body}");
    }
    assert!(body.contains("fetch(\"/api/hello\")") && body.contains("\"/ws\""));
}

#[tokio::test]
async fn hello_reports_host_and_forwarded_headers_and_null_for_absent_ones() {
    let (_, body) = exchange("grafana", &get("/api/hello", "")).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let expected = serde_json::json!({
        "app": "grafana", "host": "app.example.test",
        "x_forwarded_for": null, "x_forwarded_proto": null, "x_forwarded_host": null,
    });
    assert_eq!(json, expected);

    let forwarded = "X-Forwarded-For: 10.1.2.3\r\nx-forwarded-for: 10.4.5.6\r\n\
                     X-Forwarded-Proto: https\r\nX-Forwarded-Host: proxy.example.test\r\n";
    let (head, body) = exchange("grafana", &get("/api/hello", forwarded)).await;
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["x_forwarded_for"], "10.1.2.3, 10.4.5.6");
    assert_eq!(json["x_forwarded_proto"], "https");
    assert_eq!(json["x_forwarded_host"], "proxy.example.test");
}

#[tokio::test]
async fn headers_lists_every_request_header() {
    let (_, body) = exchange("app", &get("/headers", "X-Demo: one\r\nX-Demo: two\r\n")).await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines,
        [
            "host: app.example.test",
            "x-demo: one",
            "x-demo: two",
            "connection: close"
        ]
    );
}

#[tokio::test]
async fn upload_counts_a_chunked_body() {
    let request = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let (head, body) = exchange("app", request).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "received=11\n");
}

#[tokio::test]
async fn download_streams_the_pattern_with_its_length() {
    let len = 3 * CHUNK + 1000;
    let (head, body) =
        exchange_bytes("app", get(&format!("/download?bytes={len}"), "").as_bytes()).await;
    assert!(
        head.contains(&format!("content-length: {len}\r\n")),
        "{head}"
    );
    assert_eq!(body.len(), len);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b as usize == i % PERIOD));

    let (head, body) = exchange("app", &get("/download?bytes=0", "")).await;
    assert!(
        head.contains("content-length: 0\r\n") && body.is_empty(),
        "{head}"
    );
    let (head, body) = exchange("app", &get("/download?bytes=lots", "")).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_eq!(body, "usage: /download?bytes=N\n");
}

#[tokio::test]
async fn the_websocket_echoes_text_and_binary_messages() {
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, answer) =
        tokio_tungstenite::client_async("ws://app.example.test/ws", connect("app"))
            .await
            .expect("handshake, accept key checked by tungstenite");
    assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
    for message in [
        Message::text("hello over websocket"),
        Message::binary(vec![0u8, 1, 255]),
    ] {
        ws.send(message.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), message);
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn ws_without_the_upgrade_headers_is_refused() {
    let (head, body) = exchange("app", &get("/ws", "")).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(body.contains("Upgrade: websocket expected"), "{body}");
    let upgrade = "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (head, _) = exchange("app", &get("/ws", upgrade)).await;
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(head.contains("sec-websocket-version: 13\r\n"), "{head}");
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let (head, _) = exchange("app", &get("/nope", "")).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let (head, _) = exchange("app", &get("/upload", "")).await;
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
}

/// The app stands in for an HTTP/1.1-only application: an h2 prior-knowledge preface
/// gets no HTTP/2 answer (no SETTINGS frame), only HTTP/1.1 or a closed connection.
#[tokio::test]
async fn h2_prior_knowledge_is_not_spoken() {
    let mut client = connect("app");
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).await.unwrap();
    assert!(raw.is_empty() || raw.starts_with(b"HTTP/1.1 "), "{raw:?}");
}
