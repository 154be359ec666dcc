//! The limits of one connection, from the outside (`docs/architecture.md` §1), where a
//! connection upgrade carries an inner TLS connection read as a preface of its own:
//!
//! - `limits.max_hello_bytes`: a real ClientHello that fits the limit, re-cut into 1-byte
//!   TLS records, outgrows 512 bytes before its handshake message completes. Inside a
//!   `GET /webapi/connectionupgrade` tunnel and on the socket (there after a PROXY v2
//!   header that takes the socket's 4 KiB allowance) it is refused as `too_large`, with 512
//!   as the limit in the log, no panic, and the proxy serving the next connection.
//! - `limits.handshake_timeout`: one deadline from accept for everything before the relay.
//!   A client dribbling the upgrade's request head, or the head and then the inner
//!   ClientHello, is cut at one timeout from accept, not at one per stage. These tests are
//!   schedules, not clocks: they count what the client got out before the proxy cut it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use switchyard_tests::balancer::start_proxy;
use switchyard_tests::raw::{connect, expect_closed, legacy_head, proxy_v2_with_tlv, read_head};
use switchyard_tests::{http_get, wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki};

/// A real ClientHello (`openssl s_client -alpn teleport-proxy-ssh`): one TLS record of
/// 349 bytes, well inside a 512-byte limit.
const HELLO: &[u8] = include_bytes!("../../proxy-user/tests/fixtures/hello_openssl_ssh.bin");

/// How long any wait here lasts before the test fails; not a claim about speed.
const T: Duration = Duration::from_secs(30);

/// The log line of a preface refused at a 512-byte `limits.max_hello_bytes`.
const TOO_LARGE_512: &str = "preface larger than 512 bytes (limits.max_hello_bytes)";

/// A proxy whose web upstream is a demo HTTP server, so upgrades are answered.
struct Setup {
    _pki: TestPki,
    _web: DemoUpstream,
    proxy: Switchyard,
}

/// The proxy with `limits.handshake_timeout` and the extra `limits` keys (`key: value`).
fn setup(handshake_timeout: &str, limits: &[&str]) -> Setup {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let mut config = ProxyConfig::default().upstream("web", web.addr);
    config.handshake_timeout = handshake_timeout.into();
    let proxy = start_proxy(&pki, &config, false, limits).unwrap();
    Setup {
        _pki: pki,
        _web: web,
        proxy,
    }
}

impl Setup {
    /// Waits until the proxy's log holds `line`; a panic in the log fails at once.
    fn wait_logged(&self, line: &str) {
        wait_until(T, line, || {
            let log = self.proxy.log();
            if log.contains("panicked") {
                anyhow::bail!("the proxy panicked instead of logging {line:?}");
            }
            Ok(log.contains(line).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.proxy.log()));
    }

    /// Waits until the samples of metric `name` with `labels` sum to `n`.
    fn wait_counted(&self, name: &str, labels: &[(&str, &str)], n: f64) {
        wait_until(T, &format!("{name}{labels:?} == {n}"), || {
            Ok((self.proxy.metric(name, labels)? == n).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.proxy.metrics().unwrap_or_default()));
    }

    /// `switchyard_detect_outcomes_total{outcome}` reaches `n`.
    fn wait_outcome(&self, outcome: &str, n: f64) {
        let labels = [("outcome", outcome)];
        self.wait_counted("switchyard_detect_outcomes_total", &labels, n);
    }

    /// The proxy is alive, never panicked, and answers `GET /webapi/ping`.
    fn assert_serving(&self) {
        let (code, body) = http_get(self.proxy.web, "/webapi/ping")
            .unwrap_or_else(|e| panic!("/webapi/ping: {e}\n{}", self.proxy.log()));
        assert!(
            code == 200 && body.contains("tls_routing_enabled"),
            "the proxy no longer answers /webapi/ping: {code} {body}\n{}",
            self.proxy.log()
        );
        let log = self.proxy.log();
        assert!(!log.contains("panicked"), "the proxy panicked:\n{log}");
    }

    /// A plaintext connection upgraded with the legacy `Upgrade: alpn` (raw bytes, no
    /// framing): the `101` has been read.
    fn upgraded(&self) -> TcpStream {
        let mut stream = connect(self.proxy.web).unwrap();
        stream.set_read_timeout(Some(T)).unwrap();
        stream.write_all(&legacy_head("alpn")).unwrap();
        self.expect_101(&mut stream);
        stream
    }

    /// Reads the answer to an upgrade: it must be `101`.
    fn expect_101(&self, stream: &mut TcpStream) {
        let head = read_head(stream)
            .unwrap_or_else(|e| panic!("no answer to the upgrade: {e}\n{}", self.proxy.log()));
        assert_eq!(head.status, 101, "{}\n{}", head.text, self.proxy.log());
    }
}

/// The handshake records of `records` re-cut into records of one byte each: every byte
/// of the handshake message costs 6 bytes on the wire.
fn one_byte_records(records: &[u8]) -> Vec<u8> {
    let (mut wire, mut rest) = (Vec::new(), records);
    while let [kind, major, minor, hi, lo, body @ ..] = rest {
        assert_eq!(*kind, 0x16, "not a handshake record");
        let (payload, next) = body.split_at(u16::from_be_bytes([*hi, *lo]) as usize);
        wire.extend(
            payload
                .iter()
                .flat_map(|&b| [0x16, *major, *minor, 0, 1, b]),
        );
        rest = next;
    }
    assert!(rest.is_empty(), "a truncated record");
    wire
}

/// Sends the ClientHello in 1-byte records on `stream` and expects the proxy to close it
/// without an answer, refused as `too_large` at 512 bytes.
fn assert_refused_at_512(s: &Setup, mut stream: TcpStream) {
    let records = one_byte_records(HELLO);
    assert!(
        HELLO.len() < 512 && records.len() > 512,
        "the fixture fits the limit in one record ({} bytes), not in 1-byte records ({})",
        HELLO.len(),
        records.len()
    );
    // The proxy stops reading at the limit and closes: the end of this may meet a reset.
    let _ = stream.write_all(&records);
    let (_, got) = expect_closed(&mut stream, T)
        .unwrap_or_else(|e| panic!("the oversize preface: {e}\n{}", s.proxy.log()));
    assert!(
        got.is_empty(),
        "the proxy answered the oversize preface: {got:02x?}"
    );
    s.wait_logged(TOO_LARGE_512);
    s.wait_outcome("too_large", 1.0);
    s.assert_serving();
}

/// Before the fix the tunnel's limit was `max_hello_bytes` alone and the refusal reported
/// `limit - 4096`: below 4096 that underflowed, a panic in this debug build, reached by an
/// unauthenticated client.
#[test]
fn one_byte_records_inside_an_upgrade_are_refused_at_max_hello_bytes() {
    let s = setup("10s", &["max_hello_bytes: 512"]);
    let stream = s.upgraded();
    assert_refused_at_512(&s, stream);
}

/// On the socket the limit has 4 KiB of room for PROXY headers on top (docs/config.md): a
/// PROXY v2 header of exactly 4096 bytes takes it all, leaving the same 512 for the
/// ClientHello. A control shows that 512 really are left: the same header and the
/// ClientHello in its one record are read and routed (to a TLS alert: no ssh upstream is
/// configured), not refused as too large.
#[test]
fn one_byte_records_after_a_4k_proxy_header_are_refused_at_max_hello_bytes() {
    let s = setup("10s", &["max_hello_bytes: 512"]);
    let (src, dst): (SocketAddrV4, SocketAddrV4) = (
        "192.0.2.10:40000".parse().unwrap(),
        "127.0.0.1:3080".parse().unwrap(),
    );
    // Type 0xE0: the first of the custom TLV types; 16 fixed, 12 address and 3 TLV bytes.
    let header = proxy_v2_with_tlv(src, dst, 0xE0, &[0x5a; 4096 - 16 - 12 - 3]);
    assert_eq!(header.len(), 4096);

    let mut control = connect(s.proxy.web).unwrap();
    control.set_read_timeout(Some(T)).unwrap();
    control.write_all(&[&header[..], HELLO].concat()).unwrap();
    let mut first = [0u8; 1];
    let got = control.read_exact(&mut first).map(|()| first[0]);
    assert!(
        matches!(got, Ok(0x15 | 0x16)),
        "the ClientHello in one record after the 4 KiB header got no TLS answer: {got:02x?}\n{}",
        s.proxy.log()
    );
    drop(control);
    assert_eq!(
        s.proxy
            .metric(
                "switchyard_detect_outcomes_total",
                &[("outcome", "too_large")]
            )
            .unwrap(),
        0.0,
        "the control was refused as too large\n{}",
        s.proxy.log()
    );

    let mut stream = connect(s.proxy.web).unwrap();
    stream.write_all(&header).unwrap();
    assert_refused_at_512(&s, stream);
}

// ---- one deadline ----------------------------------------------------------------------

/// `limits.handshake_timeout` of the schedules below.
const TIMEOUT: &str = "3s";
/// The log's name for it (`{:?}` of a `Duration`).
const TIMEOUT_LOGGED: &str = "within 3s";

/// Sends each piece of `schedule` at its offset from the call (offsets from one start, so
/// late steps do not add up), unless the proxy has answered or closed by then; returns
/// how many bytes went out before it did (all of them if it did neither).
///
/// The waits between pieces are the scenario's pacing (a slow client is what is tested),
/// not stand-ins for a condition: each one also watches for the proxy's answer or close,
/// which is the condition, and stops the schedule as soon as it comes.
fn dribble(stream: &mut TcpStream, schedule: &[(Duration, Vec<u8>)]) -> usize {
    stream.set_nodelay(true).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    for (at, piece) in schedule {
        if spoke_before(stream, start + *at) || stream.write_all(piece).is_err() {
            break;
        }
        sent += piece.len();
    }
    sent
}

/// Whether the proxy answers or closes `stream` before `until` (nothing is consumed).
fn spoke_before(stream: &TcpStream, until: Instant) -> bool {
    let left = until.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    match stream.peek(&mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("reading from the proxy: {e}"),
    }
}

/// `bytes` one at a time over `span`: the first at `from`, the last at `from + span`.
fn paced(bytes: &[u8], from: Duration, span: Duration) -> Vec<(Duration, Vec<u8>)> {
    let steps = u32::try_from(bytes.len().max(2) - 1).unwrap();
    (0u32..)
        .zip(bytes)
        .map(|(i, &b)| (from + span * i / steps, vec![b]))
        .collect()
}

/// The legacy upgrade's request head, split after its request line.
fn upgrade_request() -> (Vec<u8>, Vec<u8>) {
    let mut line = legacy_head("alpn");
    let end = line.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let headers = line.split_off(end);
    (line, headers)
}

/// The web route's request head under the one deadline (it used to start a fresh
/// `handshake_timeout` once detection was done).
///
/// Schedule, from connect, with a 3 s timeout: `G`, `E`, `T` at 0, 0.67 and 1.33 s; at 2 s
/// the rest of the request line (detection and the request line are complete: the
/// upgrade endpoint); then the headers one byte at a time, the last at 4 s. One deadline
/// from accept answers `408` at 3 s, halfway through the headers. A fresh deadline after
/// detection (2 s) would run to 5 s and answer the head, complete at 4 s, with `101`: a
/// second of margin either way. Load on the machine only delays the client's bytes, which
/// makes the head later and the 408 more certain; only a proxy timer a full second late
/// could let the head through.
#[test]
fn a_dribbled_upgrade_head_gets_408_at_one_handshake_timeout_from_accept() {
    let s = setup(TIMEOUT, &[]);
    let (line, headers) = upgrade_request();
    let ms = Duration::from_millis;
    let mut schedule = vec![
        (ms(0), line[..1].to_vec()),
        (ms(667), line[1..2].to_vec()),
        (ms(1333), line[2..3].to_vec()),
        (ms(2000), line[3..].to_vec()),
    ];
    schedule.extend(paced(&headers, ms(2100), ms(1900)));
    let total = line.len() + headers.len();
    let mut stream = connect(s.proxy.web).unwrap();
    let sent = dribble(&mut stream, &schedule);
    stream.set_read_timeout(Some(T)).unwrap();
    let answer = read_head(&mut stream)
        .unwrap_or_else(|e| panic!("no answer to the dribbled head: {e}\n{}", s.proxy.log()));
    assert_eq!(
        answer.status,
        408,
        "a head dribbled past one handshake_timeout ({TIMEOUT}) from accept must get 408, not \
         a fresh deadline after detection ({sent} of {total} bytes were out at the answer):\n\
         {}\n{}",
        answer.text,
        s.proxy.log()
    );
    assert!(sent < total, "{sent} of {total} bytes");
    s.wait_logged("408 the request head did not arrive in time");
    let timeout = [("kind", "none"), ("outcome", "timeout")];
    s.wait_counted("switchyard_connection_upgrades_total", &timeout, 1.0);
    s.assert_serving();
}

/// Upgrade first, then the inner ClientHello, under the one deadline (the inner connection
/// used to start a fresh `handshake_timeout` after the `101`).
///
/// Schedule, from connect, with a 3 s timeout: the request line at once (detection and the
/// request line are complete), then the headers one byte at a time, the last at 2 s; the
/// client reads the `101`; then the inner ClientHello one byte every 100 ms, 40 bytes at
/// most. One deadline from accept cuts the connection at 3 s, about 1 s after the 101:
/// some 10 bytes of the ClientHello are out. A fresh deadline after the 101 would cut at
/// about 5 s, after 30 bytes. The test asks for fewer than 20 (2 s of pacing after the
/// 101): a second of margin either way. Load on the machine only delays the client (the
/// head, the read of the 101, each byte), so the ClientHello starts later and fewer bytes
/// are out at the proxy's cut; only a proxy timer a full second late could take a correct
/// proxy to 20.
#[test]
fn a_dribbled_upgrade_and_inner_hello_are_cut_at_one_handshake_timeout_from_accept() {
    let s = setup(TIMEOUT, &[]);
    let (line, headers) = upgrade_request();
    let ms = Duration::from_millis;
    let mut schedule = vec![(ms(0), line.clone())];
    schedule.extend(paced(&headers, ms(100), ms(1900)));
    let mut stream = connect(s.proxy.web).unwrap();
    let sent = dribble(&mut stream, &schedule);
    assert_eq!(
        sent,
        line.len() + headers.len(),
        "the head was cut\n{}",
        s.proxy.log()
    );
    stream.set_read_timeout(Some(T)).unwrap();
    s.expect_101(&mut stream);

    let sent = dribble(&mut stream, &paced(&HELLO[..40], ms(0), ms(3900)));
    assert!(
        sent < 20,
        "{sent} bytes of the inner ClientHello went out, one every 100 ms from the 101 at \
         ~2 s, before the proxy cut the connection (40 at most); one handshake_timeout \
         ({TIMEOUT}) from accept leaves ~10\n{}",
        s.proxy.log()
    );
    expect_closed(&mut stream, T).unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    // Cut by the deadline in the inner connection (its detection needs only 2 bytes).
    wait_until(T, "the inner connection's timeout logged", || {
        let log = s.proxy.log();
        Ok(["ClientHello", "TLS inside the upgrade"]
            .iter()
            .any(|stage| log.contains(&format!("no complete {stage} {TIMEOUT_LOGGED}")))
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    s.wait_outcome("timeout", 1.0);
    s.assert_serving();
}
