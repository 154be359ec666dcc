//! The upstream side of a routed connection: dialing a route's upstream within
//! `limits.connect_timeout` (failures counted per route), and relaying a client stream to
//! it — the plaintext relay (kernel splice or `splice(2)`) when the client is the accepted
//! socket itself, the userspace copy when it is TLS plaintext or an upgrade's tunnel.

use super::error::ConnError;
use crate::io::{BoxedIo, Prefixed};
use crate::relay::{relay, relay_plain, PlainRelayFuture, RelayStats};
use crate::router::metrics::UpstreamLabel;
use crate::router::state::Proxy;
use crate::router::state::Route;
use futures_util::future::Either;
use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

/// A client-side stream: the accepted socket, or what a connection upgrade carries.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The socket itself, when the relay can splice it; `Err(self)` otherwise.
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Err(self)
    }

    /// Whether [`ClientIo::into_tcp`] gives the socket.
    fn is_tcp(&self) -> bool {
        false
    }
}

impl ClientIo for TcpStream {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }

    fn is_tcp(&self) -> bool {
        true
    }
}
impl ClientIo for BoxedIo {}
impl<S: ClientIo> ClientIo for Box<tokio_rustls::server::TlsStream<Prefixed<S>>> {}

/// Relays a client stream and an upstream: spliced when the client is the socket itself.
/// `consumed` counts every byte read from the socket before (for the splice's ordering).
/// Not an `async fn`, which would store the streams again beside the relay.
pub(crate) fn relay_client<C: ClientIo>(
    client: C,
    upstream: TcpStream,
    consumed: u64,
    buffer: usize,
) -> Either<PlainRelayFuture, Pin<Box<dyn Future<Output = RelayStats> + Send>>> {
    match client.into_tcp() {
        Ok(tcp) => Either::Left(relay_plain(tcp, upstream, consumed, buffer)),
        // Boxed: the copy's state is far larger than the plaintext relay's.
        Err(client) => Either::Right(Box::pin(relay(client, upstream, buffer))),
    }
}

/// Connects to a route's upstream within `limits.connect_timeout`.
pub(crate) async fn connect(proxy: &Proxy, route: &Route) -> Result<TcpStream, ConnError> {
    let Some(addr) = route.upstream.as_deref() else {
        return Err(ConnError::NoRoute(format!(
            "route {} has no upstream (answered by the proxy itself)",
            route.name
        )));
    };
    let fail = |error| {
        proxy
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamLabel {
                route: route.name.clone(),
            })
            .inc();
        ConnError::Upstream {
            route: route.name.clone(),
            upstream: addr.to_owned(),
            error,
        }
    };
    let t = proxy.config.limits.connect_timeout;
    let stream = match timeout(t, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(fail(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {t:?}"),
            )))
        }
        Ok(Err(e)) => return Err(fail(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    debug!(upstream = addr, "upstream connected");
    Ok(stream)
}
