//! The byte stream under the TLS connection to the proxy: a TCP connection (straight, or
//! through the HTTP proxy named by `HTTPS_PROXY` with `CONNECT`), or the tunnel of a
//! connection upgrade through a layer-7 load balancer ([`super::upgrade`]).

use crate::io::wire::WireStream;
use base64::Engine;
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

/// An HTTP proxy for `CONNECT` (from `HTTPS_PROXY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpProxy {
    /// `host:port` of the HTTP proxy.
    pub(crate) addr: String,
    /// `Proxy-Authorization` value, from `http://user:password@host:port`.
    pub(crate) auth: Option<String>,
}

/// The HTTP proxy to use for `host` (the proxy's host name): `HTTPS_PROXY` or
/// `https_proxy`, unless `NO_PROXY`/`no_proxy` names the host.
pub(crate) fn https_proxy_for(host: &str) -> io::Result<Option<HttpProxy>> {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    let Some(url) = var(["HTTPS_PROXY", "https_proxy"]) else {
        return Ok(None);
    };
    if let Some(list) = var(["NO_PROXY", "no_proxy"]) {
        if no_proxy_matches(&list, host) {
            return Ok(None);
        }
    }
    parse_proxy_url(&url)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("HTTPS_PROXY: {e}")))
}

/// `http://[user:password@]host[:port][/]` or `host:port` (port 80 when omitted).
pub(crate) fn parse_proxy_url(url: &str) -> Result<HttpProxy, String> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "`{url}`: only http:// proxies are supported (not {scheme}://)"
            ))
        }
        None => url,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (auth, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let token = base64::engine::general_purpose::STANDARD.encode(userinfo);
            (Some(format!("Basic {token}")), hp)
        }
        None => (None, authority),
    };
    if host_port.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    let has_port = match host_port.rsplit_once(':') {
        Some((h, p)) => !h.ends_with(':') && p.parse::<u16>().is_ok(),
        None => false,
    };
    let addr = if has_port && !(host_port.starts_with('[') && host_port.ends_with(']')) {
        host_port.to_owned()
    } else {
        format!("{host_port}:80")
    };
    Ok(HttpProxy { addr, auth })
}

/// `NO_PROXY`: `*`, host names (a name also covers its subdomains; a leading `.` or `*.`
/// is allowed), or IP addresses; ports are ignored.
pub(crate) fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = match entry.rsplit_once(':') {
                // host:port, but not a bare IPv6 address
                Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h.to_owned(),
                _ => entry,
            };
            let entry = entry
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_start_matches('[')
                .trim_end_matches(']');
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// TCP to `addr` (`host:port`, `host` being the proxy's name), through `HTTPS_PROXY` when
/// it applies; TCP_NODELAY set.
pub(crate) async fn tcp_connect(addr: &str, host: &str) -> io::Result<TcpStream> {
    let stream = match https_proxy_for(host)? {
        None => TcpStream::connect(addr).await?,
        Some(proxy) => connect_via(&proxy, addr).await?,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Largest `CONNECT` response head accepted.
const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// `CONNECT addr` through `proxy`; the stream is the tunnel once the proxy answers 2xx.
pub(crate) async fn connect_via(proxy: &HttpProxy, addr: &str) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(&proxy.addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("HTTP proxy {} (HTTPS_PROXY): {e}", proxy.addr),
        )
    })?;
    let _ = s.set_nodelay(true);
    let mut req = format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(auth) = &proxy.auth {
        req += &format!("Proxy-Authorization: {auth}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await?;
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
        let b = s.read_u8().await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "HTTP proxy {} closed before answering CONNECT: {e}",
                    proxy.addr
                ),
            )
        })?;
        head.push(b);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    resp.parse(&head).map_err(|e| {
        bad(format!(
            "HTTP proxy {}: bad CONNECT response: {e}",
            proxy.addr
        ))
    })?;
    match resp.code {
        Some(200..=299) => Ok(s),
        Some(code) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "HTTP proxy {} refused CONNECT {addr}: {code} {}",
                proxy.addr,
                resp.reason.unwrap_or("")
            ),
        )),
        None => Err(bad(format!(
            "HTTP proxy {}: incomplete CONNECT response",
            proxy.addr
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        assert_eq!(
            parse_proxy_url("http://squid.internal:3128/").unwrap(),
            HttpProxy {
                addr: "squid.internal:3128".into(),
                auth: None
            }
        );
        assert_eq!(
            parse_proxy_url("10.0.0.1:8080").unwrap().addr,
            "10.0.0.1:8080"
        );
        assert_eq!(parse_proxy_url("http://proxy").unwrap().addr, "proxy:80");
        assert_eq!(parse_proxy_url("http://[::1]").unwrap().addr, "[::1]:80");
        assert_eq!(
            parse_proxy_url("http://[::1]:3128").unwrap().addr,
            "[::1]:3128"
        );
        let p = parse_proxy_url("http://alice:s3cret@proxy:3128").unwrap();
        assert_eq!(p.addr, "proxy:3128");
        assert_eq!(p.auth.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
        assert!(parse_proxy_url("https://proxy:443").is_err());
        assert!(parse_proxy_url("socks5://proxy:1080").is_err());
        assert!(parse_proxy_url("http://").is_err());
    }

    #[test]
    fn no_proxy_lists() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("localhost,127.0.0.1", "localhost"));
        assert!(no_proxy_matches("example.com", "proxy.example.com"));
        assert!(no_proxy_matches(".example.com", "proxy.example.com"));
        assert!(no_proxy_matches("*.example.com", "Proxy.Example.com"));
        assert!(no_proxy_matches(
            "proxy.example.com:443",
            "proxy.example.com"
        ));
        assert!(no_proxy_matches("::1", "[::1]"));
        assert!(!no_proxy_matches("example.com", "notexample.com"));
        assert!(!no_proxy_matches("", "localhost"));
    }
}
