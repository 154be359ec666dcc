//! `GET /webapi/connectionupgrade` byte by byte (`docs/balancers.md`), over plain HTTP to the
//! proxy port and over TLS on the web route: a WebSocket upgrade answers `101` with the
//! RFC 6455 `Sec-WebSocket-Accept` and the preferred protocol and then carries a whole
//! inner TLS connection in binary frames; the legacy `Upgrade: alpn` carries it raw;
//! `alpn-ping` pings in both framings. Bad input is refused: an oversize frame (close 1009),
//! a bad or missing `Sec-WebSocket-Key`, an unknown upgrade, two `X-Forwarded-For` headers or
//! a list (400), and a stalled request head (closed at `limits.handshake_timeout`); after
//! each the proxy still serves a normal request.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha1::{Digest, Sha1};
use switchyard_tests::balancer::start_proxy;
use switchyard_tests::raw::{
    connect, exchange, expect_closed, http_request, legacy_head, read_head, upgrade_head, Head,
};
use switchyard_tests::{
    decided_client, wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki,
};

/// The proxy under test: web upstream `web`, the TCP app `echo.example.test` (ALPN
/// teleport-tcp, client certificate) → an echo upstream, `trust_x_forwarded_for: true`, a
/// 2 s handshake timeout and pings every second.
struct Setup {
    pki: TestPki,
    _web: DemoUpstream,
    _echo: DemoUpstream,
    proxy: Switchyard,
}

fn setup() -> Setup {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    // The tests' own connections (from 127.0.0.1) play the balancer.
    let mut config = ProxyConfig::default()
        .upstream("web", web.addr)
        .trusted(&["127.0.0.1"]);
    config.routes.push(format!(
        "{{name: echo-app, sni: echo.example.test, alpn: teleport-tcp, mode: terminate, upstream: '{}'}}",
        echo.addr
    ));
    config.handshake_timeout = "2s".into();
    let proxy = start_proxy(&pki, &config, true, &["ping_interval: 1s"]).unwrap();
    Setup {
        pki,
        _web: web,
        _echo: echo,
        proxy,
    }
}

impl Setup {
    /// A normal request through the same port is still answered by the web upstream.
    fn assert_unharmed(&self) {
        let got = exchange(
            self.proxy.web,
            &http_request("/after"),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.proxy.log()));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("upstream=web path=/after"),
            "the proxy no longer serves normal requests: {text}\n{}",
            self.proxy.log()
        );
    }

    /// A rustls client config trusting the test CA, offering `alpn`, presenting the test
    /// client certificate for `teleport-*` protocols.
    fn tls(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.pki.ca_cert()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = if alpn.starts_with(b"teleport-") {
            let chain = CertificateDer::pem_file_iter(&self.pki.client.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&self.pki.client.key).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        } else {
            config.with_no_client_auth()
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// TLS to `localhost` with ALPN `alpn` over `io`.
    fn tls_over<S: Read + Write>(&self, io: S, alpn: &[u8]) -> StreamOwned<ClientConnection, S> {
        self.tls_to(io, "localhost", alpn)
    }

    /// TLS with SNI `sni` and ALPN `alpn` over `io`.
    fn tls_to<S: Read + Write>(
        &self,
        io: S,
        sni: &str,
        alpn: &[u8],
    ) -> StreamOwned<ClientConnection, S> {
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let conn = ClientConnection::new(self.tls(alpn), name).unwrap();
        StreamOwned::new(conn, io)
    }
}

/// The key of RFC 6455 §1.3 and its accept value, to check [`accept_for`] itself.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// A valid key (base64 of 16 bytes) other than the RFC's.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)), RFC 6455 §4.2.2.
fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The headers of a valid WebSocket upgrade offering `protocol`.
fn websocket_headers(key: &str, protocol: &str) -> Vec<String> {
    vec![
        "Upgrade: websocket".into(),
        "Connection: Upgrade".into(),
        "Sec-WebSocket-Version: 13".into(),
        format!("Sec-WebSocket-Key: {key}"),
        format!("Sec-WebSocket-Protocol: {protocol}"),
    ]
}

fn refs(headers: &[String]) -> Vec<&str> {
    headers.iter().map(String::as_str).collect()
}

/// Plain HTTP to the proxy port: sends `head`, returns the stream and the response head.
fn send_head(s: &Setup, head: &[u8]) -> (TcpStream, Head) {
    let mut stream = connect(s.proxy.web).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head).unwrap();
    let response = read_head(&mut stream)
        .unwrap_or_else(|e| panic!("no response to the upgrade: {e}\n{}", s.proxy.log()));
    (stream, response)
}

/// [`send_head`] for an upgrade the proxy must accept: expects `101`.
fn send_upgrade(s: &Setup, head: &[u8]) -> (TcpStream, Head) {
    let (stream, response) = send_head(s, head);
    assert_eq!(response.status, 101, "{}\n{}", response.text, s.proxy.log());
    (stream, response)
}

/// A WebSocket upgrade's request head with key [`KEY`] and `Sec-WebSocket-Protocol: PROTOCOL`.
fn websocket_head(protocol: &str) -> Vec<u8> {
    upgrade_head(&refs(&websocket_headers(KEY, protocol)))
}

/// Sends `head`; expects `400` and the connection closed, without reaching the upstream.
fn assert_refused_400(s: &Setup, head: &[u8], what: &str) {
    let (mut stream, response) = send_head(s, head);
    assert_eq!(
        response.status,
        400,
        "{what}: expected 400, got {}\n{}",
        response.text,
        s.proxy.log()
    );
    let (_, rest) = expect_closed(&mut stream, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: not closed after the 400: {e}"));
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("upstream=web"),
        "{what}: reached upstream: {rest}"
    );
    s.assert_unharmed();
}

// ---- WebSocket frames (client side: masked) --------------------------------------------

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame: FIN, `opcode`, masked `payload`; `declared` overrides the length field.
fn client_frame(opcode: u8, payload: &[u8], declared: Option<u64>) -> Vec<u8> {
    let len = declared.unwrap_or(payload.len() as u64);
    let mut frame = vec![0x80 | opcode];
    match len {
        0..=125 => frame.push(0x80 | len as u8),
        126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&len.to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// One server frame: (opcode, payload). Server frames are not masked (RFC 6455 §5.1).
fn server_frame(io: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head)?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            io.read_exact(&mut b)?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            io.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// A byte stream inside WebSocket binary frames: writes become masked frames, reads return
/// binary payloads (pings are answered, pongs skipped, a close frame is EOF).
struct WsStream<S> {
    io: S,
    pending: Vec<u8>,
    pos: usize,
}

impl<S: Read + Write> WsStream<S> {
    fn new(io: S) -> Self {
        WsStream {
            io,
            pending: Vec::new(),
            pos: 0,
        }
    }
}

impl<S: Read + Write> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.pending.len() {
            let (opcode, payload) = match server_frame(&mut self.io) {
                Ok(frame) => frame,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            };
            match opcode {
                0x0..=0x2 => {
                    self.pending = payload;
                    self.pos = 0;
                }
                0x8 => return Ok(0),
                0x9 => self.io.write_all(&client_frame(0xA, &payload, None))?,
                _ => {}
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for WsStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.io.write_all(&client_frame(0x2, buf, None))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush()
    }
}

/// `GET /inner` inside an inner TLS connection (ALPN http/1.1) over `io`: the web
/// upstream's answer.
///
/// Then the client ends its side too (close_notify): with the inner connection over both
/// ways, the proxy must close the tunnel (EOF, or a close frame for WebSocket).
fn inner_get<S: Read + Write>(s: &Setup, io: S) -> String {
    let mut tls = s.tls_over(io, b"http/1.1");
    tls.write_all(b"GET /inner HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("inner TLS handshake failed: {e}\n{}", s.proxy.log()));
    let mut answer = Vec::new();
    let result = tls.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    if !text.contains("upstream=web path=/inner") {
        panic!(
            "no answer from the web upstream inside the tunnel ({result:?}): {text:?}\n{}",
            s.proxy.log()
        );
    }
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut rest = [0u8; 1024];
    let started = Instant::now();
    loop {
        match tls.sock.read(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "the inner connection ended both ways, but the tunnel was still open after \
                 {:?} ({e})\n{}",
                started.elapsed(),
                s.proxy.log()
            ),
        }
    }
    text
}

// ---- the happy paths -------------------------------------------------------------------

#[test]
fn websocket_upgrade_answers_rfc6455_accept_and_prefers_alpn_ping() {
    assert_eq!(
        accept_for(RFC_KEY),
        RFC_ACCEPT,
        "the test's own SHA-1/base64"
    );
    let s = setup();
    for (key, offered, chosen) in [
        (RFC_KEY, "alpn", "alpn"),
        (KEY, "alpn-ping", "alpn-ping"),
        (KEY, "alpn, alpn-ping", "alpn-ping"),
    ] {
        let (stream, response) =
            send_head(&s, &upgrade_head(&refs(&websocket_headers(key, offered))));
        drop(stream);
        let what = format!("key {key}, protocols {offered:?}");
        assert_eq!(
            response.status,
            101,
            "{what}: {}\n{}",
            response.text,
            s.proxy.log()
        );
        assert_eq!(
            response
                .header("upgrade")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("websocket"),
            "{what}: {}",
            response.text
        );
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(accept_for(key).as_str()),
            "{what}: {}",
            response.text
        );
        assert_eq!(
            response.header("sec-websocket-protocol"),
            Some(chosen),
            "{what}: {}",
            response.text
        );
    }
    s.assert_unharmed();
}

#[test]
fn websocket_tunnel_over_tls_carries_inner_tls_and_takes_x_forwarded_for() {
    let s = setup();
    // Outer TLS to the web route (ALPN http/1.1), as a layer-7 balancer re-encrypting would.
    let tcp = connect(s.proxy.web).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut outer = s.tls_over(tcp, b"http/1.1");
    let mut headers = websocket_headers(KEY, "alpn");
    headers.push("X-Forwarded-For: 203.0.113.7".into());
    outer.write_all(&upgrade_head(&refs(&headers))).unwrap();
    let response = read_head(&mut outer)
        .unwrap_or_else(|e| panic!("no response over TLS: {e}\n{}", s.proxy.log()));
    assert_eq!(response.status, 101, "{}\n{}", response.text, s.proxy.log());
    inner_get(&s, WsStream::new(outer));
    wait_until(
        Duration::from_secs(5),
        "the client from X-Forwarded-For",
        || {
            let log = s.proxy.log();
            let believed = log.lines().any(|l| {
                l.contains("connection closed")
                    && decided_client(l) == Some(("203.0.113.7", "x_forwarded_for"))
            });
            Ok(believed.then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
    s.assert_unharmed();
}

#[test]
fn websocket_tunnel_over_plain_http_carries_inner_tls() {
    let s = setup();
    let (stream, _) = send_upgrade(&s, &websocket_head("alpn"));
    inner_get(&s, WsStream::new(stream));
}

/// Reads one response with a `Content-Length` body from `stream`: (head, body).
fn read_response(s: &Setup, stream: &mut TcpStream) -> (Head, String) {
    let head = read_head(stream).unwrap_or_else(|e| panic!("no response: {e}\n{}", s.proxy.log()));
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {}", head.text));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// The upgrade as the third request of a kept-alive connection (after one for the web
/// upstream and one for `/webapi/ping`), as a balancer with an upstream connection pool
/// sends it: every request is seen, and the inner TLS is routed as on a fresh connection.
#[test]
fn upgrade_as_a_later_request_of_a_kept_alive_connection_carries_inner_tls() {
    let s = setup();
    let mut stream = connect(s.proxy.web).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&s, &mut stream);
    assert_eq!(head.status, 200, "{}", head.text);
    assert_eq!(body, "upstream=web path=/first\n");
    stream
        .write_all(b"GET /webapi/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&s, &mut stream);
    assert_eq!(head.status, 200, "{}", head.text);
    assert!(body.contains("\"tls_routing_enabled\":true"), "{body}");
    stream.write_all(&websocket_head("alpn")).unwrap();
    let head = read_head(&mut stream).unwrap();
    assert_eq!(head.status, 101, "{}\n{}", head.text, s.proxy.log());
    let accept = head.header("sec-websocket-accept").map(str::to_owned);
    assert_eq!(accept.as_deref(), Some(accept_for(KEY).as_str()));
    inner_get(&s, WsStream::new(stream));
    let accepted = [("kind", "websocket_alpn"), ("outcome", "accepted")];
    let n = s
        .proxy
        .metric("switchyard_connection_upgrades_total", &accepted)
        .unwrap();
    assert_eq!(n, 1.0);
}

#[test]
fn legacy_alpn_upgrade_carries_raw_inner_tls() {
    let s = setup();
    let (stream, response) = send_upgrade(&s, &legacy_head("alpn"));
    assert_eq!(
        response.header("upgrade"),
        Some("alpn"),
        "{}",
        response.text
    );
    inner_get(&s, stream);
}

#[test]
fn alpn_ping_sends_websocket_pings_and_legacy_zero_length_frames() {
    let s = setup();
    // WebSocket: a Ping frame within a few ping intervals (1 s).
    let (mut stream, response) = send_head(&s, &websocket_head("alpn-ping"));
    assert_eq!(response.status, 101, "{}", response.text);
    let start = Instant::now();
    let frame = server_frame(&mut stream);
    assert!(
        matches!(frame, Ok((0x9, _))),
        "expected a WebSocket ping (opcode 9) after {:?}, got {frame:?}\n{}",
        start.elapsed(),
        s.proxy.log()
    );
    // Legacy alpn-ping: u32 length framing, length 0 is a ping.
    let (mut stream, response) = send_head(&s, &legacy_head("alpn-ping"));
    assert_eq!(response.status, 101, "{}", response.text);
    assert_eq!(
        response.header("upgrade"),
        Some("alpn-ping"),
        "{}",
        response.text
    );
    let mut len = [0xffu8; 4];
    let got = stream.read_exact(&mut len);
    assert!(
        got.is_ok() && len == [0, 0, 0, 0],
        "expected a zero-length ping frame, got {got:?} {len:?}\n{}",
        s.proxy.log()
    );
}

#[test]
fn other_paths_with_upgrade_headers_go_to_the_web_upstream() {
    let s = setup();
    let mut head = String::from_utf8(websocket_head("alpn")).unwrap();
    head = head.replace("/webapi/connectionupgrade", "/webapi/elsewhere");
    let mut stream = connect(s.proxy.web).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The head and the body may come in separate reads.
    let (mut all, mut got) = (Vec::new(), vec![0u8; 4096]);
    while !String::from_utf8_lossy(&all).contains("path=/webapi/elsewhere") {
        match stream.read(&mut got) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&got[..n]),
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("upstream=web path=/webapi/elsewhere"),
        "{text}\n{}",
        s.proxy.log()
    );
}

/// 1 MiB through the echo app inside the tunnel, in four bursts of 256 KiB (each written
/// whole while the echo flows back, then read back whole): both directions busy at once,
/// and every byte the upstream sends must reach the client without more traffic from it.
fn echo_mib_through<S: Read + Write>(s: &Setup, io: S, what: &str) {
    let mut tls = s.tls_to(io, "echo.example.test", b"teleport-tcp");
    let mut greeting = [0u8; 14];
    tls.read_exact(&mut greeting).unwrap_or_else(|e| {
        panic!(
            "{what}: no greeting from the echo app: {e}\n{}",
            s.proxy.log()
        )
    });
    assert_eq!(&greeting, b"upstream=echo\n", "{what}");
    let mut total = 0usize;
    for step in 0..4u32 {
        let chunk: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) ^ step) as u8)
            .collect();
        if let Err(e) = tls.write_all(&chunk).and_then(|()| tls.flush()) {
            panic!(
                "{what}: after {total} bytes echoed, writing the next 256 KiB failed: {e}\n{}",
                s.proxy.log()
            );
        }
        let mut back = vec![0u8; chunk.len()];
        if let Err(e) = tls.read_exact(&mut back) {
            panic!(
                "{what}: after {total} bytes echoed, the next 256 KiB did not come back whole: \
                 {e}\n{}",
                s.proxy.log()
            );
        }
        assert!(back == chunk, "{what}: echoed bytes differ at step {step}");
        total += chunk.len();
    }
}

#[test]
fn websocket_and_legacy_tunnels_carry_1mib_to_a_mtls_route() {
    let s = setup();
    for protocol in ["alpn", "alpn-ping"] {
        let (stream, _) = send_upgrade(&s, &websocket_head(protocol));
        echo_mib_through(&s, WsStream::new(stream), &format!("websocket {protocol}"));
    }
    let (stream, _) = send_upgrade(&s, &legacy_head("alpn"));
    echo_mib_through(&s, stream, "legacy alpn");
}

// ---- bad input -------------------------------------------------------------------------

#[test]
fn oversize_websocket_frame_gets_close_1009() {
    let s = setup();
    let (mut stream, _) = send_upgrade(&s, &websocket_head("alpn"));
    // Declares 2 MiB (the default limit is 1 MiB) and sends the first KiB of it.
    let frame = client_frame(0x2, &[0x16; 1024], Some(2 << 20));
    stream.write_all(&frame).unwrap();
    let (took, rest) = expect_closed(&mut stream, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("oversize frame: {e}\n{}", s.proxy.log()));
    let mut frames = &rest[..];
    let mut close = None;
    while let Ok((opcode, payload)) = server_frame(&mut frames) {
        if opcode == 0x8 {
            close = Some(payload);
            break;
        }
    }
    let code = close
        .as_ref()
        .filter(|p| p.len() >= 2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    assert_eq!(
        code,
        Some(1009),
        "expected a close frame with code 1009 (message too big) before the close after \
         {took:?}; got {rest:02x?}\n{}",
        s.proxy.log()
    );
    s.assert_unharmed();
}

#[test]
fn bad_or_missing_sec_websocket_key_is_400() {
    let s = setup();
    // base64 of 5 bytes, not 16.
    let short = websocket_headers("c2hvcnQ=", "alpn");
    assert_refused_400(&s, &upgrade_head(&refs(&short)), "short key");
    let garbage = websocket_headers("not base64 at all!", "alpn");
    assert_refused_400(&s, &upgrade_head(&refs(&garbage)), "non-base64 key");
    let missing: Vec<String> = websocket_headers(KEY, "alpn")
        .into_iter()
        .filter(|h| !h.starts_with("Sec-WebSocket-Key"))
        .collect();
    assert_refused_400(&s, &upgrade_head(&refs(&missing)), "missing key");
}

#[test]
fn unknown_upgrade_type_is_400() {
    let s = setup();
    let head = upgrade_head(&["Upgrade: foo", "Connection: Upgrade"]);
    assert_refused_400(&s, &head, "Upgrade: foo");
}

#[test]
fn two_x_forwarded_for_headers_are_400() {
    let s = setup();
    let mut headers = websocket_headers(KEY, "alpn");
    headers.push("X-Forwarded-For: 203.0.113.7".into());
    headers.push("X-Forwarded-For: 198.51.100.9".into());
    assert_refused_400(&s, &upgrade_head(&refs(&headers)), "two X-Forwarded-For");
}

#[test]
fn comma_separated_x_forwarded_for_is_400() {
    let s = setup();
    let mut headers = websocket_headers(KEY, "alpn");
    headers.push("X-Forwarded-For: 203.0.113.7, 198.51.100.9".into());
    assert_refused_400(&s, &upgrade_head(&refs(&headers)), "X-Forwarded-For list");
}

#[test]
fn stalled_request_head_is_closed_at_the_handshake_timeout() {
    let s = setup();
    let mut stream = connect(s.proxy.web).unwrap();
    stream
        .write_all(b"GET /webapi/connectionupgrade HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, got) = expect_closed(&mut stream, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("stalled head: {e}\n{}", s.proxy.log()));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "expected nothing or a 408: {text}"
    );
    // Closed by the handshake timeout, not by another refusal: counted and logged as such.
    let timeout = [("kind", "none"), ("outcome", "timeout")];
    wait_until(
        Duration::from_secs(30),
        "outcome=\"timeout\" counted",
        || {
            let n = s
                .proxy
                .metric("switchyard_connection_upgrades_total", &timeout)?;
            Ok((n == 1.0).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.metrics().unwrap()));
    let log = s.proxy.log();
    assert!(
        log.contains("408 the request head did not arrive in time"),
        "{log}"
    );
    s.assert_unharmed();
}
