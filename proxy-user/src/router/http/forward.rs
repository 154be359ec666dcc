//! Forwarding one request to its upstream and its answer back: the request's method,
//! path, host and body (streamed both ways) kept, hop-by-hop fields dropped,
//! `X-Forwarded-*` set, an app's own upgrade (WebSocket) passed through to an HTTP/1.1
//! upstream, and a `502` naming the upstream when it does not answer.

use super::body::Received;
use super::headers::{self, Forwarded};
use super::pages::page;
use super::pool::{Body, BoxError, Upstream};
use super::{Handoff, Shared};
use crate::router::conn::ConnError;
use crate::router::metrics::UpstreamLabel;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tracing::{debug, error};

/// Sends a request on to `up` and streams its answer back.
pub(super) async fn forward(
    sh: &Shared,
    up: &Upstream,
    mut req: Request<Incoming>,
    authority: Option<&str>,
    received: &Arc<AtomicU64>,
) -> Response<Body> {
    let version = req.version();
    let upgrade = version == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    if upgrade && !up.is_http1() {
        let m = format!(
            "501 Not Implemented: {} speaks HTTP/2; an HTTP/1.1 upgrade cannot be passed to it",
            up.route
        );
        return page(StatusCode::NOT_IMPLEMENTED, &m, false);
    }
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = match up.uri(parts.uri.path_and_query()) {
        Ok(u) => u,
        Err(e) => {
            let m = format!("400 Bad Request: request target {:?}: {e}", parts.uri);
            return page(StatusCode::BAD_REQUEST, &m, true);
        }
    };
    parts.version = up.version();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // hyper has answered `Expect: 100-continue` to the client when the body was first read.
    parts.headers.remove(header::EXPECT);
    let forwarded = Forwarded {
        client: sh.conn.client.ip(),
        proto: if sh.conn.tls { "https" } else { "http" },
        host: authority,
        trust_incoming: sh.conn.xff.believed(),
    };
    headers::set_forwarded(&mut parts.headers, &forwarded);
    match authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        // HTTP/2 clients name the host in `:authority` only; an HTTP/1.1 upstream gets it
        // as Host. An HTTP/2 upstream gets the upstream's address as `:authority` (and the
        // client's host in X-Forwarded-Host): a Host beside it is a duplicate to nginx.
        Some(v) if up.is_http1() => {
            parts.headers.insert(header::HOST, v);
        }
        _ => {
            parts.headers.remove(header::HOST);
        }
    }
    let body = Received {
        inner: body,
        received: received.clone(),
    };
    let mut resp = match up
        .send(
            &sh.proxy,
            &sh.conn,
            Request::from_parts(parts, body.boxed()),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return bad_gateway(sh, up, &e),
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_side) {
        (true, Some(client)) => {
            let upstream = hyper::upgrade::on(&mut resp);
            let copy = async move {
                let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
                    debug!("an upgraded request ended before both sides switched");
                    return;
                };
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                debug!(result = ?r, "upgraded request closed");
            };
            if let Ok(mut slot) = sh.handoff.lock() {
                *slot = Some(Handoff::App(Box::pin(copy)));
            }
        }
        (true, None) => {
            let m = format!(
                "502 Bad Gateway: {} answered 101 to a request that asked for no upgrade",
                up.route
            );
            return page(StatusCode::BAD_GATEWAY, &m, true);
        }
        _ => {}
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    // The client's version, not the upstream's (an HTTP/1.0 server's answer to an
    // HTTP/1.1 or h2 client is still written in the client's version).
    *resp.version_mut() = version;
    resp
}

/// The answer when the upstream cannot be reached or fails mid-request: `502`, counted,
/// and one line naming the route and the address (rate-limited).
fn bad_gateway(sh: &Shared, up: &Upstream, e: &BoxError) -> Response<Body> {
    if let Some(ConnError::AgentDenied { service, reason }) = e.downcast_ref::<ConnError>() {
        let m = format!("403 Forbidden: {service}: {reason}");
        return page(StatusCode::FORBIDDEN, &m, false);
    }
    let label = UpstreamLabel {
        route: up.route.clone(),
    };
    sh.proxy.metrics.upstream_errors.get_or_create(&label).inc();
    let why = chain(e.as_ref());
    if let Some(suppressed) = sh.proxy.noise.allow() {
        error!(suppressed, route = %up.route, upstream = %up.addr(), "HTTP upstream failed: {why}");
    }
    let m = format!(
        "502 Bad Gateway: {} ({}) did not answer: {why}",
        up.route,
        up.addr()
    );
    page(StatusCode::BAD_GATEWAY, &m, false)
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}
