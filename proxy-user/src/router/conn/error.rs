//! How a connection ends: [`Finished`] after a relay (or an answer of the proxy's own), or
//! a [`ConnError`] before (or instead of) relaying, with the metric outcome it counts as.
//! The caller (`listener`) logs either once, in the connection's span.

use crate::relay::RelayStats;
use crate::router::hello::HelloError;
use crate::router::webapi::Refused;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;
use tracing::Span;

/// Why a connection ended before (or instead of) relaying.
#[derive(Debug, Error)]
pub(crate) enum ConnError {
    #[error("no complete {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("client closed the connection during {0}")]
    ClosedEarly(&'static str),
    #[error("unrecognised first bytes: {0}")]
    Unknown(String),
    #[error("bad PROXY header: {0}")]
    BadProxy(String),
    #[error("PROXY header required (proxy_service.proxy_protocol: on) but the connection started without one")]
    ProxyRequired,
    #[error("PROXY header refused (proxy_service.proxy_protocol: off)")]
    ProxyForbidden,
    #[error("a second PROXY header is not allowed")]
    SecondProxy,
    #[error("PROXY header from {peer}, which is not in proxy_service.trusted_proxies (proxy_protocol: on takes headers only from the balancers)")]
    ProxyUntrusted { peer: SocketAddr },
    #[error("preface larger than {0} bytes (limits.max_hello_bytes)")]
    TooLarge(usize),
    #[error("bad ClientHello: {0}")]
    BadHello(#[from] HelloError),
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("route {route} refused: {reason}")]
    SourceRefused { route: String, reason: String },
    #[error("TLS handshake failed on route {route}: {error}")]
    Handshake {
        route: String,
        reason: &'static str,
        error: io::Error,
    },
    #[error("route {route}: taking the session out of rustls (to kTLS or the proxy's records) failed: {error}")]
    Ktls {
        route: String,
        error: crate::io::ktls::handover::HandOverError,
    },
    #[error("upstream {upstream} of route {route} unreachable: {error}")]
    Upstream {
        route: String,
        upstream: String,
        error: io::Error,
    },
    #[error("refused by the {class} budget: {reason} (limits.classes.{class})")]
    OverBudget {
        class: &'static str,
        reason: &'static str,
    },
    #[error("tunnel: {0}")]
    Tunnel(String),
    #[error("agent service {service}: {reason}")]
    Agent { service: String, reason: String },
    #[error("agent service {service}: {reason}")]
    AgentDenied { service: String, reason: String },
    #[error("connection upgrade refused: {0}")]
    Upgrade(Refused),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The connection carried by an upgrade failed: logged in its own span.
    #[error("{error}")]
    Inner { span: Span, error: Box<ConnError> },
}

impl ConnError {
    /// The `switchyard_detect_outcomes_total{outcome}` label for failures before routing.
    pub(crate) fn detect_outcome(&self) -> Option<&'static str> {
        Some(match self {
            ConnError::Timeout(..) => "timeout",
            ConnError::ClosedEarly(_) => "eof",
            ConnError::Unknown(_) => "unknown",
            ConnError::BadProxy(_) => "bad_proxy_header",
            ConnError::ProxyRequired => "proxy_required",
            ConnError::ProxyForbidden => "proxy_forbidden",
            ConnError::SecondProxy => "second_proxy_header",
            ConnError::ProxyUntrusted { .. } => "proxy_untrusted",
            ConnError::TooLarge(_) => "too_large",
            ConnError::BadHello(_) => "bad_client_hello",
            ConnError::Inner { error, .. } => return error.detect_outcome(),
            _ => return None,
        })
    }
}

/// A finished connection, for the closing log line.
pub(crate) struct Finished {
    pub(crate) route: String,
    pub(crate) stats: RelayStats,
    /// The span of the connection carried by an upgrade (its SNI, ALPN, route and
    /// identity), for the closing line; `None` for a direct connection.
    pub(crate) inner: Option<Span>,
}

impl Finished {
    /// A relayed connection.
    pub(crate) fn relayed(route: &str, stats: RelayStats) -> Finished {
        Finished {
            route: route.to_owned(),
            stats,
            inner: None,
        }
    }

    /// A connection the proxy answered itself, without an upstream.
    pub(crate) fn answered(route: &str, mode: &'static str, up: u64, down: u64) -> Finished {
        let stats = RelayStats {
            client_to_upstream: up,
            upstream_to_client: down,
            mode,
            ..RelayStats::default()
        };
        Finished::relayed(route, stats)
    }
}

/// The first bytes in hex, for the log line of unknown protocols.
pub(crate) fn hex_preview(bytes: &[u8]) -> String {
    let n = bytes.len().min(32);
    let mut s = hex::encode(&bytes[..n]);
    if bytes.len() > n {
        s.push('…');
    }
    s
}
