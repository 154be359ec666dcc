//! Reverse tunnels end to end: the services live in a network namespace whose only way
//! out is a forwarder to the proxy's port, `switchyard agent` runs in there and dials
//! out, and REAL clients on the host reach the services through the proxy: OpenSSH
//! (`ssh`, `scp`) to sshd, `psql` to PostgreSQL, `mysql` to MariaDB, 1000 concurrent
//! streams to a TCP echo app over one tunnel, `curl` to an HTTP app. Then what must be
//! refused: an agent certificate from another CA, an identity not in `tunnel.agents`, a
//! service the rule does not allow, a client not in the rule's `allow`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use switchyard_tests::agent::{tunnel_section, Agent, Rule};
use switchyard_tests::local_proxy::{client_args, switchyard_cmd, write_ssh_config, LocalProxy};
use switchyard_tests::mariadb::{mysql, MariaDb};
use switchyard_tests::pki::CertFiles;
use switchyard_tests::postgres::{psql, PG_USER};
use switchyard_tests::process::Signal;
use switchyard_tests::sshd::{scp_10mb, ScpCopy};
use switchyard_tests::{
    curl, http_get, require_tool, run_with_timeout, wait_until, DemoUpstream, Netns, Postgres,
    ProxyConfig, SClientOutput, Sshd, Switchyard, TempDir, TestPki,
};

const WAIT: Duration = Duration::from_secs(15);

/// The agent rule of most tests: CN `edge` may serve `serve`, any client may reach it.
fn edge(serve: &'static [&'static str]) -> Rule<'static> {
    Rule {
        identity: "edge",
        serve,
        allow: &[],
    }
}

/// A proxy with the tunnel service and `rules` (max_connections raised for the 1000
/// streams: each local connection is its own TLS connection to the proxy).
fn proxy(pki: &TestPki, rules: &[Rule<'_>]) -> Switchyard {
    Switchyard::start_text(pki, &proxy_text(rules), None).unwrap()
}

fn proxy_text(rules: &[Rule<'_>]) -> String {
    let config = ProxyConfig {
        extra: tunnel_section("proxy-a", &[], rules),
        ..ProxyConfig::default()
    };
    let text = config
        .render()
        .replace("max_connections: 1000", "max_connections: 4000");
    assert!(text.contains("max_connections: 4000"), "{text}");
    text
}

/// The agent `cn` (issued by the cluster CA as `CN=cn, O=switchyard-agent`, what
/// `ca issue --agent` gives) inside `ns`, dialing the proxy through the namespace's only
/// way out; returns once its `tunnels` tunnels are up.
fn agent(
    pki: &TestPki,
    ns: &Netns,
    proxy: &Switchyard,
    cn: &str,
    services: &[(&str, &str, SocketAddr)],
    tunnels: usize,
) -> Agent {
    pki.issue_client(cn, cn, Some("switchyard-agent")).unwrap();
    agent_with(
        pki.dir().join(cn).as_path(),
        ns,
        proxy,
        services,
        tunnels,
        true,
    )
}

fn agent_with(
    identity: &Path,
    ns: &Netns,
    proxy: &Switchyard,
    services: &[(&str, &str, SocketAddr)],
    tunnels: usize,
    wait_up: bool,
) -> Agent {
    let out = ns.forward_out(proxy.web).unwrap();
    let n = tunnels.to_string();
    let agent = Agent::start(Some(ns), out, identity, services, &["--tunnels", &n]).unwrap();
    if wait_up {
        agent
            .wait_tunnels_up(tunnels, WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n--- proxy ---\n{}", proxy.log()));
    }
    agent
}

/// The host cannot connect to `addr` (it is inside the namespace): refused, as nothing
/// listens on the host's loopback at that port.
fn unreachable_from_host(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => panic!("{addr} is reachable from the host"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{addr}: {e}"),
    }
}

/// `proxy app NAME` as the client identity `stem`.
fn app_proxy(pki: &TestPki, proxy: &Switchyard, name: &str, stem: &str) -> LocalProxy {
    let mut args = vec!["proxy".to_owned(), "app".into(), name.into()];
    args.extend(client_args(pki, proxy, stem));
    LocalProxy::start(&args).unwrap()
}

/// One echo exchange through `addr`: the app's banner, then `text` back.
fn echo_once(addr: SocketAddr, text: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut banner = vec![0u8; "upstream=echo\n".len()];
    stream.read_exact(&mut banner)?;
    stream.write_all(text.as_bytes())?;
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back)?;
    Ok((
        String::from_utf8_lossy(&banner).into_owned(),
        String::from_utf8_lossy(&back).into_owned(),
    ))
}

/// `GET /agents` on the diag address, parsed.
fn agents_json(proxy: &Switchyard) -> serde_json::Value {
    let (code, body) = http_get(proxy.diag, "/agents").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn metric(proxy: &Switchyard, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metric(name, labels).unwrap()
}

/// Waits until `needle` is in `log()`, failing with the log.
fn wait_log(what: &str, needle: &str, log: impl Fn() -> String) {
    wait_until(WAIT, &format!("`{needle}` in the {what} log"), || {
        Ok(log().contains(needle).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n--- {what} ---\n{}", log()));
}

/// The line of `log` containing `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{log}"))
}

#[test]
fn the_namespace_is_reached_only_through_the_agent() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("only").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    // The proxy (on the host) cannot reach the app: nothing on the host's loopback there.
    unreachable_from_host(echo.addr);
    let proxy = proxy(&pki, &[edge(&["tcp:echo"])]);
    let local = app_proxy(&pki, &proxy, "echo", "client");
    // No agent yet: the name is no one's.
    assert!(echo_once(local.addr, "early\n").is_err());
    wait_log(
        "local proxy",
        "has no route for SNI \"echo.localhost\"",
        || local.log(),
    );

    let mut agent = agent(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 2);
    let (banner, back) = echo_once(local.addr, "through the tunnel\n").unwrap();
    assert_eq!(banner, "upstream=echo\n");
    assert_eq!(back, "through the tunnel\n");

    let json = agents_json(&proxy);
    assert_eq!(json["proxy_id"], "proxy-a", "{json}");
    let agents = json["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{json}");
    assert!(
        agents[0]["identity"].as_str().unwrap().contains("CN=edge"),
        "{json}"
    );
    assert_eq!(
        agents[0]["services"],
        serde_json::json!(["tcp:echo"]),
        "{json}"
    );
    assert_eq!(agents[0]["tunnels"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(metric(&proxy, "switchyard_tunnel_agents", &[]), 1.0);
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 2.0);
    let opened = [("kind", "tcp"), ("outcome", "opened")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened),
        1.0
    );
    let from_agent = [("direction", "from_agent")];
    let to_agent = [("direction", "to_agent")];
    let sent = "through the tunnel\n".len() as f64;
    assert!(metric(&proxy, "switchyard_tunnel_bytes_total", &to_agent) >= sent);
    assert!(metric(&proxy, "switchyard_tunnel_bytes_total", &from_agent) >= sent + 14.0);
    assert!(proxy.log().contains("agent tunnel up"), "{}", proxy.log());

    // The agent goes away: so does the only way in.
    agent.proc().signal(Signal::TERM).unwrap();
    assert!(
        agent.proc().wait_exit(WAIT).unwrap().is_some(),
        "{}",
        agent.log()
    );
    wait_until(WAIT, "the tunnels to close", || {
        Ok((metric(&proxy, "switchyard_tunnel_tunnels", &[]) == 0.0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", proxy.log()));
    assert_eq!(metric(&proxy, "switchyard_tunnel_agents", &[]), 0.0);
    assert_eq!(agents_json(&proxy)["agents"], serde_json::json!([]));
    let before = local.log().matches("has no route for SNI").count();
    assert!(echo_once(local.addr, "late\n").is_err());
    wait_until(WAIT, "a second no-route line", || {
        Ok((local.log().matches("has no route for SNI").count() > before).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", local.logs()));
}

fn ssh(config: &Path, args: &[&str]) -> SClientOutput {
    let mut cmd = Command::new(require_tool("ssh", "openssh-client", &[]).unwrap());
    cmd.arg("-F").arg(config).args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(20)).unwrap()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().unwrap_or("").to_owned()
}

#[test]
fn openssh_runs_a_command_and_copies_10mb_to_sshd_in_the_namespace() {
    use std::os::unix::fs::MetadataExt;
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("ssh").unwrap();
    let sshd = Sshd::start_in(Some(&ns)).unwrap();
    unreachable_from_host(sshd.addr);
    let proxy = proxy(&pki, &[edge(&["ssh:*"])]);
    let _agent = agent(&pki, &ns, &proxy, "edge", &[("ssh", "node1", sshd.addr)], 1);
    let dir = TempDir::new("agent-ssh").unwrap();
    let (config, printed) =
        write_ssh_config(client_args(&pki, &proxy, "client"), &sshd, dir.path());
    assert!(printed.contains("ProxyCommand"), "{printed}");

    // The command runs in the namespace: its network namespace is the test's.
    let out = ssh(
        &config,
        &["root@node1.test", "--", "readlink", "/proc/self/ns/net"],
    );
    assert!(
        out.success(),
        "ssh: {out:?}\n--- proxy ---\n{}\n--- sshd ---\n{}",
        proxy.log(),
        sshd.log()
    );
    let inode = std::fs::metadata(format!("/var/run/netns/{}", ns.name()))
        .unwrap()
        .ino();
    assert_eq!(out.stdout.trim(), format!("net:[{inode}]"), "{out:?}");
    assert!(proxy.log().contains("ssh:node1"), "{}", proxy.log());

    let ScpCopy {
        out, local, remote, ..
    } = scp_10mb(&config, dir.path(), Duration::from_secs(30)).unwrap();
    assert!(out.success(), "scp: {out:?}\n{}", proxy.log());
    let remote_sum = ssh(
        &config,
        &[
            "root@node1.test",
            "--",
            "sha256sum",
            &remote.display().to_string(),
        ],
    );
    assert!(remote_sum.success(), "{remote_sum:?}");
    assert_eq!(
        remote_sum.stdout.split_whitespace().next(),
        Some(sha256(&local).as_str()),
        "{remote_sum:?}"
    );
    let opened = [("kind", "ssh"), ("outcome", "opened")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened),
        3.0
    );
    assert!(
        metric(
            &proxy,
            "switchyard_tunnel_bytes_total",
            &[("direction", "to_agent")]
        ) > 10e6
    );
}

#[test]
fn psql_reaches_postgres_in_the_namespace_by_database_name() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("pg").unwrap();
    let pg = Postgres::start_in(&pki.server, Some(&ns)).unwrap();
    unreachable_from_host(pg.addr);
    let proxy = proxy(&pki, &[edge(&["postgres:orders"])]);
    let _agent = agent(
        &pki,
        &ns,
        &proxy,
        "edge",
        &[("postgres", "orders", pg.addr)],
        1,
    );

    let mut args = vec![
        "proxy".to_owned(),
        "db".into(),
        "--protocol=postgres".into(),
        "--db=orders".into(),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    let local = LocalProxy::start(&args).unwrap();
    // The server that answers is the one in the namespace (its port), and it computes.
    let want = format!("{}|42", pg.addr.port());
    for mode in ["prefer", "disable"] {
        let answer = psql(local.addr, mode, "select current_setting('port'), 6 * 7");
        assert_eq!(
            answer.as_deref().ok(),
            Some(want.as_str()),
            "{mode}: {answer:?}\n{}\n--- proxy ---\n{}",
            local.logs(),
            proxy.log()
        );
    }

    // `db connect` runs psql itself.
    let mut args = vec![
        "db".to_owned(),
        "connect".into(),
        "--protocol=postgres".into(),
        "--db=orders".into(),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    args.extend(
        [
            "--", "psql", "-X", "-A", "-t", "-U", PG_USER, "-d", "postgres",
        ]
        .map(String::from),
    );
    args.extend(["-c".into(), "select 'orders via db connect'".into()]);
    let out =
        run_with_timeout(switchyard_cmd(&args).unwrap(), b"", Duration::from_secs(20)).unwrap();
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert_eq!(out.stdout.trim(), "orders via db connect");
    let opened = [("kind", "postgres"), ("outcome", "opened")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened),
        3.0
    );
}

#[test]
fn mysql_reaches_mariadb_in_the_namespace_by_database_name() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("maria").unwrap();
    let db = MariaDb::start_in(&pki.server, Some(&ns)).unwrap();
    unreachable_from_host(db.addr);
    let proxy = proxy(&pki, &[edge(&["mysql:shop"])]);
    let _agent = agent(&pki, &ns, &proxy, "edge", &[("mysql", "shop", db.addr)], 1);

    let mut args = vec![
        "proxy".to_owned(),
        "db".into(),
        "--protocol=mysql".into(),
        "--db=shop".into(),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    let local = LocalProxy::start(&args).unwrap();
    let want = format!("{}\t42", db.addr.port());
    for extra in [&["--skip-ssl"][..], &[]] {
        let answer = mysql(local.addr, extra, "select @@port, 6 * 7");
        assert_eq!(
            answer.as_deref().ok(),
            Some(want.as_str()),
            "{extra:?}: {answer:?}\n{}\n--- proxy ---\n{}\n--- mariadb ---\n{}",
            local.logs(),
            proxy.log(),
            db.log()
        );
    }
    let opened = [("kind", "mysql"), ("outcome", "opened")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened),
        2.0
    );
}

/// At most `n` threads inside at once. The 1000 streams do not all connect in one
/// burst: each hop's listener (the local proxy, the proxy, the app) has an accept queue
/// of 128 (tokio's `TcpListener::bind`), and a burst beyond it is dropped by the kernel
/// (ListenOverflows), resets or, with SYN cookies, leaves a client waiting on a
/// connection the server never saw.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Inside<'a>(&'a Gate);

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Inside<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
        Inside(self)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.freed.notify_one();
    }
}

/// The WARN and ERROR lines of a log, at most 20.
fn warnings(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(20)
        .collect();
    lines.join("\n")
}

/// `len` bytes only stream `seed` sends: its number first, then a pattern of it.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut data = format!("stream {seed:04}:").into_bytes();
    data.extend(
        (0..len as u32).map(|i| (i.wrapping_add(seed << 12).wrapping_mul(2654435761) >> 13) as u8),
    );
    data.truncate(len);
    data
}

#[test]
fn a_thousand_concurrent_streams_over_one_tunnel_echo_every_byte() {
    const STREAMS: u32 = 1000;
    const LEN: usize = 16 * 1024;
    const SETTING_UP: usize = 64;
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("echo1k").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let proxy = proxy(&pki, &[edge(&["tcp:echo"])]);
    let agent = agent(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 1);
    let local = app_proxy(&pki, &proxy, "echo", "client");
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 1.0);

    // Every stream echoes its own pattern, then holds on until all have, so the 1000
    // are open at once while the proxy's counts are read.
    // At most SETTING_UP streams between connect and the app's banner at a time: every
    // hop's accept queue holds 128 (see Gate), and the proxy's handshake_timeout is 2 s.
    let gate = Arc::new(Gate::new(SETTING_UP));
    let echoed = Arc::new(Barrier::new(STREAMS as usize + 1));
    let release = Arc::new(Barrier::new(STREAMS as usize + 1));
    let started = Instant::now();
    let threads: Vec<_> = (0..STREAMS)
        .map(|seed| {
            let (echoed, release, gate) = (echoed.clone(), release.clone(), gate.clone());
            let addr = local.addr;
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let exchange = || -> std::io::Result<(TcpStream, Vec<u8>, Vec<u8>)> {
                        let setting_up = gate.enter();
                        let mut stream = TcpStream::connect(addr)?;
                        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                        let mut got = vec![0u8; 14 + LEN];
                        stream.read_exact(&mut got[..14])?;
                        drop(setting_up);
                        let sent = pattern(seed, LEN);
                        let writer = {
                            let mut w = stream.try_clone()?;
                            let sent = sent.clone();
                            std::thread::Builder::new()
                                .stack_size(64 * 1024)
                                .spawn(move || w.write_all(&sent))?
                        };
                        stream.read_exact(&mut got[14..])?;
                        writer.join().expect("writer")?;
                        Ok((stream, got, sent))
                    };
                    let result = exchange();
                    echoed.wait();
                    release.wait();
                    let (stream, got, sent) = result.map_err(|e| format!("stream {seed}: {e}"))?;
                    drop(stream);
                    if got[..14] != *b"upstream=echo\n" || got[14..] != sent[..] {
                        let first = got[14..].iter().zip(&sent).position(|(a, b)| a != b);
                        return Err(format!("stream {seed}: echo differs at byte {first:?}"));
                    }
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    echoed.wait();
    let elapsed = started.elapsed();
    let open = metric(&proxy, "switchyard_tunnel_streams", &[]);
    let json = agents_json(&proxy);
    release.wait();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {STREAMS} streams failed, e.g. {:?}\n--- local ---\n{}\n--- proxy ---\n{}\n--- agent ---\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        warnings(&local.log()),
        warnings(&proxy.log()),
        warnings(&agent.log()),
    );
    eprintln!("{STREAMS} streams echoed {LEN} bytes each in {elapsed:?}");
    assert_eq!(open, f64::from(STREAMS), "streams open at once");
    let tunnels = json["agents"][0]["tunnels"].as_array().unwrap();
    assert_eq!(tunnels.len(), 1, "{json}");
    assert_eq!(tunnels[0]["streams"], STREAMS, "{json}");
    let opened = [("kind", "tcp"), ("outcome", "opened")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened),
        f64::from(STREAMS)
    );
    let bytes = (STREAMS as usize * LEN) as f64;
    let to_agent = metric(
        &proxy,
        "switchyard_tunnel_bytes_total",
        &[("direction", "to_agent")],
    );
    assert!(to_agent >= bytes, "{to_agent} < {bytes}");
    wait_until(WAIT, "every stream to close", || {
        Ok((metric(&proxy, "switchyard_tunnel_streams", &[]) == 0.0).then_some(()))
    })
    .unwrap();
    // Still the one tunnel it started with.
    assert_eq!(
        agent.log().matches("tunnel up").count(),
        1,
        "{}",
        agent.log()
    );
}

/// An identity directory like `ca issue --agent` writes (`edge.crt`, `edge.key`,
/// `ca.crt` = the cluster CA, to check the proxy by), but the certificate is signed by a
/// rogue CA that has the cluster CA's very name.
fn rogue_agent_identity(pki: &TestPki, dir: &TempDir) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Switchyard Test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "edge");
    leaf.distinguished_name
        .push(DnType::OrganizationName, "switchyard-agent");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("edge.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("edge.key"), key.serialize_pem()).unwrap();
    switchyard_tests::set_mode(&dir.join("edge.key"), 0o600).unwrap();
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt")).unwrap();
    dir.join("edge")
}

#[test]
fn an_agent_from_another_ca_or_not_in_tunnel_agents_is_refused_with_a_clear_line() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("refuse").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let proxy = proxy(&pki, &[edge(&["tcp:*"])]);
    let services = [("tcp", "echo", echo.addr)];

    // Signed by another CA (named like the cluster's): the handshake fails.
    let dir = TempDir::new("rogue").unwrap();
    let rogue = rogue_agent_identity(&pki, &dir);
    let mut rogue = agent_with(&rogue, &ns, &proxy, &services, 1, false);
    rogue
        .wait_line(WAIT, |l| l.contains("tunnel failed").then_some(()))
        .unwrap();
    let needle = "connection refused: TLS handshake failed on route tunnel: invalid peer certificate: BadSignature";
    wait_log("proxy", needle, || proxy.log());
    let failed = line_with(&proxy.log(), needle).to_owned();
    assert!(
        failed.contains("alpn=[\"teleport-reversetunnel\""),
        "{failed}"
    );
    let bad = [("route", "tunnel"), ("reason", "bad_certificate")];
    assert!(metric(&proxy, "switchyard_tls_handshake_failures_total", &bad) >= 1.0);
    assert!(!rogue.log().contains("tunnel up"), "{}", rogue.log());
    assert_eq!(agents_json(&proxy)["agents"], serde_json::json!([]));
    drop(rogue);

    // From the cluster CA but an identity no tunnel.agents entry names: Refused.
    pki.issue_client("stranger", "stranger", Some("switchyard-agent"))
        .unwrap();
    let stranger_id = pki.dir().join("stranger");
    let mut stranger = agent_with(&stranger_id, &ns, &proxy, &services, 1, false);
    let line = stranger
        .wait_line(WAIT, |l| l.contains("tunnel failed").then(|| l.to_owned()))
        .unwrap();
    assert!(line.contains("the proxy refused the agent: "), "{line}");
    assert!(
        line.contains("identity CN=stranger,O=switchyard-agent is not in tunnel.agents"),
        "{line}"
    );
    wait_log("proxy", "is not in tunnel.agents", || proxy.log());
    assert!(
        metric(
            &proxy,
            "switchyard_tunnel_events_total",
            &[("outcome", "refused")]
        ) >= 1.0
    );
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 0.0);
    let local = app_proxy(&pki, &proxy, "echo", "client");
    assert!(echo_once(local.addr, "nobody serves me\n").is_err());
    drop(stranger);

    // The identity the rule names, from the cluster CA, gets in (same namespace, app).
    let _edge = agent(&pki, &ns, &proxy, "edge", &services, 1);
    let (banner, back) = echo_once(local.addr, "edge serves\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "edge serves\n")
    );
    assert_eq!(
        metric(
            &proxy,
            "switchyard_tunnel_events_total",
            &[("outcome", "accepted")]
        ),
        1.0
    );
}

#[test]
fn a_service_the_rule_does_not_allow_is_refused_and_the_allowed_one_still_works() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("svc").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let proxy = proxy(&pki, &[edge(&["tcp:echo"])]);
    let services = [
        ("tcp", "echo", echo.addr),
        ("tcp", "secret", echo.addr),
        ("postgres", "orders", echo.addr),
    ];
    let agent = agent(&pki, &ns, &proxy, "edge", &services, 1);

    for service in ["tcp:secret", "postgres:orders"] {
        let needle = format!(
            "agent service refused: identity CN=edge,O=switchyard-agent may not serve {service} (tunnel.agents[0].serve)"
        );
        wait_log("proxy", &needle, || proxy.log());
        let needle = format!(
            "the proxy refused a service: identity CN=edge,O=switchyard-agent may not serve {service}"
        );
        wait_log("agent", &needle, || agent.log());
    }
    let up = line_with(&agent.log(), "tunnel up").to_owned();
    assert!(up.contains("services=[\"tcp:echo\"]"), "{up}");
    assert_eq!(
        metric(
            &proxy,
            "switchyard_tunnel_events_total",
            &[("outcome", "service_refused")]
        ),
        2.0
    );
    let json = agents_json(&proxy);
    assert_eq!(
        json["agents"][0]["services"],
        serde_json::json!(["tcp:echo"]),
        "{json}"
    );

    let secret = app_proxy(&pki, &proxy, "secret", "client");
    assert!(echo_once(secret.addr, "let me in\n").is_err());
    wait_log(
        "local proxy",
        "has no route for SNI \"secret.localhost\"",
        || secret.log(),
    );
    let local = app_proxy(&pki, &proxy, "echo", "client");
    let (banner, back) = echo_once(local.addr, "allowed\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "allowed\n")
    );
}

#[test]
fn a_client_not_in_the_allow_list_is_refused_and_an_allowed_one_gets_through() {
    let pki = TestPki::new().unwrap();
    pki.issue_client("bob", "bob", Some("guests")).unwrap();
    let ns = Netns::new("allow").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let rule = Rule {
        identity: "switchyard-agent",
        serve: &["tcp:echo"],
        allow: &["admins"],
    };
    let proxy = proxy(&pki, &[rule]);
    let _agent = agent(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 1);

    let bob = app_proxy(&pki, &proxy, "echo", "bob");
    assert!(echo_once(bob.addr, "I am bob\n").is_err());
    // Refused inside the handshake (the agent's `allow` in the connection's TLS
    // configuration), as a static route's allow list is.
    let needle = "TLS handshake failed on route agent:tcp";
    wait_log("proxy", needle, || proxy.log());
    let refused = line_with(&proxy.log(), needle).to_owned();
    assert!(refused.contains("reason=\"not_allowed\""), "{refused}");
    let not_allowed = [("route", "agent:tcp"), ("reason", "not_allowed")];
    assert_eq!(
        metric(
            &proxy,
            "switchyard_tls_handshake_failures_total",
            &not_allowed
        ),
        1.0
    );
    // Bob's local proxy reports the connection as failed (what it says: the test below).
    wait_log(
        "bob's local proxy",
        "WARN switchyard::client::local: connection from",
        || bob.log(),
    );

    let alice = app_proxy(&pki, &proxy, "echo", "client");
    let (banner, back) = echo_once(alice.addr, "I am alice\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "I am alice\n")
    );
    let opened = [("kind", "tcp"), ("outcome", "opened")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened),
        1.0
    );
}

#[test]
fn an_agent_whose_certificate_the_proxy_refuses_says_so() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("rogue").unwrap();
    let proxy = proxy(&pki, &[edge(&["tcp:*"])]);
    let dir = TempDir::new("rogue").unwrap();
    let rogue = rogue_agent_identity(&pki, &dir);
    let echo: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut rogue = agent_with(&rogue, &ns, &proxy, &[("tcp", "echo", echo)], 1, false);
    let line = rogue
        .wait_line(WAIT, |l| l.contains("tunnel failed").then(|| l.to_owned()))
        .unwrap();
    // What every other client says when the proxy refuses its certificate.
    assert!(
        line.contains("refused the client certificate CN=edge,O=switchyard-agent"),
        "{line}"
    );
}

/// The HTTP app host of the test: `<name>.<public address host>`.
const WEB1: &str = "web1.proxy.example.test";

/// curl to `https://HOST:PORT/PATH` (HOST resolved to loopback, the cluster CA), with
/// the status code and HTTP version on a last line of their own.
fn curl_host(
    pki: &TestPki,
    proxy: &Switchyard,
    host: &str,
    path: &str,
    args: &[&str],
) -> SClientOutput {
    let port = proxy.web.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let ca = pki.ca_cert().display().to_string();
    let url = format!("https://{host}:{port}{path}");
    let mut all = vec!["-sS", "--cacert", &ca, "--resolve", &resolve];
    all.extend_from_slice(&["-w", "\n%{http_code} %{http_version}"]);
    all.extend_from_slice(args);
    all.push(&url);
    curl(all).unwrap()
}

/// The body, and the `CODE VERSION` line [`curl_host`] appends.
fn body_and_status(out: &SClientOutput) -> (&str, &str) {
    out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout))
}

/// [`proxy`] with a certificate that also covers `*.proxy.example.test`, where HTTP
/// apps are named (the default one's `*.example.test` does not cover a name two labels
/// under it).
fn web_proxy(pki: &TestPki, rules: &[Rule<'_>]) -> Switchyard {
    let sans = [
        "proxy.example.test",
        "*.proxy.example.test",
        "*.example.test",
        "localhost",
        "127.0.0.1",
    ];
    let wild: CertFiles = pki
        .issue_server("wild", "proxy.example.test", &sans)
        .unwrap();
    let text = proxy_text(rules).replace(
        "https_keypairs: [{cert_file: proxy.crt, key_file: proxy.key}]",
        &format!(
            "https_keypairs: [{{cert_file: '{}', key_file: '{}'}}]",
            wild.cert.display(),
            wild.key.display()
        ),
    );
    Switchyard::start_text(pki, &text, None).unwrap()
}

#[test]
fn curl_reaches_an_http_app_in_the_namespace_by_host_name() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("http").unwrap();
    let web = DemoUpstream::webapp_in(Some(&ns), "web1").unwrap();
    unreachable_from_host(web.addr);
    let proxy = web_proxy(&pki, &[edge(&["http:web1"])]);
    let _agent = agent(&pki, &ns, &proxy, "edge", &[("http", "web1", web.addr)], 1);

    for version in ["--http1.1", "--http2"] {
        let out = curl_host(&pki, &proxy, WEB1, "/api/hello", &[version]);
        let (body, status) = body_and_status(&out);
        assert!(out.success(), "{version}: {out:?}\n{}", proxy.log());
        let want = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, want, "{version}: {out:?}\n{}", proxy.log());
        let json: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(json["app"], "web1", "{json}");
        assert_eq!(json["x_forwarded_proto"], "https", "{json}");
    }

    // 1 MiB up, 5 MiB down, every byte.
    let dir = TempDir::new("agent-http").unwrap();
    let upload = dir.join("upload");
    std::fs::write(&upload, pattern(7, 1 << 20)).unwrap();
    let data = format!("@{}", upload.display());
    let out = curl_host(&pki, &proxy, WEB1, "/upload", &["--data-binary", &data]);
    assert_eq!(
        body_and_status(&out),
        ("received=1048576\n", "200 2"),
        "{out:?}"
    );
    let download = dir.join("download");
    let out_file = download.display().to_string();
    let out = curl_host(
        &pki,
        &proxy,
        WEB1,
        "/download?bytes=5242880",
        &["-o", &out_file],
    );
    assert_eq!(body_and_status(&out).1, "200 2", "{out:?}");
    let got = std::fs::read(&download).unwrap();
    let want: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    assert!(
        got == want,
        "download: {} bytes, not the 5 MiB pattern",
        got.len()
    );

    let opened = [("kind", "http"), ("outcome", "opened")];
    assert!(metric(&proxy, "switchyard_tunnel_streams_opened_total", &opened) >= 4.0);
    assert!(
        metric(
            &proxy,
            "switchyard_tunnel_bytes_total",
            &[("direction", "from_agent")]
        ) > 5e6
    );

    // A name under the public address that no agent serves: a 404 naming it.
    let out = curl_host(&pki, &proxy, "nope.proxy.example.test", "/", &[]);
    let (body, status) = body_and_status(&out);
    assert!(status.starts_with("404"), "{out:?}");
    assert!(body.contains("nope"), "{out:?}");
}

#[test]
fn a_client_not_in_the_allow_list_is_told_it_was_refused() {
    let pki = TestPki::new().unwrap();
    pki.issue_client("bob", "bob", Some("guests")).unwrap();
    let ns = Netns::new("told").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    let rule = Rule {
        identity: "edge",
        serve: &["tcp:echo"],
        allow: &["admins"],
    };
    let proxy = proxy(&pki, &[rule]);
    let _agent = agent(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 1);
    let bob = app_proxy(&pki, &proxy, "echo", "bob");
    assert!(echo_once(bob.addr, "I am bob\n").is_err());
    let needle = "WARN switchyard::client::local: connection from";
    wait_log("bob's local proxy", needle, || bob.log());
    let line = line_with(&bob.log(), needle).to_owned();
    // Like a refused certificate elsewhere: who was refused, not a TLS close.
    assert!(line.contains("CN=bob,O=guests"), "{line}");
}

#[test]
fn an_http_client_not_in_the_allow_list_is_refused_in_the_handshake_and_an_allowed_one_gets_200() {
    let pki = TestPki::new().unwrap();
    pki.issue_client("bob", "bob", Some("guests")).unwrap();
    let ns = Netns::new("allow-h").unwrap();
    let web = DemoUpstream::http_in(Some(&ns), "web1").unwrap();
    unreachable_from_host(web.addr);
    let rule = Rule {
        identity: "edge",
        serve: &["http:web1"],
        allow: &["admins"],
    };
    let proxy = web_proxy(&pki, &[rule]);
    let _agent = agent(&pki, &ns, &proxy, "edge", &[("http", "web1", web.addr)], 1);
    let identity = |stem: &str| {
        let dir = pki.dir();
        [
            dir.join(format!("{stem}.crt")).display().to_string(),
            dir.join(format!("{stem}.key")).display().to_string(),
        ]
    };
    // As for a static app with an allow list: the agent's `allow` is checked inside the
    // handshake, so a client it does not name gets a TLS alert it can read.
    let [cert, key] = identity("bob");
    let out = curl_host(&pki, &proxy, WEB1, "/x", &["--cert", &cert, "--key", &key]);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("access denied"),
        "{out:?}\n{}",
        proxy.log()
    );
    // Without a certificate: one is required.
    let out = curl_host(&pki, &proxy, WEB1, "/x", &[]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("certificate required"), "{out:?}");
    wait_log("proxy", "reason=\"not_allowed\"", || proxy.log());
    let refused = [("route", "agent:http"), ("reason", "not_allowed")];
    assert_eq!(
        metric(&proxy, "switchyard_tls_handshake_failures_total", &refused),
        1.0
    );

    let [cert, key] = identity("client");
    let out = curl_host(&pki, &proxy, WEB1, "/x", &["--cert", &cert, "--key", &key]);
    let (body, status) = body_and_status(&out);
    assert_eq!(
        (body, status),
        ("upstream=web1 path=/x\n", "200 2"),
        "{out:?}\n{}",
        proxy.log()
    );
}
