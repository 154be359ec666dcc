//! The servers of the scale and isolation rows: the plaintext and TLS echo upstreams as
//! `switchyard demo-upstream` child processes (so the bench process keeps only the client
//! sockets under the machine's open-file limit), and the proxies compared, each serving the
//! three routes — legacy plaintext, TLS passthrough by SNI, TLS terminated with client
//! certificates — on one port (Switchyard) or three (HAProxy, nginx). The HAProxy and nginx
//! configurations are also the new-connection rows' (`conn_peers.rs`).

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{
    env::{path, Children},
    peers::{self, free_port, Peer},
};

/// Who relays the scale rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    KernelSplice,
    Splice,
    Copy,
    Haproxy,
    Nginx,
}

pub const ALL: [Via; 5] = [
    Via::KernelSplice,
    Via::Splice,
    Via::Copy,
    Via::Haproxy,
    Via::Nginx,
];

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::KernelSplice => "switchyard kernel splice",
            Via::Splice => "switchyard splice(2)",
            Via::Copy => "switchyard userspace copy",
            Via::Haproxy => "haproxy",
            Via::Nginx => "nginx",
        }
    }

    fn log(self) -> &'static str {
        match self {
            Via::KernelSplice => "scale-switchyard-kernel",
            Via::Splice => "scale-switchyard-splice",
            Via::Copy => "scale-switchyard-copy",
            Via::Haproxy => "scale-haproxy",
            Via::Nginx => "scale-nginx",
        }
    }
}

/// The echo upstreams: `ssh` plaintext, `kube` TLS (kube certificate), both greeting with
/// `upstream=NAME\n` and then echoing.
pub struct Upstreams {
    pub ssh: SocketAddr,
    pub kube: SocketAddr,
    _children: Children,
}

impl Upstreams {
    pub fn start(binary: &Path, pki: &Path, logs: &Path) -> Result<Upstreams> {
        let mut children = Children::new(logs.to_path_buf());
        let ssh = children.spawn(
            binary,
            "scale-ssh",
            "addr",
            &["demo-upstream", "--name", "ssh"],
        )?;
        let (crt, key) = (pki.join("kube.crt"), pki.join("kube.key"));
        #[rustfmt::skip]
        let kube = children.spawn(binary, "scale-kube", "addr", &["demo-upstream", "--name",
            "kube", "--tls-cert", path(&crt)?, "--tls-key", path(&key)?])?;
        Ok(Upstreams {
            ssh,
            kube,
            _children: children,
        })
    }
}

/// A running proxy: its addresses for the plaintext, passthrough and terminated routes.
pub struct Proxy {
    pub plain: SocketAddr,
    pub passthrough: SocketAddr,
    pub terminated: SocketAddr,
    pub peer: Peer,
}

/// Switchyard's configuration for `addr`: the three routes, and `classes` (YAML flow map
/// of `limits.classes`).
pub fn switchyard_yaml(addr: SocketAddr, up: &Upstreams, extra: &str, classes: &str) -> String {
    format!(
        "version: v2\nauth_service: {{cluster_name: bench}}\nproxy_service:\n  \
         web_listen_addr: \"{addr}\"\n  \
         https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
         client_ca_file: ca.crt\n{extra}\
         upstreams: {{ssh: \"{ssh}\", kube: \"{kube}\", postgres: \"{ssh}\"}}\n\
         limits: {{max_connections: 19800, classes: {classes}}}\n",
        ssh = up.ssh,
        kube = up.kube,
    )
}

/// Starts `via` in front of `up`, with its configuration in `pki` (Switchyard's relative
/// certificate paths resolve there) and its log in `logs`.
pub fn start(via: Via, up: &Upstreams, binary: &Path, pki: &Path, logs: &Path) -> Result<Proxy> {
    let log = std::fs::File::create(logs.join(format!("{}.log", via.log())))?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let [a, b, c] = ports.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let mut cmd;
    let (plain, passthrough, terminated) = match via {
        Via::KernelSplice | Via::Splice | Via::Copy => {
            let config = pki.join(format!("{}.yaml", via.log()));
            let budget = "{max_connections: 19800, per_source: 19800}";
            let classes = format!("{{legacy-plaintext: {budget}, kube: {budget}, ssh: {budget}}}");
            std::fs::write(&config, switchyard_yaml(a, up, "", &classes))?;
            cmd = Command::new(binary);
            let (mode, relay) = match via {
                Via::KernelSplice => ("require", "kernel"),
                Via::Copy => ("off", "copy"),
                _ => ("off", "splice"),
            };
            cmd.args(["serve", "--ebpf", mode, "--relay", relay, "--config"])
                .arg(&config);
            cmd.env("SWITCHYARD_LOG", "warn");
            (a, a, a)
        }
        Via::Haproxy => {
            write_haproxy_pem(pki)?;
            let config = pki.join("scale-haproxy.cfg");
            std::fs::write(&config, haproxy_cfg([a, b, c], up.ssh, up.kube, pki, "")?)?;
            cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&config);
            (a, b, c)
        }
        Via::Nginx => {
            let config = pki.join("scale-nginx.conf");
            let dir = pki.join("nginx");
            std::fs::create_dir_all(&dir)?;
            let conf = nginx_conf([a, b, c], up.ssh, up.kube, pki, &dir, "1");
            std::fs::write(&config, conf)?;
            cmd = Command::new("nginx");
            cmd.arg("-p").arg(&dir).arg("-e").arg(dir.join("nginx.err"));
            cmd.arg("-c").arg(&config);
            (a, b, c)
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", via.name()))?;
    let peer = Peer::spawned(plain, child, via.name(), logs)?;
    Ok(Proxy {
        plain,
        passthrough,
        terminated,
        peer,
    })
}

/// `pki/proxy.pem`, the proxy's certificate and key in one file, as HAProxy's `crt` wants.
pub fn write_haproxy_pem(pki: &Path) -> Result<()> {
    let both = std::fs::read_to_string(pki.join("proxy.crt"))?
        + &std::fs::read_to_string(pki.join("proxy.key"))?;
    Ok(std::fs::write(pki.join("proxy.pem"), both)?)
}

/// HAProxy on three ports: plaintext TCP to `ssh`; passthrough by `req.ssl_sni` to `kube`;
/// TLS terminated with `pki/proxy.pem` ([`write_haproxy_pem`]) and a required client
/// certificate (ALPN `teleport-proxy-ssh`) to `ssh`. `limits` goes into the terminated
/// frontend.
pub fn haproxy_cfg(
    [a, b, c]: [SocketAddr; 3],
    ssh: SocketAddr,
    kube: SocketAddr,
    pki: &Path,
    limits: &str,
) -> Result<String> {
    Ok(format!(
        "global\n  maxconn 9900\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
         timeout client 10m\n  timeout server 10m\n\
         frontend plain\n  bind {a}\n  default_backend ssh\n\
         frontend passthrough\n  bind {b}\n  tcp-request inspect-delay 5s\n  \
         tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  \
         use_backend kube if {{ req.ssl_sni -m beg kube-teleport-proxy-alpn. }}\n\
         frontend terminated\n  bind {c} ssl crt {pem} ca-file {ca} verify required \
         alpn teleport-proxy-ssh\n{limits}  default_backend ssh\n\
         backend ssh\n  server ssh {ssh}\nbackend kube\n  server kube {kube}\n",
        pem = path(&pki.join("proxy.pem"))?,
        ca = path(&pki.join("ca.crt"))?,
    ))
}

/// nginx `stream` with `workers` worker processes (`1`, `auto`), the same three routes as
/// [`haproxy_cfg`]; pid file and error log in `dir`. TLS 1.3 is enabled explicitly: nginx
/// 1.22's default `ssl_protocols` ends at TLS 1.2.
pub fn nginx_conf(
    [a, b, c]: [SocketAddr; 3],
    ssh: SocketAddr,
    kube: SocketAddr,
    pki: &Path,
    dir: &Path,
    workers: &str,
) -> String {
    let f = |n: &str| pki.join(n).display().to_string();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\n\
         worker_processes {workers};\nworker_rlimit_nofile 20000;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 19900; }}\nstream {{\n  \
         map $ssl_preread_server_name $up {{ ~^kube-teleport-proxy-alpn\\. {kube}; }}\n  \
         server {{ listen {a}; proxy_pass {ssh}; }}\n  \
         server {{ listen {b}; ssl_preread on; proxy_pass $up; }}\n  \
         server {{ listen {c} ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate {crt}; \
         ssl_certificate_key {key}; ssl_client_certificate {ca}; ssl_verify_client on; \
         ssl_alpn teleport-proxy-ssh; proxy_pass {ssh}; }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx.err").display(),
        crt = f("proxy.crt"),
        key = f("proxy.key"),
        ca = f("ca.crt"),
    )
}

/// Installs HAProxy and nginx when missing (the bench's shared installer).
pub fn install() -> Result<()> {
    peers::install()
}
