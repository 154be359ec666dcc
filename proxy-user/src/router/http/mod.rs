//! The HTTP front door of the web route and the HTTP apps (`docs/config.md`, `apps`): the
//! proxy terminates HTTP (hyper's server, HTTP/1.1 and HTTP/2 on the same connection
//! types) and sends each request on to the upstream it is for, over pooled connections in
//! whatever the upstream speaks. Every request is looked at, not only the first of a
//! connection: the proxy's own endpoints (`/webapi/ping`, `/webapi/connectionupgrade`)
//! answer on any request of a kept-alive connection of the web route.
//!
//! - [`Front`] (built with each `Proxy`): the web upstream, the apps and their host names.
//! - [`serve`]: one connection under its limits (idle time, head size, h2 streams), ending
//!   either closed or handing back the tunnel of an accepted connection upgrade.
//! - `service`: one request — which upstream or endpoint, the access log line;
//!   `forward`: sending it on to its upstream.
//! - `headers` (pure): hop-by-hop fields, `X-Forwarded-*`, the request's host.
//! - `body`: counting bodies and the per-request log line; `pages`: the proxy's answers.
//! - `pool`: the upstreams' connection pools (`h1pool` for plaintext HTTP/1.1).

mod body;
mod forward;
mod front;
mod h1pool;
mod headers;
mod pages;
mod pool;
mod service;

pub(crate) use front::Front;

use crate::router::conn::ConnError;
use crate::router::state::Proxy;
use crate::router::webapi::{Forwarded, Kind, Xff};
use body::Stats;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, Instrument, Span};

/// What is known of one HTTP connection before its first request.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// `web` or `app:<name>`: the route the connection was accepted on.
    pub(crate) route: String,
    /// Whether the client came over TLS (to the proxy), for `X-Forwarded-Proto`.
    pub(crate) tls: bool,
    /// The client negotiated `h2` in ALPN: HTTP/2 only.
    pub(crate) h2: bool,
    /// The client certificate's identity, when one was presented (as logged).
    pub(crate) identity: Option<String>,
    /// The same identity, for allow lists (an agent's HTTP app checks it).
    pub(crate) cert: Option<crate::io::tls::CertIdentity>,
    /// The client's address as the proxy believes it (a trusted PROXY header, else the
    /// peer).
    pub(crate) client: SocketAddr,
    /// How this connection's `X-Forwarded-For` is judged: the setting, and whether
    /// `client` is a trusted proxy.
    pub(crate) xff: Xff,
    /// Whether `/webapi/connectionupgrade` may be accepted (not inside an upgrade).
    pub(crate) upgrades: bool,
}

/// How an HTTP connection ended.
pub(crate) enum Served {
    /// Closed (by either side, or idle).
    Closed,
    /// A connection upgrade was accepted: the tunnel's bytes, with what was asked for.
    Tunnel {
        io: TokioIo<Upgraded>,
        kind: Kind,
        forwarded_for: Forwarded,
    },
}

/// Work that outlives the HTTP exchange and must finish before the connection does.
pub(super) enum Handoff {
    /// The proxy's connection upgrade: routed by the caller.
    Tunnel {
        on: OnUpgrade,
        kind: Kind,
        forwarded_for: Forwarded,
    },
    /// An app's own upgrade (WebSocket, ...): both sides copied until they close.
    App(Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// What every request of one connection shares.
pub(super) struct Shared {
    pub(super) proxy: Arc<Proxy>,
    pub(super) conn: Conn,
    pub(super) span: Span,
    pub(super) stats: Arc<Stats>,
    pub(super) handoff: Mutex<Option<Handoff>>,
}

/// Spawns HTTP/2 stream tasks inside the connection's span.
#[derive(Clone)]
struct InSpan(Span);

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}

/// Serves one HTTP connection until it closes or upgrades. No request may have begun by
/// `first_by` (the connection's one deadline) and the connection is closed, as it is
/// when it sits with no request in flight for `limits.http_idle_timeout`, or when the
/// process drains (after the requests in flight). Returns the
/// bytes read from and written to the client with the outcome.
pub(crate) async fn serve<I>(
    proxy: Arc<Proxy>,
    conn: Conn,
    io: I,
    first_by: Instant,
) -> Result<(Served, (u64, u64)), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = proxy.config.limits.clone();
    let span = Span::current();
    let h2_only = conn.h2;
    let tls = conn.tls;
    let http1_only = conn.tls && !conn.h2;
    let shared = Arc::new(Shared {
        proxy,
        conn,
        span: span.clone(),
        stats: Arc::default(),
        handoff: Mutex::new(None),
    });
    let svc = shared.clone();
    let service = hyper::service::service_fn(move |req| service::handle(svc.clone(), req));
    let mut builder = auto::Builder::new(InSpan(span));
    builder
        .http1()
        // The watchdog below bounds idle time and every head after the first; hyper's own
        // per-request header timer would only repeat it (a timer armed per request).
        .header_read_timeout(None)
        .max_buf_size(limits.max_http_head_bytes)
        // One buffer per write: over TLS each vectored slice would be a record of its own.
        .writev(!tls);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_http_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(None);
    if h2_only {
        builder = builder.http2_only();
    } else if http1_only {
        builder = builder.http1_only();
    }
    let counted = body::Counted::new(io, shared.stats.io.clone());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(counted), service);
    tokio::pin!(connection);
    let mut closing = false;
    let mut stopping = shared.proxy.stopping.clone();
    let result = loop {
        let wake = shared.stats.wake(first_by, limits.http_idle_timeout);
        tokio::select! {
            r = connection.as_mut() => break r,
            // Draining: answer what is in flight, take no new request (h2: GOAWAY).
            _ = stopping.wait_for(|s| *s), if !closing => {
                debug!("draining: closing the HTTP connection after its requests in flight");
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(wake), if !closing => {
                if shared.stats.requests() == 0 && Instant::now() >= first_by {
                    let stage = "HTTP request";
                    return Err(ConnError::Timeout(stage, limits.handshake_timeout));
                }
                if shared.stats.idle_for(limits.http_idle_timeout) {
                    debug!("closing an idle HTTP connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    };
    if let Err(e) = result {
        // Client resets, protocol errors, header timeouts: the connection is over either way.
        debug!(error = %e, "HTTP connection ended with an error");
    }
    let handoff = shared.handoff.lock().ok().and_then(|mut h| h.take());
    let served = match handoff {
        None => Served::Closed,
        Some(Handoff::App(copy)) => {
            copy.await;
            Served::Closed
        }
        Some(Handoff::Tunnel {
            on,
            kind,
            forwarded_for,
        }) => match on.await {
            Ok(upgraded) => Served::Tunnel {
                io: TokioIo::new(upgraded),
                kind,
                forwarded_for,
            },
            Err(e) => {
                debug!(error = %e, "the upgraded connection went away");
                Served::Closed
            }
        },
    };
    Ok((served, shared.stats.io.totals()))
}
