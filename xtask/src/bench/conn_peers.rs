//! HAProxy and nginx as peers of the new-connection rows, doing Switchyard's work there and
//! in front of the same upstreams: passthrough routed by SNI to the same TLS echo upstream
//! without terminating (HAProxy `mode tcp` on `req.ssl_sni`, nginx `stream` with
//! `ssl_preread`), and TLS terminated with the proxy's certificate, a client certificate
//! required and verified against the bench CA, ALPN `teleport-proxy-ssh`, then plaintext to
//! the same `demo-upstream` as Switchyard's terminated route. The configurations are the scale
//! rows' (`scale_peers::haproxy_cfg`, `scale_peers::nginx_conf`, one port per route; their
//! plaintext port is not used here), with nginx on `worker_processes auto` like HAProxy's
//! default of one thread per CPU. Configurations and logs go to `target/bench/logs/conn-*`.

use std::{
    fs::File,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{
    connections::{Peer, Route},
    http, peers,
    scale_peers::{self, nginx_conf},
};

/// HAProxy and nginx, running.
pub struct Proxies {
    haproxy: Proxy,
    nginx: Proxy,
}

/// One running proxy: its passthrough and terminated listeners, and its processes.
struct Proxy {
    passthrough: SocketAddr,
    terminated: SocketAddr,
    running: peers::Peer,
}

impl Proxies {
    /// Installs HAProxy and nginx when missing and starts both in front of `ssh` (plaintext
    /// `demo-upstream`) and `kube` (TLS echo upstream), with the certificates in `pki`.
    pub fn start(ssh: SocketAddr, kube: SocketAddr, pki: &Path, logs: &Path) -> Result<Proxies> {
        peers::install()?;
        let ports = three_ports()?;
        scale_peers::write_haproxy_pem(pki)?;
        let config = logs.join("conn-haproxy.cfg");
        let cfg = scale_peers::haproxy_cfg(ports, ssh, kube, pki, "")?;
        std::fs::write(&config, cfg).with_context(|| format!("write {}", config.display()))?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&config);
        let haproxy = spawn(cmd, ports, "conn-haproxy", logs)?;

        let ports = three_ports()?;
        let dir = logs.join("conn-nginx");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("nginx.conf");
        let conf = nginx_conf(ports, ssh, kube, pki, &dir, "auto");
        std::fs::write(&config, conf).with_context(|| format!("write {}", config.display()))?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(&dir).arg("-e").arg(dir.join("nginx.err"));
        cmd.arg("-c").arg(&config);
        let nginx = spawn(cmd, ports, "conn-nginx", logs)?;
        Ok(Proxies { haproxy, nginx })
    }

    fn get(&self, peer: Peer) -> Option<&Proxy> {
        match peer {
            Peer::Haproxy => Some(&self.haproxy),
            Peer::Nginx => Some(&self.nginx),
            Peer::Direct | Peer::Switchyard => None,
        }
    }

    /// Where the client connects to `peer` for `route`.
    pub fn addr(&self, peer: Peer, route: Route) -> Result<SocketAddr> {
        let proxy = self
            .get(peer)
            .with_context(|| format!("{} is not started by conn_peers", peer.name()))?;
        Ok(match route {
            Route::Passthrough => proxy.passthrough,
            Route::Terminated => proxy.terminated,
        })
    }

    /// The processes whose CPU is `peer`'s (HAProxy's one, nginx's master and workers);
    /// none for the peers not started here.
    pub fn pids(&self, peer: Peer) -> Vec<u32> {
        self.get(peer).map_or_else(Vec::new, |p| p.running.pids())
    }
}

/// Three loopback ports that were free a moment ago: plaintext, passthrough, terminated.
fn three_ports() -> Result<[SocketAddr; 3]> {
    let port = || Ok::<_, anyhow::Error>(SocketAddr::from(([127, 0, 0, 1], peers::free_port()?)));
    Ok([port()?, port()?, port()?])
}

/// Spawns `cmd` with stderr to `logs/NAME.log` and waits until it listens.
fn spawn(
    mut cmd: Command,
    [plain, b, c]: [SocketAddr; 3],
    name: &str,
    logs: &Path,
) -> Result<Proxy> {
    let log_path = logs.join(format!("{name}.log"));
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {name}"))?;
    Ok(Proxy {
        passthrough: b,
        terminated: c,
        running: peers::Peer::spawned(plain, child, name, logs)?,
    })
}

/// The peers' versions, for the report: `HAProxy 2.6.12-…, nginx 1.22.1`.
pub fn versions() -> String {
    format!(
        "HAProxy {}, nginx {}",
        http::version("haproxy", &["-v"], 2),
        http::version("nginx", &["-v"], 2).trim_start_matches("nginx/")
    )
}
