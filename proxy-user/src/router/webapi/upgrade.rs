//! `GET /webapi/connectionupgrade` (`docs/balancers.md`): which upgrade a request asks for and
//! the `101 Switching Protocols` that answers it. `Upgrade: websocket` with
//! `Sec-WebSocket-Protocol: alpn|alpn-ping` (RFC 6455) is preferred, then the legacy
//! `Upgrade: alpn-ping`, then `alpn` (the type may also come in `X-Teleport-Upgrade`, for
//! balancers that drop `Upgrade`). `X-Forwarded-For` is judged by [`super::forwarded`].

use super::forwarded::{forwarded_for, Forwarded, Xff};
use super::head::Request;
use super::Refused;
use crate::config::Nets;
use crate::protocol::{
    TELEPORT_UPGRADE_HEADER, UPGRADE_ALPN, UPGRADE_ALPN_PING, UPGRADE_PATH, WEBSOCKET,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

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

/// Header fields of a response, name and value, in order.
pub(crate) type Fields = Vec<(&'static str, String)>;

/// An accepted upgrade: what to write back and how the inner bytes travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) kind: Kind,
    /// The `101` response's header fields.
    pub(crate) headers: Fields,
    /// What `X-Forwarded-For` said, as judged.
    pub(crate) forwarded_for: Forwarded,
}

impl Accepted {
    /// The whole `101` response head, for a connection the proxy writes to itself.
    pub(crate) fn response(&self) -> Vec<u8> {
        let mut s = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in &self.headers {
            s.push_str(&format!("{name}: {value}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Decides on a `/webapi/connectionupgrade` request; `xff` and the trusted proxies judge
/// its `X-Forwarded-For`.
pub(crate) fn decide(req: &Request, xff: Xff, trusted: &Nets) -> Result<Accepted, Refused> {
    if req.method != "GET" {
        return Err(Refused::new(
            405,
            format!("{UPGRADE_PATH} takes GET, not {}", req.method),
        ));
    }
    let forwarded_for = forwarded_for(req, xff, trusted)?;
    let mut offered = req.tokens("upgrade");
    offered.extend(req.tokens(TELEPORT_UPGRADE_HEADER));
    if offered.is_empty() {
        return Err(Refused::new(
            400,
            "missing Upgrade header (want websocket, alpn-ping or alpn)",
        ));
    }
    let (kind, headers) = if offered.iter().any(|t| t == WEBSOCKET) {
        websocket(req)?
    } else if offered.iter().any(|t| t == UPGRADE_ALPN_PING) {
        (Kind::AlpnPing, legacy_headers(UPGRADE_ALPN_PING))
    } else if offered.iter().any(|t| t == UPGRADE_ALPN) {
        (Kind::Alpn, legacy_headers(UPGRADE_ALPN))
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
        headers,
        forwarded_for,
    })
}

/// The RFC 6455 server handshake, with `alpn-ping` preferred over `alpn`.
fn websocket(req: &Request) -> Result<(Kind, Fields), Refused> {
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
    let headers = vec![
        ("Upgrade", WEBSOCKET.to_owned()),
        ("Connection", "Upgrade".to_owned()),
        ("Sec-WebSocket-Accept", derive_accept_key(key.as_bytes())),
        ("Sec-WebSocket-Protocol", protocol.to_owned()),
    ];
    Ok((kind, headers))
}

fn legacy_headers(kind: &str) -> Fields {
    vec![
        ("Upgrade", kind.to_owned()),
        (TELEPORT_UPGRADE_HEADER, kind.to_owned()),
        ("Connection", "Upgrade".to_owned()),
    ]
}
