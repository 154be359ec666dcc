//! One request on the HTTP front door. Which server it is for comes from the connection
//! (accepted for an app by SNI, or for the web route) and the request's host:
//!
//! - on an app's connection, the app (a request for another host gets `421`, so the
//!   browser opens a connection with the right server name);
//! - on the web route, a host that is an app's gets `421` over TLS (its own TLS settings
//!   and allow list apply only on its own connection) and is served over plaintext unless
//!   the app asks for a client certificate (`403`); a name under a public address that a
//!   connected agent serves goes through its tunnel; another unknown name gets `404`; the
//!   proxy's own names get `/webapi/ping`, `/webapi/connectionupgrade`, then `upstreams.web`.
//!
//! Forwarding is `forward`'s.

use super::body::{Line, Logged};
use super::forward::forward;
use super::front::Host;
use super::headers;
use super::pages::{empty, full, page};
use super::{Handoff, Shared};
use crate::io::tunnel::{Kind, Service};
use crate::protocol::{PING_PATH, UPGRADE_PATH};
use crate::router::metrics::HttpRoute;
use crate::router::webapi::{self, Refused};
use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::warn;

/// Answers one request; the access-log line is written when the response body ends.
pub(super) async fn handle(
    sh: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Logged>, Infallible> {
    sh.stats.begin();
    let started = Instant::now();
    let authority = headers::authority(&req);
    let host = authority.as_deref().map(headers::host_name);
    let method = req.method().clone();
    let logged = tracing::enabled!(target: "switchyard::access", tracing::Level::INFO);
    let path = if logged {
        req.uri().path().to_owned()
    } else {
        String::new()
    };
    let received = Arc::new(AtomicU64::new(0));
    let (route, resp) = respond(&sh, req, host.as_deref(), authority.as_deref(), &received).await;
    let line = Line {
        span: sh.span.clone(),
        route,
        method,
        host: host.filter(|_| logged).unwrap_or_default(),
        path,
        status: resp.status().as_u16(),
        identity: sh.conn.identity.clone(),
        started,
        received,
    };
    Ok(resp.map(|b| Logged::new(b, line, sh.stats.clone())))
}

/// The route a request counts under and its response.
async fn respond(
    sh: &Shared,
    req: Request<Incoming>,
    host: Option<&str>,
    authority: Option<&str>,
    received: &Arc<AtomicU64>,
) -> (Arc<HttpRoute>, Response<super::pool::Body>) {
    let front = &sh.proxy.front;
    if req.method() == Method::CONNECT {
        let m = "405 Method Not Allowed: this proxy does not tunnel CONNECT requests";
        return (
            front.none_route.clone(),
            page(StatusCode::METHOD_NOT_ALLOWED, m, true),
        );
    }
    if let Some(a) = authority.filter(|a| a.contains('@') || a.parse::<Authority>().is_err()) {
        let m = format!("400 Bad Request: {a:?} is not a host name or address");
        return (
            front.none_route.clone(),
            page(StatusCode::BAD_REQUEST, &m, true),
        );
    }
    if let Some(app) = front.app_of_route(&sh.conn.route) {
        let route = app.route.clone();
        if let Some(h) = host.filter(|h| *h != app.host) {
            let m = format!(
                "421 Misdirected Request: this connection is for app {} ({}), not {h}: \
                 connect to {h} by its own name",
                app.name, app.host
            );
            return (route, page(StatusCode::MISDIRECTED_REQUEST, &m, false));
        }
        return (
            route,
            forward(sh, &app.upstream, req, authority, received).await,
        );
    }
    match front.host(host) {
        Host::App(app) if sh.conn.tls => {
            let m = format!(
                "421 Misdirected Request: {} is app {}; connect to it by its name \
                 (TLS server name {}), not on this connection",
                app.host, app.name, app.host
            );
            let route = app.route.clone();
            (route, page(StatusCode::MISDIRECTED_REQUEST, &m, false))
        }
        Host::App(app) if app.client_cert => {
            let m = format!(
                "403 Forbidden: app {} asks for a client certificate: use https://{}/",
                app.name, app.host
            );
            let route = app.route.clone();
            (route, page(StatusCode::FORBIDDEN, &m, false))
        }
        Host::App(app)
            if app
                .allow_from
                .as_ref()
                .is_some_and(|r| !r.allows(sh.conn.client.ip())) =>
        {
            let m = format!(
                "403 Forbidden: app {} does not accept clients from {} (its allow_from)",
                app.name,
                sh.conn.client.ip()
            );
            let route = app.route.clone();
            (route, page(StatusCode::FORBIDDEN, &m, false))
        }
        Host::App(app) => {
            let route = app.route.clone();
            (
                route,
                forward(sh, &app.upstream, req, authority, received).await,
            )
        }
        Host::Unknown if agent_app(sh, host).is_some() => {
            let up = agent_app(sh, host).expect("checked");
            let route = sh.proxy.metrics.http_route(&up.route);
            (route, forward(sh, &up, req, authority, received).await)
        }
        Host::Unknown => {
            let apps: Vec<&str> = front.app_hosts().collect();
            let m = format!(
                "404 Not Found: no app is named {} on this proxy (apps: {}; no connected agent serves it)",
                host.unwrap_or_default(),
                if apps.is_empty() {
                    "none".to_owned()
                } else {
                    apps.join(", ")
                }
            );
            (
                front.none_route.clone(),
                page(StatusCode::NOT_FOUND, &m, false),
            )
        }
        Host::Proxy => (
            front.web_route.clone(),
            web(sh, req, authority, received).await,
        ),
    }
}

/// The agent's HTTP app `host` names, when a connected agent serves it.
fn agent_app(sh: &Shared, host: Option<&str>) -> Option<super::pool::Upstream> {
    let name = sh.proxy.front.agent_name(host?)?;
    let service = Service {
        kind: Kind::Http,
        name: name.to_owned(),
    };
    sh.proxy
        .tunnels
        .serves(&service)
        .then(|| super::pool::Upstream::agent(name))
}

/// The web route: the proxy's own endpoints, then `upstreams.web`.
async fn web(
    sh: &Shared,
    mut req: Request<Incoming>,
    authority: Option<&str>,
    received: &Arc<AtomicU64>,
) -> Response<super::pool::Body> {
    match req.uri().path() {
        PING_PATH => {
            let mut r = Response::new(full(webapi::ping_body(&sh.proxy.config)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        UPGRADE_PATH => upgrade(sh, &mut req),
        _ => match &sh.proxy.front.web {
            Some(up) => forward(sh, up, req, authority, received).await,
            None => {
                let r = webapi::no_web_upstream(req.uri().path());
                page(status(r.status), &r.to_string(), false)
            }
        },
    }
}

/// `/webapi/connectionupgrade` on a request after the first of its connection (the first
/// is answered before HTTP is served, `conn::web`): the tunnel is handed to the caller.
fn upgrade(sh: &Shared, req: &mut Request<Incoming>) -> Response<super::pool::Body> {
    let refusal = if !sh.conn.upgrades {
        Some(Refused::new(
            400,
            "a connection upgrade cannot be nested in another",
        ))
    } else if req.version() != Version::HTTP_11 {
        Some(Refused::new(
            400,
            format!(
                "the connection upgrade needs HTTP/1.1, not {:?}",
                req.version()
            ),
        ))
    } else if !req.headers().contains_key(header::UPGRADE) {
        Some(Refused::new(
            400,
            "missing Upgrade header (want websocket, alpn-ping or alpn)",
        ))
    } else {
        None
    };
    let head = webapi::Request::from_http(req.method().as_str(), req.headers());
    let trusted = &sh.proxy.config.proxy_service.trusted_proxies;
    let decided = || webapi::decide(&head, sh.conn.xff, trusted);
    let accepted = match refusal.map_or_else(decided, Err) {
        Ok(a) => a,
        Err(r) => {
            sh.proxy.metrics.upgrade("none", r.outcome());
            if let Some(suppressed) = sh.proxy.noise.allow() {
                warn!(
                    suppressed,
                    status = r.status,
                    "connection upgrade refused: {r}"
                );
            }
            return page(status(r.status), &r.to_string(), true);
        }
    };
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in &accepted.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().append(*name, v);
        }
    }
    let handoff = Handoff::Tunnel {
        on: hyper::upgrade::on(req),
        kind: accepted.kind,
        forwarded_for: accepted.forwarded_for,
    };
    if let Ok(mut slot) = sh.handoff.lock() {
        *slot = Some(handoff);
    }
    r
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}
