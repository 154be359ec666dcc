//! The client side of the connection upgrade (`docs/balancers.md`) against Switchyard itself, no
//! balancer: `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE=true` forces `proxy tcp` through the
//! websocket and the legacy upgrade to an echo app (half-close included); without it the
//! client detects direct TLS routing (the proxy has no tunnel upstream); a per-address
//! `false` and a bad value; `switchyard probe` with an identity reports direct routing, both
//! upgrades and the latency they add. Balancers in front are tests/balancers.rs.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use switchyard_tests::local_proxy::{
    client_args, connect_lines, echo_tcp_args, switchyard_cmd, LocalProxy,
};
use switchyard_tests::{
    run_with_timeout, wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki,
};

const OVERRIDE: &str = "SWITCHYARD_TLS_ROUTING_CONN_UPGRADE";

/// A proxy with one TCP app (`echo.localhost`, ALPN teleport-tcp) and no tunnel upstream.
fn proxy_with_app(pki: &TestPki, app: &DemoUpstream) -> Switchyard {
    Switchyard::start(pki, &ProxyConfig::default().echo_app(app.addr)).unwrap()
}

/// `proxy tcp --alpn teleport-tcp --sni echo.localhost EXTRA… -v` with `override_value`
/// in the environment (or none).
fn local_tcp(
    pki: &TestPki,
    proxy: &Switchyard,
    extra: &[&str],
    override_value: Option<&str>,
) -> LocalProxy {
    let mut args = echo_tcp_args();
    args.extend(client_args(pki, proxy, "client"));
    args.extend(extra.iter().map(|s| s.to_string()));
    LocalProxy::start_with(&args, |cmd| {
        match override_value {
            Some(v) => cmd.env(OVERRIDE, v),
            None => cmd.env_remove(OVERRIDE),
        };
        for var in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
            cmd.env_remove(var);
        }
    })
    .unwrap()
}

/// Greeting, one echoed line, then 100 kB sent and a write shutdown: everything must come
/// back before the end of stream.
fn echo_and_half_close(addr: SocketAddr, local: &LocalProxy) {
    let (stream, mut reader) = connect_lines(addr, Duration::from_secs(10)).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "upstream=echo\n", "{}", local.logs());
    (&stream).write_all(b"hello through the tunnel\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "hello through the tunnel\n");
    let bulk = vec![b'x'; 100_000];
    (&stream).write_all(&bulk).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), bulk.len(), "{}", local.logs());
}

fn wait_log(local: &LocalProxy, what: &str) {
    wait_until(Duration::from_secs(5), what, || {
        Ok(local.log().contains(what).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", local.logs()));
}

#[test]
fn forced_upgrade_carries_proxy_tcp_websocket_and_legacy() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("echo").unwrap();
    let proxy = proxy_with_app(&pki, &app);
    for (mode, server_sees) in [
        ("websocket", "upgrade=\"websocket"),
        ("legacy", "upgrade=\"alpn"),
    ] {
        let local = local_tcp(
            &pki,
            &proxy,
            &[&format!("--upgrade-mode={mode}")],
            Some("true"),
        );
        echo_and_half_close(local.addr, &local);
        wait_log(
            &local,
            &format!("connection upgrade forced by {OVERRIDE}: using {mode} connection upgrade"),
        );
        wait_log(&local, "closed: 100025 bytes sent, 100039 received");
        let log = proxy.log();
        assert!(
            log.lines()
                .any(|l| l.contains(server_sees) && l.contains("route=echo-app")),
            "the proxy should have routed an upgraded ({server_sees}) connection to echo-app:\n{log}"
        );
    }
}

#[test]
fn detection_finds_direct_routing_without_a_tunnel_route_and_overrides_apply() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("echo").unwrap();
    let proxy = proxy_with_app(&pki, &app);

    let local = local_tcp(&pki, &proxy, &[], None);
    echo_and_half_close(local.addr, &local);
    // A proxy without upstreams.tunnel either answers the detection handshake itself or
    // refuses teleport-reversetunnel alone; both read as direct TLS routing.
    wait_log(&local, "does TLS routing directly (");
    // One detection per process, whatever the number of connections.
    echo_and_half_close(local.addr, &local);
    assert_eq!(
        local.log().matches("does TLS routing directly").count(),
        1,
        "{}",
        local.logs()
    );

    let per_addr = format!("localhost:{}=false,elsewhere:443=true", proxy.web.port());
    let local = local_tcp(&pki, &proxy, &[], Some(&per_addr));
    echo_and_half_close(local.addr, &local);
    wait_log(
        &local,
        &format!("connection upgrade turned off by {OVERRIDE}"),
    );

    let mut args = echo_tcp_args();
    args.extend(client_args(&pki, &proxy, "client"));
    let mut cmd = switchyard_cmd(&args).unwrap();
    cmd.env(OVERRIDE, "maybe");
    let out = run_with_timeout(cmd, b"", Duration::from_secs(10)).unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "SWITCHYARD_TLS_ROUTING_CONN_UPGRADE=\"maybe\": `maybe` is not true or false"
        ),
        "{out:?}"
    );
}

#[test]
fn probe_with_identity_reports_direct_routing_upgrades_and_added_latency() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("echo").unwrap();
    let proxy = proxy_with_app(&pki, &app);
    let url = format!("https://localhost:{}", proxy.web.port());
    let identity = format!("--identity={}", pki.dir().join("client").display());
    let mut cmd = switchyard_cmd([
        "probe",
        &url,
        &identity,
        "--alpn=teleport-tcp",
        "--sni=echo.localhost",
        "--count=3",
    ])
    .unwrap();
    cmd.env_remove(OVERRIDE);
    let out = run_with_timeout(cmd, b"", Duration::from_secs(60)).unwrap();
    println!("{}{}", out.stdout, out.stderr);
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    let text = &out.stdout;
    for expected in [
        "reachable: yes (TCP connect ",
        "TLS routing (ALPN): works directly",
        "websocket upgrade: works (101 in ",
        "legacy upgrade: works (101 in ",
        "connect with the identity (SNI echo.localhost, ALPN teleport-tcp): direct ",
        "through the websocket upgrade ",
        "ms over direct",
        "conclusion: clients will connect directly",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("fails"), "{text}");

    // Nothing listening: exit 1, in plain words.
    let closed = switchyard_tests::free_port();
    let url = format!("https://localhost:{closed}");
    let ca = pki.ca_cert().display().to_string();
    let cmd = switchyard_cmd(["probe", &url, "--ca", &ca]).unwrap();
    let out = run_with_timeout(cmd, b"", Duration::from_secs(30)).unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stdout.contains("reachable: no"), "{out:?}");
}
