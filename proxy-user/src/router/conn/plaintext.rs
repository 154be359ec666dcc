//! Plaintext connections: legacy protocols recognised by their first bytes on the single
//! port (`SSH-`, an HTTP method, a Postgres pre-startup request), relayed to the built-in
//! upstream of their protocol with the bytes already read first; and the connections of
//! a legacy per-protocol listener, relayed to its one upstream.

use super::error::{ConnError, Finished};
use super::preface::Preface;
use super::record_client;
use super::upstream::connect;
use crate::relay::relay_plain;
use crate::router::state::Proxy;
use crate::router::state::Route;
use crate::router::trust::{self, Client};
use crate::router::webapi::Refused;
use futures_util::FutureExt as _;
use std::future::Future;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Span;

/// How a plaintext connection goes on after [`plaintext`].
pub(crate) enum Plain<'a> {
    /// Dialed, with the bytes read so far sent on: the relay comes next.
    Relay(PlainRelay),
    /// Plaintext HTTP: the web route's own endpoints come next, for this client.
    Web(TcpStream, Preface, &'a Route, Client),
}

/// A legacy plaintext pair ready to relay. [`plaintext`] returns it rather than relaying
/// itself, so that a long-lived pair's task holds the relay alone.
pub(crate) struct PlainRelay {
    client: TcpStream,
    upstream: TcpStream,
    route: &'static str,
    /// Bytes read from the client before (for the splice's ordering), and of those, the
    /// ones sent on.
    consumed: u64,
    sent: u64,
}

impl PlainRelay {
    /// The relay to its end. Not an `async fn`, which would store `self` beside the
    /// relay's own state for the pair's whole life.
    pub(crate) fn run(self, proxy: &Proxy) -> impl Future<Output = Finished> + Send {
        let buffer = proxy.config.limits.relay_buffer_bytes;
        let PlainRelay {
            client,
            upstream,
            route,
            consumed,
            sent,
        } = self;
        relay_plain(client, upstream, consumed, buffer).map(move |mut stats| {
            stats.client_to_upstream += sent;
            Finished::relayed(route, stats)
        })
    }
}

/// A legacy plaintext protocol on the single port: `route` is `ssh`, `web` or `postgres`;
/// `from` is the client as believed, checked against the route's `allow_from`.
pub(crate) async fn plaintext<'a>(
    proxy: &'a Proxy,
    mut client: TcpStream,
    pre: Preface,
    route: &'static str,
    from: Client,
) -> Result<Plain<'a>, ConnError> {
    let Some(entry) = proxy.table.plaintext(route) else {
        proxy.metrics.route(route, "reject");
        return Err(ConnError::NoRoute(format!(
            "plaintext {route} but no upstreams.{route} is configured"
        )));
    };
    Span::current().record("route", route);
    if let Err(reason) = trust::allowed(entry.allow_from.as_ref(), &from) {
        proxy.metrics.route(route, "source_refused");
        if route == "web" {
            let answer = Refused::new(403, format!("the web route refused this client: {reason}"));
            let _ = client.write_all(&answer.response()).await;
        }
        let _ = client.shutdown().await;
        return Err(ConnError::SourceRefused {
            route: route.to_owned(),
            reason,
        });
    }
    proxy.metrics.route(route, "relay");
    if route == "web" {
        return Ok(Plain::Web(client, pre, entry, from));
    }
    let mut upstream = connect(proxy, entry).await?;
    upstream.write_all(pre.rest()).await?;
    let (consumed, sent) = (pre.consumed(), pre.rest().len() as u64);
    Ok(Plain::Relay(PlainRelay {
        client,
        upstream,
        route,
        consumed,
        sent,
    }))
}

/// A legacy listener's connection from `peer` (no PROXY header is read here): straight to
/// its upstream, when the route's `allow_from` admits the peer.
pub(crate) async fn fixed(
    proxy: &Proxy,
    stream: TcpStream,
    peer: SocketAddr,
    route: &Route,
) -> Result<Finished, ConnError> {
    let span = Span::current();
    let from = Client::peer(peer);
    record_client(&span, &from);
    span.record("route", route.name.as_str());
    if let Err(reason) = trust::allowed(route.allow_from.as_ref(), &from) {
        proxy.metrics.route(&route.name, "source_refused");
        return Err(ConnError::SourceRefused {
            route: route.name.clone(),
            reason,
        });
    }
    proxy.metrics.route(&route.name, "relay");
    let _active = proxy.metrics.active_guard("legacy");
    let upstream = Box::pin(connect(proxy, route)).await?;
    let buffer = proxy.config.limits.relay_buffer_bytes;
    let stats = Box::pin(relay_plain(stream, upstream, 0, buffer)).await;
    Ok(Finished::relayed(&route.name, stats))
}
