use super::*;
use http::HeaderMap;

fn map(fields: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (n, v) in fields {
        m.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

fn values(m: &HeaderMap, name: &str) -> Vec<String> {
    m.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
    let mut m = map(&[
        ("connection", "keep-alive, x-secret"),
        ("keep-alive", "timeout=5"),
        ("x-secret", "1"),
        ("transfer-encoding", "chunked"),
        ("te", "gzip, trailers"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic x"),
        ("accept", "*/*"),
    ]);
    strip_hop_by_hop(&mut m, false);
    let left: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, ["accept", "te"], "{m:?}");
    assert_eq!(values(&m, "te"), ["trailers"]);
}

#[test]
fn an_upgrade_passed_through_keeps_upgrade_and_connection() {
    let mut m = map(&[
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "k"),
    ]);
    assert!(wants_upgrade(&m));
    strip_hop_by_hop(&mut m, true);
    assert_eq!(values(&m, "upgrade"), ["websocket"]);
    assert_eq!(values(&m, "connection"), ["upgrade"]);
    assert_eq!(values(&m, "sec-websocket-key"), ["k"]);
    assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    assert!(!wants_upgrade(&map(&[("connection", "upgrade")])));
}

fn forwarded(trust: bool) -> Forwarded<'static> {
    Forwarded {
        client: "192.0.2.7".parse().unwrap(),
        proto: "https",
        host: Some("app.example.com"),
        trust_incoming: trust,
    }
}

#[test]
fn untrusted_forwarded_fields_are_replaced() {
    let mut m = map(&[
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=203.0.113.9"),
    ]);
    set_forwarded(&mut m, &forwarded(false));
    assert_eq!(values(&m, "x-forwarded-for"), ["192.0.2.7"]);
    assert_eq!(values(&m, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&m, "x-forwarded-host"), ["app.example.com"]);
    assert!(values(&m, "forwarded").is_empty());
}

#[test]
fn trusted_forwarded_fields_are_appended_to_and_kept() {
    let mut m = map(&[
        ("x-forwarded-for", "203.0.113.9, 198.51.100.1"),
        ("x-forwarded-for", "198.51.100.2"),
        ("x-forwarded-proto", "http"),
    ]);
    set_forwarded(&mut m, &forwarded(true));
    assert_eq!(
        values(&m, "x-forwarded-for"),
        ["203.0.113.9, 198.51.100.1, 198.51.100.2, 192.0.2.7"]
    );
    assert_eq!(values(&m, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&m, "x-forwarded-host"), ["app.example.com"]);
    let mut fresh = HeaderMap::new();
    set_forwarded(&mut fresh, &forwarded(true));
    assert_eq!(values(&fresh, "x-forwarded-for"), ["192.0.2.7"]);
}

#[test]
fn the_host_of_a_request() {
    let h1 = Request::get("/x")
        .header("host", "Grafana.Example.com:8443")
        .body(())
        .unwrap();
    assert_eq!(authority(&h1).as_deref(), Some("Grafana.Example.com:8443"));
    let h2 = Request::get("https://app.example.com/x").body(()).unwrap();
    assert_eq!(authority(&h2).as_deref(), Some("app.example.com"));
    assert_eq!(authority(&Request::get("/").body(()).unwrap()), None);
    for (a, host) in [
        ("Grafana.Example.com:8443", "grafana.example.com"),
        ("app", "app"),
        ("127.0.0.1:3080", "127.0.0.1"),
        ("[::1]:3080", "[::1]"),
        ("[::1]", "[::1]"),
        ("name:notaport", "name:notaport"),
    ] {
        assert_eq!(host_name(a), host, "{a}");
    }
}
