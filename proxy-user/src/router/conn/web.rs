//! The web route after TLS (or as plaintext HTTP): the request line decides between the
//! proxy's own endpoints (`webapi`) and the web upstream, which then gets the connection
//! byte for byte. A connection upgrade (`/webapi/connectionupgrade`) turns the rest of the
//! connection into a tunnel whose bytes re-enter detection and routing as a connection of
//! their own (one level deep: a tunnel's web route does not upgrade again), under the same
//! deadline as everything before it.

use super::error::{hex_preview, ConnError, Finished};
use super::preface::Preface;
use super::upstream::{connect, relay_client, ClientIo};
use crate::io::{wire, BoxedIo, Prefixed};
use crate::router::detect::{detect, Detected};
use crate::router::metrics::Accepted;
use crate::router::state::Proxy;
use crate::router::state::Route;
use crate::router::webapi::{self, Kind, Refused, Target};
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
    },
}

/// The web route: `pre` holds request bytes already read from `client` (plaintext HTTP)
/// or none yet (after TLS).
pub(crate) async fn web<C: ClientIo>(
    proxy: &Proxy,
    mut client: C,
    mut pre: Preface,
    route: &Route,
) -> Result<Web, ConnError> {
    let limits = &proxy.config.limits;
    let max = limits.max_hello_bytes;
    let request_line = |b: &[u8]| {
        let target = webapi::target(b).or((b.len() >= max).then_some(Target::Other));
        Ok::<_, ConnError>(target)
    };
    let target = match pre
        .read_until(&mut client, "HTTP request", request_line)
        .await
    {
        Ok(t) => t,
        // A client that sent part of a request line and its EOF: the upstream answers it.
        Err(ConnError::ClosedEarly(_)) if !pre.rest().is_empty() => Target::Other,
        Err(e) => return Err(e),
    };
    if target == Target::Other {
        if route.upstream.is_none() {
            let refused = webapi::no_web_upstream(request_path(pre.rest()));
            respond(&mut client, &refused.response()).await;
            return Err(ConnError::NoRoute(refused.reason));
        }
        let mut upstream = connect(proxy, route).await?;
        upstream.write_all(pre.rest()).await?;
        let (consumed, sent) = (pre.consumed(), pre.rest().len() as u64);
        let mut stats = relay_client(client, upstream, consumed, limits.relay_buffer_bytes).await;
        stats.client_to_upstream += sent;
        return Ok(Web::Done(Finished::relayed(&route.name, stats)));
    }
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
    if target == Target::Ping {
        let answer = webapi::ping_response(&proxy.config);
        respond(&mut client, &answer).await;
        let (up, down) = (pre.rest().len() as u64, answer.len() as u64);
        return Ok(Web::Done(Finished::answered(
            &route.name,
            "answered",
            up,
            down,
        )));
    }
    let trust = proxy.config.proxy_service.trust_x_forwarded_for;
    let accepted = match webapi::decide(&request, trust) {
        Ok(a) => a,
        Err(refused) => return Err(refuse(proxy, &mut client, refused).await),
    };
    client.write_all(&accepted.response).await?;
    client.flush().await?;
    let kind = accepted.kind;
    let span = Span::current();
    span.record("upgrade", kind.label());
    if let Some(addr) = accepted.forwarded_for {
        // On the outer span: every line of the connection, the closing one included.
        span.record("real_client", field::display(addr));
    }
    proxy.metrics.upgrade(kind.label(), "accepted");
    debug!(upgrade = kind.label(), "connection upgraded");
    let inner_pre = pre.inner();
    let leftover = pre.into_rest().split_off(request.len);
    let io = Prefixed::new(leftover, client);
    let ping = kind.pings().then_some(limits.ping_interval);
    let max_frame = limits.max_ws_frame_bytes;
    let tunnel: BoxedIo = match kind {
        Kind::WebSocket | Kind::WebSocketPing => {
            let config = wire::ws_config(max_frame);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            Box::new(wire::websocket(ws, ping))
        }
        Kind::AlpnPing => Box::new(wire::ping_framed(io, ping, max_frame)),
        Kind::Alpn => Box::new(io),
    };
    let tunnel_span = info_span!(
        "tunnel",
        sni = field::Empty,
        alpn = field::Empty,
        negotiated = field::Empty,
        route = field::Empty,
        identity = field::Empty,
    );
    let (tunnel, preface) = inner(proxy, tunnel, inner_pre, kind)
        .instrument(tunnel_span.clone())
        .await?;
    Ok(Web::Upgraded {
        tunnel,
        preface,
        span: tunnel_span,
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

/// The path of a request line, for messages.
fn request_path(read: &[u8]) -> &str {
    let line = read
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
}
