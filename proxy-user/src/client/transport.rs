//! The byte stream under the TLS connection to the proxy: a TCP connection, or the tunnel
//! of a connection upgrade through a layer-7 load balancer ([`super::upgrade`]). The TCP
//! connection goes straight to the proxy, or through the HTTP proxy that `HTTPS_PROXY`
//! names for it ([`super::http_proxy`]): this file writes the `CONNECT` and reads the
//! answer, without consuming a byte of the tunnel behind it.

use super::http_proxy::{HttpProxy, ProxyEnv};
use crate::io::wire::WireStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// Largest `CONNECT` response head accepted.
const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// The `CONNECT` request for `addr`.
pub(crate) fn connect_request(proxy: &HttpProxy, addr: &str) -> String {
    let mut req = format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(auth) = &proxy.auth {
        req += &format!("Proxy-Authorization: {auth}\r\n");
    }
    req + "\r\n"
}

/// `CONNECT addr` through `proxy`; the stream is the tunnel once the proxy answers 2xx.
pub(crate) async fn connect_via(proxy: &HttpProxy, addr: &str) -> io::Result<TcpStream> {
    let named = |e: io::Error, what: &str| {
        let text = format!("HTTP proxy {} ({}){what}: {e}", proxy.addr, proxy.var);
        io::Error::new(e.kind(), text)
    };
    let mut s = TcpStream::connect(&proxy.addr)
        .await
        .map_err(|e| named(e, ""))?;
    let _ = s.set_nodelay(true);
    s.write_all(connect_request(proxy, addr).as_bytes())
        .await
        .map_err(|e| named(e, ": sending CONNECT"))?;
    // Byte by byte: nothing after the head may be consumed (the tunnel's first bytes are
    // the TLS server's), and the head is small and read once per connection.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("HTTP proxy {}: CONNECT response head too long", proxy.addr),
            ));
        }
        let b = s
            .read_u8()
            .await
            .map_err(|e| named(e, " closed before answering CONNECT"))?;
        head.push(b);
    }
    connect_answer(&head, proxy, addr).map(|()| s)
}

/// Checks the head of the answer to `CONNECT addr`: 2xx, or an error with the status.
pub(crate) fn connect_answer(head: &[u8], proxy: &HttpProxy, addr: &str) -> io::Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let parsed = resp.parse(head).map_err(|e| {
        bad(format!(
            "HTTP proxy {}: bad CONNECT response: {e}",
            proxy.addr
        ))
    })?;
    match (parsed, resp.code) {
        (httparse::Status::Complete(_), Some(200..=299)) => Ok(()),
        (httparse::Status::Complete(_), Some(code)) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "HTTP proxy {} refused CONNECT {addr}: {code} {}",
                proxy.addr,
                resp.reason.unwrap_or("")
            ),
        )),
        _ => Err(bad(format!(
            "HTTP proxy {}: incomplete CONNECT response",
            proxy.addr
        ))),
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
