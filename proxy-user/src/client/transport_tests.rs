//! `CONNECT` through a scripted forward proxy: the tunnel's first bytes kept, refusals and
//! garbage named, every prefix of an answer head refused.

use super::*;
use tokio::net::TcpListener;

#[test]
fn connect_carries_the_decoded_credentials() {
    let p = ProxyEnv::new("http://alice:p%40ss@proxy:3128", "", "")
        .for_addr("proxy.example.com:443")
        .unwrap()
        .unwrap();
    let req = connect_request(&p, "proxy.example.com:443");
    assert_eq!(
        req,
        "CONNECT proxy.example.com:443 HTTP/1.1\r\nHost: proxy.example.com:443\r\n\
         Proxy-Authorization: Basic YWxpY2U6cEBzcw==\r\n\r\n"
    );
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
