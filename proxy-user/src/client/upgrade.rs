//! The connection upgrade through a layer-7 load balancer (DESIGN.md §4): TLS to the
//! balancer with ALPN `http/1.1`, `GET /webapi/connectionupgrade`, `101 Switching
//! Protocols`, and then a byte stream (WebSocket binary messages, or the legacy ping
//! framing) that carries the client's real TLS handshake with its SNI and ALPN.
//!
//! - `websocket` (default): `Upgrade: websocket`, `Sec-WebSocket-Protocol: alpn-ping, alpn`;
//!   the server picks `alpn-ping` and sends ping frames, which the pump answers.
//! - `legacy` (`--upgrade-mode legacy`, for balancers that pass only custom upgrades):
//!   `Upgrade: alpn-ping` plus `X-Teleport-Upgrade: alpn-ping`; `alpn-ping` is framed
//!   `u32 length || payload` (length 0 is a ping), `alpn` is raw.
//!
//! The framings themselves are [`crate::io::wire`]'s; this module writes the request, checks
//! the answer and names every failure.

use super::transport::{self, Transport};
use super::ClientError;
use crate::io::tls::provider;
use crate::io::wire;
use crate::io::Prefixed;
use crate::protocol::{
    HTTP1_ALPN as HTTP1, TELEPORT_UPGRADE_HEADER, UPGRADE_ALPN as PLAIN, UPGRADE_ALPN_PING as PING,
    UPGRADE_PATH,
};
use clap::ValueEnum;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Override of the detection: `true`, `false`, or `host:port=bool,…`.
pub(crate) const OVERRIDE_ENV: &str = "SWITCHYARD_TLS_ROUTING_CONN_UPGRADE";
/// Largest WebSocket message / ping frame accepted from the server (it sends at most
/// 16 KiB per frame).
pub(crate) const MAX_FRAME: usize = 1 << 20;
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How long to wait for the body of a refusal, for its first line.
const BODY_WAIT: Duration = Duration::from_millis(300);

/// Which upgrade to send (`--upgrade-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum UpgradeMode {
    /// `Upgrade: websocket` (passes any balancer that passes WebSockets).
    #[default]
    Websocket,
    /// `Upgrade: alpn-ping` with `X-Teleport-Upgrade` (balancers that pass custom upgrades).
    Legacy,
}

impl fmt::Display for UpgradeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpgradeMode::Websocket => "websocket",
            UpgradeMode::Legacy => "legacy",
        })
    }
}

/// `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE`: forces the upgrade on or off, for every proxy
/// or per `host:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Override {
    all: Option<bool>,
    per_addr: HashMap<String, bool>,
}

impl Override {
    /// Reads the environment variable; a bad value is a usage error.
    pub(crate) fn from_env() -> Result<Override, ClientError> {
        match std::env::var(OVERRIDE_ENV) {
            Ok(v) => Override::parse(&v)
                .map_err(|e| ClientError::Usage(format!("{OVERRIDE_ENV}={v:?}: {e}"))),
            Err(std::env::VarError::NotPresent) => Ok(Override::default()),
            Err(e) => Err(ClientError::Usage(format!("{OVERRIDE_ENV}: {e}"))),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`) for all proxies, or a comma-separated
    /// list of `host:port=bool` (a bare bool in the list is the default for the others).
    pub(crate) fn parse(text: &str) -> Result<Override, String> {
        let mut o = Override::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.rsplit_once('=') {
                None => {
                    let b = parse_bool(item)?;
                    if o.all.replace(b).is_some() {
                        return Err("more than one value for all proxies".into());
                    }
                }
                Some((addr, value)) => {
                    let addr = addr.trim();
                    let value = parse_bool(value.trim())?;
                    crate::config::host_port(OVERRIDE_ENV, addr).map_err(|_| {
                        format!("`{addr}` is not host:port (write host:port=true|false)")
                    })?;
                    o.per_addr.insert(addr.to_ascii_lowercase(), value);
                }
            }
        }
        Ok(o)
    }

    /// Whether the override decides for proxy `addr`.
    pub(crate) fn decide(&self, addr: &str) -> Option<bool> {
        self.per_addr
            .get(&addr.to_ascii_lowercase())
            .copied()
            .or(self.all)
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not true or false")),
    }
}

/// The proxy's (or its balancer's) address and how to check its certificate, for the
/// TLS connections that carry no user certificate: detection, the outer TLS of an
/// upgrade, `probe`.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `host:port`.
    pub(crate) addr: String,
    /// The host part: SNI of the outer TLS, and the name its certificate must carry.
    pub(crate) host: String,
    server_name: ServerName<'static>,
    verifier: Arc<dyn ServerCertVerifier>,
    /// The outer TLS of the upgrade (ALPN `http/1.1`), one configuration for the life of
    /// the endpoint so its sessions resume.
    outer: TlsConnector,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(
        addr: &str,
        host: &str,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Endpoint, ClientError> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::Usage(format!("`{host}` is not a host name or IP")))?;
        let outer = tls_connector(&verifier, &[HTTP1])?;
        Ok(Endpoint {
            addr: addr.to_owned(),
            host: host.to_owned(),
            server_name,
            verifier,
            outer,
        })
    }

    /// TCP to the address (through `HTTPS_PROXY` when set).
    pub(crate) async fn tcp(&self) -> io::Result<TcpStream> {
        transport::tcp_connect(&self.addr, &self.host).await
    }

    /// A TLS client offering `alpn`, SNI the host, no client certificate.
    pub(crate) fn tls_connector(&self, alpn: &[&str]) -> Result<TlsConnector, ClientError> {
        tls_connector(&self.verifier, alpn)
    }

    /// TLS over `io` (TCP, or a tunnel) with `connector`.
    pub(crate) async fn tls<S>(&self, connector: &TlsConnector, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        connector.connect(self.server_name.clone(), io).await
    }

    /// TCP, TLS with ALPN `http/1.1`, and the upgrade: the tunnel's byte stream.
    pub(crate) async fn tunnel(&self, mode: UpgradeMode) -> Result<Tunnel, ClientError> {
        let unreachable = |error| ClientError::Unreachable {
            proxy: self.addr.clone(),
            error,
        };
        let failed = |error: String| ClientError::Upgrade {
            proxy: self.addr.clone(),
            mode,
            error,
        };
        let tcp = self.tcp().await.map_err(unreachable)?;
        let tls = self
            .tls(&self.outer, tcp)
            .await
            .map_err(|e| failed(format!("TLS with the load balancer: {}", tls_error(&e))))?;
        upgrade(tls, mode, &self.addr).await.map_err(|e| match mode {
            UpgradeMode::Websocket if e.starts_with("answered ") => failed(format!(
                "{e} (a balancer that passes only custom upgrades needs --upgrade-mode legacy; `switchyard probe` checks both)"
            )),
            _ => failed(e),
        })
    }
}

fn tls_connector(
    verifier: &Arc<dyn ServerCertVerifier>,
    alpn: &[&str],
) -> Result<TlsConnector, ClientError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Usage(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS error in plain words (rustls' own text when it is one).
pub(crate) fn tls_error(e: &io::Error) -> String {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("certificate not vouched for by the CA: {c:?}")
        }
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

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

/// The WebSocket upgrade request.
pub(crate) fn websocket_request(authority: &str, key: &str) -> String {
    format!(
        "GET {UPGRADE_PATH} HTTP/1.1\r\n\
         Host: {authority}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Protocol: {PING}, {PLAIN}\r\n\
         User-Agent: switchyard/{version}\r\n\
         \r\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// The legacy upgrade request.
pub(crate) fn legacy_request(authority: &str) -> String {
    format!(
        "GET {UPGRADE_PATH} HTTP/1.1\r\n\
         Host: {authority}\r\n\
         Upgrade: {PING}\r\n\
         {TELEPORT_UPGRADE_HEADER}: {PING}\r\n\
         Connection: Upgrade\r\n\
         User-Agent: switchyard/{version}\r\n\
         \r\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// A parsed response head and the bytes read past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) reason: String,
    /// Names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) rest: Vec<u8>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header lists `token` (case-insensitive).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Parses a response head from `buf`: `None` while incomplete.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => Ok(Some(Head {
            status: resp.code.unwrap_or_default(),
            reason: resp.reason.unwrap_or_default().to_owned(),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).trim().to_owned(),
                    )
                })
                .collect(),
            rest: buf[n..].to_vec(),
        })),
        Err(e) => Err(format!(
            "not an HTTP response ({e}): {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        )),
    }
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

/// The first non-empty text line of `body`, HTML tags dropped, at most 120 characters.
pub(crate) fn body_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                plain.push('\n');
            }
            _ if !in_tag => plain.push(c),
            _ => {}
        }
    }
    plain
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(120).collect())
        .unwrap_or_default()
}

/// A non-101 answer in one line: status, reason, first body line.
pub(crate) fn refusal(head: &Head, body_line: &str) -> String {
    let mut s = format!("answered {} {}", head.status, head.reason);
    let echo = |l: &str| {
        l.eq_ignore_ascii_case(head.reason.trim())
            || l.eq_ignore_ascii_case(&format!("{} {}", head.status, head.reason.trim()))
    };
    if !body_line.is_empty() && !echo(body_line) {
        s += &format!(": {body_line}");
    }
    if head.status == 404 {
        s += " (no connection upgrade at /webapi/connectionupgrade: not a Switchyard proxy behind it?)";
    }
    s
}

/// Checks a WebSocket `101`: `Upgrade: websocket`, the accept key, a subprotocol we offered.
pub(crate) fn check_websocket(head: &Head, key: &str) -> Result<String, String> {
    if !head.lists("upgrade", "websocket") {
        return Err(format!(
            "101 without `Upgrade: websocket` (Upgrade: {:?})",
            head.header("upgrade").unwrap_or("")
        ));
    }
    let expected = derive_accept_key(key.as_bytes());
    match head.header("sec-websocket-accept") {
        Some(a) if a == expected => {}
        other => {
            return Err(format!(
                "101 with a wrong Sec-WebSocket-Accept ({other:?}, expected {expected:?})"
            ))
        }
    }
    match head.header("sec-websocket-protocol") {
        Some(p) if p.eq_ignore_ascii_case(PING) || p.eq_ignore_ascii_case(PLAIN) => {
            Ok(p.to_ascii_lowercase())
        }
        Some(p) => Err(format!("101 with a subprotocol not offered: {p:?}")),
        None => Err("101 without Sec-WebSocket-Protocol (alpn-ping or alpn expected)".into()),
    }
}

/// Checks a legacy `101`: `Upgrade: alpn-ping` or `alpn` (or `X-Teleport-Upgrade`).
pub(crate) fn check_legacy(head: &Head) -> Result<String, String> {
    let upgrade = head
        .header("upgrade")
        .filter(|u| !u.is_empty())
        .or_else(|| head.header(&TELEPORT_UPGRADE_HEADER.to_ascii_lowercase()))
        .unwrap_or("")
        .to_ascii_lowercase();
    match upgrade.as_str() {
        PING | PLAIN => Ok(upgrade),
        other => Err(format!("101 with Upgrade {other:?} (alpn-ping expected)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values() {
        let o = Override::parse("true").unwrap();
        assert_eq!(o.decide("any:443"), Some(true));
        let o = Override::parse(" FALSE ").unwrap();
        assert_eq!(o.decide("any:443"), Some(false));
        let o = Override::parse("").unwrap();
        assert_eq!(o.decide("any:443"), None);
        let o = Override::parse("proxy.example.com:443=true, 127.0.0.1:3080=0").unwrap();
        assert_eq!(o.decide("Proxy.Example.com:443"), Some(true));
        assert_eq!(o.decide("127.0.0.1:3080"), Some(false));
        assert_eq!(o.decide("other:443"), None);
        let o = Override::parse("false,lb.example.com:443=true").unwrap();
        assert_eq!(o.decide("lb.example.com:443"), Some(true));
        assert_eq!(o.decide("other:443"), Some(false));
        assert!(Override::parse("maybe").is_err());
        assert!(Override::parse("proxy:443=maybe").is_err());
        assert!(Override::parse("proxy=true").is_err());
        assert!(Override::parse("true,false").is_err());
    }

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

    #[tokio::test]
    async fn legacy_upgrade_replays_bytes_after_the_head_into_the_ping_framing() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let up = tokio::spawn(upgrade(client, UpgradeMode::Legacy, "lb:443"));
        let mut req = vec![0u8; 4096];
        let n = server.read(&mut req).await.unwrap();
        assert!(String::from_utf8_lossy(&req[..n]).contains("X-Teleport-Upgrade: alpn-ping"));
        // The head, a ping and a frame in one write.
        server
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: alpn-ping\r\n\r\n\0\0\0\0\0\0\0\x02hi")
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
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 20\r\n\r\nupstream unreachable",
            )
            .await
            .unwrap();
        let e = up.await.unwrap().unwrap_err();
        assert_eq!(e, "answered 502 Bad Gateway: upstream unreachable");
    }
}
