//! TLS at the proxy port with real clients: the web upstream over h2 and http/1.1
//! (`curl`), a `teleport-tcp` route that terminates TLS and requires a client cert from
//! the cluster CA whose CN is on the allow list (`openssl s_client`), an SNI
//! passthrough route where the client sees the upstream's own certificate, session
//! resumption on a terminated route, a returning client certificate remembered and still
//! checked, and a bad config rejected with exit code 64.

use std::time::Duration;

use switchyard_tests::pki::CertFiles;
use switchyard_tests::{curl, DemoUpstream, ProxyConfig, SClient, Switchyard, TestPki};

#[test]
fn web_over_h2_and_http11_with_public_cert() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let proxy = Switchyard::start(&pki, &ProxyConfig::default().upstream("web", web.addr)).unwrap();
    let resolve = format!("proxy.example.test:{}:127.0.0.1", proxy.web.port());
    let url = format!("https://proxy.example.test:{}/hello", proxy.web.port());
    let ca = pki.ca_cert().display().to_string();
    for version in ["--http2", "--http1.1"] {
        let out = curl(["--resolve", &resolve, "--cacert", &ca, version, &url]).unwrap();
        assert!(out.success(), "{version}: {out:?}\n{}", proxy.log());
        assert_eq!(out.stdout, "upstream=web path=/hello\n", "{version}");
    }
}

/// A proxy with one `teleport-tcp` route for grafana.example.test, allow [alice].
fn tcp_route() -> (TestPki, DemoUpstream, Switchyard) {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("grafana").unwrap();
    let mut config = ProxyConfig::default();
    config.routes.push(format!(
        "{{name: grafana, sni: \"grafana.example.test\", alpn: teleport-tcp, mode: terminate, \
         upstream: \"{}\", allow: [alice]}}",
        app.addr
    ));
    let proxy = Switchyard::start(&pki, &config).unwrap();
    (pki, app, proxy)
}

fn tcp_client(proxy: &Switchyard, pki: &TestPki) -> SClient {
    SClient::new(proxy.web)
        .sni("grafana.example.test")
        .alpn("teleport-tcp")
        .verify(&pki.ca_cert())
}

#[test]
fn teleport_tcp_route_with_allowed_client_cert_reaches_app() {
    let (pki, _app, proxy) = tcp_route();
    let out = tcp_client(&proxy, &pki)
        .cert(&pki.client.cert, &pki.client.key)
        .run(b"ping-123\n", "ping-123", Duration::from_secs(10))
        .unwrap();
    assert!(
        out.stdout.contains("ALPN protocol: teleport-tcp"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("upstream=grafana\n"),
        "{out:?}\n{}",
        proxy.log()
    );
    assert!(out.stdout.contains("ping-123"), "{out:?}");
}

/// A client that resumes its TLS 1.3 session (the ticket of its first connection) skips the
/// certificate exchange and still reaches the app as the same identity; `/metrics` count
/// one full and one resumed handshake on the route.
#[test]
fn a_client_resuming_its_session_reaches_the_app_without_a_full_handshake() {
    let (pki, _app, proxy) = tcp_route();
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.pem");
    let connect = |line: &str, session_arg: &str| {
        tcp_client(&proxy, &pki)
            .cert(&pki.client.cert, &pki.client.key)
            .args([std::ffi::OsStr::new(session_arg), session.as_os_str()])
            .run(
                format!("{line}\n").as_bytes(),
                line,
                Duration::from_secs(10),
            )
            .unwrap()
    };
    let first = connect("first-connection", "-sess_out");
    assert!(first.stdout.contains("New, TLSv1.3"), "{first:?}");
    assert!(first.stdout.contains("first-connection"), "{first:?}");
    let ticket = std::fs::read_to_string(&session).unwrap();
    assert!(ticket.contains("BEGIN SSL SESSION PARAMETERS"), "{ticket}");

    let second = connect("second-connection", "-sess_in");
    assert!(second.stdout.contains("Reused, TLSv1.3"), "{second:?}");
    assert!(
        second.stdout.contains("upstream=grafana\n"),
        "{second:?}\n{}",
        proxy.log()
    );
    assert!(second.stdout.contains("second-connection"), "{second:?}");
    let handshakes = |kind: &str| {
        proxy
            .metric(
                "switchyard_tls_handshakes_total",
                &[("route", "grafana"), ("kind", kind)],
            )
            .unwrap()
    };
    assert_eq!((handshakes("full"), handshakes("resumed")), (1.0, 1.0));
    // The resumed connection is still alice's: its log line names her.
    let log = proxy.log();
    let resumed = log.lines().find(|l| l.contains("resumed=true"));
    assert!(
        resumed.is_some_and(|l| l.contains("alice")),
        "{resumed:?}\n{log}"
    );
}

/// A client certificate seen before is not verified again (`limits.verified_chains`), but
/// the route's allow list still holds for it every time, and a chain of another CA is
/// never remembered; `/metrics` count each outcome.
#[test]
fn a_returning_client_certificate_is_remembered_and_still_checked() {
    let (pki, _app, proxy) = tcp_route();
    for line in ["first", "second"] {
        let out = tcp_client(&proxy, &pki)
            .cert(&pki.client.cert, &pki.client.key)
            .run(
                format!("{line}\n").as_bytes(),
                line,
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(
            out.stdout.contains("New, TLSv1.3"),
            "a full handshake: {out:?}"
        );
        assert!(out.stdout.contains("upstream=grafana\n"), "{out:?}");
    }
    let chains = |result: &str| {
        proxy
            .metric("switchyard_client_chains_total", &[("result", result)])
            .unwrap()
    };
    assert_eq!((chains("verified"), chains("remembered")), (1.0, 1.0));
    // Bob's chain is the CA's (verified, then remembered); the allow list refuses him both times.
    let bob = pki.issue_client("bob", "bob", Some("devs")).unwrap();
    for _ in 0..2 {
        assert_kept_out(&proxy, &pki, &bob);
    }
    assert_eq!((chains("verified"), chains("remembered")), (2.0, 2.0));
    for _ in 0..2 {
        assert_refused(&proxy, &pki, Some(&pki.wrong_client));
    }
    assert_eq!((chains("refused"), chains("remembered")), (2.0, 2.0));
}

fn assert_refused(proxy: &Switchyard, pki: &TestPki, cert: Option<&CertFiles>) {
    let mut client = tcp_client(proxy, pki);
    if let Some(cert) = cert {
        client = client.cert(&cert.cert, &cert.key);
    }
    let out = client
        .run_to_end(b"ping-123\n", Duration::from_secs(10))
        .unwrap();
    assert!(
        out.status.is_some(),
        "proxy kept the connection open: {out:?}"
    );
    assert!(!out.stdout.contains("upstream=grafana"), "{out:?}");
    assert!(out.stderr.contains("alert"), "no TLS alert: {out:?}");
}

#[test]
fn teleport_tcp_route_refuses_wrong_ca_cert() {
    let (pki, _app, proxy) = tcp_route();
    assert_refused(&proxy, &pki, Some(&pki.wrong_client));
}

#[test]
fn teleport_tcp_route_refuses_missing_cert() {
    let (pki, _app, proxy) = tcp_route();
    assert_refused(&proxy, &pki, None);
}

#[test]
fn teleport_tcp_route_refuses_identity_not_allowed() {
    let (pki, _app, proxy) = tcp_route();
    let bob = pki.issue_client("bob", "bob", Some("devs")).unwrap();
    assert_kept_out(&proxy, &pki, &bob);
}

/// A client with `cert` (of the cluster CA, not on the allow list) does not reach the app.
fn assert_kept_out(proxy: &Switchyard, pki: &TestPki, cert: &CertFiles) {
    let out = tcp_client(proxy, pki)
        .cert(&cert.cert, &cert.key)
        .run_to_end(b"ping-123\n", Duration::from_secs(10))
        .unwrap();
    assert!(
        !out.stdout.contains("upstream=grafana"),
        "{} got in: {out:?}",
        cert.cert.display()
    );
}

#[test]
fn wildcard_passthrough_route_shows_upstream_certificate() {
    let pki = TestPki::new().unwrap();
    let app_cert = pki
        .issue_server("app", "upstream-app", &["app.apps.example.test"])
        .unwrap();
    let app = DemoUpstream::tls_echo("app", &app_cert).unwrap();
    let mut config = ProxyConfig::default();
    config.routes.push(format!(
        "{{sni: \"*.apps.example.test\", mode: passthrough, upstream: \"{}\"}}",
        app.addr
    ));
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let out = SClient::new(proxy.web)
        .sni("app.apps.example.test")
        .verify(&pki.ca_cert())
        .run(b"through\n", "through", Duration::from_secs(10))
        .unwrap();
    assert!(out.stdout.contains("subject=CN = upstream-app"), "{out:?}");
    assert!(
        out.stdout.contains("upstream=app\n"),
        "{out:?}\n{}",
        proxy.log()
    );
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let pki = TestPki::new().unwrap();
    let mut text = ProxyConfig::default().render();
    text = text.replace(
        "web_listen_addr: 127.0.0.1:0",
        "web_listen_addr: not-an-address",
    );
    let (status, stderr) = Switchyard::expect_exit(&pki, &text).unwrap();
    assert_eq!(status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("web_listen_addr"), "stderr: {stderr}");
}
