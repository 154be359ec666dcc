//! Trust boundaries (`docs/balancers.md`, "Trusted proxies"; `docs/config.md`,
//! `allow_from`), on loopback with several sources: 127.0.0.2 is a stranger, 127.0.0.3
//! ([`BALANCER_SOURCE`]) and 127.0.0.4 are balancers the proxy trusts.
//!
//! - A stranger's PROXY v1/v2 header claiming 203.0.113.77 never makes that the client:
//!   kept as `claimed_client` with `proxy_protocol` unset, refused with `on`; the same
//!   header from a trusted address, and HAProxy `send-proxy-v2`, are believed.
//! - `X-Forwarded-For` on an upgrade: a stranger's is only claimed, a trusted proxy's is
//!   the client (the web app behind the inner connection sees which); through a chain of
//!   two nginx in `hops` mode the client is the one in front of both, while `true` refuses
//!   the list.
//! - `allow_from` on the Postgres route: psql through `proxy db` from an allowed source
//!   (an office egress: tinyproxy bound to 127.0.0.2) works; from 127.0.0.1 it is refused
//!   before the TLS handshake, and psql prints why; on an app, curl from another source
//!   gets the `access_denied` alert over TLS and a 403 over plaintext.
//!
//! After every refusal the proxy still serves other connections.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use switchyard_tests::balancer::{ConnectProxy, HAProxy, Nginx, BALANCER_SOURCE};
use switchyard_tests::local_proxy::{client_args, LocalProxy};
use switchyard_tests::postgres::psql;
use switchyard_tests::raw::{
    connect_from, expect_closed, http_request, proxy_v1, proxy_v2, read_head, upgrade_head,
};
use switchyard_tests::{
    curl, decided_client, log_fields, wait_until, DemoUpstream, Postgres, ProxyConfig, Switchyard,
    TempDir, TestPki,
};

/// A client the proxy does not trust.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A second trusted balancer (the first is [`BALANCER_SOURCE`]).
const SECOND_BALANCER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// The address every claim in these tests names.
const CLAIMED: &str = "203.0.113.77";
/// How long a wait lasts before the test fails; not a claim about speed.
const T: Duration = Duration::from_secs(20);

fn claimed_src() -> SocketAddrV4 {
    SocketAddrV4::new(CLAIMED.parse().unwrap(), 5555)
}

fn dst() -> SocketAddrV4 {
    "127.0.0.1:3080".parse().unwrap()
}

/// The closing lines of the proxy's log: audit lines and refusals.
fn closing_lines(proxy: &Switchyard) -> Vec<String> {
    proxy
        .log()
        .lines()
        .filter(|l| l.contains("connection closed") || l.contains("connection refused"))
        .map(String::from)
        .collect()
}

/// Waits until `n` closing lines satisfy `pred`, and returns them.
fn wait_lines(
    proxy: &Switchyard,
    what: &str,
    n: usize,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    wait_until(T, what, || {
        let lines: Vec<String> = closing_lines(proxy)
            .into_iter()
            .filter(|l| pred(l))
            .collect();
        Ok((lines.len() >= n).then_some(lines))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()))
}

/// No log line of the proxy ever decided on the claimed address.
fn assert_never_the_client(proxy: &Switchyard) {
    for line in proxy.log().lines() {
        assert!(
            !log_fields(line, "client")
                .iter()
                .any(|c| c.starts_with(CLAIMED)),
            "the claimed address became the client: {line}"
        );
    }
}

/// The JSON of the web app's `/api/hello` in an HTTP response.
fn hello_json(response: &[u8]) -> Value {
    let text = String::from_utf8_lossy(response);
    let body = text
        .find('{')
        .zip(text.rfind('}'))
        .map(|(a, b)| &text[a..=b])
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Sends `prefix` then `GET /api/hello` on a connection from `source`; the app's JSON.
fn hello_from(source: IpAddr, proxy: &Switchyard, prefix: &[u8]) -> Value {
    let mut stream = connect_from(source, proxy.web).unwrap();
    stream
        .write_all(&[prefix, &http_request("/api/hello")].concat())
        .unwrap();
    let (_, got) = expect_closed(&mut stream, T).unwrap();
    hello_json(&got)
}

/// A rustls client over `io` trusting the test CA: SNI `sni`, ALPN `http/1.1`.
fn tls_over<S: Read + Write>(pki: &TestPki, io: S, sni: &str) -> StreamOwned<ClientConnection, S> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca_cert()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    StreamOwned::new(conn, io)
}

/// Over an accepted legacy `alpn` upgrade on `io`: the inner TLS connection to the web
/// route, `GET /api/hello`, the app's JSON.
fn inner_hello<S: Read + Write>(pki: &TestPki, io: S) -> Value {
    let mut inner = tls_over(pki, io, "proxy.example.test");
    inner.write_all(&http_request("/api/hello")).unwrap();
    let mut got = Vec::new();
    // The web route closes after `Connection: close`; a reset after the body is fine.
    let _ = inner.read_to_end(&mut got);
    hello_json(&got)
}

/// The legacy upgrade with `X-Forwarded-For: 203.0.113.77`.
fn upgrade_claiming() -> Vec<u8> {
    upgrade_head(&[
        "Upgrade: alpn",
        "Connection: Upgrade",
        &format!("X-Forwarded-For: {CLAIMED}"),
    ])
}

fn webapp_proxy(pki: &TestPki, web: &DemoUpstream, config: ProxyConfig) -> Switchyard {
    Switchyard::start(pki, &config.upstream("web", web.addr)).unwrap()
}

#[test]
fn a_strangers_proxy_header_is_consumed_but_never_the_client_when_unset() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::webapp("web").unwrap();
    let proxy = webapp_proxy(&pki, &web, ProxyConfig::default());
    let warning = "proxy_protocol is unset and proxy_service.trusted_proxies is empty";
    assert_eq!(proxy.log().matches(warning).count(), 1, "{}", proxy.log());
    for header in [
        proxy_v1(claimed_src(), dst()),
        proxy_v2(claimed_src(), dst()),
    ] {
        let hello = hello_from(STRANGER, &proxy, &header);
        // The app is told the address the connection really came from.
        assert_eq!(hello["x_forwarded_for"], "127.0.0.2", "{hello}");
    }
    let claimed = format!("{CLAIMED}:5555");
    let lines = wait_lines(&proxy, "two claimed_client lines", 2, |l| {
        log_fields(l, "claimed_client") == [claimed.as_str()]
    });
    for line in &lines {
        let (client, from) = decided_client(line).unwrap();
        assert!(client.starts_with("127.0.0.2:") && from == "peer", "{line}");
        assert!(
            log_fields(line, "peer")[0].starts_with("127.0.0.2:"),
            "{line}"
        );
    }
    assert_never_the_client(&proxy);
    for kind in ["proxy_v1", "proxy_v2"] {
        let labels = [("kind", kind), ("outcome", "ignored")];
        let n = proxy
            .metric("switchyard_client_address_claims_total", &labels)
            .unwrap();
        assert_eq!(n, 1.0, "{kind}\n{}", proxy.metrics().unwrap());
    }
}

#[test]
fn with_proxy_protocol_on_only_trusted_balancers_name_the_client() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::webapp("web").unwrap();
    let config = ProxyConfig::default()
        .proxy_protocol("on")
        .trusted(&[&BALANCER_SOURCE.to_string()]);
    let proxy = webapp_proxy(&pki, &web, config);
    assert!(!proxy.log().contains("trusted_proxies is empty"));
    // A stranger's headers: refused before anything reaches the app.
    for header in [
        proxy_v1(claimed_src(), dst()),
        proxy_v2(claimed_src(), dst()),
    ] {
        let mut stream = connect_from(STRANGER, proxy.web).unwrap();
        stream
            .write_all(&[&header[..], &http_request("/api/hello")].concat())
            .unwrap();
        let (_, got) = expect_closed(&mut stream, T).unwrap();
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    let refused = wait_lines(&proxy, "two refusals", 2, |l| {
        l.contains("not in proxy_service.trusted_proxies")
    });
    for line in &refused {
        assert_eq!(
            log_fields(line, "claimed_client"),
            [format!("{CLAIMED}:5555")]
        );
        assert!(
            decided_client(line).unwrap().0.starts_with("127.0.0.2:"),
            "{line}"
        );
    }
    let outcome = [("outcome", "proxy_untrusted")];
    let n = proxy
        .metric("switchyard_detect_outcomes_total", &outcome)
        .unwrap();
    assert_eq!(n, 2.0, "{}", proxy.metrics().unwrap());
    // The same header from the trusted address is believed.
    let hello = hello_from(BALANCER_SOURCE, &proxy, &proxy_v1(claimed_src(), dst()));
    assert_eq!(hello["x_forwarded_for"], CLAIMED, "{hello}");
    wait_lines(&proxy, "the believed claim", 1, |l| {
        decided_client(l) == Some(("203.0.113.77:5555", "proxy_v1"))
            && log_fields(l, "peer")[0].starts_with("127.0.0.3:")
    });
    // HAProxy `send-proxy-v2` from the trusted address: curl's own address is the client.
    let dir = TempDir::new("haproxy-tcp").unwrap();
    let front = HAProxy::tcp_proxy_v2(dir.path(), proxy.web).unwrap();
    let url = format!("https://localhost:{}/api/hello", front.addr.port());
    let ca = pki.ca_cert().display().to_string();
    let out = curl(["--cacert", &ca, &url]).unwrap();
    assert!(out.success(), "{out:?}\n{}", front.logs());
    assert_eq!(
        hello_json(out.stdout.as_bytes())["x_forwarded_for"],
        "127.0.0.1"
    );
    wait_lines(&proxy, "HAProxy's client", 1, |l| {
        decided_client(l).is_some_and(|(c, f)| c.starts_with("127.0.0.1:") && f == "proxy_v2")
    });
    assert_never_the_client_but_the_believed(&proxy);
}

/// Only the trusted 127.0.0.3 made the claimed address the client.
fn assert_never_the_client_but_the_believed(proxy: &Switchyard) {
    for line in closing_lines(proxy) {
        if decided_client(&line).is_some_and(|(c, _)| c.starts_with(CLAIMED)) {
            assert!(
                log_fields(&line, "peer")[0].starts_with("127.0.0.3:"),
                "{line}"
            );
        }
    }
}

#[test]
fn x_forwarded_for_on_an_upgrade_is_believed_only_from_a_trusted_proxy() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::webapp("web").unwrap();
    let config = ProxyConfig::default()
        .trust_xff("true")
        .trusted(&[&BALANCER_SOURCE.to_string()]);
    let proxy = webapp_proxy(&pki, &web, config);
    for (source, seen) in [(STRANGER, "127.0.0.2"), (BALANCER_SOURCE, CLAIMED)] {
        let mut stream = connect_from(source, proxy.web).unwrap();
        stream.write_all(&upgrade_claiming()).unwrap();
        let head = read_head(&mut stream).unwrap();
        assert_eq!(head.status, 101, "{}\n{}", head.text, proxy.log());
        // The app behind the inner connection is told the client the proxy decided on.
        let hello = inner_hello(&pki, stream);
        assert_eq!(hello["x_forwarded_for"], seen, "from {source}: {hello}");
    }
    wait_lines(&proxy, "the stranger's claim", 1, |l| {
        log_fields(l, "claimed_client") == [CLAIMED]
            && decided_client(l).is_some_and(|(c, f)| c.starts_with("127.0.0.2:") && f == "peer")
    });
    wait_lines(&proxy, "the balancer's client", 1, |l| {
        decided_client(l) == Some((CLAIMED, "x_forwarded_for"))
            && log_fields(l, "peer")[0].starts_with("127.0.0.3:")
    });
    assert_never_the_client_but_the_believed(&proxy);
    let ignored = [("kind", "x_forwarded_for"), ("outcome", "ignored")];
    let n = proxy
        .metric("switchyard_client_address_claims_total", &ignored)
        .unwrap();
    assert_eq!(n, 1.0, "{}", proxy.metrics().unwrap());
}

/// client (127.0.0.2, with its own spoofed `X-Forwarded-For`) → nginx A (reaches B from
/// 127.0.0.4) → nginx B (reaches the proxy from 127.0.0.3) → the proxy; both append to
/// `X-Forwarded-For`. Returns the upgrade's response head and the proxy.
fn through_two_nginx(pki: &TestPki, mode: &str) -> (switchyard_tests::raw::Head, Switchyard) {
    let web = DemoUpstream::webapp("web").unwrap();
    let config = ProxyConfig::default()
        .trust_xff(mode)
        .trusted(&[&BALANCER_SOURCE.to_string(), &SECOND_BALANCER.to_string()]);
    let proxy = webapp_proxy(pki, &web, config);
    let front = pki
        .issue_server("balancer", "balancer.localhost", &["localhost"])
        .unwrap();
    let (dir_a, dir_b) = (
        TempDir::new("nginx-a").unwrap(),
        TempDir::new("nginx-b").unwrap(),
    );
    let b = Nginx::hop(
        dir_b.path(),
        &front.cert,
        &front.key,
        proxy.web,
        BALANCER_SOURCE,
    )
    .unwrap();
    let a = Nginx::hop(
        dir_a.path(),
        &front.cert,
        &front.key,
        b.addr,
        SECOND_BALANCER,
    )
    .unwrap();
    let tcp = connect_from(STRANGER, a.addr).unwrap();
    let mut outer = tls_over(pki, tcp, "localhost");
    outer.write_all(&upgrade_claiming()).unwrap();
    let head = read_head(&mut outer)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}\n{}", a.logs(), b.logs(), proxy.log()));
    if head.status == 101 {
        let hello = inner_hello(pki, outer);
        assert_eq!(hello["x_forwarded_for"], "127.0.0.2", "{hello}");
    }
    (head, proxy)
}

#[test]
fn a_chain_of_two_nginx_in_hops_mode_gives_the_client_in_front_of_both() {
    let pki = TestPki::new().unwrap();
    let (head, proxy) = through_two_nginx(&pki, "hops");
    assert_eq!(head.status, 101, "{}\n{}", head.text, proxy.log());
    // X-Forwarded-For was "203.0.113.77, 127.0.0.2, 127.0.0.4": the right-most address
    // that is not a trusted proxy.
    wait_lines(&proxy, "the client in front of the chain", 1, |l| {
        decided_client(l) == Some(("127.0.0.2", "x_forwarded_for"))
            && log_fields(l, "peer")[0].starts_with("127.0.0.3:")
    });
    assert_never_the_client(&proxy);
    // Under the single-value rule the same chain is refused, with the reason.
    let (head, proxy) = through_two_nginx(&pki, "true");
    assert_eq!(head.status, 400, "{}\n{}", head.text, proxy.log());
    let text = proxy.log();
    assert!(
        text.contains("is a list: exactly one address is accepted"),
        "{text}"
    );
}

/// `proxy db --protocol postgres` to `proxy`, with `env` (none of the caller's proxy
/// variables).
fn proxy_db(pki: &TestPki, proxy: &Switchyard, env: &[(&str, String)]) -> LocalProxy {
    let mut args = vec![
        "proxy".to_owned(),
        "db".into(),
        "--protocol=postgres".into(),
    ];
    args.extend(client_args(pki, proxy, "client"));
    LocalProxy::start_with(&args, |cmd| {
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    })
    .unwrap()
}

#[test]
fn allow_from_on_the_postgres_route_admits_only_its_sources_and_psql_says_why() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let config = ProxyConfig::default()
        .upstream("postgres", pg.addr)
        .upstream("web", web.addr)
        .allow_from("postgres", &["127.0.0.2"]);
    let proxy = Switchyard::start(&pki, &config).unwrap();
    // The office: its egress (tinyproxy, bound to 127.0.0.2) is what the proxy sees.
    let dir = TempDir::new("tinyproxy").unwrap();
    let office = ConnectProxy::start_from(dir.path(), Some(STRANGER)).unwrap();
    let via_office = proxy_db(
        &pki,
        &proxy,
        &[("HTTPS_PROXY", format!("http://{}", office.addr))],
    );
    let direct = proxy_db(&pki, &proxy, &[]);

    let err = psql(direct.addr, "disable", "select 1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("denied access") && err.contains("allow_from"),
        "psql should print why: {err}\n{}",
        direct.logs()
    );
    let refused = wait_lines(&proxy, "the refusal", 1, |l| l.contains("source_refused"));
    assert!(
        refused[0].contains(
            "route postgres refused: client 127.0.0.1 (from peer) is not in allow_from.postgres: [127.0.0.2/32]"
        ),
        "{}",
        refused[0]
    );
    let labels = [("route", "postgres"), ("action", "source_refused")];
    let n = proxy
        .metric("switchyard_route_decisions_total", &labels)
        .unwrap();
    assert_eq!(n, 1.0, "{}", proxy.metrics().unwrap());

    // After the refusal: psql from the office works, and the other routes stay open.
    assert_eq!(
        psql(via_office.addr, "disable", "select 41 + 1").unwrap_or_else(|e| panic!(
            "{e}\n{}\n{}",
            via_office.logs(),
            proxy.log()
        )),
        "42"
    );
    wait_lines(&proxy, "the office's connection", 1, |l| {
        l.contains("route=postgres")
            && l.contains("connection closed")
            && decided_client(l).is_some_and(|(c, f)| c.starts_with("127.0.0.2:") && f == "peer")
    });
    let out = curl(["-k", &format!("https://{}/still-open", proxy.web)]).unwrap();
    assert!(
        out.stdout.contains("upstream=web path=/still-open"),
        "{out:?}"
    );
}

#[test]
fn allow_from_on_an_app_is_checked_before_the_handshake_and_on_plaintext_requests() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::webapp("files").unwrap();
    let mut text = ProxyConfig::default().render();
    text += &format!(
        "apps:\n  - {{name: files, public_addr: files.example.test, uri: 'http://{}', \
         allow_from: ['127.0.0.2']}}\n",
        app.addr
    );
    let proxy = Switchyard::start_text(&pki, &text, None).unwrap();
    let port = proxy.web.port();
    let ca = pki.ca_cert().display().to_string();
    let resolve = format!("files.example.test:{port}:127.0.0.1");
    let url = format!("https://files.example.test:{port}/api/hello");
    let tls = |source: &str| {
        let args = [
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "--interface",
            source,
            &url,
        ];
        curl(args).unwrap()
    };
    let refused = tls("127.0.0.1");
    assert!(
        !refused.success() && refused.stderr.contains("access denied"),
        "curl should get the access_denied alert: {refused:?}"
    );
    let allowed = tls("127.0.0.2");
    assert_eq!(
        hello_json(allowed.stdout.as_bytes())["app"],
        "files",
        "{allowed:?}\n{}",
        proxy.log()
    );
    let lines = wait_lines(&proxy, "the refusal", 1, |l| l.contains("source_refused"));
    assert!(
        lines[0].contains(
            "route app:files refused: client 127.0.0.1 (from peer) is not in apps[0].allow_from"
        ),
        "{}",
        lines[0]
    );
    // Over plaintext the host names the app per request: refused there too.
    let plain = format!("http://127.0.0.1:{port}/api/hello");
    let host = "Host: files.example.test";
    let out = curl(["-H", host, "--interface", "127.0.0.1", &plain]).unwrap();
    assert!(
        out.stdout
            .starts_with("403 Forbidden: app files does not accept clients from 127.0.0.1"),
        "{out:?}"
    );
    let out = curl(["-H", host, "--interface", "127.0.0.2", &plain]).unwrap();
    assert_eq!(hello_json(out.stdout.as_bytes())["app"], "files", "{out:?}");
}
