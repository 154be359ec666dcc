//! Behind real load balancers (`docs/balancers.md`): nginx and HAProxy terminating TLS in front
//! of the proxy, so SNI/ALPN never reach it; the local proxies detect that on their own
//! (no environment override) and tunnel their TLS through `GET /webapi/connectionupgrade`.
//! OpenSSH, psql, kubectl and a TCP client work through nginx; ssh and psql through HAProxy
//! `mode http`; the proxy learns the client address from `X-Forwarded-For`. HAProxy
//! `mode tcp` with `send-proxy-v2` keeps direct TLS routing and the PROXY header's address.
//! Pings keep an idle tunnel alive through nginx's `proxy_read_timeout`; without them nginx
//! cuts it. `switchyard probe` reports each set-up. The fixtures are proven first with curl.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use switchyard_tests::balancer::{self, Balancer, ConnectProxy, HAProxy, Nginx, BALANCER_SOURCE};
use switchyard_tests::local_proxy::{
    connect_lines, echo_tcp_args, switchyard_cmd, write_ssh_config, LocalProxy,
};
use switchyard_tests::pki::CertFiles;
use switchyard_tests::postgres::psql;
use switchyard_tests::process::Proc;
use switchyard_tests::sshd::{scp_10mb, ScpCopy};
use switchyard_tests::{
    curl, decided_client, free_port, require_tool, run_with_timeout, wait_until, DemoUpstream,
    Postgres, ProxyConfig, SClient, SClientOutput, Sshd, Switchyard, TempDir, TestPki,
};

/// Whether a proxy log line decided on the client 127.0.0.1 (the local proxy's address as
/// the balancer saw it) from nginx's or HAProxy's `X-Forwarded-For`.
fn client_from_xff(line: &str) -> bool {
    decided_client(line) == Some(("127.0.0.1", "x_forwarded_for"))
}

fn start_proxy(
    pki: &TestPki,
    config: &ProxyConfig,
    trust_xff: bool,
    limits: &[&str],
) -> Switchyard {
    balancer::start_proxy(pki, config, trust_xff, limits).unwrap()
}

/// The balancer's server certificate, from the cluster CA, for `localhost`/127.0.0.1.
fn front_cert(pki: &TestPki) -> CertFiles {
    pki.issue_server(
        "balancer",
        "balancer.localhost",
        &["localhost", "127.0.0.1"],
    )
    .unwrap()
}

fn nginx(pki: &TestPki, dir: &TempDir, proxy: &Switchyard, timeout: Option<Duration>) -> Balancer {
    let front = front_cert(pki);
    Nginx::layer7(dir.path(), &front.cert, &front.key, proxy.web, timeout).unwrap()
}

fn haproxy_http(pki: &TestPki, dir: &TempDir, proxy: &Switchyard) -> Balancer {
    HAProxy::http(dir.path(), &front_cert(pki), proxy.web).unwrap()
}

/// `--proxy=localhost:PORT --identity=…/client`: the client pointed at the balancer.
fn client_args(pki: &TestPki, front: SocketAddr) -> Vec<String> {
    vec![
        format!("--proxy=localhost:{}", front.port()),
        format!("--identity={}", pki.dir().join("client").display()),
    ]
}

fn local_proxy(kind: &[&str], pki: &TestPki, front: SocketAddr) -> LocalProxy {
    let mut args: Vec<String> = kind.iter().map(|s| s.to_string()).collect();
    args.extend(client_args(pki, front));
    LocalProxy::start(&args).unwrap()
}

/// Waits until the proxy logged, for the inner connection of route `route` (text in its
/// log line, e.g. `ssh:node1`), a WebSocket upgrade with `alpn-ping` (the client's default)
/// and the client address from `X-Forwarded-For`, and the balancer logged
/// `GET /webapi/connectionupgrade` answered 101. Balancers log a request when its
/// connection ends, so the second also proves the tunnel was closed once the client's
/// connection was over.
fn assert_upgraded(proxy: &Switchyard, balancer: &Balancer, route: &str, client: &str) {
    let inner = || {
        proxy.log().lines().any(|l| {
            l.contains(route)
                && client_from_xff(l)
                && l.contains("upgrade=")
                && l.contains("websocket")
                && l.contains("ping")
        })
    };
    let logged = || {
        let front = balancer.log();
        front.contains("/webapi/connectionupgrade") && front.contains(" 101 ")
    };
    let done = wait_until(Duration::from_secs(10), "upgrade in both logs", || {
        Ok((inner() && logged()).then_some(()))
    });
    if done.is_ok() {
        return;
    }
    let what = if !inner() {
        format!(
            "no proxy log line for {route:?} with upgrade=websocket(alpn-ping) and \
             client=127.0.0.1 client_from=x_forwarded_for"
        )
    } else if balancer.log().contains("/webapi/connectionupgrade") {
        "the balancer logged /webapi/connectionupgrade, but not answered 101".to_owned()
    } else {
        "the balancer has not logged GET /webapi/connectionupgrade after 10 s: it logs a \
         request when the connection ends, so the upgraded tunnel is still open although the \
         client's connection is over (a leaked tunnel)"
            .to_owned()
    };
    panic!(
        "{what}\n--- proxy log ---\n{}\n--- balancer ---\n{}\n--- client ---\n{client}",
        proxy.log(),
        balancer.logs()
    );
}

// ---- fixtures, proven with curl and openssl -------------------------------------------

fn web_proxy(pki: &TestPki, web: &DemoUpstream, proxy_protocol: Option<&str>) -> Switchyard {
    let mut config = ProxyConfig::default().upstream("web", web.addr);
    config.proxy_protocol = proxy_protocol.map(String::from);
    if proxy_protocol.is_some() {
        config = config.trusted(&[&BALANCER_SOURCE.to_string()]);
    }
    Switchyard::start(pki, &config).unwrap()
}

fn curl_hello(pki: &TestPki, front: &Balancer, path: &str) -> SClientOutput {
    let url = format!("https://localhost:{}{path}", front.addr.port());
    let ca = pki.ca_cert().display().to_string();
    curl(["--cacert", &ca, &url]).unwrap()
}

/// curl through `front` to `path` is answered by the proxy's web upstream.
fn assert_curl_reaches_web(pki: &TestPki, front: &Balancer, proxy: &Switchyard, path: &str) {
    let out = curl_hello(pki, front, path);
    assert!(
        out.stdout.contains(&format!("upstream=web path={path}")),
        "{out:?}\n{}\n{}",
        front.logs(),
        proxy.log()
    );
}

/// What a client offering only `teleport-reversetunnel` gets: nginx refuses with the
/// `no_application_protocol` alert, HAProxy (no `alpn` on its bind) negotiates none.
fn alpn_probe(pki: &TestPki, front: &Balancer) -> SClientOutput {
    SClient::new(front.addr)
        .sni("localhost")
        .alpn("teleport-reversetunnel")
        .verify(&pki.ca_cert())
        .run_to_end(b"", Duration::from_secs(10))
        .unwrap()
}

#[test]
fn fixture_nginx_layer7_reaches_the_web_route_and_strips_alpn() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let proxy = web_proxy(&pki, &web, None);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    assert_curl_reaches_web(&pki, &front, &proxy, "/through-nginx");
    assert!(
        proxy.log().contains(&format!("peer={BALANCER_SOURCE}:")),
        "nginx did not connect from {BALANCER_SOURCE}\n{}",
        proxy.log()
    );
    let out = alpn_probe(&pki, &front);
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        text.contains("no application protocol") || text.contains("no alpn negotiated"),
        "nginx negotiated an ALPN it should not know: {out:?}"
    );
}

#[test]
fn fixture_haproxy_http_reaches_the_web_route_and_strips_alpn() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let proxy = web_proxy(&pki, &web, None);
    let dir = TempDir::new("haproxy-http").unwrap();
    let front = haproxy_http(&pki, &dir, &proxy);
    assert_curl_reaches_web(&pki, &front, &proxy, "/through-haproxy");
    wait_until(Duration::from_secs(5), "HAProxy request log", || {
        Ok(front.log().contains("/through-haproxy").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", front.logs()));
    let out = alpn_probe(&pki, &front);
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        text.contains("no alpn negotiated") || text.contains("no application protocol"),
        "HAProxy negotiated an ALPN it should not know: {out:?}"
    );
}

#[test]
fn fixture_haproxy_tcp_sends_proxy_v2_with_the_client_address() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let proxy = web_proxy(&pki, &web, Some("on"));
    let dir = TempDir::new("haproxy-tcp").unwrap();
    let front = HAProxy::tcp_proxy_v2(dir.path(), proxy.web).unwrap();
    assert_curl_reaches_web(&pki, &front, &proxy, "/through-l4");
    assert_proxy_v2_client(&proxy.log());
}

/// Every closing line of the proxy names HAProxy as the peer and, from its PROXY v2
/// header, the client's own address (127.0.0.1:PORT) as the client.
fn assert_proxy_v2_client(log: &str) {
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    assert!(!closed.is_empty(), "no closing line\n{log}");
    for line in closed {
        let peer = switchyard_tests::log_fields(line, "peer");
        let (client, from) = decided_client(line).unwrap_or_default();
        assert!(
            peer.len() == 1
                && peer[0].starts_with(&format!("{BALANCER_SOURCE}:"))
                && client.starts_with("127.0.0.1:")
                && from == "proxy_v2",
            "expected peer={BALANCER_SOURCE}:PORT (HAProxy) client=127.0.0.1:PORT \
             client_from=proxy_v2 (its PROXY v2 header): {line}\n{log}"
        );
    }
}

// ---- nginx (layer 7) in front ----------------------------------------------------------

/// The block `switchyard config ssh --cluster test` prints for a proxy at `front`, plus
/// sshd's client key.
fn ssh_config(pki: &TestPki, front: SocketAddr, sshd: &Sshd, dir: &TempDir) -> PathBuf {
    write_ssh_config(client_args(pki, front), sshd, dir.path()).0
}

/// `ssh -F config root@node1.test -- echo through-the-balancer`.
fn ssh_echo(config: &Path) -> SClientOutput {
    let mut cmd = Command::new(require_tool("ssh", "openssh-client", &[]).unwrap());
    cmd.arg("-F").arg(config);
    cmd.args(["root@node1.test", "--", "echo", "through-the-balancer"]);
    // No override: the client must detect the balancer itself.
    cmd.env_remove("SWITCHYARD_TLS_ROUTING_CONN_UPGRADE");
    run_with_timeout(cmd, b"", Duration::from_secs(30)).unwrap()
}

/// A proxy trusting `X-Forwarded-For`, with the SSH node `node1` on a real sshd.
fn ssh_proxy(pki: &TestPki) -> (Sshd, Switchyard) {
    let sshd = Sshd::start().unwrap();
    let config = ProxyConfig::default().node("node1", sshd.addr);
    let proxy = start_proxy(pki, &config, true, &[]);
    (sshd, proxy)
}

/// A proxy trusting `X-Forwarded-For`, with the `postgres` upstream on a real PostgreSQL.
fn pg_proxy(pki: &TestPki) -> (Postgres, Switchyard) {
    let pg = Postgres::start(&pki.server).unwrap();
    let config = ProxyConfig::default().upstream("postgres", pg.addr);
    let proxy = start_proxy(pki, &config, true, &[]);
    (pg, proxy)
}

fn check_ssh(pki: &TestPki, proxy: &Switchyard, front: &Balancer, sshd: &Sshd) {
    let dir = TempDir::new("ssh-via-balancer").unwrap();
    let config = ssh_config(pki, front.addr, sshd, &dir);
    let out = ssh_echo(&config);
    assert!(
        out.success() && out.stdout.trim() == "through-the-balancer",
        "ssh through the balancer: {out:?}\n--- proxy ---\n{}\n--- balancer ---\n{}",
        proxy.log(),
        front.logs()
    );
    assert!(proxy.log().contains("ssh:node1"), "{}", proxy.log());
    assert_upgraded(proxy, front, "ssh:node1", &out.stderr);
}

fn check_psql(pki: &TestPki, proxy: &Switchyard, front: &Balancer) {
    let local = local_proxy(&["proxy", "db", "--protocol=postgres"], pki, front.addr);
    let answer = psql(local.addr, "disable", "select 40 + 2");
    assert_eq!(
        answer.as_deref().ok(),
        Some("42"),
        "psql through the balancer: {answer:?}\n{}\n--- proxy ---\n{}\n--- balancer ---\n{}",
        local.logs(),
        proxy.log(),
        front.logs()
    );
    assert!(proxy.log().contains("teleport-postgres"), "{}", proxy.log());
    assert_upgraded(proxy, front, "teleport-postgres", &local.logs());
}

#[test]
fn nginx_openssh_through_proxy_ssh_detects_and_upgrades() {
    let pki = TestPki::new().unwrap();
    let (sshd, proxy) = ssh_proxy(&pki);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    check_ssh(&pki, &proxy, &front, &sshd);

    // 10 MB with scp, checked end to end.
    let work = TempDir::new("scp-via-nginx").unwrap();
    let config = ssh_config(&pki, front.addr, &sshd, &work);
    let ScpCopy {
        out, data, remote, ..
    } = scp_10mb(&config, work.path(), Duration::from_secs(60)).unwrap();
    assert!(out.success(), "scp through nginx: {out:?}\n{}", proxy.log());
    assert!(
        std::fs::read(&remote).is_ok_and(|copied| copied == data),
        "the 10 MB copied through nginx differ"
    );
}

#[test]
fn nginx_psql_through_proxy_db_detects_and_upgrades() {
    let pki = TestPki::new().unwrap();
    let (_pg, proxy) = pg_proxy(&pki);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    check_psql(&pki, &proxy, &front);
}

const KUBE_VERSION: &str = r#"{"major":"1","minor":"31","gitVersion":"v1.31.0-behind-nginx"}"#;

/// `openssl s_server -WWW` serving the Kubernetes `/version` document with a certificate
/// for the kube SNI (as in client_kube.rs).
fn kube_api(pki: &TestPki, dir: &TempDir) -> (SocketAddr, Proc) {
    let tls = pki
        .issue_server("kube", "kube", &["kube-teleport-proxy-alpn.localhost"])
        .unwrap();
    std::fs::write(dir.join("version"), KUBE_VERSION).unwrap();
    let openssl = require_tool("openssl", "openssl", &[]).unwrap();
    for _ in 0..3 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(&openssl);
        cmd.args(["s_server", "-WWW", "-quiet", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&tls.cert)
            .arg("-key")
            .arg(&tls.key)
            .current_dir(dir.path());
        let mut proc = Proc::spawn("kube-api", cmd, dir.path()).unwrap();
        let up = wait_until(Duration::from_secs(5), "s_server listening", || {
            Ok(TcpStream::connect(addr).is_ok().then_some(()))
        });
        if up.is_ok() && proc.wait_exit(Duration::ZERO).unwrap().is_none() {
            return (addr, proc);
        }
    }
    panic!("openssl s_server did not start");
}

#[test]
fn nginx_kubectl_through_proxy_kube_detects_and_upgrades() {
    let pki = TestPki::new().unwrap();
    let api_dir = TempDir::new("kube-api").unwrap();
    let (api, _api_proc) = kube_api(&pki, &api_dir);
    let proxy = start_proxy(
        &pki,
        &ProxyConfig::default().upstream("kube", api),
        true,
        &[],
    );
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    let local = local_proxy(&["proxy", "kube"], &pki, front.addr);
    let kubeconfig = local
        .printed("kubeconfig")
        .unwrap_or_else(|| panic!("no kubeconfig= line\n{}", local.logs()));
    let mut cmd = Command::new(require_tool("kubectl", "kubernetes-client", &[]).unwrap());
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/version"])
        .env("HOME", dir.path());
    let out = run_with_timeout(cmd, b"", Duration::from_secs(30)).unwrap();
    assert!(
        out.success() && out.stdout.contains("v1.31.0-behind-nginx"),
        "kubectl through nginx: {out:?}\n{}\n--- proxy ---\n{}\n--- balancer ---\n{}",
        local.logs(),
        proxy.log(),
        front.logs()
    );
    assert!(
        proxy.log().contains("kube-teleport-proxy-alpn.localhost"),
        "{}",
        proxy.log()
    );
    drop(local);
    assert_upgraded(&proxy, &front, "kube-teleport-proxy-alpn.localhost", "");
}

/// A proxy trusting `X-Forwarded-For` with `limits`, and the TCP app `echo.localhost`
/// (ALPN teleport-tcp) → the demo echo upstream `echo`.
fn echo_proxy(pki: &TestPki, echo: &DemoUpstream, limits: &[&str]) -> Switchyard {
    start_proxy(
        pki,
        &ProxyConfig::default().echo_app(echo.addr),
        true,
        limits,
    )
}

/// A TCP connection to a local `proxy tcp` for the echo app: greeting read, one line echoed.
struct EchoClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl EchoClient {
    fn connect(local: &LocalProxy) -> EchoClient {
        let (client, greeting) = EchoClient::try_connect(local.addr);
        assert_eq!(
            greeting.as_deref().ok(),
            Some("upstream=echo\n"),
            "{}",
            local.logs()
        );
        client
    }

    /// Connects to a local proxy at `addr`; returns the client and its first line.
    fn try_connect(addr: SocketAddr) -> (EchoClient, std::io::Result<String>) {
        let (stream, reader) = connect_lines(addr, Duration::from_secs(15)).unwrap();
        let mut client = EchoClient { stream, reader };
        let greeting = client.line();
        (client, greeting)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line)
    }

    /// Sends `text` and returns what came back (empty at EOF), or the I/O error.
    fn echo(&mut self, text: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{text}\n").as_bytes())?;
        self.line()
    }
}

/// `proxy tcp` for the echo app with `extra` arguments, pointed at `front`.
fn proxy_tcp_echo(pki: &TestPki, front: SocketAddr, extra: &[&str]) -> LocalProxy {
    let mut args = echo_tcp_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(client_args(pki, front));
    LocalProxy::start(&args).unwrap()
}

#[test]
fn nginx_tcp_client_through_proxy_tcp_detects_and_upgrades() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let proxy = echo_proxy(&pki, &echo, &[]);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    let local = proxy_tcp_echo(&pki, front.addr, &[]);
    let mut client = EchoClient::connect(&local);
    let echoed = client.echo("hello through nginx");
    assert_eq!(
        echoed.as_deref().ok(),
        Some("hello through nginx\n"),
        "{}\n{}",
        local.logs(),
        proxy.log()
    );
    drop(client);
    assert!(proxy.log().contains("echo-app"), "{}", proxy.log());
    assert_upgraded(&proxy, &front, "echo-app", &local.logs());

    // Six clients at once, 1 MiB each way: many WebSocket frames, each its own tunnel.
    let addr = local.addr;
    let clients: Vec<_> = (0..6u8)
        .map(|i| std::thread::spawn(move || echo_bulk(addr, i, 1 << 20)))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let result = c.join().unwrap();
        assert!(
            result.is_ok(),
            "client {i}: {result:?}\n{}\n{}",
            local.logs(),
            proxy.log()
        );
    }
    // Detection ran once for the address, not per connection.
    let detected = local
        .log()
        .lines()
        .filter(|l| l.contains("load balancer"))
        .count();
    assert!(
        detected <= 1,
        "balancer detection logged {detected} times\n{}",
        local.logs()
    );
}

/// A balancer that reuses its connections to the proxy (an nginx upstream `keepalive`
/// pool, HAProxy `http-reuse always`) sends the upgrade on a connection that already
/// carried a plain request: the proxy looks at every request, so the upgrade is answered
/// (not passed to the web upstream) and its inner TLS routed.
fn upgrade_on_a_reused_connection(start: impl Fn(&Path, &CertFiles, SocketAddr) -> Balancer) {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let config = ProxyConfig::default()
        .echo_app(echo.addr)
        .upstream("web", web.addr);
    let proxy = start_proxy(&pki, &config, true, &[]);
    let dir = TempDir::new("reuse").unwrap();
    let front = start(dir.path(), &front_cert(&pki), proxy.web);
    assert_curl_reaches_web(&pki, &front, &proxy, "/warm-up");
    let warm = proxy
        .log()
        .lines()
        .find(|l| l.contains("path=/warm-up"))
        .and_then(|l| l.split("client=").nth(1))
        .and_then(|rest| rest.split([' ', '}']).next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no access line for /warm-up\n{}", proxy.log()));
    let local = proxy_tcp_echo(&pki, front.addr, &[]);
    let mut client = EchoClient::connect(&local);
    let echoed = client.echo("hello through a reused connection");
    assert_eq!(
        echoed.as_deref().ok(),
        Some("hello through a reused connection\n"),
        "{}\n{}",
        local.logs(),
        proxy.log()
    );
    drop(client);
    assert_upgraded(&proxy, &front, "echo-app", &local.logs());
    let reused = proxy
        .log()
        .lines()
        .any(|l| l.contains(&format!("client={warm}")) && l.contains("connection upgraded"));
    assert!(
        reused,
        "the upgrade did not come on the reused connection {warm}\n{}\n{}",
        proxy.log(),
        front.logs()
    );
}

#[test]
fn nginx_keepalive_pool_delivers_the_upgrade_on_a_reused_connection() {
    upgrade_on_a_reused_connection(|dir, cert, backend| {
        Nginx::layer7_pooled(dir, &cert.cert, &cert.key, backend).unwrap()
    });
}

#[test]
fn haproxy_http_reuse_always_delivers_the_upgrade_on_a_reused_connection() {
    upgrade_on_a_reused_connection(|dir, cert, backend| {
        HAProxy::http_reuse_always(dir, cert, backend).unwrap()
    });
}

/// Sends `len` bytes (a pattern seeded by `seed`) through the echo app and checks they come
/// back unchanged.
fn echo_bulk(addr: SocketAddr, seed: u8, len: usize) -> Result<(), String> {
    let (client, greeting) = EchoClient::try_connect(addr);
    if greeting.as_deref().ok() != Some("upstream=echo\n") {
        return Err(format!("greeting {greeting:?}"));
    }
    let data: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u32) as u8
        })
        .collect();
    let mut writer = client.stream.try_clone().map_err(|e| e.to_string())?;
    let sent = data.clone();
    let write = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = Vec::with_capacity(len);
    let mut reader = client.reader;
    let mut buf = vec![0u8; 64 * 1024];
    let read = loop {
        if back.len() >= len {
            break Ok(());
        }
        match reader.read(&mut buf) {
            Ok(0) => break Err("EOF".to_string()),
            Ok(n) => back.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e.to_string()),
        }
    };
    let wrote = write.join().unwrap();
    match (wrote, read) {
        (Ok(()), Ok(())) if back == data => Ok(()),
        (Ok(()), Ok(())) => Err("echoed bytes differ".into()),
        (w, r) => Err(format!(
            "wrote {len} bytes ({w:?}); read {} of {len} back, then {r:?}",
            back.len()
        )),
    }
}

#[test]
fn nginx_refused_client_certificate_inside_the_upgrade_is_reported() {
    let pki = TestPki::new().unwrap();
    let (sshd, proxy) = ssh_proxy(&pki);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    let mut args = vec!["proxy".to_owned(), "ssh".into(), "--cluster=test".into()];
    args.push(format!("--proxy=localhost:{}", front.addr.port()));
    args.push(format!(
        "--identity={}",
        pki.dir().join("wrong-client").display()
    ));
    args.push("root@node1.test:22".into());
    let out = run_with_timeout(
        switchyard_cmd(&args).unwrap(),
        b"SSH-2.0-Test\r\n",
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("refused the client certificate CN=alice,O=admins"),
        "the proxy's mTLS refusal inside the tunnel should be reported as such: {out:?}\n{}",
        proxy.log()
    );
    assert!(
        !sshd.log().contains("Connection from"),
        "sshd was reached\n{}",
        sshd.log()
    );
}

// ---- HAProxy in front ------------------------------------------------------------------

#[test]
fn haproxy_http_openssh_through_proxy_ssh_detects_and_upgrades() {
    let pki = TestPki::new().unwrap();
    let (sshd, proxy) = ssh_proxy(&pki);
    let dir = TempDir::new("haproxy-http").unwrap();
    let front = haproxy_http(&pki, &dir, &proxy);
    check_ssh(&pki, &proxy, &front, &sshd);
}

#[test]
fn haproxy_http_psql_through_proxy_db_detects_and_upgrades() {
    let pki = TestPki::new().unwrap();
    let (_pg, proxy) = pg_proxy(&pki);
    let dir = TempDir::new("haproxy-http").unwrap();
    let front = haproxy_http(&pki, &dir, &proxy);
    check_psql(&pki, &proxy, &front);
}

#[test]
fn haproxy_tcp_proxy_v2_keeps_direct_tls_routing_and_the_client_address() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let config = ProxyConfig::default()
        .node("node1", sshd.addr)
        .proxy_protocol("on");
    let proxy = start_proxy(&pki, &config, false, &[]);
    let dir = TempDir::new("haproxy-tcp").unwrap();
    let front = HAProxy::tcp_proxy_v2(dir.path(), proxy.web).unwrap();
    let ssh_dir = TempDir::new("ssh-via-l4").unwrap();
    let config = ssh_config(&pki, front.addr, &sshd, &ssh_dir);
    let out = ssh_echo(&config);
    assert!(
        out.success() && out.stdout.trim() == "through-the-balancer",
        "ssh through HAProxy tcp: {out:?}\n--- proxy ---\n{}\n--- balancer ---\n{}",
        proxy.log(),
        front.logs()
    );
    let log = proxy.log();
    assert!(log.contains("ssh:node1"), "{log}");
    assert_proxy_v2_client(&log);
    // A layer-4 balancer passes ALPN through: no upgrade is needed.
    assert!(
        !log.contains("upgrade=") && !log.contains("connection upgraded"),
        "the client upgraded through a layer-4 balancer\n{log}"
    );
}

// ---- upgrade mode, environment override, HTTPS_PROXY, /webapi/ping ---------------------

/// The proxy's log line for the inner `echo-app` connection whose `upgrade=` field
/// contains `kind` (the last one, when there are several).
fn upgraded_line(proxy: &Switchyard, kind: &str) -> Option<String> {
    proxy
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("echo-app") && l.contains(&format!("upgrade=\"{kind}")))
        .map(String::from)
}

#[test]
fn legacy_upgrade_mode_through_nginx_and_haproxy_http() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    for front_kind in ["nginx", "haproxy"] {
        let proxy = echo_proxy(&pki, &echo, &[]);
        let dir = TempDir::new(front_kind).unwrap();
        let front = match front_kind {
            "nginx" => nginx(&pki, &dir, &proxy, None),
            _ => haproxy_http(&pki, &dir, &proxy),
        };
        let local = proxy_tcp_echo(&pki, front.addr, &["--upgrade-mode=legacy"]);
        let mut client = EchoClient::connect(&local);
        let echoed = client.echo("legacy upgrade");
        let context = || {
            format!(
                "{}\n--- proxy ---\n{}\n--- {front_kind} ---\n{}",
                local.logs(),
                proxy.log(),
                front.logs()
            )
        };
        assert_eq!(
            echoed.as_deref().ok(),
            Some("legacy upgrade\n"),
            "{front_kind}: {}",
            context()
        );
        // The legacy upgrade with pings (u32 length framing): label `alpn_ping`.
        let line = upgraded_line(&proxy, "alpn_ping");
        assert!(
            line.as_ref()
                .is_some_and(|l| !l.contains("websocket") && client_from_xff(l)),
            "{front_kind}: no legacy alpn-ping upgrade with client=127.0.0.1 from X-Forwarded-For logged for echo-app: \
             {line:?}\n{}",
            context()
        );
    }
}

/// `switchyard proxy tcp -v` for the echo app pointed at `front`, with only `env` of the
/// upgrade override and proxy variables set.
fn proxy_tcp_with_env(pki: &TestPki, front: SocketAddr, env: &[(&str, &str)]) -> LocalProxy {
    let mut args = echo_tcp_args();
    args.extend(client_args(pki, front));
    LocalProxy::start_with(&args, |cmd| {
        for var in [
            "SWITCHYARD_TLS_ROUTING_CONN_UPGRADE",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
    })
    .unwrap()
}

#[test]
fn env_override_forces_the_upgrade_or_turns_it_off() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let proxy = echo_proxy(&pki, &echo, &[]);
    // Direct to the proxy, upgrade forced for this address (and for all).
    let named = format!("localhost:{}=true", proxy.web.port());
    for value in [named.as_str(), "true"] {
        let env = [("SWITCHYARD_TLS_ROUTING_CONN_UPGRADE", value)];
        let local = proxy_tcp_with_env(&pki, proxy.web, &env);
        let (mut client, greeting) = EchoClient::try_connect(local.addr);
        let echoed = client.echo("forced");
        assert!(
            greeting.is_ok() && echoed.as_deref().ok() == Some("forced\n"),
            "{value}: {greeting:?} {echoed:?}\n{}\n{}",
            local.logs(),
            proxy.log()
        );
        drop(client);
        let line = wait_until(Duration::from_secs(5), "forced upgrade logged", || {
            Ok(upgraded_line(&proxy, "websocket"))
        });
        assert!(line.is_ok(), "{value}: no upgrade logged\n{}", proxy.log());
    }
    // Through nginx with the upgrade turned off: direct TLS routing cannot get through.
    let front_dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &front_dir, &proxy, None);
    let env = [("SWITCHYARD_TLS_ROUTING_CONN_UPGRADE", "false")];
    let local = proxy_tcp_with_env(&pki, front.addr, &env);
    let (_client, greeting) = EchoClient::try_connect(local.addr);
    assert!(
        !matches!(&greeting, Ok(g) if g == "upstream=echo\n"),
        "with the upgrade turned off, nginx should not carry TLS routing: {greeting:?}\n{}",
        local.logs()
    );
}

#[test]
fn https_proxy_connect_then_nginx_then_upgrade() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let proxy = echo_proxy(&pki, &echo, &[]);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    let forward_dir = TempDir::new("tinyproxy").unwrap();
    let forward = ConnectProxy::start(forward_dir.path()).unwrap();
    let url = format!("http://{}", forward.addr);
    let local = proxy_tcp_with_env(&pki, front.addr, &[("HTTPS_PROXY", &url)]);
    let (mut client, greeting) = EchoClient::try_connect(local.addr);
    let echoed = client.echo("via CONNECT");
    assert!(
        greeting.as_deref().ok() == Some("upstream=echo\n")
            && echoed.as_deref().ok() == Some("via CONNECT\n"),
        "{greeting:?} {echoed:?}\n{}\n--- proxy ---\n{}",
        local.logs(),
        proxy.log()
    );
    let want = format!("CONNECT localhost:{} ", front.addr.port());
    let requests = forward.requests();
    assert!(
        requests.iter().any(|r| r.starts_with(&want)),
        "HTTPS_PROXY was not used: {requests:?}\n{}",
        local.logs()
    );
    drop(client);
    assert_upgraded(&proxy, &front, "echo-app", &local.logs());
}

#[test]
fn webapi_ping_through_nginx_reports_tls_routing() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let proxy = web_proxy(&pki, &web, None);
    let dir = TempDir::new("nginx").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    let out = curl_hello(&pki, &front, "/webapi/ping");
    let compact: String = out.stdout.split_whitespace().collect();
    assert!(
        compact.contains("\"tls_routing_enabled\":true"),
        "{out:?}\n{}",
        proxy.log()
    );
}

// ---- idle tunnels and pings ------------------------------------------------------------

/// nginx's `proxy_read_timeout` in the idle-tunnel tests.
const IDLE_CUT: Duration = Duration::from_secs(1);
/// How long the tunnel with pings stays idle: three times [`IDLE_CUT`]. The idle span is
/// the scenario itself, hence a sleep.
const IDLE: Duration = Duration::from_secs(3);

/// nginx cuts an upgraded connection after `proxy_read_timeout` ([`IDLE_CUT`]) without
/// bytes from the proxy; the proxy's pings (`limits.ping_interval`) are such bytes. One
/// line through the tunnel, then `idle(&nginx)`, then another line: what came back, the
/// logs, and nginx's log.
fn idle_echo(
    ping_interval: &str,
    idle: impl FnOnce(&Balancer),
) -> (std::io::Result<String>, String, String) {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let ping = format!("ping_interval: {ping_interval}");
    let proxy = echo_proxy(&pki, &echo, &[&ping]);
    let dir = TempDir::new("nginx-idle").unwrap();
    let front = nginx(&pki, &dir, &proxy, Some(IDLE_CUT));
    let local = proxy_tcp_echo(&pki, front.addr, &[]);
    let mut client = EchoClient::connect(&local);
    let first = client.echo("before idle");
    assert_eq!(
        first.as_deref().ok(),
        Some("before idle\n"),
        "{}\n{}",
        local.logs(),
        proxy.log()
    );
    idle(&front);
    let after = client.echo("after idle");
    let logs = format!(
        "{}\n--- proxy ---\n{}\n--- balancer ---\n{}",
        local.logs(),
        proxy.log(),
        front.logs()
    );
    (after, logs, front.log())
}

#[test]
fn idle_tunnel_through_nginx_survives_with_pings() {
    let (after, logs, _) = idle_echo("300ms", |_| std::thread::sleep(IDLE));
    assert_eq!(
        after.as_deref().ok(),
        Some("after idle\n"),
        "with limits.ping_interval 300ms the tunnel should stay up for {IDLE:?} behind nginx's \
         {IDLE_CUT:?} read timeout\n{logs}"
    );
}

#[test]
fn idle_tunnel_through_nginx_is_cut_without_pings() {
    // Idle until nginx says its proxy_read_timeout cut the tunnel (30 s only bound the
    // wait).
    let (after, logs, nginx_log) = idle_echo("0s", |front| {
        wait_until(
            Duration::from_secs(30),
            "nginx's \"upstream timed out\"",
            || Ok(front.log().contains("upstream timed out").then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", front.logs()));
    });
    let cut = match &after {
        Ok(text) => text.is_empty(),
        Err(_) => true,
    };
    assert!(
        cut,
        "with pings off nginx should have closed the idle tunnel after {IDLE_CUT:?}, got \
         {after:?}\n{logs}"
    );
    assert!(
        nginx_log.contains("upstream timed out"),
        "the tunnel was cut, but not by nginx's proxy_read_timeout\n{logs}"
    );
}

// ---- switchyard probe ------------------------------------------------------------------

/// Runs `switchyard probe https://localhost:PORT --ca CA`, prints its output and saves it
/// as target/probe-NAME.txt.
fn probe(pki: &TestPki, name: &str, port: u16) -> (SClientOutput, String) {
    let url = format!("https://localhost:{port}");
    let mut cmd = switchyard_cmd(["probe", &url, "--ca"]).unwrap();
    cmd.arg(pki.ca_cert());
    cmd.env_remove("SWITCHYARD_TLS_ROUTING_CONN_UPGRADE");
    let out = run_with_timeout(cmd, b"", Duration::from_secs(60)).unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    println!(
        "--- switchyard probe {url} ({name}) ---\n{text}--- end ({:?}) ---",
        out.status
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::write(target.join(format!("probe-{name}.txt")), &text);
    let lower = text.to_lowercase();
    (out, lower)
}

/// The first line of `text` mentioning every one of `words`.
fn line_about<'a>(text: &'a str, words: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| words.iter().all(|w| l.contains(w)))
}

fn assert_upgrades_work(text: &str, what: &str) {
    for kind in ["websocket", "legacy"] {
        let line = line_about(text, &[kind, "upgrade"])
            .unwrap_or_else(|| panic!("{what}: no line about the {kind} upgrade:\n{text}"));
        assert!(
            line.contains("works") && !line.contains("not") && !line.contains("fail"),
            "{what}: the {kind} upgrade should work: {line:?}\n{text}"
        );
    }
    assert!(text.contains("ms"), "{what}: no round-trip times:\n{text}");
}

/// [`probe`], which must succeed and find the proxy reachable; its lowercased output.
fn probe_reachable(pki: &TestPki, name: &str, port: u16) -> String {
    let (out, text) = probe(pki, name, port);
    assert!(out.success(), "probe exited {:?}\n{text}", out.status);
    assert!(text.contains("reachable"), "{text}");
    text
}

fn probe_proxy(pki: &TestPki) -> (DemoUpstream, Switchyard) {
    let web = DemoUpstream::http("web").unwrap();
    let proxy = start_proxy(
        pki,
        &ProxyConfig::default().upstream("web", web.addr),
        true,
        &[],
    );
    (web, proxy)
}

#[test]
fn probe_direct_proxy_reports_direct_routing() {
    let pki = TestPki::new().unwrap();
    let (_web, proxy) = probe_proxy(&pki);
    let text = probe_reachable(&pki, "direct", proxy.web.port());
    assert!(
        !text.contains("upgrade required"),
        "direct ALPN routing should work against the proxy itself:\n{text}\n{}",
        proxy.log()
    );
    assert_upgrades_work(&text, "direct");
}

#[test]
fn probe_through_nginx_reports_upgrade_required_and_working() {
    let pki = TestPki::new().unwrap();
    let (_web, proxy) = probe_proxy(&pki);
    let dir = TempDir::new("nginx-probe").unwrap();
    let front = nginx(&pki, &dir, &proxy, None);
    let text = probe_reachable(&pki, "nginx", front.addr.port());
    assert!(
        text.contains("upgrade required"),
        "nginx strips ALPN:\n{text}"
    );
    assert_upgrades_work(&text, "nginx");
}

#[test]
fn probe_through_haproxy_reports_upgrade_required_and_working() {
    let pki = TestPki::new().unwrap();
    let (_web, proxy) = probe_proxy(&pki);
    let dir = TempDir::new("haproxy-probe").unwrap();
    let front = haproxy_http(&pki, &dir, &proxy);
    let text = probe_reachable(&pki, "haproxy", front.addr.port());
    assert!(
        text.contains("upgrade required"),
        "HAProxy mode http strips ALPN:\n{text}"
    );
    assert_upgrades_work(&text, "haproxy");
}

#[test]
fn probe_through_haproxy_tcp_reports_direct_routing() {
    let pki = TestPki::new().unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let config = ProxyConfig::default()
        .upstream("web", web.addr)
        .proxy_protocol("on");
    let proxy = start_proxy(&pki, &config, true, &[]);
    let dir = TempDir::new("haproxy-tcp-probe").unwrap();
    let front = HAProxy::tcp_proxy_v2(dir.path(), proxy.web).unwrap();
    let text = probe_reachable(&pki, "haproxy-tcp", front.addr.port());
    assert!(
        !text.contains("upgrade required"),
        "a layer-4 balancer with PROXY v2 keeps ALPN routing:\n{text}\n{}",
        proxy.log()
    );
    assert_upgrades_work(&text, "haproxy-tcp");
}
