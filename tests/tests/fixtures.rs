//! The fixtures themselves, with real clients connected DIRECTLY (no proxy): if these
//! fail, the proxy tests cannot mean anything.

use std::time::Duration;

use switchyard_tests::postgres::psql;
use switchyard_tests::process::Stream;
use switchyard_tests::sshd::ssh_exec;
use switchyard_tests::{free_port, Postgres, Proc, SClient, Sshd, TestPki};

#[test]
fn ssh_reaches_sshd_directly() {
    let sshd = Sshd::start().unwrap();
    let out = ssh_exec(sshd.addr, &sshd.client_key, "echo ok").unwrap();
    assert!(out.success(), "ssh failed: {out:?}\n{}", sshd.log());
    assert_eq!(out.stdout.trim(), "ok");
}

#[test]
fn psql_reaches_postgres_directly_with_and_without_tls() {
    let pki = TestPki::new().unwrap();
    let pg = Postgres::start(&pki.server).unwrap();
    let ssl = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    assert_eq!(psql(pg.addr, "disable", "select 42").unwrap(), "42");
    assert_eq!(psql(pg.addr, "disable", ssl).unwrap(), "f");
    assert_eq!(psql(pg.addr, "prefer", ssl).unwrap(), "t");
    assert_eq!(psql(pg.addr, "require", ssl).unwrap(), "t");
}

#[test]
fn s_client_sees_pki_server_cert_from_openssl_s_server() {
    // Proves TestPki's chain verifies with OpenSSL: s_server with the server cert,
    // s_client verifying against the CA, and a client cert required (`-rev` echoes
    // each line reversed, and keeps s_server from reading its null stdin).
    let pki = TestPki::new().unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-naccept",
        "1",
    ])
    .arg("-cert")
    .arg(&pki.server.cert)
    .arg("-key")
    .arg(&pki.server.key)
    .arg("-CAfile")
    .arg(pki.ca_cert())
    .args(["-Verify", "1", "-rev"]);
    let mut server = Proc::spawn("s_server", cmd, &pki.dir()).unwrap();
    server
        .wait_for_line(Stream::Stdout, Duration::from_secs(5), |l| {
            l.contains("ACCEPT").then_some(())
        })
        .unwrap();
    let addr = ([127, 0, 0, 1], port).into();
    let out = SClient::new(addr)
        .sni("proxy.example.test")
        .verify(&pki.ca_cert())
        .cert(&pki.client.cert, &pki.client.key)
        .run(b"hello\n", "olleh", Duration::from_secs(5))
        .unwrap();
    assert!(
        out.stdout.contains("Verify return code: 0 (ok)"),
        "{out:?}\n{}",
        server.logs()
    );
    assert!(
        out.stdout.contains("subject=CN = proxy.example.test"),
        "{out:?}"
    );
}
