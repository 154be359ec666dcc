//! Upgrade request and answer tests: the contract headers, the checks of a `101`, refusals,
//! and every prefix of captured answers.

use super::*;

#[test]
fn requests_carry_the_contract_headers() {
    let ws = websocket_request("proxy.example.com:443", "dGhlIHNhbXBsZSBub25jZQ==");
    assert!(ws.starts_with("GET /webapi/connectionupgrade HTTP/1.1\r\n"));
    for h in [
        "Host: proxy.example.com:443\r\n",
        "Upgrade: websocket\r\n",
        "Connection: Upgrade\r\n",
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Protocol: alpn-ping, alpn\r\n",
    ] {
        assert!(ws.contains(h), "{h}");
    }
    assert!(ws.ends_with("\r\n\r\n"));
    let legacy = legacy_request("lb:443");
    for h in [
        "Upgrade: alpn-ping\r\n",
        "X-Teleport-Upgrade: alpn-ping\r\n",
        "Connection: Upgrade\r\n",
    ] {
        assert!(legacy.contains(h), "{h}");
    }
}

#[test]
fn websocket_101_is_checked() {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: alpn-ping\r\n\r\n\x09\x00";
    let head = parse_head(text.as_bytes()).unwrap().unwrap();
    assert_eq!(head.status, 101);
    assert_eq!(head.rest, b"\x09\x00", "bytes past the head are kept");
    assert_eq!(check_websocket(&head, key).unwrap(), "alpn-ping");
    let wrong = text.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA");
    let head = parse_head(wrong.as_bytes()).unwrap().unwrap();
    assert!(check_websocket(&head, key)
        .unwrap_err()
        .contains("Sec-WebSocket-Accept"));
    let other = text.replace("alpn-ping", "chat");
    let head = parse_head(other.as_bytes()).unwrap().unwrap();
    assert!(check_websocket(&head, key).unwrap_err().contains("chat"));
    assert_eq!(parse_head(b"HTTP/1.1 101 Switch").unwrap(), None);
    assert!(parse_head(b"\x15\x03\x03\x00\x02\x02\x28").is_err());
}

#[test]
fn legacy_101_and_refusals() {
    let head = parse_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: alpn-ping\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(check_legacy(&head).unwrap(), "alpn-ping");
    let head = parse_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(check_legacy(&head).is_err());
    let head = parse_head(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<html>\r\n<head><title>404 Not Found</title></head>",
    )
    .unwrap()
    .unwrap();
    let line = body_line(&head.rest);
    assert_eq!(line, "404 Not Found");
    assert!(refusal(&head, &line).starts_with("answered 404 Not Found (no connection upgrade"));
    let head = parse_head(b"HTTP/1.1 400 Bad Request\r\n\r\nsecond X-Forwarded-For\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        refusal(&head, &body_line(&head.rest)),
        "answered 400 Bad Request: second X-Forwarded-For"
    );
}

/// Answers as balancers and the proxy send them: a WebSocket `101`, a legacy `101`, an
/// nginx `404` page, a HAProxy `400`, a `502` with a body length.
const ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: alpn-ping\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: alpn-ping\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 146\r\n\r\n",
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 90\r\ncache-control: no-cache\r\n\r\n",
    b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 20\r\n\r\n",
];

/// Every proper prefix of a complete head is `Ok(None)`; the head is `Ok(Some)` with no
/// rest; the head followed by more bytes gives the same head with exactly those bytes in
/// `rest`, for every prefix of them.
fn every_prefix(head: &[u8], extra: &[u8]) {
    let text = String::from_utf8_lossy(head);
    for n in 0..head.len() {
        assert_eq!(parse_head(&head[..n]), Ok(None), "{n} bytes of {text:?}");
    }
    let whole = parse_head(head).unwrap().expect("a complete head");
    assert!(whole.rest.is_empty(), "{text:?}");
    let longer = [head, extra].concat();
    for n in head.len()..=longer.len() {
        let got = parse_head(&longer[..n]).unwrap().expect("a complete head");
        assert_eq!(
            got.rest,
            &longer[head.len()..n],
            "{n} bytes of {text:?}+extra"
        );
        assert_eq!(
            Head {
                rest: Vec::new(),
                ..got
            },
            whole,
            "{n} bytes of {text:?}+extra"
        );
    }
}

#[test]
fn every_prefix_of_an_answer_needs_more_then_parses() {
    // Bytes after the head: a WebSocket ping frame, the ping framing, an HTML body, and
    // something that looks like another response.
    let extras: &[&[u8]] = &[
        b"\x89\x00",
        b"\0\0\0\0\0\0\0\x02hi",
        b"<html>\r\n<head><title>404 Not Found</title></head>",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ];
    for head in ANSWERS {
        for extra in extras {
            every_prefix(head, extra);
        }
    }
    let head = parse_head(ANSWERS[2]).unwrap().unwrap();
    assert_eq!((head.status, head.reason.as_str()), (404, "Not Found"));
    assert_eq!(head.header("Content-Length"), Some("146"));
}

#[test]
fn not_http_is_an_error_for_every_longer_input() {
    // A TLS alert (a balancer that wants TLS), and a proxy speaking SSH.
    for bytes in [
        &b"\x15\x03\x03\x00\x02\x02\x28"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        let first_error = (0..=bytes.len())
            .find(|&n| parse_head(&bytes[..n]).is_err())
            .expect("refused at some length");
        for n in 0..first_error {
            assert_eq!(parse_head(&bytes[..n]), Ok(None), "{n} bytes of {bytes:?}");
        }
        for n in first_error..=bytes.len() {
            let e = parse_head(&bytes[..n]).unwrap_err();
            assert!(e.starts_with("not an HTTP response"), "{e}");
        }
    }
}
