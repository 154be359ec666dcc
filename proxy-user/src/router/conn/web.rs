//! The web route and the HTTP apps after TLS (or as plaintext HTTP): HTTP is served by
//! `router::http` (the proxy's own endpoints, the web upstream, the apps), except that a
//! first request for `/webapi/connectionupgrade` is answered here from its bytes. A
//! connection upgrade — first request or later — turns the rest of the connection into a
//! tunnel whose bytes re-enter detection and routing as a connection of their own (one
//! level deep: a tunnel's web route does not upgrade again).

use super::error::{hex_preview, ConnError, Finished};
use super::preface::Preface;
use super::upstream::ClientIo;
use crate::io::{wire, BoxedIo, Prefixed};
use crate::router::detect::{detect, Detected};
use crate::router::http::{self, Served};
use crate::router::metrics::Accepted;
use crate::router::route::Role as RouteRole;
use crate::router::state::{Proxy, Route};
use crate::router::webapi::{self, Forwarded, Kind, Refused, Target};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, field, info_span, Instrument, Span};

/// How the web route goes on after [`web`].
pub(crate) enum Web {
    /// Relayed to the web upstream, or answered: over.
    Done(Finished),
    /// Upgraded: the inner connection, already detected as TLS, comes next — with the
    /// bytes read so far in `preface` and the `span` it is logged in.
    Upgraded {
        tunnel: BoxedIo,
        preface: Preface,
        span: Span,
        /// What the upgrade's `X-Forwarded-For` said, as judged.
        forwarded_for: Forwarded,
    },
}

/// The web route or an HTTP app: `pre` holds request bytes already read from `client`
/// (plaintext HTTP) or none yet (after TLS). A first request for the connection upgrade is
/// answered here from its bytes, under the connection's one deadline; everything else is
/// HTTP served by `router::http`, which may hand back an upgrade asked for later.
pub(crate) async fn web<C: ClientIo>(
    proxy: &Arc<Proxy>,
    mut client: C,
    mut pre: Preface,
    route: &Route,
    conn: http::Conn,
) -> Result<Web, ConnError> {
    let max = proxy.config.limits.max_hello_bytes;
    if conn.upgrades && !conn.h2 && route.role == RouteRole::Web {
        let request_line = |b: &[u8]| {
            let target = webapi::target(b).or((b.len() >= max).then_some(Target::Other));
            Ok::<_, ConnError>(target)
        };
        let target = match pre
            .read_until(&mut client, "HTTP request", request_line)
            .await
        {
            Ok(t) => t,
            // A client that sent part of a request line and its EOF: HTTP answers it.
            Err(ConnError::ClosedEarly(_)) if !pre.rest().is_empty() => Target::Other,
            Err(e) => return Err(e),
        };
        if target == Target::Upgrade {
            return first_upgrade(proxy, client, pre, &conn).await;
        }
    }
    let first_by = pre.deadline.at();
    let inner_pre = pre.restarted(proxy.config.limits.handshake_timeout);
    let io = Prefixed::new(pre.into_rest(), client);
    let (served, (up, down)) = http::serve(proxy.clone(), conn, io, first_by).await?;
    match served {
        Served::Closed => Ok(Web::Done(Finished::answered(&route.name, "http", up, down))),
        Served::Tunnel {
            io,
            kind,
            forwarded_for,
        } => tunnel(proxy, Box::new(io), inner_pre, kind, forwarded_for).await,
    }
}

/// The connection upgrade as the first request: its head read from bytes (so a balancer
/// that drops `Upgrade` and sends only `X-Teleport-Upgrade` still works), the `101`
/// written, the rest of the connection a tunnel.
async fn first_upgrade<C: ClientIo>(
    proxy: &Proxy,
    mut client: C,
    mut pre: Preface,
    conn: &http::Conn,
) -> Result<Web, ConnError> {
    let max = proxy.config.limits.max_hello_bytes;
    let head = pre.read_until(&mut client, "HTTP request head", |b| {
        // A malformed head is an answer too: the refusal to write back.
        Ok::<_, ConnError>(webapi::parse(b, max).map_err(Refused::from).transpose())
    });
    let request = match head.await {
        Ok(Ok(r)) => r,
        Ok(Err(refused)) => return Err(refuse(proxy, &mut client, refused).await),
        Err(ConnError::Timeout(..)) => {
            return Err(refuse(proxy, &mut client, webapi::timed_out()).await)
        }
        Err(e) => return Err(e),
    };
    let trusted = &proxy.config.proxy_service.trusted_proxies;
    let accepted = match webapi::decide(&request, conn.xff, trusted) {
        Ok(a) => a,
        Err(refused) => return Err(refuse(proxy, &mut client, refused).await),
    };
    client.write_all(&accepted.response()).await?;
    client.flush().await?;
    let inner_pre = pre.inner();
    let leftover = pre.into_rest().split_off(request.len);
    let io: BoxedIo = Box::new(Prefixed::new(leftover, client));
    tunnel(proxy, io, inner_pre, accepted.kind, accepted.forwarded_for).await
}

/// An accepted upgrade: the tunnel's framing, then the inner connection's detection in
/// a span of its own, which carries the client a trusted `X-Forwarded-For` names
/// (`client_from=x_forwarded_for`) or what an untrusted one claimed.
async fn tunnel(
    proxy: &Proxy,
    io: BoxedIo,
    inner_pre: Preface,
    kind: Kind,
    forwarded_for: Forwarded,
) -> Result<Web, ConnError> {
    let limits = &proxy.config.limits;
    let span = Span::current();
    span.record("upgrade", kind.label());
    proxy.metrics.upgrade(kind.label(), "accepted");
    debug!(upgrade = kind.label(), "connection upgraded");
    let ping = kind.pings().then_some(limits.ping_interval);
    let max_frame = limits.max_ws_frame_bytes;
    let tunnel: BoxedIo = match kind {
        Kind::WebSocket | Kind::WebSocketPing => {
            let config = wire::ws_config(max_frame);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            Box::new(wire::websocket(ws, ping))
        }
        Kind::AlpnPing => Box::new(wire::ping_framed(io, ping, max_frame)),
        Kind::Alpn => io,
    };
    let tunnel_span = info_span!(
        "tunnel",
        client = field::Empty,
        client_from = field::Empty,
        claimed_client = field::Empty,
        sni = field::Empty,
        alpn = field::Empty,
        negotiated = field::Empty,
        route = field::Empty,
        service = field::Empty,
        identity = field::Empty,
    );
    match forwarded_for {
        Forwarded::Believed(addr) => {
            tunnel_span.record("client", field::display(addr));
            tunnel_span.record("client_from", field::display("x_forwarded_for"));
            proxy.metrics.claim("x_forwarded_for", "believed");
        }
        Forwarded::Claimed(addr) => {
            tunnel_span.record("claimed_client", field::display(addr));
            proxy.metrics.claim("x_forwarded_for", "ignored");
        }
        Forwarded::None => {}
    }
    let detected = inner(proxy, tunnel, inner_pre, kind)
        .instrument(tunnel_span.clone())
        .await;
    let (tunnel, preface) = match detected {
        Ok(d) => d,
        Err(error) => {
            return Err(ConnError::Inner {
                span: tunnel_span,
                error: Box::new(error),
            })
        }
    };
    Ok(Web::Upgraded {
        tunnel,
        preface,
        span: tunnel_span,
        forwarded_for,
    })
}

/// The connection carried by an upgrade: detection again (it must be TLS), counted as
/// accepted on the upgrade's ingress path; routing follows as for a direct connection.
async fn inner(
    proxy: &Proxy,
    mut tunnel: BoxedIo,
    mut pre: Preface,
    kind: Kind,
) -> Result<(BoxedIo, Preface), ConnError> {
    let stage = "TLS inside the upgrade";
    pre.read_until(&mut tunnel, stage, |b| match detect(b) {
        Detected::NeedMore => Ok(None),
        Detected::Tls => Ok(Some(())),
        _ => Err(ConnError::Unknown(hex_preview(b))),
    })
    .await?;
    proxy
        .metrics
        .accepted
        .get_or_create(&Accepted {
            ingress_path: kind.label(),
            protocol: "tls",
        })
        .inc();
    Ok((tunnel, pre))
}

/// Answers a refused request, counts it, and returns the error to log.
async fn refuse<S: AsyncWrite + Unpin>(proxy: &Proxy, client: &mut S, r: Refused) -> ConnError {
    proxy.metrics.upgrade("none", r.outcome());
    respond(client, &r.response()).await;
    ConnError::Upgrade(r)
}

/// Writes a whole response and closes the sending side, best effort.
async fn respond<S: AsyncWrite + Unpin>(client: &mut S, response: &[u8]) {
    let _ = client.write_all(response).await;
    let _ = client.shutdown().await;
}

/// What HTTP knows of a connection from `client`: its `X-Forwarded-For` is judged by
/// whether `client` is a trusted proxy.
pub(super) fn http_conn(
    proxy: &Proxy,
    route: &crate::router::state::Route,
    tls: bool,
    h2: bool,
    identity: Option<crate::io::tls::CertIdentity>,
    client: &crate::router::trust::Client,
    upgrades: bool,
) -> http::Conn {
    let service = &proxy.config.proxy_service;
    http::Conn {
        route: route.name.clone(),
        tls,
        h2,
        identity: identity.as_ref().map(|i| i.to_string()),
        cert: identity,
        client: client.addr.socket(),
        xff: crate::router::webapi::Xff {
            mode: service.trust_x_forwarded_for,
            sender_trusted: service.trusted_proxies.contains(client.addr.ip()),
        },
        upgrades,
    }
}
