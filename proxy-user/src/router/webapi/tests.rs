//! Web API endpoint tests: request-line classification (every prefix), upgrade choice and
//! refusals, X-Forwarded-For, head limits, and the `/webapi/ping` answer.

use super::head::Request;
use super::*;

/// `trust_x_forwarded_for: false`, no trusted proxies.
const OFF: Xff = Xff {
    mode: crate::config::XffMode::Off,
    sender_trusted: false,
};
static NO_PROXIES: crate::config::Nets = crate::config::Nets(Vec::new());

fn req(head: &str) -> Request {
    let bytes = head.replace('\n', "\r\n");
    parse(bytes.as_bytes(), 16 * 1024)
        .expect("parses")
        .expect("complete")
}

const WS: &str = "GET /webapi/connectionupgrade HTTP/1.1\nHost: proxy\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n";

fn with(extra: &str) -> Request {
    if extra.is_empty() {
        req(&format!("{WS}\n"))
    } else {
        req(&format!("{WS}{extra}\n\n"))
    }
}

#[test]
fn target_is_known_from_the_request_line() {
    assert_eq!(target(b"GET /webapi/conn"), None);
    assert_eq!(target(b"GET /webapi/connectionupgrade"), None);
    assert_eq!(
        target(b"GET /webapi/connectionupgrade HTTP/1.1\r\n"),
        Some(Target::Upgrade)
    );
    assert_eq!(
        target(b"GET /webapi/connectionupgrade?x=1 HTTP/1.1"),
        Some(Target::Upgrade)
    );
    assert_eq!(target(b"GET /webapi/ping HTTP/1.1\r\n"), Some(Target::Ping));
    assert_eq!(target(b"GET /webapi/pingx HTTP/1.1"), Some(Target::Other));
    assert_eq!(target(b"POST /x HTTP/1.1"), Some(Target::Other));
    assert_eq!(target(b"PRI * HTTP/2.0\r\n"), Some(Target::Other));
}

/// Every prefix of a request line answers "not yet" or the final answer, and what follows
/// the line (headers, a body, the next request) never changes it.
#[test]
fn every_prefix_of_a_request_line_and_longer_input_agree() {
    let lines: [(&[u8], Target); 5] = [
        (
            b"GET /webapi/connectionupgrade HTTP/1.1\r\n",
            Target::Upgrade,
        ),
        (b"GET /webapi/ping?x=1 HTTP/1.1\r\n", Target::Ping),
        (b"GET /webapi/pingx HTTP/1.1\r\n", Target::Other),
        (b"POST /x HTTP/1.0\r\n", Target::Other),
        (b"PRI * HTTP/2.0\r\n", Target::Other),
    ];
    for (line, expected) in lines {
        for n in 0..line.len() {
            let got = target(&line[..n]);
            assert!(
                got.is_none() || got == Some(expected),
                "{:?}: prefix of {n} bytes gave {got:?}",
                String::from_utf8_lossy(line)
            );
        }
        let mut longer = line.to_vec();
        longer.extend_from_slice(b"Host: proxy\r\n\r\nGET /webapi/ping HTTP/1.1\r\n");
        assert_eq!(target(line), Some(expected));
        assert_eq!(target(&longer), Some(expected));
    }
}

#[test]
fn websocket_accept_key_is_rfc6455() {
    let a = decide(&with("Sec-WebSocket-Protocol: alpn"), OFF, &NO_PROXIES).unwrap();
    assert_eq!(a.kind, Kind::WebSocket);
    let text = String::from_utf8(a.response()).unwrap();
    // The worked example of RFC 6455 §1.3.
    assert!(
        text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{text}"
    );
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(text.contains("Sec-WebSocket-Protocol: alpn\r\n"));
    assert!(text.ends_with("\r\n\r\n"));
}

#[test]
fn preference_is_websocket_then_alpn_ping_then_alpn() {
    let both = decide(
        &with("Sec-WebSocket-Protocol: alpn, alpn-ping"),
        OFF,
        &NO_PROXIES,
    )
    .unwrap();
    assert_eq!(both.kind, Kind::WebSocketPing);
    let two_headers = decide(
        &with("Sec-WebSocket-Protocol: alpn\nSec-WebSocket-Protocol: alpn-ping"),
        OFF,
        &NO_PROXIES,
    )
    .unwrap();
    assert_eq!(two_headers.kind, Kind::WebSocketPing);
    let mixed = req(&format!(
        "{}\n",
        WS.replace("Upgrade: websocket", "Upgrade: alpn, websocket")
    ));
    let mixed = Request {
        headers: [
            mixed.headers,
            vec![("sec-websocket-protocol".into(), "alpn".into())],
        ]
        .concat(),
        ..mixed
    };
    assert_eq!(
        decide(&mixed, OFF, &NO_PROXIES).unwrap().kind,
        Kind::WebSocket
    );
    let legacy = req("GET /webapi/connectionupgrade HTTP/1.1\nUpgrade: alpn\nX-Teleport-Upgrade: alpn-ping\nConnection: Upgrade\n\n");
    let a = decide(&legacy, OFF, &NO_PROXIES).unwrap();
    assert_eq!(a.kind, Kind::AlpnPing);
    let text = String::from_utf8(a.response()).unwrap();
    assert!(text.contains("Upgrade: alpn-ping\r\n"), "{text}");
    let plain = req("GET /webapi/connectionupgrade HTTP/1.1\nUpgrade: alpn\n\n");
    assert_eq!(decide(&plain, OFF, &NO_PROXIES).unwrap().kind, Kind::Alpn);
    // A balancer that drops Upgrade but keeps the custom header.
    let custom = req("GET /webapi/connectionupgrade HTTP/1.1\nX-Teleport-Upgrade: alpn\n\n");
    assert_eq!(decide(&custom, OFF, &NO_PROXIES).unwrap().kind, Kind::Alpn);
}

#[test]
fn bad_upgrades_are_refused_with_a_reason() {
    let cases: &[(&str, u16, &str)] = &[
        (
            "GET /webapi/connectionupgrade HTTP/1.1\nUpgrade: foo\n\n",
            400,
            "unsupported upgrade type",
        ),
        (
            "GET /webapi/connectionupgrade HTTP/1.1\nHost: x\n\n",
            400,
            "missing Upgrade",
        ),
        (
            "POST /webapi/connectionupgrade HTTP/1.1\nUpgrade: alpn\n\n",
            405,
            "takes GET",
        ),
    ];
    for (head, status, reason) in cases {
        let e = decide(&req(head), OFF, &NO_PROXIES).unwrap_err();
        assert_eq!(e.status, *status, "{head}");
        assert!(e.reason.contains(reason), "{head}: {e}");
    }
    let bad_key = req(&format!(
        "{}Sec-WebSocket-Protocol: alpn\n\n",
        WS.replace("dGhlIHNhbXBsZSBub25jZQ==", "not-base64!")
    ));
    assert!(decide(&bad_key, OFF, &NO_PROXIES)
        .unwrap_err()
        .reason
        .contains("base64 of 16 bytes"));
    let short_key = req(&format!(
        "{}Sec-WebSocket-Protocol: alpn\n\n",
        WS.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")
    ));
    assert_eq!(
        decide(&short_key, OFF, &NO_PROXIES).unwrap_err().status,
        400
    );
    let no_protocol = with("");
    assert!(decide(&no_protocol, OFF, &NO_PROXIES)
        .unwrap_err()
        .reason
        .contains("alpn-ping or alpn"));
    let old_version = req(&format!(
        "{}Sec-WebSocket-Protocol: alpn\n\n",
        WS.replace("Version: 13", "Version: 8")
    ));
    assert_eq!(
        decide(&old_version, OFF, &NO_PROXIES).unwrap_err().status,
        400
    );
    let no_connection = req(&format!(
        "{}Sec-WebSocket-Protocol: alpn\n\n",
        WS.replace("Connection: Upgrade\n", "")
    ));
    assert_eq!(
        decide(&no_connection, OFF, &NO_PROXIES).unwrap_err().status,
        400
    );
}

#[test]
fn forwarded_for_is_judged_under_the_connection_rule() {
    let one = with("Sec-WebSocket-Protocol: alpn\nX-Forwarded-For: 203.0.113.7");
    assert_eq!(
        decide(&one, OFF, &NO_PROXIES).unwrap().forwarded_for,
        Forwarded::None
    );
    let trusting = Xff {
        mode: crate::config::XffMode::Single,
        sender_trusted: true,
    };
    let got = decide(&one, trusting, &NO_PROXIES).unwrap().forwarded_for;
    assert!(
        matches!(got, Forwarded::Believed(a) if a.to_string() == "203.0.113.7"),
        "{got:?}"
    );
    let list = with("Sec-WebSocket-Protocol: alpn\nX-Forwarded-For: 1.2.3.4, 203.0.113.7");
    assert_eq!(
        decide(&list, trusting, &NO_PROXIES).unwrap_err().status,
        400
    );
    let untrusted = Xff {
        sender_trusted: false,
        ..trusting
    };
    assert!(decide(&list, untrusted, &NO_PROXIES).is_ok());
}

#[test]
fn heads_are_bounded_and_checked() {
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nHost: x\r\n", 1024),
        Ok(None)
    ));
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nHost: x\r\n", 10),
        Err(HeadError::TooLarge(10))
    ));
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 1024),
        Err(HeadError::Malformed(_))
    ));
    let r = Refused::from(HeadError::TooLarge(10));
    assert_eq!(r.status, 431);
    let text = String::from_utf8(r.response()).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text}"
    );
    assert!(text.contains("Connection: close"));
}

#[test]
fn ping_reports_tls_routing_and_listeners() {
    let yaml = "proxy_service:\n  web_listen_addr: 127.0.0.1:3080\n  public_addr: proxy.example.com:443\n  listen_addr: 127.0.0.1:3023\n";
    let config: crate::config::Config = serde_yaml_ng::from_str(yaml).unwrap();
    let body = ping_body(&config);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["proxy"]["tls_routing_enabled"], true);
    assert_eq!(v["proxy"]["web_listen_addr"], "127.0.0.1:3080");
    assert_eq!(v["proxy"]["public_addr"][0], "proxy.example.com:443");
    assert_eq!(
        v["proxy"]["legacy_listeners"]["listen_addr"],
        "127.0.0.1:3023"
    );
    let separate = format!("auth_service:\n  proxy_listener_mode: separate\n{yaml}");
    let config: crate::config::Config = serde_yaml_ng::from_str(&separate).unwrap();
    let text = ping_body(&config);
    assert!(text.contains("\"tls_routing_enabled\":false"), "{text}");
}
