//! `switchyard proxy app NAME` and `proxy tcp --alpn --sni` → proxy (ALPN teleport-tcp,
//! app chosen by SNI, client certificate) → a TCP echo app: many clients at once, each its
//! own TLS connection, and SIGTERM stopping the local proxy cleanly.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use switchyard_tests::local_proxy::{client_args, connect_lines, LocalProxy};
use switchyard_tests::{DemoUpstream, ProxyConfig, Switchyard, TestPki};

fn echo_once(addr: std::net::SocketAddr, text: &str) -> (String, String) {
    let (stream, mut reader) = connect_lines(addr, Duration::from_secs(10)).unwrap();
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    (&stream).write_all(format!("{text}\n").as_bytes()).unwrap();
    let mut echoed = String::new();
    reader.read_line(&mut echoed).unwrap();
    (hello.trim().to_owned(), echoed.trim().to_owned())
}

fn proxy_with_app(pki: &TestPki, app: &DemoUpstream) -> Switchyard {
    Switchyard::start(pki, &ProxyConfig::default().echo_app(app.addr)).unwrap()
}

#[test]
fn proxy_app_serves_concurrent_clients_and_stops_on_sigterm() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("echo").unwrap();
    let proxy = proxy_with_app(&pki, &app);
    let mut args = vec!["proxy".to_owned(), "app".into(), "echo".into()];
    args.extend(client_args(&pki, &proxy, "client"));
    let mut local = LocalProxy::start(&args).unwrap();
    let addr = local.addr;
    let clients: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || echo_once(addr, &format!("client {i}"))))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let (hello, echoed) = c.join().unwrap();
        assert_eq!(hello, "upstream=echo", "{}", local.logs());
        assert_eq!(echoed, format!("client {i}"));
    }
    let proxy_log = proxy.log();
    assert!(proxy_log.contains("echo-app"), "{proxy_log}");
    // A connection still open at SIGTERM does not keep the local proxy alive. Its greeting
    // from the app shows the local proxy has accepted it and dialed through.
    let (_open, mut reader) = connect_lines(addr, Duration::from_secs(10)).unwrap();
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    assert_eq!(hello, "upstream=echo\n", "{}", local.logs());
    let stopped = local.stop().unwrap();
    assert_eq!(stopped.map(|s| s.code()), Some(Some(0)), "{}", local.logs());
    assert!(
        local.log().contains("closing 1 open connections"),
        "{}",
        local.logs()
    );
}

#[test]
fn proxy_tcp_with_explicit_alpn_and_sni() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("echo").unwrap();
    let proxy = proxy_with_app(&pki, &app);
    let mut args = vec![
        "proxy".to_owned(),
        "tcp".into(),
        "--alpn=teleport-tcp".into(),
        "--sni=echo.localhost".into(),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    let local = LocalProxy::start(&args).unwrap();
    assert_eq!(
        echo_once(local.addr, "hi"),
        ("upstream=echo".into(), "hi".into())
    );
    let mut args = vec![
        "proxy".to_owned(),
        "tcp".into(),
        "--alpn=teleport-tcp".into(),
        "--sni=other.localhost".into(),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    let other = LocalProxy::start(&args).unwrap();
    let mut s = TcpStream::connect(other.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = String::new();
    let _ = BufReader::new(&mut s).read_line(&mut buf);
    assert_eq!(buf, "");
    switchyard_tests::wait_until(Duration::from_secs(5), "no-route line", || {
        Ok(other
            .log()
            .contains("has no route for SNI \"other.localhost\"")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", other.logs()));
}
