//! The network-namespace harness itself ([`Netns`]): a server started inside answers
//! there and not on the host; `forward_out` carries 10 MB each way intact with a
//! half-close in between, one forwarder per host target; sshd, PostgreSQL and MariaDB
//! come up inside; and dropping the namespace kills what runs in it and deletes it.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use switchyard_tests::mariadb::MariaDb;
use switchyard_tests::{wait_until, DemoUpstream, Netns, Postgres, Sshd, TestPki};

/// `len` bytes of a pattern that depends on `seed`.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn first_line(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

fn refused_on_host(addr: SocketAddr) {
    let err = TcpStream::connect(addr).expect_err("reachable from the host");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{addr}: {err}");
}

#[test]
fn echo_upstream_in_a_namespace_answers_there_and_not_on_the_host() {
    let ns = Netns::new("echo").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "inside").unwrap();
    let (banner, echoed) = ns.run(|| {
        let mut stream = TcpStream::connect(echo.addr).unwrap();
        let banner = first_line(&stream);
        stream.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).unwrap();
        (banner, echoed)
    });
    assert_eq!(banner, "upstream=inside\n");
    assert_eq!(&echoed, b"ping");
    refused_on_host(echo.addr);
}

#[test]
fn forward_out_carries_10mb_each_way_through_a_half_close() {
    let ns = Netns::new("fwd").unwrap();
    let up = pattern(10 << 20, 1);
    let down = pattern(10 << 20, 2);
    let big = TcpListener::bind("127.0.0.1:0").unwrap();
    let small = TcpListener::bind("127.0.0.1:0").unwrap();
    let big_out = ns.forward_out(big.local_addr().unwrap()).unwrap();
    let small_out = ns.forward_out(small.local_addr().unwrap()).unwrap();
    assert_ne!(big_out, small_out);
    std::thread::scope(|scope| {
        // Host side: read the whole upload (to the client's EOF), only then answer.
        let server = scope.spawn(|| {
            let (mut conn, _) = big.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&down).unwrap();
            got
        });
        let small_server = scope.spawn(|| {
            let (mut conn, _) = small.accept().unwrap();
            conn.write_all(b"small\n").unwrap();
        });
        let (got_down, small_line) = ns.run(|| {
            let mut stream = TcpStream::connect(big_out).unwrap();
            stream.write_all(&up).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            let small_line = first_line(&TcpStream::connect(small_out).unwrap());
            (got, small_line)
        });
        let got_up = server.join().unwrap();
        small_server.join().unwrap();
        assert!(
            got_up == up,
            "upload: {} bytes, not the 10 MiB sent",
            got_up.len()
        );
        assert!(got_down == down, "download: {} bytes", got_down.len());
        assert_eq!(small_line, "small\n");
    });
}

#[test]
fn sshd_comes_up_inside_a_namespace() {
    let ns = Netns::new("sshd").unwrap();
    let sshd = Sshd::start_in(Some(&ns)).unwrap();
    let banner = ns.run(|| first_line(&TcpStream::connect(sshd.addr).unwrap()));
    assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");
    refused_on_host(sshd.addr);
}

#[test]
fn postgres_and_mariadb_come_up_inside_a_namespace() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("db").unwrap();
    let pg = Postgres::start_in(&pki.server, Some(&ns)).unwrap();
    let maria = MariaDb::start_in(&pki.server, Some(&ns)).unwrap();
    let greeting = ns.run(|| {
        TcpStream::connect(pg.addr).unwrap();
        let mut greeting = [0u8; 5];
        TcpStream::connect(maria.addr)
            .unwrap()
            .read_exact(&mut greeting)
            .unwrap();
        greeting
    });
    // A MySQL packet header (3 bytes length, sequence 0), then protocol version 10.
    assert_eq!(&greeting[3..], &[0, 10], "{greeting:?}");
    refused_on_host(pg.addr);
    refused_on_host(maria.addr);
}

fn listed(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn drop_kills_what_runs_inside_and_deletes_the_namespace() {
    let ns = Netns::new("drop").unwrap();
    let name = ns.name().to_string();
    let mut sleeper = ns.command("sleep").arg("60").spawn().unwrap();
    wait_until(
        Duration::from_secs(5),
        "sleep to be in the namespace",
        || Ok(ns.pids().contains(&sleeper.id()).then_some(())),
    )
    .unwrap();
    assert!(listed(&name), "{name} not in `ip netns list`");
    drop(ns);
    let status = wait_until(Duration::from_secs(5), "sleep to be killed", || {
        Ok(sleeper.try_wait()?)
    })
    .unwrap();
    assert!(!status.success(), "{status}");
    assert!(!listed(&name), "{name} still in `ip netns list`");
}
