//! Operating the proxy: SIGTERM drains (no new connections, live ones finish, exit 0),
//! SIGHUP swaps routes without dropping live connections, `limits.max_connections` makes
//! further clients wait, legacy listeners relay to their upstream, and the diagnostics
//! endpoints answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchyard_tests::process::{Proc, Signal, Stream};
use switchyard_tests::{http_get, parse_addr, switchyard_bin, wait_until, DemoUpstream, TestPki};

const T: Duration = Duration::from_secs(10);

/// A proxy started from raw YAML in `pki`'s directory (`proxy.crt`/`proxy.key`/`ca.crt`).
struct Raw {
    proc: Proc,
    web: SocketAddr,
    diag: SocketAddr,
}

fn start(pki: &TestPki, yaml: &str) -> Raw {
    let dir = pki.dir();
    std::fs::copy(&pki.server.cert, dir.join("proxy.crt")).unwrap();
    std::fs::copy(&pki.server.key, dir.join("proxy.key")).unwrap();
    std::fs::write(dir.join("ops.yaml"), yaml).unwrap();
    let mut cmd = Command::new(switchyard_bin().unwrap());
    cmd.arg("serve").arg("--config").arg(dir.join("ops.yaml"));
    let mut proc = Proc::spawn("switchyard", cmd, &dir).unwrap();
    let (web, diag) = proc
        .wait_for_line(Stream::Stdout, T, |l| {
            let rest = l.strip_prefix("switchyard ready web=")?;
            let (w, d) = rest.split_once(" diag=")?;
            Some((parse_addr(w).ok()?, parse_addr(d).ok()?))
        })
        .unwrap();
    Raw { proc, web, diag }
}

fn yaml(pki: &TestPki, ssh: SocketAddr, extra: &str) -> String {
    format!(
        "proxy_service:\n  web_listen_addr: 127.0.0.1:0\n  \
         https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
         client_ca_file: \"{}\"\n\
         upstreams: {{ssh: \"{ssh}\"}}\ndiag_addr: 127.0.0.1:0\n{extra}",
        pki.ca_cert().display()
    )
}

/// A legacy-SSH client: sends a banner, reads the upstream's greeting line.
fn ssh_like(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"SSH-2.0-test\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "upstream=ssh\n");
    let mut echo = vec![0u8; 14];
    r.read_exact(&mut echo).unwrap();
    assert_eq!(echo, b"SSH-2.0-test\r\n");
    (s, r)
}

fn echo_roundtrip(s: &mut TcpStream, r: &mut BufReader<TcpStream>, msg: &str) {
    s.write_all(msg.as_bytes()).unwrap();
    let mut back = vec![0u8; msg.len()];
    r.read_exact(&mut back).unwrap();
    assert_eq!(back, msg.as_bytes());
}

/// The first line a new legacy-SSH connection receives.
fn greeting(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"SSH-2.0-test\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

fn wait_for_log(proc: &Proc, text: &str) {
    wait_until(T, &format!("{text:?} in the log"), || {
        Ok(proc.stderr().contains(text).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
}

#[test]
fn sigterm_drains_live_connections_then_exits() {
    let pki = TestPki::new().unwrap();
    let ssh = DemoUpstream::echo("ssh").unwrap();
    let mut p = start(
        &pki,
        &yaml(&pki, ssh.addr, "limits: {drain_timeout: 20s}\n"),
    );
    let (mut s, mut r) = ssh_like(p.web);
    assert_eq!(http_get(p.diag, "/readyz").unwrap().0, 200);
    p.proc.signal(Signal::TERM).unwrap();
    // New connections are refused once the listener is closed...
    wait_until(T, "the listener closed after SIGTERM", || {
        Ok(TcpStream::connect(p.web).is_err().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p.proc.logs()));
    assert_eq!(http_get(p.diag, "/readyz").unwrap().0, 503);
    // ...while the live one keeps working, and the process waits for it.
    echo_roundtrip(&mut s, &mut r, "still here\n");
    assert!(p
        .proc
        .wait_exit(Duration::from_millis(500))
        .unwrap()
        .is_none());
    drop(r);
    s.shutdown(std::net::Shutdown::Both).unwrap();
    let status = p.proc.wait_exit(T).unwrap().expect("exits after the drain");
    assert!(status.success(), "{status:?}\n{}", p.proc.logs());
    assert!(p.proc.stderr().contains("draining"), "{}", p.proc.logs());
}

/// A kept-alive HTTP connection idling between requests does not hold the drain for
/// `http_idle_timeout`: at SIGTERM the proxy closes it (after what is in flight) and
/// exits long before `drain_timeout`.
#[test]
fn sigterm_closes_idle_kept_alive_http_connections() {
    let pki = TestPki::new().unwrap();
    let ssh = DemoUpstream::echo("ssh").unwrap();
    let web = DemoUpstream::http("web").unwrap();
    let extra = "limits: {drain_timeout: 60s, http_idle_timeout: 60s}\n";
    let text = yaml(&pki, ssh.addr, extra).replace(
        "upstreams: {ssh:",
        &format!("upstreams: {{web: \"{}\", ssh:", web.addr),
    );
    let mut p = start(&pki, &text);
    let mut s = TcpStream::connect(p.web).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /kept HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // The head and the body may come in separate reads.
    let mut answer = Vec::new();
    let mut got = vec![0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("upstream=web path=/kept\n") {
        let n = s.read(&mut got).unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&got[..n]);
    }
    p.proc.signal(Signal::TERM).unwrap();
    // The idle connection is closed by the proxy (EOF), not left for 60 s.
    let n = s.read(&mut got).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "expected EOF, got {:?}",
        String::from_utf8_lossy(&got[..n])
    );
    let status = p
        .proc
        .wait_exit(T)
        .unwrap()
        .expect("exits without waiting out the drain");
    assert!(status.success(), "{status:?}\n{}", p.proc.logs());
}

#[test]
fn sighup_reloads_routes_without_dropping_live_connections() {
    let pki = TestPki::new().unwrap();
    let ssh = DemoUpstream::echo("ssh").unwrap();
    let other = DemoUpstream::echo("other").unwrap();
    let p = start(&pki, &yaml(&pki, ssh.addr, ""));
    let (mut s, mut r) = ssh_like(p.web);
    // Point the ssh upstream elsewhere and reload.
    let path = pki.dir().join("ops.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&ssh.addr.to_string(), &other.addr.to_string()),
    )
    .unwrap();
    p.proc.signal(Signal::HUP).unwrap();
    wait_for_log(&p.proc, "reloaded");
    // The live connection still talks to the old upstream; a new one goes to the new.
    echo_roundtrip(&mut s, &mut r, "old route\n");
    assert_eq!(greeting(p.web), "upstream=other\n");
    // A broken file is refused and the running routes kept.
    std::fs::write(&path, "proxy_service: {nonsense: 1}\n").unwrap();
    p.proc.signal(Signal::HUP).unwrap();
    wait_for_log(&p.proc, "reload refused");
    assert_eq!(greeting(p.web), "upstream=other\n");
}

#[test]
fn max_connections_makes_further_clients_wait() {
    let pki = TestPki::new().unwrap();
    let ssh = DemoUpstream::echo("ssh").unwrap();
    let p = start(
        &pki,
        &yaml(&pki, ssh.addr, "limits: {max_connections: 1}\n"),
    );
    let (first, first_r) = ssh_like(p.web);
    // The second client is queued in the backlog: no greeting while the first lives.
    let mut second = TcpStream::connect(p.web).unwrap();
    second.write_all(b"SSH-2.0-test\r\n").unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 1];
    let early = second.read(&mut buf);
    assert!(
        early.is_err(),
        "second client served beyond the limit: {early:?}"
    );
    drop(first_r);
    first.shutdown(std::net::Shutdown::Both).unwrap();
    second.set_read_timeout(Some(T)).unwrap();
    let mut line = String::new();
    BufReader::new(second).read_line(&mut line).unwrap();
    assert_eq!(line, "upstream=ssh\n");
}

#[test]
fn legacy_listener_relays_to_its_upstream_and_diag_answers() {
    let pki = TestPki::new().unwrap();
    let ssh = DemoUpstream::echo("ssh").unwrap();
    let p = start(
        &pki,
        &yaml(&pki, ssh.addr, "").replace(
            "  web_listen_addr: 127.0.0.1:0\n",
            "  web_listen_addr: 127.0.0.1:0\n  listen_addr: 127.0.0.1:0\n",
        ),
    );
    let log = p.proc.stderr();
    let legacy: SocketAddr = log
        .lines()
        .find(|l| l.contains("legacy listener"))
        .and_then(|l| l.split("listen=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no legacy listener line\n{log}"));
    // Anything at all is relayed: no detection on a legacy port.
    let mut s = TcpStream::connect(legacy).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"\x00\x01 not a protocol").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "upstream=ssh\n");
    assert_eq!(http_get(p.diag, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(http_get(p.diag, "/nope").unwrap().0, 404);
    let metrics = http_get(p.diag, "/metrics").unwrap().1;
    assert!(
        metrics.contains("route=\"legacy-ssh\",action=\"relay\""),
        "{metrics}"
    );
    assert!(Path::new(&pki.dir()).exists());
}
