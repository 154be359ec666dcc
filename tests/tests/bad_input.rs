//! Raw TCP at the proxy port: garbage, truncated or repeated PROXY headers, headers the
//! config forbids, silent clients and malformed ClientHellos are all closed, promptly
//! or at `limits.handshake_timeout`, while normal traffic keeps working.

use std::io::Write;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use switchyard_tests::raw::{connect, exchange, expect_closed, http_request, proxy_v1, proxy_v2};
use switchyard_tests::{curl, wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki};

/// A proxy whose `web` upstream is a demo HTTP server named `web`.
struct Setup {
    _pki: TestPki,
    _web: DemoUpstream,
    proxy: Switchyard,
}

fn setup(handshake_timeout: &str, proxy_protocol: Option<&str>) -> Setup {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let mut config = ProxyConfig::default().upstream("web", web.addr);
    config.handshake_timeout = handshake_timeout.into();
    config.proxy_protocol = proxy_protocol.map(String::from);
    let proxy = Switchyard::start(&pki, &config).unwrap();
    Setup {
        _pki: pki,
        _web: web,
        proxy,
    }
}

fn src() -> SocketAddrV4 {
    "192.0.2.10:40000".parse().unwrap()
}

fn dst() -> SocketAddrV4 {
    "127.0.0.1:3080".parse().unwrap()
}

/// Sends `bytes` and asserts the proxy closes within 1.5 s (the handshake timeout in
/// these tests is 10 s, so this is a decision, not a timeout) without an HTTP answer.
fn assert_closed_promptly(s: &Setup, bytes: &[u8]) {
    let mut stream = connect(s.proxy.web).unwrap();
    stream.write_all(bytes).unwrap();
    let (took, got) = expect_closed(&mut stream, Duration::from_millis(1500))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("upstream=web"), "reached upstream: {text}");
    eprintln!("closed after {took:?}");
}

#[test]
fn garbage_is_closed_promptly_and_counted() {
    let s = setup("10s", None);
    assert_closed_promptly(&s, b"ZZZZ this is no protocol at all\r\n\r\n");
    // The count may land just after the close the client saw: poll briefly.
    let counted = wait_until(Duration::from_secs(2), "outcome=\"unknown\"", || {
        let n = s.proxy.metric(
            "switchyard_detect_outcomes_total",
            &[("outcome", "unknown")],
        )?;
        Ok((n >= 1.0).then_some(()))
    });
    assert!(
        counted.is_ok(),
        "{:?}\n{}",
        counted,
        s.proxy.metrics().unwrap()
    );
}

#[test]
fn malformed_client_hello_is_closed_promptly() {
    let s = setup("10s", None);
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x30];
    hello.extend((0u8..0x30).map(|i| i.wrapping_mul(37) ^ 0xA5));
    assert_closed_promptly(&s, &hello);
}

#[test]
fn truncated_proxy_v1_line_is_closed_at_handshake_timeout() {
    let s = setup("2s", None);
    let mut stream = connect(s.proxy.web).unwrap();
    stream
        .write_all(b"PROXY TCP4 192.0.2.10 127.0.0.1 4000")
        .unwrap();
    let (took, _) = expect_closed(&mut stream, Duration::from_secs(6)).unwrap();
    assert!(
        took >= Duration::from_millis(1500),
        "closed early: {took:?}"
    );
}

#[test]
fn proxy_v2_header_rejected_when_proxy_protocol_off() {
    let s = setup("10s", Some("off"));
    let mut bytes = proxy_v2(src(), dst());
    bytes.extend(http_request("/v2"));
    assert_closed_promptly(&s, &bytes);
    // Control: the same request without a header is served.
    let got = exchange(s.proxy.web, &http_request("/plain"), Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("upstream=web path=/plain"), "{text}");
}

#[test]
fn proxy_protocol_on_requires_a_header() {
    let s = setup("10s", Some("on"));
    assert_closed_promptly(&s, &http_request("/bare"));
    for header in [proxy_v1(src(), dst()), proxy_v2(src(), dst())] {
        let mut bytes = header;
        bytes.extend(http_request("/with-header"));
        let got = exchange(s.proxy.web, &bytes, Duration::from_secs(5)).unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("upstream=web path=/with-header"), "{text}");
    }
}

#[test]
fn unset_proxy_protocol_allows_one_header_not_two() {
    let s = setup("10s", None);
    for header in [proxy_v1(src(), dst()), proxy_v2(src(), dst())] {
        let mut bytes = header;
        bytes.extend(http_request("/one"));
        let got = exchange(s.proxy.web, &bytes, Duration::from_secs(5)).unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("upstream=web path=/one"), "{text}");
    }
    let mut twice = proxy_v1(src(), dst());
    twice.extend(proxy_v1(src(), dst()));
    twice.extend(http_request("/two"));
    assert_closed_promptly(&s, &twice);
    let mut mixed = proxy_v2(src(), dst());
    mixed.extend(proxy_v1(src(), dst()));
    mixed.extend(http_request("/two"));
    assert_closed_promptly(&s, &mixed);
}

#[test]
fn silent_client_closed_at_timeout_while_others_are_served() {
    let s = setup("2s", None);
    let start = Instant::now();
    let mut silent = connect(s.proxy.web).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = curl(["-k", &format!("https://{}/busy", s.proxy.web)]).unwrap();
    assert!(out.success(), "{out:?}\n{}", s.proxy.log());
    assert!(out.stdout.contains("upstream=web path=/busy"), "{out:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "curl too slow"
    );
    let (_, got) = expect_closed(&mut silent, Duration::from_secs(6)).unwrap();
    let total = start.elapsed();
    assert!(
        total >= Duration::from_millis(1800),
        "closed early: {total:?}"
    );
    assert!(got.is_empty(), "silent client got bytes: {got:?}");
}
