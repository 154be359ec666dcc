//! The web route's own endpoints, answered by the proxy before anything reaches the web
//! upstream (`docs/config.md`, `docs/balancers.md`):
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
//! Both are answered on any request of a web-route connection (`router::http`); the first
//! request of a connection that asks for the upgrade is read here from bytes, so it keeps
//! the connection's one deadline and works when a balancer drops the `Upgrade` header.
//!
//! These modules are the pure part: [`target`] classifies the request line, [`head`] reads
//! request heads from bytes, [`upgrade`] decides on an upgrade, [`forwarded`] judges its
//! `X-Forwarded-For`; the caller (`conn::web`)
//! owns the sockets. A refusal is a [`Refused`] with the status and the reason, written
//! back as a short `text/plain` response.

mod forwarded;
mod head;
mod upgrade;

pub(crate) use forwarded::{Forwarded, Xff};
pub(crate) use head::Request;
pub(crate) use head::{parse, HeadError};
pub(crate) use upgrade::{decide, Kind};

use crate::config::{Config, ListenerMode};
use crate::protocol::{PING_PATH, UPGRADE_PATH};
use http::StatusCode;
use thiserror::Error;

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

/// A refused request: the status and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status} {reason}")]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) reason: String,
}

impl Refused {
    pub(crate) fn new(status: u16, reason: impl Into<String>) -> Refused {
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

/// The reason phrase of a status code.
fn status_text(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// The `/webapi/ping` JSON: whether TLS routing is on, and the listeners.
pub(crate) fn ping_body(config: &Config) -> String {
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
    body
}

#[cfg(test)]
mod tests;
