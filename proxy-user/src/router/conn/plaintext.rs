//! Plaintext connections: legacy protocols recognised by their first bytes on the single
//! port (`SSH-`, an HTTP method, a Postgres pre-startup request), relayed to the built-in
//! upstream of their protocol with the bytes already read first; and the connections of
//! a legacy per-protocol listener, relayed to its one upstream.

use super::error::{ConnError, Finished};
use super::preface::Preface;
use super::upstream::connect;
use crate::relay::relay_plain;
use crate::router::state::Proxy;
use crate::router::state::Route;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Span;

/// How a plaintext connection goes on after [`plaintext`].
pub(crate) enum Plain<'a> {
    Done(Finished),
    /// Plaintext HTTP: the web route's own endpoints come next.
    Web(TcpStream, Preface, &'a Route),
}

/// A legacy plaintext protocol on the single port: `route` is `ssh`, `web` or `postgres`.
pub(crate) async fn plaintext<'a>(
    proxy: &'a Proxy,
    client: TcpStream,
    pre: Preface,
    route: &str,
) -> Result<Plain<'a>, ConnError> {
    let Some(entry) = proxy.table.plaintext(route) else {
        proxy.metrics.route(route, "reject");
        return Err(ConnError::NoRoute(format!(
            "plaintext {route} but no upstreams.{route} is configured"
        )));
    };
    Span::current().record("route", route);
    proxy.metrics.route(route, "relay");
    if route == "web" {
        return Ok(Plain::Web(client, pre, entry));
    }
    let mut upstream = connect(proxy, entry).await?;
    upstream.write_all(pre.rest()).await?;
    let (consumed, sent) = (pre.consumed(), pre.rest().len() as u64);
    let buffer = proxy.config.limits.relay_buffer_bytes;
    let mut stats = relay_plain(client, upstream, consumed, buffer).await;
    stats.client_to_upstream += sent;
    Ok(Plain::Done(Finished::relayed(route, stats)))
}

/// A legacy listener's connection: straight to its upstream.
pub(crate) async fn fixed(
    proxy: &Proxy,
    stream: TcpStream,
    route: &Route,
) -> Result<Finished, ConnError> {
    Span::current().record("route", route.name.as_str());
    proxy.metrics.route(&route.name, "relay");
    let _active = proxy.metrics.active_guard("legacy");
    let upstream = connect(proxy, route).await?;
    let buffer = proxy.config.limits.relay_buffer_bytes;
    let stats = relay_plain(stream, upstream, 0, buffer).await;
    Ok(Finished::relayed(&route.name, stats))
}
