//! Raw TCP at the proxy port: garbage, truncated or repeated PROXY headers, headers the
//! config forbids, silent clients and malformed ClientHellos are all closed, at once by a
//! decision or at `limits.handshake_timeout`, while normal traffic keeps working. Which of
//! the two closed a connection is read from the proxy's `/metrics` and log, not from a
//! clock.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddrV4;
use std::time::Duration;

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
    // The tests' connections (from 127.0.0.1) play the balancer under `on`.
    if proxy_protocol == Some("on") {
        config = config.trusted(&["127.0.0.1"]);
    }
    let proxy = Switchyard::start(&pki, &config).unwrap();
    Setup {
        _pki: pki,
        _web: web,
        proxy,
    }
}

/// How long any wait here lasts before the test fails; not a claim about speed.
const T: Duration = Duration::from_secs(30);

/// `switchyard_detect_outcomes_total{outcome}` so far.
fn outcomes(s: &Setup, outcome: &str) -> f64 {
    s.proxy
        .metric("switchyard_detect_outcomes_total", &[("outcome", outcome)])
        .unwrap()
}

/// Waits until `outcome` has been counted `n` times (the count may land just after the
/// close the client saw).
fn wait_outcomes(s: &Setup, outcome: &str, n: f64) {
    wait_until(T, &format!("{n} outcome=\"{outcome}\""), || {
        Ok((outcomes(s, outcome) >= n).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.proxy.metrics().unwrap(), s.proxy.log()));
}

/// Waits until the proxy has closed a connection at the handshake timeout: the log names
/// it (`no complete protocol preface within TIMEOUT`) and `/metrics` counts exactly one
/// `outcome="timeout"`.
fn wait_timed_out(s: &Setup, timeout: &str) {
    let line = format!("no complete protocol preface within {timeout}");
    wait_until(T, &line, || Ok(s.proxy.log().contains(&line).then_some(())))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    wait_outcomes(s, "timeout", 1.0);
    assert_eq!(
        outcomes(s, "timeout"),
        1.0,
        "{}",
        s.proxy.metrics().unwrap()
    );
}

fn src() -> SocketAddrV4 {
    "192.0.2.10:40000".parse().unwrap()
}

fn dst() -> SocketAddrV4 {
    "127.0.0.1:3080".parse().unwrap()
}

/// Sends `bytes` and asserts the proxy closes without an HTTP answer by deciding
/// `outcome` (counted once more), not by waiting out the handshake timeout (10 s in these
/// tests; no `timeout` outcome is counted).
fn assert_closed_promptly(s: &Setup, bytes: &[u8], outcome: &str) {
    let before = outcomes(s, outcome);
    let mut stream = connect(s.proxy.web).unwrap();
    stream.write_all(bytes).unwrap();
    let (_, got) =
        expect_closed(&mut stream, T).unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("upstream=web"), "reached upstream: {text}");
    wait_outcomes(s, outcome, before + 1.0);
    assert_eq!(
        outcomes(s, "timeout"),
        0.0,
        "closed by the timeout\n{}",
        s.proxy.log()
    );
}

#[test]
fn garbage_is_closed_promptly_and_counted() {
    let s = setup("10s", None);
    assert_closed_promptly(&s, b"ZZZZ this is no protocol at all\r\n\r\n", "unknown");
}

#[test]
fn malformed_client_hello_is_closed_promptly() {
    let s = setup("10s", None);
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x30];
    hello.extend((0u8..0x30).map(|i| i.wrapping_mul(37) ^ 0xA5));
    assert_closed_promptly(&s, &hello, "bad_client_hello");
}

#[test]
fn truncated_proxy_v1_line_is_closed_at_handshake_timeout() {
    let s = setup("2s", None);
    let mut stream = connect(s.proxy.web).unwrap();
    stream
        .write_all(b"PROXY TCP4 192.0.2.10 127.0.0.1 4000")
        .unwrap();
    let (_, got) =
        expect_closed(&mut stream, T).unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    assert!(got.is_empty(), "got bytes: {got:?}");
    wait_timed_out(&s, "2s");
}

#[test]
fn proxy_v2_header_rejected_when_proxy_protocol_off() {
    let s = setup("10s", Some("off"));
    let mut bytes = proxy_v2(src(), dst());
    bytes.extend(http_request("/v2"));
    assert_closed_promptly(&s, &bytes, "proxy_forbidden");
    // Control: the same request without a header is served.
    let got = exchange(s.proxy.web, &http_request("/plain"), Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("upstream=web path=/plain"), "{text}");
}

#[test]
fn proxy_protocol_on_requires_a_header() {
    let s = setup("10s", Some("on"));
    assert_closed_promptly(&s, &http_request("/bare"), "proxy_required");
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
    assert_closed_promptly(&s, &twice, "second_proxy_header");
    let mut mixed = proxy_v2(src(), dst());
    mixed.extend(proxy_v1(src(), dst()));
    mixed.extend(http_request("/two"));
    assert_closed_promptly(&s, &mixed, "second_proxy_header");
}

#[test]
fn silent_client_closed_at_timeout_while_others_are_served() {
    // The silent connection must outlive curl's whole exchange: 5 s leaves room for that on
    // a loaded machine.
    let s = setup("5s", None);
    let mut silent = connect(s.proxy.web).unwrap();
    // The proxy accepts in order: once curl is served, the silent connection was accepted
    // (and its timeout started) before.
    let out = curl(["-k", &format!("https://{}/busy", s.proxy.web)]).unwrap();
    assert!(out.success(), "{out:?}\n{}", s.proxy.log());
    assert!(out.stdout.contains("upstream=web path=/busy"), "{out:?}");
    // Still held: nothing to read, and no EOF.
    silent.set_nonblocking(true).unwrap();
    let held = silent.read(&mut [0u8; 1]);
    assert!(
        matches!(&held, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the silent connection should still be open after curl: {held:?}\n{}",
        s.proxy.log()
    );
    silent.set_nonblocking(false).unwrap();
    let (_, got) =
        expect_closed(&mut silent, T).unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    assert!(got.is_empty(), "silent client got bytes: {got:?}");
    wait_timed_out(&s, "5s");
}
