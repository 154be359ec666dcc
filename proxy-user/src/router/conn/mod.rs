//! One client connection of the single port, from accept to close: detect the protocol
//! (stripping PROXY headers), then hand it to the stage that routes it — [`tls`] (read the
//! ClientHello, route, pass through or terminate), [`plaintext`] (legacy SSH, HTTP and
//! Postgres), [`web`] (the web route's own endpoints and the connection upgrade) — and
//! [`upstream`] (dial, relay). Each stage returns what comes next, and this module chains
//! them: a terminated web connection goes to `web`, and the inner connection of an upgrade
//! comes back to `tls` as a connection of its own (one level deep).
//!
//! Everything before the relay reads through one [`Preface`] and runs under its one
//! [`Deadline`] (`limits.handshake_timeout`), so a slow or silent client costs a timer, not a
//! thread. Each failure is a [`ConnError`] with the metric outcome it counts as; the caller
//! logs it once in the connection's span.

mod error;
mod plaintext;
mod preface;
mod tls;
mod upstream;
mod web;

pub(crate) use error::{ConnError, Finished};
pub(crate) use plaintext::fixed;

use super::detect::{detect, Detected, PgRequest, ProxyHeader};
use super::http;
use super::metrics::Accepted;
use super::state::Proxy;
use crate::config::ProxyProtocol;
use crate::io::BoxedIo;
use error::hex_preview;
use preface::{Deadline, Preface};
use std::net::SocketAddr;
use std::sync::Arc;
use tls::Tls;
use tokio::net::TcpStream;
use tracing::{Instrument, Span};
use upstream::ClientIo;
use web::Web;

/// What detection found that can be routed: detection itself never returns anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routable {
    Tls,
    Ssh,
    Http,
    Postgres(PgRequest),
}

impl Routable {
    /// The `protocol` label of the accepted and active metrics.
    fn label(self) -> &'static str {
        match self {
            Routable::Tls => "tls",
            Routable::Ssh => "ssh",
            Routable::Http => "http",
            Routable::Postgres(_) => "postgres",
        }
    }
}

/// One answer of first-bytes detection.
enum Step {
    Proxy(ProxyHeader),
    Routable(Routable),
}

/// Detection of the bytes read so far: `None` while more are needed.
fn step(bytes: &[u8]) -> Result<Option<Step>, ConnError> {
    Ok(Some(match detect(bytes) {
        Detected::NeedMore => return Ok(None),
        Detected::Proxy(h) => Step::Proxy(h),
        Detected::BadProxy(m) => return Err(ConnError::BadProxy(m)),
        Detected::Unknown => return Err(ConnError::Unknown(hex_preview(bytes))),
        Detected::Tls => Step::Routable(Routable::Tls),
        Detected::Ssh => Step::Routable(Routable::Ssh),
        Detected::Http => Step::Routable(Routable::Http),
        Detected::Postgres(r) => Step::Routable(Routable::Postgres(r)),
    }))
}

/// Handles one connection accepted on the single port from `peer`.
pub(crate) async fn handle(
    proxy: &Arc<Proxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<Finished, ConnError> {
    let limits = &proxy.config.limits;
    let deadline = Deadline::after(limits.handshake_timeout);
    let mut pre = Preface::accepted(deadline, limits.max_hello_bytes);
    let policy = proxy.config.proxy_service.proxy_protocol;
    let mut header: Option<ProxyHeader> = None;
    let routable = loop {
        match pre
            .read_until(&mut stream, "protocol preface", step)
            .await?
        {
            Step::Routable(r) => break r,
            Step::Proxy(h) => {
                if policy == Some(ProxyProtocol::Off) {
                    return Err(ConnError::ProxyForbidden);
                }
                if header.is_some() {
                    return Err(ConnError::SecondProxy);
                }
                proxy.metrics.detect(if h.version == 1 {
                    "proxy_v1"
                } else {
                    "proxy_v2"
                });
                if let Some(src) = h.source {
                    Span::current().record("real_client", tracing::field::display(src));
                }
                pre.skip(h.len);
                header = Some(h);
            }
        }
    };
    if policy == Some(ProxyProtocol::On) && header.is_none() {
        return Err(ConnError::ProxyRequired);
    }
    pre.settle();
    let client = header.as_ref().and_then(|h| h.source).unwrap_or(peer);
    let ingress = if header.is_some() {
        "proxy_protocol"
    } else {
        "direct"
    };
    let protocol = routable.label();
    proxy.metrics.detect(protocol);
    proxy
        .metrics
        .accepted
        .get_or_create(&Accepted {
            ingress_path: ingress,
            protocol,
        })
        .inc();
    let _active = proxy.metrics.active_guard(protocol);
    let route = match routable {
        Routable::Tls => return tls_connection(proxy, stream, pre, client).await,
        Routable::Ssh => "ssh",
        Routable::Http => "web",
        Routable::Postgres(_) => "postgres",
    };
    match plaintext::plaintext(proxy, stream, pre, route).await? {
        plaintext::Plain::Done(done) => Ok(done),
        plaintext::Plain::Web(stream, pre, route) => {
            let conn = http::Conn {
                route: route.name.clone(),
                tls: false,
                h2: false,
                identity: None,
                client,
                upgrades: true,
            };
            web_connection(proxy, stream, pre, route, conn).await
        }
    }
}

/// A TLS connection on the socket, from `client` (as believed).
async fn tls_connection<C: ClientIo>(
    proxy: &Arc<Proxy>,
    stream: C,
    pre: Preface,
    client: SocketAddr,
) -> Result<Finished, ConnError> {
    match tls::tls(proxy, stream, pre).await? {
        Tls::Done(done) => Ok(done),
        Tls::Web {
            stream,
            preface,
            route,
            identity,
            h2,
        } => {
            let conn = http::Conn {
                route: route.name.clone(),
                tls: true,
                h2,
                identity,
                client,
                upgrades: true,
            };
            web_connection(proxy, stream, preface, route, conn).await
        }
    }
}

/// The web route; an upgrade's inner connection is routed in its own span, and the
/// closing line carries both.
async fn web_connection<C: ClientIo>(
    proxy: &Arc<Proxy>,
    stream: C,
    pre: Preface,
    route: &super::state::Route,
    conn: http::Conn,
) -> Result<Finished, ConnError> {
    let client = conn.client;
    match web::web(proxy, stream, pre, route, conn).await? {
        Web::Done(done) => Ok(done),
        Web::Upgraded {
            tunnel,
            preface,
            span,
            forwarded_for,
        } => {
            let client = forwarded_for.map_or(client, |a| a.socket());
            let inner = inner_connection(proxy, tunnel, preface, client);
            let done = inner.instrument(span.clone()).await?;
            Ok(Finished {
                inner: Some(span),
                ..done
            })
        }
    }
}

/// The TLS connection inside an upgrade, routed like a direct one, one level deep: its
/// web route and apps are HTTP that does not upgrade again.
async fn inner_connection(
    proxy: &Arc<Proxy>,
    tunnel: BoxedIo,
    pre: Preface,
    client: SocketAddr,
) -> Result<Finished, ConnError> {
    match tls::tls(proxy, tunnel, pre).await? {
        Tls::Done(done) => Ok(done),
        Tls::Web {
            stream,
            preface,
            route,
            identity,
            h2,
        } => {
            let conn = http::Conn {
                route: route.name.clone(),
                tls: true,
                h2,
                identity,
                client,
                upgrades: false,
            };
            match web::web(proxy, stream, preface, route, conn).await? {
                Web::Done(done) => Ok(done),
                // `upgrades: false`: HTTP refuses the upgrade, so no tunnel comes back.
                Web::Upgraded { .. } => Err(ConnError::NoRoute(
                    "a connection upgrade inside an upgrade".into(),
                )),
            }
        }
    }
}
