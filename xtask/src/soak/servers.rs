//! The processes of a soak run: the bench's PKI (`bench::env::make_pki`) plus an agent
//! certificate, the upstreams (`demo-upstream` echoes and HTTP server as child processes, the
//! bench's in-process TLS echo for the passthrough route), `switchyard serve
//! --upgrade-socket`, a `switchyard agent` serving one TCP app through a reverse tunnel, and
//! two local `switchyard proxy tcp` listeners that reach the proxy through the web route's
//! connection upgrade (WebSocket and legacy `Upgrade: alpn-ping`), as clients behind a
//! layer-7 balancer do; all from a copy of the binary in `target/soak/`. Also the
//! operator's side: SIGHUP, the binary upgrade, and which process serves now. Everything
//! is stopped when [`Servers`] drops, also on error.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::bench::{
    env::{self, path, run, Children},
    tunnel_servers::Agent,
    upstream::TlsEchoes,
};

/// How long a child may take to print its `switchyard ready` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The old process's drain deadline: longer than any soak stream lives.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The proxy's deadline for first bytes, PROXY header and handshake (the slow clients').
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where each kind of client connects.
#[derive(Clone, Copy)]
pub struct Addrs {
    /// The proxy's single port.
    pub proxy: SocketAddr,
    /// `proxy tcp` through the WebSocket connection upgrade.
    pub upgrade_ws: SocketAddr,
    /// `proxy tcp` through the legacy `alpn-ping` upgrade.
    pub upgrade_legacy: SocketAddr,
}

pub struct Servers {
    binary: PathBuf,
    socket: PathBuf,
    pub log: PathBuf,
    pub addrs: Addrs,
    diag: SocketAddr,
    /// The first `switchyard serve`; after the upgrade it drains and exits.
    first: Child,
    /// The process that serves now (the first one's pid until the upgrade).
    pub serving: u32,
    locals: Vec<Child>,
    agent: Option<Agent>,
    _upstreams: Children,
    _tls: TlsEchoes,
}

impl Servers {
    /// Starts everything under `out` (`pki/`, `logs/`) and waits for the agent's tunnels.
    pub fn start(built: &Path, out: &Path, ebpf: &str) -> Result<Servers> {
        let pki = env::make_pki(built, out)?;
        // A copy: a build replacing target/*/switchyard mid-run breaks the upgrade (docs/soak.md).
        let binary = &out.join("switchyard");
        let _ = std::fs::remove_file(binary);
        std::fs::copy(built, binary).with_context(|| format!("copy to {}", binary.display()))?;
        #[rustfmt::skip]
        run(binary, &["ca", "issue", "--dir", path(&pki)?, "--name", "edge", "--agent"])?;
        let logs = out.join("logs");
        let mut upstreams = Children::new(logs.clone());
        let mut echo = |name: &str, extra: &[&str]| {
            let mut args = vec!["demo-upstream", "--name", name, "--listen", "127.0.0.1:0"];
            args.extend_from_slice(extra);
            upstreams.spawn(binary, &format!("soak-{name}"), "addr", &args)
        };
        let (ssh, web) = (echo("ssh", &[])?, echo("web", &["--http"])?);
        let (tunnelled, upgraded) = (echo("tunnelled", &[])?, echo("upgraded", &[])?);
        let tls = TlsEchoes::start(&pki, "teleport-proxy-ssh")?;
        let config = pki.join("soak.yaml");
        let yaml = format!(
            "version: v2\n\
             auth_service: {{cluster_name: bench}}\n\
             proxy_service:\n  web_listen_addr: 127.0.0.1:0\n  \
             https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
             client_ca_file: ca.crt\n\
             diag_addr: 127.0.0.1:0\n\
             upstreams: {{ssh: \"{ssh}\", kube: \"{kube}\", web: \"{web}\"}}\n\
             routes:\n  - {{name: upgraded, sni: upgraded.bench.test, alpn: teleport-tcp, \
             mode: terminate, upstream: \"{upgraded}\"}}\n\
             tunnel:\n  proxy_id: soak\n  agents:\n    \
             - {{identity: switchyard-agent, serve: [\"tcp:*\"], allow: []}}\n\
             limits: {{max_connections: 10000, handshake_timeout: {}s, drain_timeout: {}s}}\n",
            HANDSHAKE_TIMEOUT.as_secs(),
            DRAIN_TIMEOUT.as_secs(),
            kube = tls.kube,
        );
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        let socket = out.join("upgrade.sock");
        let _ = std::fs::remove_file(&socket);
        let log = logs.join("soak-proxy.log");
        #[rustfmt::skip]
        let (first, line) = spawn_ready(binary, &["serve", "--config", path(&config)?,
            "--upgrade-socket", path(&socket)?, "--ebpf", ebpf], &[], &log)?;
        let (proxy, diag) = (field(&line, "web")?, field(&line, "diag")?);
        let mut servers = Servers {
            binary: binary.to_path_buf(),
            socket,
            serving: first.id(),
            first,
            log,
            diag,
            addrs: Addrs {
                proxy,
                upgrade_ws: proxy,
                upgrade_legacy: proxy,
            },
            locals: Vec::new(),
            agent: None,
            _upstreams: upstreams,
            _tls: tls,
        };
        let agent = Agent::start(
            binary,
            proxy.port(),
            &pki.join("edge"),
            2,
            &[("tunnelled".to_owned(), tunnelled)],
            logs.join("soak-agent.log"),
        )?;
        agent.wait_up(2)?;
        servers.agent = Some(agent);
        let alice = pki.join("alice");
        for mode in ["websocket", "legacy"] {
            let proxy_arg = format!("--proxy=localhost:{}", proxy.port());
            #[rustfmt::skip]
            let args = ["proxy", "tcp", &proxy_arg, "--identity", path(&alice)?,
                "--upgrade-mode", mode, "--alpn", "teleport-tcp", "--sni", "upgraded.bench.test"];
            let env = [("SWITCHYARD_TLS_ROUTING_CONN_UPGRADE", "true")];
            let log = logs.join(format!("soak-local-{mode}.log"));
            let (child, line) = spawn_ready(binary, &args, &env, &log)?;
            servers.locals.push(child);
            let addr = field(&line, "addr")?;
            match mode {
                "websocket" => servers.addrs.upgrade_ws = addr,
                _ => servers.addrs.upgrade_legacy = addr,
            }
        }
        Ok(servers)
    }

    /// `switchyard_ebpf_loaded` of the proxy's `/metrics`: `loaded`, `not loaded`, or why
    /// it is not known.
    pub fn ebpf_loaded(&self) -> String {
        let metrics = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(self.diag)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let host = self.diag;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        };
        match metrics() {
            Ok(text) => match text
                .lines()
                .find_map(|l| l.strip_prefix("switchyard_ebpf_loaded "))
            {
                Some(v) if v.trim() == "1" => "loaded".to_owned(),
                Some(_) => "not loaded".to_owned(),
                None => "unknown (no switchyard_ebpf_loaded)".to_owned(),
            },
            Err(e) => format!("unknown ({e})"),
        }
    }

    /// SIGHUP to the serving process.
    pub fn sighup(&self) -> Result<()> {
        signal("HUP", self.serving)
    }

    /// `switchyard upgrade`: returns once the new process serves (blocking: run it on a
    /// thread of its own); the new pid.
    pub fn upgrade(binary: &Path, socket: &Path) -> Result<u32> {
        let out = Command::new(binary)
            .args([
                "upgrade",
                "--upgrade-socket",
                path(socket)?,
                "--timeout",
                "60s",
            ])
            .output()
            .context("spawn switchyard upgrade")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "switchyard upgrade failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        text.rsplit_once("to pid ")
            .and_then(|(_, pid)| pid.trim().parse().ok())
            .with_context(|| format!("switchyard upgrade said {text:?}"))
    }

    /// What [`Servers::upgrade`] needs, to move to another thread.
    pub fn upgrade_args(&self) -> (PathBuf, PathBuf) {
        (self.binary.clone(), self.socket.clone())
    }

    /// The first process's pid, and whether it has exited (with its status).
    pub fn first(&mut self) -> (u32, Option<std::process::ExitStatus>) {
        (self.first.id(), self.first.try_wait().ok().flatten())
    }
}

impl Drop for Servers {
    /// Clients of the proxy first, then the proxy (the successor by pid: it is not our
    /// child), then the upstreams (their own drops).
    fn drop(&mut self) {
        for child in &mut self.locals {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.agent = None;
        if self.serving != self.first.id() {
            let _ = signal("TERM", self.serving);
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
    }
}

/// `kill -SIG PID`.
pub fn signal(sig: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .context("spawn kill")?;
    if !status.success() {
        bail!("kill -{sig} {pid}: {status}");
    }
    Ok(())
}

/// Spawns `binary args` with `env` and stderr to `log` (appended by its successors), and
/// returns it with its first stdout line (the `switchyard ready` line); stdout is drained.
fn spawn_ready(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<(Child, String)> {
    let err = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .env("SWITCHYARD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {} {}", binary.display(), args.join(" ")))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        lines.for_each(drop);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} printed no ready line; see {}", args[0], log.display())
        }
    }
}

/// The address in the `KEY=` field of a ready line.
fn field(line: &str, key: &str) -> Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no {key}= address in {line:?}"))
}
