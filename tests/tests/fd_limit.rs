//! At the open-file limit (issue 12, item 4): the proxy refuses new clients at once — they
//! read an end of stream instead of waiting in the backlog — without spinning, the
//! connections already relayed keep working, and it recovers when descriptors free up.
//! The limit is lowered on the running proxy with `prlimit` (util-linux).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_tests::{require_tool, wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki};

/// Descriptors the proxy has open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The proxy's user + system CPU time so far, seconds (`/proc/PID/stat`, 100 Hz ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn set_nofile(pid: u32, n: usize) {
    let prlimit = require_tool("prlimit", "util-linux", &[]).unwrap();
    let out = Command::new(prlimit)
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:{n}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A legacy SSH connection relayed to the echo upstream: greeting, then one echoed line.
fn relayed(proxy: &Switchyard) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(proxy.web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&s).write_all(b"SSH-2.0-fd-test\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "upstream=ssh\n");
    // The echo upstream sends the banner back.
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "SSH-2.0-fd-test\r\n");
    (s, r)
}

fn echo(conn: &mut (TcpStream, BufReader<TcpStream>), text: &str) -> String {
    conn.0.write_all(text.as_bytes()).unwrap();
    let mut line = String::new();
    conn.1.read_line(&mut line).unwrap();
    line
}

#[test]
fn at_the_fd_limit_new_clients_are_refused_at_once_and_the_proxy_recovers() {
    let pki = TestPki::new().unwrap();
    let ssh = DemoUpstream::echo("ssh").unwrap();
    let config = ProxyConfig {
        handshake_timeout: "30s".into(),
        ..ProxyConfig::default().upstream("ssh", ssh.addr)
    };
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let pid = proxy.pid();
    let mut before = relayed(&proxy);
    assert!(proxy.log().contains("open-file limit"), "{}", proxy.log());

    // Room for a few more descriptors, then clients that stop after the first byte of a
    // TLS record until it is full. (A client that sends nothing is not accepted at all:
    // the single port defers accept until the first bytes, `limits.defer_accept`.)
    set_nofile(pid, open_fds(pid) + 8);
    let mut silent = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let s = TcpStream::connect(proxy.web).unwrap();
        (&s).write_all(&[0x16]).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1];
        match (&s).read(&mut buf) {
            // Closed at once: refused at the limit.
            Ok(0) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            // Still open (it waits for the rest of its first record): accepted.
            Err(_) => silent.push(s),
            Ok(n) => panic!("{n} unexpected bytes"),
        }
    }
    assert!(
        refused >= 20,
        "refused {refused}, accepted {}",
        silent.len()
    );
    assert!(!silent.is_empty(), "some were accepted before the limit");

    // At the limit: no spin. A client knocks every 20 ms for two seconds; each knock
    // costs an accept and a close, a spinning accept loop would cost the whole two seconds.
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut knocks = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(s) = TcpStream::connect(proxy.web) {
            let _ = (&s).write_all(&[0x16]);
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = (&s).read(&mut [0u8; 1]);
            knocks += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_seconds(pid) - cpu0;
    println!("at the fd limit: {knocks} refused knocks in 2 s cost the proxy {cpu:.2} CPU s");
    assert!(
        cpu < 0.5,
        "the proxy spins at the limit: {cpu:.2} CPU s in 2 s"
    );

    // The relayed connection from before is untouched.
    assert_eq!(echo(&mut before, "still here\n"), "still here\n");

    // Descriptors free up: new clients are served again, and the refusals were counted.
    drop(silent);
    wait_until(Duration::from_secs(10), "a new relayed connection", || {
        let s = TcpStream::connect(proxy.web)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        (&s).write_all(b"SSH-2.0-again\r\n")?;
        let mut line = String::new();
        let ok = BufReader::new(&s).read_line(&mut line).is_ok() && line == "upstream=ssh\n";
        Ok(ok.then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let counted = proxy
        .metric(
            "switchyard_connections_refused_total",
            &[("reason", "fd_limit")],
        )
        .unwrap();
    assert!(
        counted >= refused as f64,
        "counted {counted}, refused {refused}"
    );
    assert!(
        proxy.log().contains("out of file descriptors"),
        "{}",
        proxy.log()
    );
}
