//! The upgrade request and the checking of the server's answer, pure (strings out, bytes
//! in): the `GET /webapi/connectionupgrade` of each [`UpgradeMode`], the parsing of the
//! response head ([`parse_head`]: `Ok(None)` until the head is complete), the checks of a
//! `101` and a refusal in one line (docs/balancers.md).

use crate::protocol::{
    TELEPORT_UPGRADE_HEADER, UPGRADE_ALPN as PLAIN, UPGRADE_ALPN_PING as PING, UPGRADE_PATH,
};
use clap::ValueEnum;
use std::fmt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

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
        .or_else(|| head.header(TELEPORT_UPGRADE_HEADER))
        .unwrap_or("")
        .to_ascii_lowercase();
    match upgrade.as_str() {
        PING | PLAIN => Ok(upgrade),
        other => Err(format!("101 with Upgrade {other:?} (alpn-ping expected)")),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
