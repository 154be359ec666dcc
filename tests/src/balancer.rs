//! Real load balancers in front of the proxy: nginx as a TLS-terminating layer-7 reverse
//! proxy ([`Nginx::layer7`]), HAProxy in `mode http` ([`HAProxy::http`]) and HAProxy in
//! `mode tcp` sending a PROXY v2 header ([`HAProxy::tcp_proxy_v2`]); and a small HTTP
//! `CONNECT` proxy for clients' `HTTPS_PROXY` ([`ConnectProxy`]).
//!
//! Each runs in the foreground as a [`Proc`] (stopped on drop) with every file it writes
//! (config, pid, logs, temp dirs) in the caller's directory, listens on a free
//! `127.0.0.1` port (retried on "address in use"), and reaches its backend from
//! [`BALANCER_SOURCE`], so the proxy's `client=` (the balancer) differs from the
//! `real_client=` it learns from `X-Forwarded-For` or the PROXY header (the client).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::pki::CertFiles;
use crate::process::Proc;
use crate::{free_port, require_tool, ProxyConfig, Switchyard, TestPki};

/// The loopback address balancers connect to their backend from.
pub const BALANCER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A running balancer: where clients connect, and its logs.
pub struct Balancer {
    /// The front address (TLS for the layer-7 ones).
    pub addr: SocketAddr,
    proc: Proc,
    dir: PathBuf,
}

impl Balancer {
    /// What it logged: HAProxy's stderr (its request log), nginx's error and access logs.
    pub fn log(&self) -> String {
        let file = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "{}{}{}",
            self.proc.stderr(),
            file("nginx-error.log"),
            file("nginx-access.log")
        )
    }

    /// Its output and logs, labelled, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n--- its log files ---\n{}",
            self.proc.logs(),
            self.log()
        )
    }
}

/// Starts the proxy with `config`, plus `proxy_service.trust_x_forwarded_for: true` when
/// `trust_xff`, and `limits` keys (`"key: value"`, e.g. `"ping_interval: 2s"`) that
/// [`ProxyConfig`] does not model.
pub fn start_proxy(
    pki: &TestPki,
    config: &ProxyConfig,
    trust_xff: bool,
    limits: &[&str],
) -> Result<Switchyard> {
    let mut text = config.render();
    if trust_xff {
        let off = "trust_x_forwarded_for: false";
        if !text.contains(off) {
            bail!("ProxyConfig::render no longer writes `{off}`:\n{text}");
        }
        text = text.replace(off, "trust_x_forwarded_for: true");
    }
    for key in limits {
        if !text.contains("limits: {") {
            bail!("ProxyConfig::render no longer writes `limits: {{`:\n{text}");
        }
        text = text.replacen("limits: {", &format!("limits: {{{key}, "), 1);
    }
    Switchyard::start_text(pki, &text, config.ebpf.as_deref())
        .map_err(|e| anyhow::anyhow!("{e:#}\nconfig:\n{text}"))
}

/// nginx (`http` module, TLS terminated, HTTP/1.1 only).
pub struct Nginx;

impl Nginx {
    /// `listen 127.0.0.1:P ssl` with `front_cert`/`front_key`, everything to
    /// `proxy_pass https://backend` (no SNI, no ALPN toward it) with the WebSocket
    /// `Upgrade`/`Connection` headers passed on, `X-Forwarded-For $remote_addr`, and
    /// `proxy_read_timeout` (default 60s) also bounding idle upgraded connections.
    pub fn layer7(
        dir: &Path,
        front_cert: &Path,
        front_key: &Path,
        backend: SocketAddr,
        read_timeout: Option<Duration>,
    ) -> Result<Balancer> {
        let nginx = require_tool("nginx", "nginx", &[])?;
        let read_timeout = read_timeout.unwrap_or(Duration::from_secs(60)).as_secs();
        let d = dir.display();
        start("nginx", dir, |port| {
            let config = dir.join("nginx.conf");
            std::fs::write(
                &config,
                format!(
                    "daemon off;\nmaster_process off;\nworker_processes 1;\n\
                     pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
                     events {{ worker_connections 256; }}\n\
                     http {{\n\
                     \x20 access_log {d}/nginx-access.log;\n\
                     \x20 client_body_temp_path {d}/client_body;\n\
                     \x20 proxy_temp_path {d}/proxy_temp;\n\
                     \x20 fastcgi_temp_path {d}/fastcgi_temp;\n\
                     \x20 uwsgi_temp_path {d}/uwsgi_temp;\n\
                     \x20 scgi_temp_path {d}/scgi_temp;\n\
                     \x20 map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
                     \x20 server {{\n\
                     \x20   listen 127.0.0.1:{port} ssl;\n\
                     \x20   server_name localhost;\n\
                     \x20   ssl_certificate {cert};\n\
                     \x20   ssl_certificate_key {key};\n\
                     \x20   location / {{\n\
                     \x20     proxy_pass https://{backend};\n\
                     \x20     proxy_http_version 1.1;\n\
                     \x20     proxy_set_header Host $host;\n\
                     \x20     proxy_set_header Upgrade $http_upgrade;\n\
                     \x20     proxy_set_header Connection $connection_upgrade;\n\
                     \x20     proxy_set_header X-Forwarded-For $remote_addr;\n\
                     \x20     proxy_ssl_server_name off;\n\
                     \x20     proxy_bind {BALANCER_SOURCE};\n\
                     \x20     proxy_read_timeout {read_timeout}s;\n\
                     \x20   }}\n\
                     \x20 }}\n\
                     }}\n",
                    cert = front_cert.display(),
                    key = front_key.display(),
                ),
            )?;
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("nginx-error.log"));
            cmd.arg("-c").arg(&config);
            Ok(cmd)
        })
    }
}

/// HAProxy in the foreground (`-db`), logging requests to stderr.
pub struct HAProxy;

impl HAProxy {
    /// `mode http`: `bind … ssl crt` (no ALPN), `option forwardfor`, `server s1 backend
    /// ssl verify none` (no SNI, no ALPN), `timeout tunnel 1h` for upgraded connections.
    pub fn http(dir: &Path, front: &CertFiles, backend: SocketAddr) -> Result<Balancer> {
        let pem = dir.join("haproxy-front.pem");
        let mut both = std::fs::read_to_string(&front.cert)?;
        both.push_str(&std::fs::read_to_string(&front.key)?);
        std::fs::write(&pem, both)?;
        crate::set_mode(&pem, 0o600)?;
        haproxy(dir, |port| {
            format!(
                "defaults\n  mode http\n  log global\n  option httplog\n  timeout connect 5s\n  \
                 timeout client 60s\n  timeout server 60s\n  timeout http-request 10s\n  \
                 timeout tunnel 1h\n\
                 frontend fe\n  bind 127.0.0.1:{port} ssl crt {pem}\n  option forwardfor\n  \
                 default_backend be\n\
                 backend be\n  server s1 {backend} ssl verify none source {BALANCER_SOURCE}\n",
                pem = pem.display(),
            )
        })
    }

    /// `mode tcp`: bytes as they are, preceded by a PROXY v2 header naming the client
    /// (`send-proxy-v2`).
    pub fn tcp_proxy_v2(dir: &Path, backend: SocketAddr) -> Result<Balancer> {
        haproxy(dir, |port| {
            format!(
                "defaults\n  mode tcp\n  log global\n  option tcplog\n  timeout connect 5s\n  \
                 timeout client 1h\n  timeout server 1h\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  server s1 {backend} send-proxy-v2 source {BALANCER_SOURCE}\n"
            )
        })
    }
}

fn haproxy(dir: &Path, body: impl Fn(u16) -> String) -> Result<Balancer> {
    let haproxy = require_tool("haproxy", "haproxy", &[])?;
    start("haproxy", dir, |port| {
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  log stderr format raw local0 info\n  maxconn 256\n{}",
                body(port)
            ),
        )?;
        let mut cmd = Command::new(&haproxy);
        cmd.arg("-db").arg("-f").arg(&config);
        Ok(cmd)
    })
}

/// Starts `command(port)` on a free port until it listens (three tries when the port was
/// taken in between), failing with its logs when it exits or stays deaf for 10 s.
fn start(name: &str, dir: &Path, command: impl Fn(u16) -> Result<Command>) -> Result<Balancer> {
    let mut last = None;
    for _ in 0..3 {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proc = Proc::spawn(name, command(port)?, dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let outcome = loop {
            if let Some(status) = proc.wait_exit(Duration::ZERO)? {
                break Err(format!("{name} exited ({status}) before listening"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(format!("{name} not listening on {addr} after 10s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let errors = format!("{}{}", proc.stderr(), error_log(dir));
        match outcome {
            Ok(()) => {
                return Ok(Balancer {
                    addr,
                    proc,
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) if errors.contains("in use") => last = Some(format!("{e}\n{errors}")),
            Err(e) => bail!("{e}\n{}\n{}", proc.logs(), error_log(dir)),
        }
    }
    bail!("{}", last.unwrap_or_default())
}

/// nginx's error log in `dir`, when there is one.
fn error_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
}

/// A minimal HTTP forward proxy for `HTTPS_PROXY`: answers `CONNECT host:port` with 200 and
/// relays bytes both ways; remembers every request line. Threads, stopped on drop.
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ConnectProxy {
    /// Listens on a free loopback port.
    pub fn start() -> Result<ConnectProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = connect_one(client, &seen);
                });
            }
        });
        Ok(ConnectProxy {
            addr,
            requests,
            stop,
        })
    }

    /// The request lines received so far (`CONNECT host:port HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// One `CONNECT`: reads the head, dials the target, answers 200, relays until either side ends.
fn connect_one(mut client: TcpStream, seen: &Mutex<Vec<String>>) -> Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    seen.lock().unwrap().push(line.clone());
    let mut parts = line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    let upstream = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(_) => {
            client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
    };
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let (mut u, mut c) = (upstream, client);
    let _ = std::io::copy(&mut u, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
