//! psql through `switchyard proxy db --protocol postgres` and `switchyard db connect` →
//! proxy (ALPN teleport-postgres, client certificate) → a real PostgreSQL: sslmode
//! `prefer` and `disable` (the local proxy answers the SSLRequest), several clients at
//! once, a proxy that goes away and a refused certificate reported per connection while
//! the listener stays up, and a clean stop on SIGTERM. MongoDB: no server installs here
//! (see README), so `--protocol mongodb` is checked against an echo upstream.

use std::time::Duration;

use switchyard_tests::local_proxy::{client_args, connect_lines, switchyard_cmd, LocalProxy};
use switchyard_tests::postgres::{psql, PG_USER};
use switchyard_tests::{
    run_with_timeout, wait_until, DemoUpstream, Postgres, ProxyConfig, Switchyard, TestPki,
};

fn proxy_db(pki: &TestPki, proxy: &Switchyard, stem: &str) -> LocalProxy {
    let mut args = vec![
        "proxy".to_owned(),
        "db".into(),
        "--protocol=postgres".into(),
    ];
    args.extend(client_args(pki, proxy, stem));
    LocalProxy::start(&args).unwrap()
}

#[test]
fn psql_prefer_and_disable_through_proxy_db() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let proxy =
        Switchyard::start(&pki, &ProxyConfig::default().upstream("postgres", pg.addr)).unwrap();
    let mut local = proxy_db(&pki, &proxy, "client");
    for mode in ["prefer", "disable"] {
        let answer = psql(local.addr, mode, "select 40 + 2");
        assert_eq!(
            answer.as_deref().ok(),
            Some("42"),
            "{mode}: {answer:?}\n{}\n{}",
            local.logs(),
            proxy.log()
        );
    }
    assert!(proxy.log().contains("teleport-postgres"), "{}", proxy.log());
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let addr = local.addr;
            std::thread::spawn(move || {
                psql(addr, "prefer", &format!("select {i} + 100, pg_sleep(0.3)"))
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let out = c.join().unwrap().unwrap();
        assert_eq!(out, format!("{}|", i + 100));
    }
    // One -v line per connection, written when the proxy side has closed too.
    wait_until(Duration::from_secs(5), "six connection lines", || {
        Ok((local.log().matches("closed:").count() >= 6).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", local.logs()));
    assert_eq!(local.stop().unwrap().map(|s| s.code()), Some(Some(0)));
}

#[test]
fn db_connect_runs_psql_and_stops_with_it() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let proxy =
        Switchyard::start(&pki, &ProxyConfig::default().upstream("postgres", pg.addr)).unwrap();
    let mut args = vec![
        "db".to_owned(),
        "connect".into(),
        "--protocol=postgres".into(),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    args.extend(
        [
            "--",
            "psql",
            "-X",
            "-A",
            "-t",
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-c",
            "select 6 * 7",
        ]
        .map(String::from),
    );
    let out =
        run_with_timeout(switchyard_cmd(&args).unwrap(), b"", Duration::from_secs(20)).unwrap();
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert_eq!(out.stdout.trim(), "42");
    // The client's exit code is ours.
    *args.last_mut().unwrap() = "select nonsense".into();
    let out =
        run_with_timeout(switchyard_cmd(&args).unwrap(), b"", Duration::from_secs(20)).unwrap();
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
}

#[test]
fn refused_certificate_and_proxy_down_are_reported_per_connection() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let proxy =
        Switchyard::start(&pki, &ProxyConfig::default().upstream("postgres", pg.addr)).unwrap();
    let mut wrong = proxy_db(&pki, &proxy, "wrong-client");
    assert!(psql(wrong.addr, "disable", "select 1").is_err());
    assert!(psql(wrong.addr, "disable", "select 1").is_err());
    wait_until(Duration::from_secs(5), "two refusals logged", || {
        Ok((wrong
            .log()
            .matches("refused the client certificate CN=alice,O=admins")
            .count()
            >= 2)
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", wrong.logs()));
    assert!(wrong.running());

    let mut local = proxy_db(&pki, &proxy, "client");
    assert_eq!(psql(local.addr, "disable", "select 1").unwrap(), "1");
    drop(proxy);
    assert!(psql(local.addr, "disable", "select 1").is_err());
    wait_until(Duration::from_secs(5), "unreachable logged", || {
        Ok(local.log().contains("unreachable").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", local.logs()));
    assert!(local.running());
}

#[test]
fn mongodb_bytes_travel_with_alpn_teleport_mongodb() {
    use std::io::{BufRead, Write};
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("mongo").unwrap();
    let config = ProxyConfig::default().upstream("mongodb", echo.addr);
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let mut args = vec!["proxy".to_owned(), "db".into(), "--protocol=mongodb".into()];
    args.extend(client_args(&pki, &proxy, "client"));
    let local = LocalProxy::start(&args).unwrap();
    let (stream, mut reader) = connect_lines(local.addr, Duration::from_secs(10)).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "upstream=mongo\n", "{}", local.logs());
    (&stream).write_all(b"isMaster\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "isMaster\n");
    assert!(proxy.log().contains("teleport-mongodb"), "{}", proxy.log());
}
