//! The web route's own endpoints, answered by the proxy before anything reaches the web
//! upstream (DESIGN.md §3–§4):
//!
//! - `GET /webapi/connectionupgrade`: the connection upgrade that lets clients behind a
//!   TLS-terminating layer-7 balancer reach every route. `Upgrade: websocket` with
//!   `Sec-WebSocket-Protocol: alpn|alpn-ping` (RFC 6455) is preferred, then the legacy
//!   `Upgrade: alpn-ping`, then `alpn` (the type may also come in `X-Teleport-Upgrade`, for
//!   balancers that drop `Upgrade`). The answer is `101 Switching Protocols` echoing the
//!   choice; the connection then carries a whole inner TLS connection, which the caller
//!   routes like a direct one.
//! - `GET /webapi/ping`: JSON telling clients whether TLS routing is on and where the
//!   listeners are.
//!
//! This module is the pure part: it reads request heads from bytes and decides; the caller
//! (`conn`) owns the sockets. A refusal is a [`Refused`] with the status and the reason,
//! written back as a short `text/plain` response.

use crate::config::{Config, ListenerMode};
use crate::protocol::{
    PING_PATH, TELEPORT_UPGRADE_HEADER, UPGRADE_ALPN, UPGRADE_ALPN_PING, UPGRADE_PATH, WEBSOCKET,
};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Most headers accepted in one request head.
const MAX_HEADERS: usize = 64;

/// What a request on the web route is for, known from its request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Upgrade,
    Ping,
    /// Anything else: the web upstream's.
    Other,
}

/// Classifies the request line at the start of `buf`; `None` until the path is complete.
/// Only what identifies the endpoint is looked at; malformed requests that are not ours are
/// the web upstream's to answer.
pub(crate) fn target(buf: &[u8]) -> Option<Target> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let _method = parts.next()?;
    let path = parts.next()?;
    if parts.next().is_none() && line_end == buf.len() {
        // The path may still be growing.
        return None;
    }
    let path = path.split(|&b| b == b'?').next().unwrap_or(path);
    Some(match path {
        p if p == UPGRADE_PATH.as_bytes() => Target::Upgrade,
        p if p == PING_PATH.as_bytes() => Target::Ping,
        _ => Target::Other,
    })
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Header names lower-cased, values as sent (invalid UTF-8 replaced), in order.
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes of the head, including the final blank line.
    pub(crate) len: usize,
}

impl Request {
    /// Every value of header `name` (lower case).
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.trim())
    }

    /// The comma-separated tokens of every `name` header, lower-cased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// A request head that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum HeadError {
    #[error("malformed HTTP request head: {0}")]
    Malformed(String),
    #[error("HTTP request head larger than {0} bytes")]
    TooLarge(usize),
}

/// Parses the request head at the start of `buf`: `Ok(None)` while incomplete.
pub(crate) fn parse(buf: &[u8], max: usize) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Request {
            method: req.method.unwrap_or_default().to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            len,
        })),
        Ok(httparse::Status::Partial) if buf.len() >= max => Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// The upgrade chosen, in the server's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// WebSocket, `Sec-WebSocket-Protocol: alpn-ping`: ping frames keep it alive.
    WebSocketPing,
    /// WebSocket, `Sec-WebSocket-Protocol: alpn`.
    WebSocket,
    /// Legacy `Upgrade: alpn-ping`: u32 length framing with zero-length pings.
    AlpnPing,
    /// Legacy `Upgrade: alpn`: the raw inner bytes.
    Alpn,
}

impl Kind {
    /// The metric and log label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::WebSocketPing => "websocket_alpn_ping",
            Kind::WebSocket => "websocket_alpn",
            Kind::AlpnPing => "alpn_ping",
            Kind::Alpn => "alpn",
        }
    }

    /// Whether the server sends keep-alive pings.
    pub(crate) fn pings(self) -> bool {
        matches!(self, Kind::WebSocketPing | Kind::AlpnPing)
    }
}

/// An accepted upgrade: what to write back and how the inner bytes travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) kind: Kind,
    /// The `101` response.
    pub(crate) response: Vec<u8>,
    /// The client's address from `X-Forwarded-For`, when trusted and present.
    pub(crate) forwarded_for: Option<ClientAddr>,
}

/// A client address from `X-Forwarded-For`: an IP, with the port when one was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAddr {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Ip(ip) => ip.fmt(f),
            ClientAddr::Socket(s) => s.fmt(f),
        }
    }
}

/// A refused request: the status and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status} {reason}")]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) reason: String,
}

impl Refused {
    fn new(status: u16, reason: impl Into<String>) -> Refused {
        Refused {
            status,
            reason: reason.into(),
        }
    }

    /// The `switchyard_connection_upgrades_total{outcome}` label.
    pub(crate) fn outcome(&self) -> &'static str {
        match self.status {
            404 => "not_found",
            405 => "bad_method",
            408 => "timeout",
            431 => "too_large",
            _ => "bad_request",
        }
    }

    /// The response written back before closing.
    pub(crate) fn response(&self) -> Vec<u8> {
        let body = format!("{}\n", self.reason);
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            status_text(self.status),
            body.len()
        )
        .into_bytes()
    }
}

impl From<HeadError> for Refused {
    fn from(e: HeadError) -> Refused {
        match e {
            HeadError::TooLarge(_) => Refused::new(431, e.to_string()),
            HeadError::Malformed(_) => Refused::new(400, e.to_string()),
        }
    }
}

/// The response to a stalled request head.
pub(crate) fn timed_out() -> Refused {
    Refused::new(408, "the request head did not arrive in time")
}

/// The response to requests for a web upstream that is not configured.
pub(crate) fn no_web_upstream(path: &str) -> Refused {
    Refused::new(
        404,
        format!("{path}: no web upstream is configured (upstreams.web)"),
    )
}

fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Decides on a `/webapi/connectionupgrade` request.
pub(crate) fn decide(req: &Request, trust_forwarded_for: bool) -> Result<Accepted, Refused> {
    if req.method != "GET" {
        return Err(Refused::new(
            405,
            format!("{UPGRADE_PATH} takes GET, not {}", req.method),
        ));
    }
    let forwarded_for = if trust_forwarded_for {
        forwarded_for(req)?
    } else {
        None
    };
    let mut offered = req.tokens("upgrade");
    offered.extend(req.tokens(&TELEPORT_UPGRADE_HEADER.to_ascii_lowercase()));
    if offered.is_empty() {
        return Err(Refused::new(
            400,
            "missing Upgrade header (want websocket, alpn-ping or alpn)",
        ));
    }
    let (kind, response) = if offered.iter().any(|t| t == WEBSOCKET) {
        websocket(req)?
    } else if offered.iter().any(|t| t == UPGRADE_ALPN_PING) {
        (Kind::AlpnPing, legacy_response(UPGRADE_ALPN_PING))
    } else if offered.iter().any(|t| t == UPGRADE_ALPN) {
        (Kind::Alpn, legacy_response(UPGRADE_ALPN))
    } else {
        return Err(Refused::new(
            400,
            format!(
                "unsupported upgrade type {:?} (want websocket, alpn-ping or alpn)",
                offered.join(", ")
            ),
        ));
    };
    Ok(Accepted {
        kind,
        response,
        forwarded_for,
    })
}

/// The RFC 6455 server handshake, with `alpn-ping` preferred over `alpn`.
fn websocket(req: &Request) -> Result<(Kind, Vec<u8>), Refused> {
    if !req.tokens("connection").iter().any(|t| t == "upgrade") {
        return Err(Refused::new(
            400,
            "websocket upgrade without `Connection: Upgrade`",
        ));
    }
    let version: Vec<&str> = req.all("sec-websocket-version").collect();
    if version != ["13"] {
        return Err(Refused::new(
            400,
            format!("Sec-WebSocket-Version must be 13, got {version:?}"),
        ));
    }
    let keys: Vec<&str> = req.all("sec-websocket-key").collect();
    let [key] = keys[..] else {
        return Err(Refused::new(
            400,
            "exactly one Sec-WebSocket-Key header is required",
        ));
    };
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(Refused::new(
                400,
                "Sec-WebSocket-Key must be the base64 of 16 bytes",
            ))
        }
    }
    let protocols = req.tokens("sec-websocket-protocol");
    let (kind, protocol) = if protocols.iter().any(|p| p == UPGRADE_ALPN_PING) {
        (Kind::WebSocketPing, UPGRADE_ALPN_PING)
    } else if protocols.iter().any(|p| p == UPGRADE_ALPN) {
        (Kind::WebSocket, UPGRADE_ALPN)
    } else {
        return Err(Refused::new(
            400,
            format!("Sec-WebSocket-Protocol must offer alpn-ping or alpn, got {protocols:?}"),
        ));
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    Ok((kind, response.into_bytes()))
}

fn legacy_response(kind: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {kind}\r\n{TELEPORT_UPGRADE_HEADER}: {kind}\r\nConnection: Upgrade\r\n\r\n"
    )
    .into_bytes()
}

/// The single trusted `X-Forwarded-For` value: `ip`, `ip:port` or `[v6]:port`. Two headers
/// or a list are refused: only the balancer in front is trusted, and it sends one value.
pub(crate) fn forwarded_for(req: &Request) -> Result<Option<ClientAddr>, Refused> {
    let values: Vec<&str> = req.all("x-forwarded-for").collect();
    let value = match values[..] {
        [] => return Ok(None),
        [v] => v,
        _ => {
            return Err(Refused::new(
                400,
                format!(
                    "{} X-Forwarded-For headers: exactly one is accepted",
                    values.len()
                ),
            ))
        }
    };
    if value.contains(',') {
        return Err(Refused::new(
            400,
            format!("X-Forwarded-For {value:?} is a list: exactly one address is accepted"),
        ));
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(Some(ClientAddr::Ip(ip)));
    }
    if let Ok(s) = value.parse::<SocketAddr>() {
        return Ok(Some(ClientAddr::Socket(s)));
    }
    Err(Refused::new(
        400,
        format!("X-Forwarded-For {value:?} is not an address (ip or ip:port)"),
    ))
}

/// The `/webapi/ping` answer: whether TLS routing is on, and the listeners.
pub(crate) fn ping_response(config: &Config) -> Vec<u8> {
    let p = &config.proxy_service;
    let multiplex = config.auth_service.proxy_listener_mode != Some(ListenerMode::Separate);
    let legacy: serde_json::Map<String, serde_json::Value> = config
        .legacy_listeners()
        .into_iter()
        .map(|(key, addr)| (key.to_owned(), addr.into()))
        .collect();
    let body = serde_json::json!({
        "proxy": {
            "tls_routing_enabled": multiplex,
            "listener_mode": if multiplex { "multiplex" } else { "separate" },
            "web_listen_addr": p.web_listen_addr,
            "public_addr": p.public_addr.as_ref().map(|a| a.to_vec()).unwrap_or_default(),
            "legacy_listeners": legacy,
            "connection_upgrade": UPGRADE_PATH,
        },
        "server_version": env!("CARGO_PKG_VERSION"),
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
#[path = "webapi_tests.rs"]
mod tests;
