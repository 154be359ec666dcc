//! `HTTPS_PROXY` tests on values (never the process environment): proxy URLs, credentials,
//! `NO_PROXY` lists, refused schemes, and `CONNECT` against a scripted forward proxy.

use super::*;
use tokio::net::TcpListener;

/// The proxy for `addr` with only `HTTPS_PROXY` (and `NO_PROXY`) set.
fn proxy(https: &str, no: &str, addr: &str) -> Result<Option<HttpProxy>, ProxyError> {
    ProxyEnv::new(https, "", no).for_addr(addr)
}

/// The forward proxy's address for `https` (set, no `NO_PROXY`).
fn addr_of(https: &str) -> String {
    proxy(https, "", "proxy.example.com:443")
        .unwrap()
        .expect("a proxy")
        .addr
}

#[test]
fn proxy_urls() {
    assert_eq!(
        proxy("http://squid.internal:3128/", "", "p:443").unwrap(),
        Some(HttpProxy {
            addr: "squid.internal:3128".into(),
            auth: None,
            var: "HTTPS_PROXY",
        })
    );
    assert_eq!(addr_of("10.0.0.1:8080"), "10.0.0.1:8080");
    assert_eq!(addr_of("http://proxy"), "proxy:80");
    assert_eq!(addr_of("proxy"), "proxy:80");
    assert_eq!(addr_of("http://[::1]"), "[::1]:80");
    assert_eq!(addr_of("http://[::1]:3128"), "[::1]:3128");
    assert_eq!(addr_of(" HTTP://Proxy:3128 "), "Proxy:3128");
    let p = proxy("http://alice:s3cret@proxy:3128", "", "p:443")
        .unwrap()
        .unwrap();
    assert_eq!(p.addr, "proxy:3128");
    assert_eq!(p.auth.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
    // Unset: no proxy.
    assert_eq!(proxy("", "", "p:443").unwrap(), None);
}

#[test]
fn percent_encoded_credentials_are_decoded() {
    let p = proxy("http://alice:p%40ss@proxy:3128", "", "p:443")
        .unwrap()
        .unwrap();
    assert_eq!(p.addr, "proxy:3128");
    // base64("alice:p@ss")
    assert_eq!(p.auth.as_deref(), Some("Basic YWxpY2U6cEBzcw=="));
    let req = connect_request(&p, "proxy.example.com:443");
    assert_eq!(
        req,
        "CONNECT proxy.example.com:443 HTTP/1.1\r\nHost: proxy.example.com:443\r\n\
         Proxy-Authorization: Basic YWxpY2U6cEBzcw==\r\n\r\n"
    );
}

#[test]
fn all_proxy_applies_without_https_proxy() {
    let env = ProxyEnv::new("", "http://all:3128", "");
    let p = env.for_addr("p:443").unwrap().unwrap();
    assert_eq!((p.addr.as_str(), p.var), ("all:3128", "ALL_PROXY"));
    let env = ProxyEnv::new("http://https:3128", "http://all:3128", "");
    assert_eq!(env.for_addr("p:443").unwrap().unwrap().addr, "https:3128");
}

#[test]
fn no_proxy_lists() {
    let exempt = |no: &str, addr: &str| proxy("http://fwd:3128", no, addr).unwrap().is_none();
    assert!(exempt("*", "anything:443"));
    assert!(exempt("localhost,127.0.0.1", "localhost:3080"));
    assert!(exempt("localhost,127.0.0.1", "127.0.0.1:3080"));
    assert!(exempt("proxy.example.com", "proxy.example.com:443"));
    assert!(exempt("example.com", "proxy.example.com:443"));
    assert!(exempt(".example.com", "proxy.example.com:443"));
    assert!(exempt("*.example.com", "Proxy.Example.com:443"));
    assert!(exempt("proxy.example.com:443", "proxy.example.com:443"));
    assert!(exempt("::1", "[::1]:443"));
    assert!(exempt("[::1]", "[::1]:443"));
    assert!(exempt("10.0.0.0/8", "10.1.2.3:443"));
    assert!(exempt(" other.org , 10.1.2.3 ", "10.1.2.3:443"));
    assert!(!exempt("example.com", "notexample.com:443"));
    assert!(!exempt("10.0.0.0/8", "11.1.2.3:443"));
    assert!(!exempt("127.0.0.1", "localhost:443"));
    assert!(!exempt("", "localhost:443"));
}

#[test]
fn other_schemes_and_non_urls_are_refused_naming_the_variable() {
    for (url, scheme) in [
        ("https://proxy:443", "https"),
        ("socks5://proxy:1080", "socks5"),
    ] {
        let e = proxy(url, "", "p:443").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("HTTPS_PROXY: only http:// proxies are supported (not {scheme}://)")
        );
    }
    let e = ProxyEnv::new("", "socks5h://proxy:1080", "")
        .for_addr("p:443")
        .unwrap_err();
    assert!(e.to_string().starts_with("ALL_PROXY: only http://"), "{e}");
    for url in ["http://", "http://:3128", "ftp//x y"] {
        let e = proxy(url, "", "p:443").unwrap_err();
        assert!(
            e.to_string().starts_with("HTTPS_PROXY is not a proxy URL"),
            "{url}: {e}"
        );
    }
    // NO_PROXY still exempts its hosts from a proxy that cannot be used.
    assert_eq!(proxy("socks5://proxy:1080", "p", "p:443").unwrap(), None);
}

/// A forward proxy on 127.0.0.1 that reads one request head, answers `answer`, then
/// sends `after` (the tunnel's first bytes); returns the request.
async fn forward_proxy(
    answer: &'static [u8],
    after: &'static [u8],
) -> (HttpProxy, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            req.push(s.read_u8().await.unwrap());
        }
        s.write_all(answer).await.unwrap();
        s.write_all(after).await.unwrap();
        String::from_utf8(req).unwrap()
    });
    let proxy = HttpProxy {
        addr,
        auth: Some("Basic YWxpY2U6cEBzcw==".into()),
        var: "HTTPS_PROXY",
    };
    (proxy, server)
}

#[tokio::test]
async fn connect_keeps_the_tunnel_bytes_after_the_answer() {
    let (proxy, server) = forward_proxy(
        b"HTTP/1.1 200 Connection established\r\n\r\n",
        b"\x16\x03\x03",
    )
    .await;
    let mut s = connect_via(&proxy, "lb.example.com:443").await.unwrap();
    let mut first = [0u8; 3];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"\x16\x03\x03");
    let req = server.await.unwrap();
    assert!(
        req.starts_with("CONNECT lb.example.com:443 HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        req.contains("Proxy-Authorization: Basic YWxpY2U6cEBzcw==\r\n"),
        "{req}"
    );
}

#[tokio::test]
async fn refusals_and_garbage_are_named_never_a_panic() {
    let (proxy, _server) =
        forward_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", b"").await;
    let e = connect_via(&proxy, "lb:443").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert!(
        e.to_string()
            .ends_with("refused CONNECT lb:443: 407 Proxy Authentication Required"),
        "{e}"
    );
    let (proxy, _server) = forward_proxy(b"SSH-2.0-OpenSSH\r\n\r\n", b"").await;
    let e = connect_via(&proxy, "lb:443").await.unwrap_err();
    assert!(e.to_string().contains("bad CONNECT response"), "{e}");
    let (proxy, _server) = forward_proxy(b"HTTP/1.1 200 OK\r\n", b"").await;
    let e = connect_via(&proxy, "lb:443").await.unwrap_err();
    assert!(
        e.to_string().contains("closed before answering CONNECT"),
        "{e}"
    );
    // Every prefix of an answer head is incomplete or bad, never accepted or a panic.
    let head = b"HTTP/1.1 200 Connection established\r\nVia: tinyproxy\r\n\r\n";
    for n in 0..head.len() {
        assert!(
            connect_answer(&head[..n], &proxy, "lb:443").is_err(),
            "{n} bytes"
        );
    }
    assert!(connect_answer(head, &proxy, "lb:443").is_ok());
}
