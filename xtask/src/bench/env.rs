//! The servers a bench run talks to: a fresh PKI from `switchyard ca`, the plaintext
//! `demo-upstream` and `switchyard serve` as child processes (killed when `Env` drops, also
//! on error), the in-process TLS echo upstreams of `upstream.rs`, and HAProxy and nginx in
//! front of the same upstreams (`conn_peers.rs`); and which processes' CPU counts as whose.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    conn_peers::Proxies,
    connections::{Peer, Route, Scenario, Workload},
    load::{self, Target},
    quiet,
    upstream::TlsEchoes,
};

/// How long a child may take to print its `switchyard ready` line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// SNI of the passthrough scenario: the Kubernetes route, before ALPN is looked at.
const KUBE_SNI: &str = "kube-teleport-proxy-alpn.bench.test";
/// SNI of the terminated scenario (any name the proxy certificate covers).
const SSH_SNI: &str = "ssh.bench.test";
const SSH_ALPN: &str = "teleport-proxy-ssh";

pub struct Env {
    pki: PathBuf,
    /// `switchyard serve`: kube passthrough to `tls.kube`, ssh terminated to a plaintext
    /// `demo-upstream`.
    proxy: SocketAddr,
    /// The `switchyard serve` process, whose CPU is Switchyard's.
    proxy_pid: u32,
    /// HAProxy and nginx, with the same two routes on ports of their own.
    proxies: Proxies,
    children: Children,
    tls: TlsEchoes,
}

/// Creates a fresh `out/pki` with `switchyard ca` (CA; `proxy` for `localhost`,
/// `*.bench.test` and 127.0.0.1; `kube`; client `alice`) and `out/logs`; returns the PKI
/// directory. The connection scenarios and the HTTP rows share it.
pub fn make_pki(binary: &Path, out: &Path) -> Result<PathBuf> {
    if !binary.exists() {
        bail!(
            "{} is missing; build it with cargo build --release -p proxy-user",
            binary.display()
        );
    }
    let pki = out.join("pki");
    let logs = out.join("logs");
    if pki.exists() {
        std::fs::remove_dir_all(&pki).with_context(|| format!("remove {}", pki.display()))?;
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let dir = pki.to_str().context("non-UTF-8 target dir")?;
    run(binary, &["ca", "init", "--dir", dir, "--cluster", "bench"])?;
    #[rustfmt::skip]
    run(binary, &["ca", "issue", "--dir", dir, "--name", "proxy",
        "--dns", "localhost", "--dns", "*.bench.test", "--ip", "127.0.0.1"])?;
    // The kube upstream also covers *.bench.test: the client verifies it under the
    // passthrough SNI, direct and through the proxy alike.
    #[rustfmt::skip]
    run(binary, &["ca", "issue", "--dir", dir, "--name", "kube",
        "--dns", "kube.internal", "--dns", "*.bench.test", "--ip", "127.0.0.1"])?;
    run(binary, &["ca", "issue", "--dir", dir, "--name", "alice"])?;
    Ok(pki)
}

impl Env {
    /// Writes `pki/switchyard.yaml` and starts every server (PKI from [`make_pki`]),
    /// Switchyard with `--ebpf ebpf` and `limits.verified_chains: chains`.
    pub fn start(binary: &Path, out: &Path, pki: &Path, ebpf: &str, chains: usize) -> Result<Env> {
        let pki = pki.to_path_buf();
        let mut children = Children::new(out.join("logs"));
        let tls = TlsEchoes::start(&pki, SSH_ALPN)?;
        let kube = tls.kube;
        let ssh = children.spawn(
            binary,
            "ssh",
            "addr",
            &["demo-upstream", "--name", "ssh", "--listen", "127.0.0.1:0"],
        )?;
        let config = pki.join("switchyard.yaml");
        let yaml = format!(
            "version: v2\n\
             auth_service: {{cluster_name: bench}}\n\
             proxy_service:\n  web_listen_addr: 127.0.0.1:0\n  \
             https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
             client_ca_file: ca.crt\n\
             upstreams: {{ssh: {ssh}, kube: {kube}}}\n\
             limits: {{max_connections: 10000, verified_chains: {chains}}}\n"
        );
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        let proxy = children.spawn(
            binary,
            "switchyard",
            "web",
            &["serve", "--config", path(&config)?, "--ebpf", ebpf],
        )?;
        let proxy_pid = *children.pids().last().context("switchyard has no pid")?;
        let proxies = Proxies::start(ssh, kube, &pki, &out.join("logs"))?;
        Ok(Env {
            proxy,
            proxy_pid,
            proxies,
            pki,
            children,
            tls,
        })
    }

    /// Our processes for CPU accounting: this one (0, with the TLS echoes), the children,
    /// and HAProxy's and nginx's processes (read now: nginx forks its workers after start).
    pub fn pids(&self) -> Vec<u32> {
        let proxies = [Peer::Haproxy, Peer::Nginx].map(|p| self.proxies.pids(p));
        std::iter::once(0)
            .chain(self.children.pids())
            .chain(proxies.into_iter().flatten())
            .collect()
    }

    /// CPU seconds `peer`'s own processes have used so far: Switchyard's process; HAProxy's,
    /// nginx's master and workers; for direct, the threads of the TLS echo upstream, which is
    /// then the server end of the handshake.
    pub fn peer_cpu(&self, peer: Peer) -> f64 {
        match peer {
            Peer::Direct => self.tls.cpu_seconds(),
            Peer::Switchyard => quiet::cpu_seconds(&[self.proxy_pid]),
            Peer::Haproxy | Peer::Nginx => quiet::cpu_seconds(&self.proxies.pids(peer)),
        }
    }

    /// Where and how the client connects for `scenario` through `peer`.
    pub fn target(&self, scenario: &Scenario, peer: Peer) -> Result<Target> {
        let Workload::NewConnections(route) = scenario.workload;
        let (direct, sni, greeting, tls) = match route {
            Route::Passthrough => (
                self.tls.kube,
                KUBE_SNI,
                "upstream=kube\n",
                load::client_config(&self.pki, None, None)?,
            ),
            Route::Terminated => (
                self.tls.ssh,
                SSH_SNI,
                "upstream=ssh\n",
                load::client_config(&self.pki, Some("alice"), Some(SSH_ALPN))?,
            ),
        };
        let addr = match peer {
            Peer::Direct => direct,
            Peer::Switchyard => self.proxy,
            Peer::Haproxy | Peer::Nginx => self.proxies.addr(peer, route)?,
        };
        Target::new(addr, tls, sni, greeting)
    }
}

pub fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// Runs a short `switchyard` command to completion.
pub(crate) fn run(binary: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("spawn {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "switchyard {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `switchyard` child processes, killed and reaped on drop.
pub struct Children {
    logs: PathBuf,
    list: Vec<Child>,
}

impl Children {
    pub fn new(logs: PathBuf) -> Children {
        Children {
            logs,
            list: Vec::new(),
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.list.iter().map(Child::id).collect()
    }

    /// Spawns `binary args` with stderr to `logs/NAME.log`, and returns the address in the
    /// `KEY=` field of its `switchyard ready` line.
    pub fn spawn(
        &mut self,
        binary: &Path,
        name: &str,
        key: &str,
        args: &[&str],
    ) -> Result<SocketAddr> {
        let log_path = self.logs.join(format!("{name}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut child = Command::new(binary)
            .args(args)
            .env("SWITCHYARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} {}", binary.display(), args.join(" ")))?;
        let stdout = child.stdout.take().context("child stdout")?;
        self.list.push(child);
        let (tx, rx) = mpsc::channel();
        // Reads the ready line, then keeps draining so the child never writes to a closed pipe.
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            lines.for_each(drop);
        });
        let line = rx
            .recv_timeout(READY_TIMEOUT)
            .with_context(|| format!("{name} printed no ready line; see {}", log_path.display()))?;
        let field = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("{name}: no {key}= in {line:?}"))?;
        field
            .parse()
            .with_context(|| format!("{name}: bad address in {line:?}"))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.list {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
