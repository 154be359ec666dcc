//! Postgres through the proxy port with the real `psql` and a real PostgreSQL server
//! as the `postgres` upstream. libpq opens with an SSLRequest (legacy plaintext
//! detection), the proxy relays it byte-exact, and TLS is negotiated end to end with
//! the server (`pg_stat_ssl.ssl = t`). A CancelRequest from psql on Ctrl-C takes the
//! same path on a new connection.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_tests::postgres::{psql, PG_USER};
use switchyard_tests::process::{signal, Signal};
use switchyard_tests::{require_tool, wait_until, Postgres, ProxyConfig, Switchyard, TestPki};

const SSL_IN_USE: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

fn proxy_to(pki: &TestPki, pg: &Postgres) -> Switchyard {
    Switchyard::start(pki, &ProxyConfig::default().upstream("postgres", pg.addr)).unwrap()
}

#[test]
fn psql_sslmode_prefer_negotiates_tls_through_proxy() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let proxy = proxy_to(&pki, &pg);
    let answer = psql(proxy.web, "prefer", "select 42");
    assert_eq!(
        answer.as_deref().ok(),
        Some("42"),
        "{answer:?}\n{}",
        proxy.log()
    );
    assert_eq!(psql(proxy.web, "prefer", SSL_IN_USE).unwrap(), "t");
}

#[test]
fn psql_sslmode_require_through_proxy() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let proxy = proxy_to(&pki, &pg);
    let answer = psql(proxy.web, "require", SSL_IN_USE);
    assert_eq!(
        answer.as_deref().ok(),
        Some("t"),
        "{answer:?}\n{}",
        proxy.log()
    );
}

#[test]
fn psql_cancel_request_through_proxy_cancels_query() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let proxy = proxy_to(&pki, &pg);
    let conninfo = format!(
        "host=127.0.0.1 port={} user={PG_USER} dbname=postgres sslmode=prefer",
        proxy.web.port()
    );
    let psql_bin = require_tool("psql", "postgresql-client", &[]).unwrap();
    let mut sleeper = Command::new(psql_bin)
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            &conninfo,
            "-c",
            "select pg_sleep(30)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let active = "select count(*) from pg_stat_activity \
                  where query = 'select pg_sleep(30)' and state = 'active'";
    wait_until(Duration::from_secs(10), "pg_sleep to run", || {
        Ok((psql(pg.addr, "disable", active)? == "1").then_some(()))
    })
    .unwrap();
    // Ctrl-C: psql sends a CancelRequest on a new connection to the proxy port.
    signal(sleeper.id(), Signal::INT).unwrap();
    let done = wait_until(Duration::from_secs(10), "psql to exit", || {
        Ok(sleeper.try_wait()?)
    });
    if done.is_err() {
        let _ = sleeper.kill();
    }
    let out = sleeper.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql stderr: {stderr}\n{}",
        proxy.log()
    );
}
