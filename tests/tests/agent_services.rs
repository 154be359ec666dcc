//! Reverse tunnels end to end: the services live in a network namespace whose only way
//! out is a forwarder to the proxy's port, `switchyard agent` runs in there and dials
//! out, and REAL clients on the host reach the services through the proxy: the echo app
//! only while an agent serves it (the namespace proof), OpenSSH (`ssh`, `scp`) to sshd,
//! `psql` to PostgreSQL and `mysql` to MariaDB. Elsewhere: 1000 concurrent streams over
//! one tunnel (`agent_streams.rs`), HTTP apps (`agent_http.rs`), what must be refused
//! (`agent_security.rs`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchyard_tests::agent::{
    agents_json, app_proxy, echo_once, metric, proxy_a, ssh, streams_opened, tunnel_bytes,
    unreachable_from_host, wait_log, Agent, Rule, WAIT,
};
use switchyard_tests::local_proxy::{client_args, switchyard_cmd, write_ssh_config, LocalProxy};
use switchyard_tests::mariadb::{mysql, MariaDb};
use switchyard_tests::postgres::{psql, PG_USER};
use switchyard_tests::process::Signal;
use switchyard_tests::sshd::{scp_10mb, ScpCopy};
use switchyard_tests::{
    run_with_timeout, wait_until, DemoUpstream, Netns, Postgres, Sshd, Switchyard, TempDir, TestPki,
};

#[test]
fn the_namespace_is_reached_only_through_the_agent() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("only").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    // The proxy (on the host) cannot reach the app: nothing on the host's loopback there.
    unreachable_from_host(echo.addr);
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["tcp:echo"])]);
    let local = app_proxy(&pki, &proxy, "echo", "client");
    // No agent yet: the name is no one's.
    assert!(echo_once(local.addr, "early\n").is_err());
    wait_log(
        "local proxy",
        "has no route for SNI \"echo.localhost\"",
        || local.log(),
    );

    let mut agent = Agent::up_in(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 2);
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
    assert_eq!(streams_opened(&proxy, "tcp"), 1.0);
    let sent = "through the tunnel\n".len() as f64;
    assert!(tunnel_bytes(&proxy, "to_agent") >= sent);
    assert!(tunnel_bytes(&proxy, "from_agent") >= sent + 14.0);
    assert!(proxy.log().contains("agent tunnel up"), "{}", proxy.log());

    // The agent goes away: so does the only way in.
    agent.proc().signal(Signal::TERM).unwrap();
    assert!(
        agent.proc().wait_exit(WAIT).unwrap().is_some(),
        "{}",
        agent.log()
    );
    wait_until(WAIT, "the tunnels to close", || {
        Ok((proxy.metric("switchyard_tunnel_tunnels", &[])? == 0.0).then_some(()))
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

/// The `sha256sum` of a file, in hex.
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
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["ssh:*"])]);
    let _agent = Agent::up_in(&pki, &ns, &proxy, "edge", &[("ssh", "node1", sshd.addr)], 1);
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
    assert_eq!(streams_opened(&proxy, "ssh"), 3.0);
    assert!(tunnel_bytes(&proxy, "to_agent") > 10e6);
}

/// `COMMAND --protocol=PROTOCOL --db=DB` as the client identity `client`, for `command`
/// `proxy db` (a local proxy) or `db connect` (runs a database client itself).
fn db_args(
    pki: &TestPki,
    proxy: &Switchyard,
    command: [&str; 2],
    protocol: &str,
    db: &str,
) -> Vec<String> {
    let mut args = command.map(String::from).to_vec();
    args.extend([format!("--protocol={protocol}"), format!("--db={db}")]);
    args.extend(client_args(pki, proxy, "client"));
    args
}

#[test]
fn psql_reaches_postgres_in_the_namespace_by_database_name() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("pg").unwrap();
    let pg = Postgres::start_in(&pki.server, Some(&ns)).unwrap();
    unreachable_from_host(pg.addr);
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["postgres:orders"])]);
    let _agent = Agent::up_in(
        &pki,
        &ns,
        &proxy,
        "edge",
        &[("postgres", "orders", pg.addr)],
        1,
    );

    let args = db_args(&pki, &proxy, ["proxy", "db"], "postgres", "orders");
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
    let mut args = db_args(&pki, &proxy, ["db", "connect"], "postgres", "orders");
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
    assert_eq!(streams_opened(&proxy, "postgres"), 3.0);
}

#[test]
fn mysql_reaches_mariadb_in_the_namespace_by_database_name() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("maria").unwrap();
    let db = MariaDb::start_in(&pki.server, Some(&ns)).unwrap();
    unreachable_from_host(db.addr);
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["mysql:shop"])]);
    let _agent = Agent::up_in(&pki, &ns, &proxy, "edge", &[("mysql", "shop", db.addr)], 1);

    let args = db_args(&pki, &proxy, ["proxy", "db"], "mysql", "shop");
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
    assert_eq!(streams_opened(&proxy, "mysql"), 2.0);
}
