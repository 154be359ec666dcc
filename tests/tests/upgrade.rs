//! Zero-downtime binary upgrade (`docs/deploy.md`): `SIGUSR2` starts the binary again with
//! `--takeover`, the new process takes the listening sockets over through
//! `--upgrade-socket`, the old one stops accepting and drains. Under load: 50 connections
//! streaming through a TLS route and the legacy SSH route keep every byte, connections
//! opened every 10 ms and in a tight loop across the handover all succeed, new connections
//! are the new process's, and the old process exits when its connections end (or at
//! `limits.drain_timeout`). Agents redial to the new process while a stream in flight
//! finishes through the old one. systemd hears READY, RELOADING, MAINPID and STOPPING.
//! `switchyard upgrade` waits for the handover and reports a successor that failed. Bad
//! input: a stranger on the upgrade socket (garbage, or another user), `--takeover` with
//! nothing running, a second process on a socket in use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use switchyard_tests::agent::{agent_identity, tunnel_section, Agent, Rule, AGENT_ORG};
use switchyard_tests::process::{Signal, Stream};
use switchyard_tests::switchyard::metric_sum;
use switchyard_tests::{
    http_get, log_fields, parse_addr, switchyard_bin, wait_until, DemoUpstream, Proc, ProxyConfig,
    TempDir, TestPki,
};

const LONG: Duration = Duration::from_secs(60);

/// A `switchyard serve --upgrade-socket` started by the test, its upstream and PKI.
struct Old {
    pki: TestPki,
    _echo: DemoUpstream,
    proc: Proc,
    dir: TempDir,
    web: SocketAddr,
    diag: SocketAddr,
    socket: PathBuf,
}

/// Legacy SSH (`SSH-` first bytes) and the TLS app `echo.example.test` (teleport-tcp,
/// client certificate) both relay to one echo upstream.
fn start(drain_timeout: &str, env: &[(&str, &Path)]) -> Old {
    start_with(drain_timeout, env, "")
}

/// [`start`] with `extra` top-level YAML and public address `example.test` (so that an
/// agent's TCP app `NAME.example.test` is covered by the test certificate).
fn start_with(drain_timeout: &str, env: &[(&str, &Path)], extra: &str) -> Old {
    start_from(&switchyard_bin().unwrap(), drain_timeout, env, extra)
}

/// [`start_with`] running the binary at `bin`.
fn start_from(bin: &Path, drain_timeout: &str, env: &[(&str, &Path)], extra: &str) -> Old {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let mut config = ProxyConfig::default().upstream("ssh", echo.addr);
    config.extra = extra.to_owned();
    config.routes.push(format!(
        "{{name: echo-app, sni: echo.example.test, alpn: teleport-tcp, mode: terminate, upstream: '{}'}}",
        echo.addr
    ));
    let text = config
        .render()
        .replace(
            "max_connections: 1000}",
            &format!("max_connections: 1000, drain_timeout: {drain_timeout}}}"),
        )
        .replace(
            "public_addr: proxy.example.test:",
            "public_addr: example.test:",
        )
        // A legacy SSH listener of its own, handed over like the single port.
        .replace(
            "  web_listen_addr: 127.0.0.1:0\n",
            "  web_listen_addr: 127.0.0.1:0\n  listen_addr: 127.0.0.1:0\n",
        );
    assert!(text.contains("  listen_addr: 127.0.0.1:0"), "{text}");
    let dir = TempDir::new("upgrade").unwrap();
    std::fs::copy(&pki.server.cert, dir.join("proxy.crt")).unwrap();
    std::fs::copy(&pki.server.key, dir.join("proxy.key")).unwrap();
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("config.yaml"), text).unwrap();
    let socket = dir.join("upgrade.sock");
    let mut cmd = serve_command(bin, &dir, &socket);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut proc = Proc::spawn("switchyard", cmd, dir.path()).unwrap();
    let (web, diag) = proc
        .wait_for_line(Stream::Stdout, Duration::from_secs(15), ready_line)
        .unwrap();
    Old {
        pki,
        _echo: echo,
        proc,
        dir,
        web,
        diag,
        socket,
    }
}

fn serve_command(bin: &Path, dir: &TempDir, socket: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--upgrade-socket")
        .arg(socket);
    cmd
}

fn ready_line(l: &str) -> Option<(SocketAddr, SocketAddr)> {
    let (web, diag) = l
        .strip_prefix("switchyard ready web=")?
        .split_once(" diag=")?;
    Some((parse_addr(web).ok()?, parse_addr(diag).ok()?))
}

impl Old {
    fn log(&self) -> String {
        self.proc.stderr()
    }

    /// The pids of the `switchyard serving` lines, in order.
    fn serving(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter(|l| l.contains("switchyard serving"))
            .filter_map(|l| log_fields(l, "pid").last()?.parse().ok())
            .collect()
    }

    /// `SIGUSR2`, then waits until the old process says it handed over; the new pid.
    fn upgrade(&self) -> u32 {
        self.proc.signal(Signal::USR2).unwrap();
        wait_until(LONG, "the handover", || {
            Ok(self
                .log()
                .contains("handed the listening sockets over")
                .then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        let pids = self.serving();
        assert_eq!(
            pids.len(),
            2,
            "two processes served: {pids:?}\n{}",
            self.log()
        );
        assert_eq!(pids[0], self.proc.pid());
        pids[1]
    }

    /// The addresses of the `legacy listener` lines, in order.
    fn legacy_listeners(&self) -> Vec<SocketAddr> {
        self.log()
            .lines()
            .filter(|l| l.contains("legacy listener"))
            .filter_map(|l| parse_addr(log_fields(l, "listen").last()?).ok())
            .collect()
    }

    fn readyz(&self) -> (u16, String) {
        http_get(self.diag, "/readyz").unwrap()
    }

    fn tls(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.pki.ca_cert()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_file_iter(&self.pki.client.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.pki.client.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"teleport-tcp".to_vec()];
        Arc::new(config)
    }
}

/// One connection through the proxy to the echo upstream, greeting read.
enum Conn {
    Legacy(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    /// Opens a legacy SSH (`tls == None`) or TLS connection and reads the greeting.
    fn open(web: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> std::io::Result<Conn> {
        Conn::open_to(web, tls, "echo.example.test")
    }

    /// [`Conn::open`] with TLS server name `sni`.
    fn open_to(
        web: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        sni: &str,
    ) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(web)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut conn = match tls {
            None => {
                let mut tcp = tcp;
                tcp.write_all(b"SSH-2.0-upgrade-test\r\n")?;
                Conn::Legacy(tcp)
            }
            Some(config) => {
                let name = ServerName::try_from(sni.to_owned()).unwrap();
                let c = ClientConnection::new(config.clone(), name).unwrap();
                Conn::Tls(Box::new(StreamOwned::new(c, tcp)))
            }
        };
        let mut greeting = [0u8; 14];
        conn.read_exact(&mut greeting)?;
        if &greeting != b"upstream=echo\n" {
            return Err(std::io::Error::other(format!("greeting {greeting:?}")));
        }
        if tls.is_none() {
            let mut echoed = [0u8; 22];
            conn.read_exact(&mut echoed)?;
            if &echoed != b"SSH-2.0-upgrade-test\r\n" {
                return Err(std::io::Error::other("the SSH line did not come back"));
            }
        }
        Ok(conn)
    }

    /// Writes `chunk` and reads it back: an error if anything differs.
    fn round_trip(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.write_all(chunk)?;
        self.flush()?;
        let mut back = vec![0u8; chunk.len()];
        self.read_exact(&mut back)?;
        match back == chunk {
            true => Ok(()),
            false => Err(std::io::Error::other("echoed bytes differ")),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Legacy(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Legacy(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Legacy(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn chunk(seed: u64, n: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| ((i + n).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

#[test]
fn binary_upgrade_under_load_refuses_nothing_and_breaks_nothing() {
    let old = start("60s", &[]);
    let tls = old.tls();
    let stop_streams = Arc::new(AtomicBool::new(false));
    let totals: Arc<Vec<AtomicU64>> = Arc::new((0..50).map(|_| AtomicU64::new(0)).collect());
    // 50 long-lived connections, half legacy SSH, half TLS, each echoing checked chunks.
    let streams: Vec<_> = (0..50u64)
        .map(|i| {
            let (web, tls, stop, totals) =
                (old.web, tls.clone(), stop_streams.clone(), totals.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let config = (i % 2 == 1).then_some(&tls);
                let mut conn =
                    Conn::open(web, config).map_err(|e| format!("stream {i}: open: {e}"))?;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    conn.round_trip(&chunk(i, n))
                        .map_err(|e| format!("stream {i}: after {n} chunks: {e}"))?;
                    n += 1;
                    totals[i as usize].store(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(n * 4096)
            })
        })
        .collect();
    wait_until(LONG, "every stream to echo once", || {
        Ok(totals
            .iter()
            .all(|t| t.load(Ordering::SeqCst) > 0)
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));

    // A new connection every 10 ms, alternating legacy and TLS, before, during, after.
    let stop_arrivals = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let arrivals = {
        let (web, tls, stop, outcomes) = (
            old.web,
            tls.clone(),
            stop_arrivals.clone(),
            outcomes.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let config = (i % 2 == 1).then_some(&tls);
                let r = Conn::open(web, config)
                    .and_then(|mut c| c.round_trip(&chunk(i, 0)))
                    .map_err(|e| format!("arrival {i}: {e}"));
                outcomes.lock().unwrap().push(r);
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // And one client in a tight loop (legacy SSH, no pause), from now until the end.
    let tight = {
        let (web, stop) = (old.web, stop_arrivals.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match Conn::open(web, None).and_then(|mut c| c.round_trip(b"tight")) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    let arrived = |n: usize| {
        wait_until(LONG, "arrivals", || {
            Ok((outcomes.lock().unwrap().len() >= n).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    };
    arrived(20);
    let (code, body) = old.readyz();
    assert_eq!(
        (code, body.trim()),
        (200, format!("ready pid={}", old.proc.pid()).as_str())
    );

    let new = old.upgrade();
    let at_handover: Vec<u64> = totals.iter().map(|t| t.load(Ordering::SeqCst)).collect();
    let before = outcomes.lock().unwrap().len();
    arrived(before + 100);
    stop_arrivals.store(true, Ordering::SeqCst);
    arrivals.join().unwrap();
    let (tight_ok, tight_failed) = tight.join().unwrap();
    assert!(
        tight_failed.is_empty(),
        "{} of {} tight-loop connections failed: {tight_failed:?}\n{}",
        tight_failed.len(),
        tight_ok as usize + tight_failed.len(),
        old.log()
    );
    eprintln!("tight loop: {tight_ok} connected, 0 refused, 0 broken");
    let outcomes = outcomes.lock().unwrap();
    let failed: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} arrivals failed: {failed:?}\n{}",
        failed.len(),
        outcomes.len(),
        old.log()
    );
    eprintln!(
        "arrivals: {} connected, 0 refused, 0 broken",
        outcomes.len()
    );

    // Every answer on the diag port, and every new connection, is the new process's.
    let (code, body) = old.readyz();
    assert_eq!(
        (code, body.trim()),
        (200, format!("ready pid={new}").as_str())
    );
    let accepted = |what| {
        let (_, text) = http_get(old.diag, "/metrics").unwrap();
        let _: &str = what;
        metric_sum(&text, "switchyard_accepted_connections_total", &[])
    };
    let counted = accepted("before");
    for i in 0..5 {
        let config = (i % 2 == 1).then_some(&tls);
        Conn::open(old.web, config)
            .unwrap()
            .round_trip(&chunk(i, 7))
            .unwrap();
    }
    assert_eq!(
        accepted("after"),
        counted + 5.0,
        "the new process accepted the 5 new connections"
    );
    assert_eq!(
        http_get(old.diag, "/readyz").unwrap().1.trim(),
        format!("ready pid={new}")
    );

    // The long-lived connections go on in the old process after the handover.
    wait_until(LONG, "every stream to echo after the handover", || {
        Ok(totals
            .iter()
            .zip(&at_handover)
            .all(|(t, h)| t.load(Ordering::SeqCst) > h + 2)
            .then_some(()))
    })
    .unwrap();
    stop_streams.store(true, Ordering::SeqCst);
    let mut bytes = 0;
    for s in streams {
        bytes += s
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    }
    eprintln!("streams: 50 kept, {bytes} bytes echoed and checked");

    // Its connections ended: the old process exits before the 60 s drain deadline.
    let mut old = old;
    let status = old
        .proc
        .wait_exit(LONG)
        .unwrap()
        .unwrap_or_else(|| panic!("old process still running\n{}", old.log()));
    assert!(status.success(), "{status}\n{}", old.log());
    assert!(
        !old.log().contains("drain deadline reached"),
        "{}",
        old.log()
    );
    Conn::open(old.web, Some(&tls))
        .unwrap()
        .round_trip(b"after the old one exited")
        .unwrap();
    switchyard_tests::process::signal(new, Signal::TERM).unwrap();
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
struct Notify(UnixDatagram);

impl Notify {
    /// The next message, or an error after 30 s.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
fn drain_deadline_ends_the_old_process_upgrades_chain_and_systemd_hears_every_step() {
    let dir = TempDir::new("notify").unwrap();
    let path = dir.join("notify.sock");
    let notify = Notify(UnixDatagram::bind(&path).unwrap());
    notify
        .0
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut old = start("2s", &[("NOTIFY_SOCKET", &path)]);
    assert!(notify.next().starts_with("READY=1\n"));
    old.proc.signal(Signal::HUP).unwrap();
    assert!(notify.next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert_eq!(notify.next(), "READY=1\n");

    let mut idle = Conn::open(old.web, None).unwrap();
    let new = old.upgrade();
    assert!(notify
        .next()
        .starts_with(&format!("MAINPID={new}\nREADY=1\n")));
    // The old process does not tell systemd it stops: the service goes on in the new one.
    let status = old
        .proc
        .wait_exit(LONG)
        .unwrap()
        .expect("the old process exits at its drain deadline");
    assert!(status.success(), "{status}");
    assert!(
        old.log().contains("drain deadline reached"),
        "{}",
        old.log()
    );
    let mut byte = [0u8; 1];
    assert!(
        matches!(idle.read(&mut byte), Ok(0) | Err(_)),
        "the idle connection was closed at the deadline"
    );
    Conn::open(old.web, None)
        .unwrap()
        .round_trip(b"served by the new process")
        .unwrap();
    // SIGHUP reaches the new process, and the old one told systemd nothing in between.
    switchyard_tests::process::signal(new, Signal::HUP).unwrap();
    let next = notify.next();
    assert!(next.starts_with("RELOADING=1\n"), "{next}");
    assert_eq!(notify.next(), "READY=1\n");

    // The new process upgrades in turn, through the upgrade socket it was handed.
    switchyard_tests::process::signal(new, Signal::USR2).unwrap();
    wait_until(LONG, "the second handover", || {
        let log = old.log();
        Ok((log.matches("handed the listening sockets over").count() == 2).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    let third = old.serving()[2];
    assert!(notify
        .next()
        .starts_with(&format!("MAINPID={third}\nREADY=1\n")));
    wait_until(LONG, "the second process to stop", || {
        Ok((old
            .log()
            .matches("INFO switchyard::router::run: stopped")
            .count()
            == 2)
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    Conn::open(old.web, Some(&old.tls()))
        .unwrap()
        .round_trip(b"served by the third process")
        .unwrap();

    switchyard_tests::process::signal(third, Signal::TERM).unwrap();
    assert_eq!(notify.next(), "STOPPING=1\nSTATUS=draining\n");
}

#[test]
fn strangers_and_mistakes_on_the_upgrade_socket_get_clear_errors() {
    let old = start("2s", &[]);
    // Garbage on the upgrade socket: refused with a reason, the old process serves on.
    let mut stranger = UnixStream::connect(&old.socket).unwrap();
    stranger.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stranger.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("{\"refused\":\"upgrade protocol: expected a switchyard-upgrade hello"),
        "{answer}"
    );
    wait_until(LONG, "the aborted upgrade's line", || {
        Ok(old
            .log()
            .contains("upgrade aborted, still serving")
            .then_some(()))
    })
    .unwrap();
    Conn::open(old.web, None)
        .unwrap()
        .round_trip(b"still serving")
        .unwrap();

    // A second fresh process on the same socket: refused, naming --takeover.
    let second = serve_command(&switchyard_bin().unwrap(), &old.dir, &old.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        err.contains("a running switchyard answers there") && err.contains("--takeover"),
        "{err}"
    );

    // --takeover with nothing running there.
    let nowhere = old.dir.join("nobody.sock");
    let lone = serve_command(&switchyard_bin().unwrap(), &old.dir, &nowhere)
        .arg("--takeover")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&lone.stderr);
    assert!(!lone.status.success());
    assert!(
        err.contains("no switchyard serves upgrades at")
            && err.contains("start without --takeover"),
        "{err}"
    );
    assert_eq!(
        old.serving(),
        [old.proc.pid()],
        "nothing took over\n{}",
        old.log()
    );
    assert_eq!(
        old.readyz().1.trim(),
        format!("ready pid={}", old.proc.pid())
    );
}

/// `switchyard upgrade --upgrade-socket PATH`: exit status, stdout, stderr.
fn upgrade_command(socket: &Path) -> (bool, String, String) {
    let out = Command::new(switchyard_bin().unwrap())
        .arg("upgrade")
        .arg("--upgrade-socket")
        .arg(socket)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn switchyard_upgrade_reports_a_failed_successor_and_then_a_handover() {
    let old = start("2s", &[]);
    let (ok, _, err) = upgrade_command(&old.dir.join("nobody.sock"));
    assert!(
        !ok && err.contains("no switchyard serves upgrades at"),
        "{err}"
    );

    // A new process that cannot start (its configuration broke on disk): the old one
    // serves on, and the command says so.
    let config = old.dir.join("config.yaml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("limits:", "limitz:")).unwrap();
    let (ok, _, err) = upgrade_command(&old.socket);
    let pid = old.proc.pid();
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "the new process exited before taking over: pid {pid} still serves"
        )),
        "{err}"
    );
    assert_eq!(old.serving(), [pid], "{}", old.log());
    Conn::open(old.web, None)
        .unwrap()
        .round_trip(b"still the old one")
        .unwrap();

    std::fs::write(&config, good).unwrap();
    let (ok, out, err) = upgrade_command(&old.socket);
    assert!(ok, "{err}\n{}", old.log());
    let new = old.serving()[1];
    assert_eq!(
        out.trim(),
        format!("switchyard upgrade: pid {pid} handed its sockets over to pid {new}")
    );
    // The command returns once the new process serves; the old one may still take a
    // last connection off the shared diagnostics port until it has seen the handover.
    wait_until(LONG, "readyz answered by the new process", || {
        Ok((old.readyz().1.trim() == format!("ready pid={new}")).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    Conn::open(old.web, None)
        .unwrap()
        .round_trip(b"the new one")
        .unwrap();
    // The legacy listener was handed over too: the same port, served by the new process.
    let legacy = old.legacy_listeners();
    assert_eq!(legacy.len(), 2, "{}", old.log());
    assert_eq!(legacy[0], legacy[1]);
    Conn::open(legacy[1], None)
        .unwrap()
        .round_trip(b"through the legacy listener")
        .unwrap();
    switchyard_tests::process::signal(new, Signal::TERM).unwrap();
}

#[test]
fn agents_redial_to_the_new_process_and_their_streams_in_flight_finish() {
    let rules = [Rule::serving(AGENT_ORG, &["tcp:*"])];
    let mut old = start_with("60s", &[], &tunnel_section("p1", &["p1"], &rules));
    let service = DemoUpstream::echo("echo").unwrap();
    let identity = agent_identity(&old.pki, "edge");
    let services = [("tcp", "agentecho", service.addr)];
    let agent = Agent::start(None, old.web, &identity, &services, &[]).unwrap();
    agent.wait_tunnels_up(2, LONG).unwrap();
    let tls = old.tls();
    let web = old.web;
    let through_agent = || Conn::open_to(web, Some(&tls), "agentecho.example.test");
    let mut in_flight = through_agent().unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    in_flight.round_trip(b"before").unwrap();

    // Connections to the agent's app one after the other across the handover: the new
    // process accepts some before the agent's tunnels to it are up, and those wait for
    // them rather than being refused.
    let stop = AtomicBool::new(false);
    let (done, failed) = (AtomicU64::new(0), Mutex::new(Vec::new()));
    let new = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                match through_agent().and_then(|mut c| c.round_trip(b"across the upgrade")) {
                    Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        failed.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        });
        let new = old.upgrade();
        // The drain notice makes the agent dial two more tunnels, which the new process
        // holds.
        agent.wait_tunnels_up(4, LONG).unwrap();
        wait_until(LONG, "the new process to list the agent's tunnels", || {
            let (_, body) = http_get(old.diag, "/agents").unwrap();
            let agents: serde_json::Value = serde_json::from_str(&body).unwrap();
            let tunnels = agents["agents"][0]["tunnels"]
                .as_array()
                .map_or(0, Vec::len);
            Ok((tunnels == 2).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", old.log(), agent.log()));
        let at_handover = done.load(Ordering::SeqCst);
        wait_until(LONG, "more connections through the new process", || {
            Ok((done.load(Ordering::SeqCst) > at_handover + 20).then_some(()))
        })
        .unwrap();
        stop.store(true, Ordering::SeqCst);
        new
    });
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections across the upgrade failed: {:?}\n{}\nagent:\n{}",
        failed.len(),
        failed.len() as u64 + done.load(Ordering::SeqCst),
        &failed[..failed.len().min(5)],
        old.log(),
        agent.log()
    );
    println!(
        "{} connections to the agent's app across the upgrade, none refused",
        done.load(Ordering::SeqCst)
    );
    assert_eq!(old.readyz().1.trim(), format!("ready pid={new}"));
    through_agent()
        .unwrap()
        .round_trip(b"through the new process")
        .unwrap();

    // The stream opened before the handover goes on through the old process's tunnel.
    in_flight.round_trip(b"after the handover").unwrap();
    drop(in_flight);
    let status = old
        .proc
        .wait_exit(LONG)
        .unwrap()
        .expect("the old process exits once its tunnel's stream ends");
    assert!(status.success(), "{status}");
    assert!(
        !old.log().contains("drain deadline reached"),
        "{}",
        old.log()
    );
    through_agent()
        .unwrap()
        .round_trip(b"after the old one exited")
        .unwrap();
    switchyard_tests::process::signal(new, Signal::TERM).unwrap();
}

#[test]
#[cfg_attr(
    not(ci),
    ignore = "needs root to act as another user (runs under CI=true)"
)]
fn another_user_is_refused_even_when_the_socket_is_open_to_all() {
    let old = start("2s", &[]);
    // Only the socket's mode keeps others out by default; the uid check is the second wall.
    switchyard_tests::set_mode(&old.socket, 0o666).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(switchyard_bin().unwrap())
        .arg("upgrade")
        .arg("--upgrade-socket")
        .arg(&old.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused the upgrade") && err.contains("runs as uid 65534"),
        "{err}"
    );
    assert_eq!(old.serving(), [old.proc.pid()], "{}", old.log());
}

/// The usual way to upgrade: the new binary is installed over the running one's path (a
/// package manager or `mv` puts a new file there, unlinking the old), then `switchyard
/// upgrade`: the process started is the file now at that path, not the deleted one.
#[test]
fn an_upgrade_starts_the_binary_installed_over_the_running_one() {
    let bin_dir = TempDir::new("upgrade-bin").unwrap();
    let bin = bin_dir.join("switchyard");
    let built = switchyard_bin().unwrap();
    std::fs::copy(&built, &bin).unwrap();
    let old = start_from(&bin, "2s", &[], "");
    let pid = old.proc.pid();
    // The "new build": another file (here the test's own binary, hard-linked, or copied
    // across file systems) renamed over the running one's path.
    let next = bin_dir.join("switchyard.new");
    if std::fs::hard_link(&built, &next).is_err() {
        std::fs::copy(&built, &next).unwrap();
    }
    std::fs::rename(&next, &bin).unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().ends_with(" (deleted)"),
        "the running file is unlinked: {}",
        exe.display()
    );
    let (ok, out, err) = upgrade_command(&old.socket);
    assert!(ok, "{err}\n{}", old.log());
    let new = old.serving()[1];
    assert_eq!(
        out.trim(),
        format!("switchyard upgrade: pid {pid} handed its sockets over to pid {new}")
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{new}/exe")).unwrap(),
        bin.canonicalize().unwrap(),
        "the new process runs the file now at the path"
    );
    Conn::open(old.web, None)
        .unwrap()
        .round_trip(b"served by the new binary")
        .unwrap();
    switchyard_tests::process::signal(new, Signal::TERM).unwrap();
}
