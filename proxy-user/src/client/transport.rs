//! The byte stream under the TLS connection to the proxy: a TCP connection (straight, or
//! through the HTTP proxy named by `HTTPS_PROXY` with `CONNECT`, [`super::http_proxy`]), or
//! the tunnel of a connection upgrade through a layer-7 load balancer ([`super::upgrade`]).

use super::http_proxy::{connect_via, ProxyEnv};
use crate::io::wire::WireStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the TLS connection to the proxy runs over.
#[derive(Debug)]
pub(crate) enum Transport {
    /// TCP to the proxy (TLS routing works directly).
    Tcp(TcpStream),
    /// The inner byte stream of a connection upgrade (WebSocket or ping framing).
    Tunnel(WireStream),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Transport::Tunnel(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tunnel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// TCP: a write shutdown (FIN). Tunnel: only a flush. A WebSocket close ends both
    /// directions, so closing the tunnel here would lose what the proxy still sends after
    /// the client is done (a half-close); the TLS `close_notify` written just before
    /// already tells the proxy, and the tunnel closes when the stream is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tunnel(s) => Pin::new(s).poll_flush(cx),
        }
    }
}

/// TCP to `addr` (`host:port`, the proxy's address), through `HTTPS_PROXY` when it
/// applies; TCP_NODELAY set.
pub(crate) async fn tcp_connect(addr: &str) -> io::Result<TcpStream> {
    let proxy = ProxyEnv::get()
        .for_addr(addr)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = match proxy {
        None => TcpStream::connect(addr).await?,
        Some(proxy) => connect_via(&proxy, addr).await?,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
