//! Real load balancers in front of the proxy: nginx as a TLS-terminating layer-7 reverse
//! proxy ([`Nginx::layer7`], or one of a chain, [`Nginx::hop`]), HAProxy in `mode http` ([`HAProxy::http`]) and HAProxy in
//! `mode tcp` sending a PROXY v2 header ([`HAProxy::tcp_proxy_v2`]); and tinyproxy as the
//! HTTP `CONNECT` proxy of clients' `HTTPS_PROXY` ([`ConnectProxy`]).
//!
//! Each runs in the foreground as a [`Proc`] (stopped on drop) with every file it writes
//! (config, pid, logs, temp dirs) in the caller's directory, listens on a free
//! `127.0.0.1` port (retried on "address in use"), and reaches its backend from
//! [`BALANCER_SOURCE`] (unless told another loopback source) (a trusted proxy in [`start_proxy`]), so the proxy's `peer=` (the
//! balancer) differs from the `client=` it learns from `X-Forwarded-For` or the PROXY
//! header (the client).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
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
/// [`ProxyConfig`] does not model. The balancers connect from [`BALANCER_SOURCE`]: it is
/// the trusted proxy unless `config` names its own `trusted_proxies`.
pub fn start_proxy(
    pki: &TestPki,
    config: &ProxyConfig,
    trust_xff: bool,
    limits: &[&str],
) -> Result<Switchyard> {
    let mut config = config.clone();
    if trust_xff {
        config.trust_x_forwarded_for = "true".into();
    }
    if config.trusted_proxies.is_empty() {
        config.trusted_proxies.push(BALANCER_SOURCE.to_string());
    }
    let mut text = config.render();
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
        let read_timeout = read_timeout.unwrap_or(Duration::from_secs(60));
        let hop = Hop {
            source: BALANCER_SOURCE,
            forwarded_for: "$remote_addr",
            read_timeout,
            pooled: false,
        };
        nginx(dir, front_cert, front_key, backend, hop)
    }

    /// [`Nginx::layer7`] with an upstream `keepalive` pool toward the proxy: requests of
    /// different clients, upgrades included, share kept-alive connections
    /// (`Connection: ""` for plain requests, `upgrade` for upgrades).
    pub fn layer7_pooled(
        dir: &Path,
        front_cert: &Path,
        front_key: &Path,
        backend: SocketAddr,
    ) -> Result<Balancer> {
        let hop = Hop {
            source: BALANCER_SOURCE,
            forwarded_for: "$remote_addr",
            read_timeout: Duration::from_secs(60),
            pooled: true,
        };
        nginx(dir, front_cert, front_key, backend, hop)
    }

    /// One balancer of a chain: as [`Nginx::layer7`], but reaching `backend` (the proxy, or
    /// the next balancer) from `source`, and appending its client to the `X-Forwarded-For`
    /// it received (`$proxy_add_x_forwarded_for`) instead of setting it.
    pub fn hop(
        dir: &Path,
        front_cert: &Path,
        front_key: &Path,
        backend: SocketAddr,
        source: IpAddr,
    ) -> Result<Balancer> {
        let hop = Hop {
            source,
            forwarded_for: "$proxy_add_x_forwarded_for",
            read_timeout: Duration::from_secs(60),
            pooled: false,
        };
        nginx(dir, front_cert, front_key, backend, hop)
    }
}

/// What differs between the nginx fixtures.
struct Hop {
    /// `proxy_bind`.
    source: IpAddr,
    /// The value of `proxy_set_header X-Forwarded-For`.
    forwarded_for: &'static str,
    read_timeout: Duration,
    /// An upstream `keepalive` pool (`Connection: ""` unless upgrading).
    pooled: bool,
}

fn nginx(
    dir: &Path,
    front_cert: &Path,
    front_key: &Path,
    backend: SocketAddr,
    hop: Hop,
) -> Result<Balancer> {
    let nginx = require_tool("nginx", "nginx", &[])?;
    let read_timeout = hop.read_timeout.as_millis();
    let (source, xff) = (hop.source, hop.forwarded_for);
    let d = dir.display();
    let (pool, target, no_upgrade) = if hop.pooled {
        (
            format!("  upstream switchyard {{ server {backend}; keepalive 4; }}\n"),
            "switchyard".to_owned(),
            "''",
        )
    } else {
        (String::new(), backend.to_string(), "close")
    };
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
                 \x20 map $http_upgrade $connection_upgrade {{ default upgrade; '' {no_upgrade}; }}\n\
                 {pool}\
                 \x20 server {{\n\
                 \x20   listen 127.0.0.1:{port} ssl;\n\
                 \x20   server_name localhost;\n\
                 \x20   ssl_certificate {cert};\n\
                 \x20   ssl_certificate_key {key};\n\
                 \x20   location / {{\n\
                 \x20     proxy_pass https://{target};\n\
                 \x20     proxy_http_version 1.1;\n\
                 \x20     proxy_set_header Host $host;\n\
                 \x20     proxy_set_header Upgrade $http_upgrade;\n\
                 \x20     proxy_set_header Connection $connection_upgrade;\n\
                 \x20     proxy_set_header X-Forwarded-For {xff};\n\
                 \x20     proxy_ssl_server_name off;\n\
                 \x20     proxy_bind {source};\n\
                 \x20     proxy_read_timeout {read_timeout}ms;\n\
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

/// HAProxy in the foreground (`-db`), logging requests to stderr.
pub struct HAProxy;

impl HAProxy {
    /// `mode http`: `bind … ssl crt` (no ALPN), `option forwardfor`, `server s1 backend
    /// ssl verify none` (no SNI, no ALPN), `timeout tunnel 1h` for upgraded connections.
    pub fn http(dir: &Path, front: &CertFiles, backend: SocketAddr) -> Result<Balancer> {
        HAProxy::http_with(dir, front, backend, "")
    }

    /// [`HAProxy::http`] with `http-reuse always`: idle connections to the proxy are shared
    /// by every client session, so any request (an upgrade too) may go on a reused one.
    pub fn http_reuse_always(
        dir: &Path,
        front: &CertFiles,
        backend: SocketAddr,
    ) -> Result<Balancer> {
        HAProxy::http_with(dir, front, backend, "  http-reuse always\n")
    }

    fn http_with(
        dir: &Path,
        front: &CertFiles,
        backend: SocketAddr,
        extra: &str,
    ) -> Result<Balancer> {
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
                 backend be\n{extra}  server s1 {backend} ssl verify none source {BALANCER_SOURCE}\n",
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

    /// `mode tcp`, `balance roundrobin` over `backends` (`s1`, `s2`, … in that order):
    /// bytes as they are, no PROXY header, no health checks (a backend that is down
    /// fails the connections sent to it), each connection from [`BALANCER_SOURCE`].
    pub fn tcp_round_robin(dir: &Path, backends: &[SocketAddr]) -> Result<Balancer> {
        if backends.is_empty() {
            bail!("tcp_round_robin needs at least one backend");
        }
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server s{} {b} source {BALANCER_SOURCE}\n", i + 1))
            .collect();
        haproxy(dir, |port| {
            format!(
                "defaults\n  mode tcp\n  log global\n  option tcplog\n  timeout connect 5s\n  \
                 timeout client 1h\n  timeout server 1h\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  balance roundrobin\n{servers}"
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

/// Debian's `tinyproxy` as the HTTP forward proxy of clients' `HTTPS_PROXY`: it answers
/// `CONNECT host:port` and relays; its log (stdout, level Info) names every request.
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Balancer,
}

impl ConnectProxy {
    /// Starts tinyproxy on a free loopback port, with its files in `dir`.
    pub fn start(dir: &Path) -> Result<ConnectProxy> {
        ConnectProxy::start_from(dir, None)
    }

    /// [`ConnectProxy::start`], its outgoing connections from `source` (`Bind`): what
    /// it relays reaches the proxy as a client at that address (an office's egress).
    pub fn start_from(dir: &Path, source: Option<IpAddr>) -> Result<ConnectProxy> {
        let bind = source.map_or(String::new(), |s| format!("Bind {s}\n"));
        let tinyproxy = require_tool("tinyproxy", "tinyproxy", &[])?;
        let inner = start("tinyproxy", dir, |port| {
            let config = dir.join("tinyproxy.conf");
            // Runs as root in CI: tinyproxy drops to nobody; logs go to stdout with -d.
            std::fs::write(
                &config,
                format!(
                    "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 600\n\
                     LogLevel Info\nMaxClients 100\nAllow 127.0.0.1\n{bind}"
                ),
            )?;
            let mut cmd = Command::new(&tinyproxy);
            cmd.arg("-d").arg("-c").arg(&config);
            Ok(cmd)
        })?;
        Ok(ConnectProxy {
            addr: inner.addr,
            inner,
        })
    }

    /// The request lines it logged so far (`CONNECT host:port HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.inner
            .proc
            .stdout()
            .lines()
            .filter_map(|l| l.split_once("): ").filter(|_| l.contains("Request (")))
            .map(|(_, request)| request.trim().to_owned())
            .collect()
    }
}
