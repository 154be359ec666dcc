//! The proxies the throughput table compares, each a child process in front of the same
//! bulk sink and routing by SNI: Switchyard with the kernel splice (`--ebpf require --relay kernel`),
//! Switchyard with `splice(2)` through pipes (`--ebpf off --relay splice`), Switchyard
//! copying in userspace (`--relay copy`), HAProxy in TCP mode routing by
//! `req.ssl_sni`, and nginx `stream` with `ssl_preread`. HAProxy and nginx come from
//! Debian's packages, installed here when missing (the bench's own dependencies, with the
//! HTTP rows' load clients `wrk` and `h2load`).

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Debian packages of the peers, the chart's font, and the HTTP load clients (`wrk`;
/// `h2load` is in `nghttp2-client`).
const PACKAGES: [&str; 6] = [
    "haproxy",
    "nginx",
    "libnginx-mod-stream",
    "fonts-dejavu-core",
    "wrk",
    "nghttp2-client",
];
/// Where Debian puts nginx's dynamic stream module.
const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Who sits between the client and the sink.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    KernelSplice,
    Splice,
    Userspace,
    Haproxy,
    Nginx,
}

pub const ALL: [Via; 6] = [
    Via::Direct,
    Via::KernelSplice,
    Via::Splice,
    Via::Userspace,
    Via::Haproxy,
    Via::Nginx,
];

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::KernelSplice => "switchyard kernel splice",
            Via::Splice => "switchyard splice(2)",
            Via::Userspace => "switchyard userspace copy",
            Via::Haproxy => "haproxy (tcp, req.ssl_sni)",
            Via::Nginx => "nginx (stream, ssl_preread)",
        }
    }
}

/// A running peer: where clients connect, and its processes for CPU accounting.
pub struct Peer {
    pub addr: SocketAddr,
    /// The kernel-splice peer's diagnostics listener (its `/metrics` say how many bytes
    /// crossed in the kernel); `None` for the others.
    pub diag: Option<SocketAddr>,
    child: Option<Child>,
}

impl Peer {
    /// A peer already spawned (the HTTP rows start their own), waited for until `addr`
    /// accepts connections; killed like the others when dropped.
    pub fn spawned(addr: SocketAddr, child: Child, name: &str, logs: &Path) -> Result<Peer> {
        let peer = Peer {
            addr,
            diag: None,
            child: Some(child),
        };
        wait_listening(addr, name, logs)?;
        Ok(peer)
    }

    /// The pids whose CPU time counts as the peer's (nginx's and HAProxy's workers are its
    /// threads or children in the same process group: counted through the leader's group).
    pub fn pids(&self) -> Vec<u32> {
        let Some(child) = &self.child else {
            return Vec::new();
        };
        let leader = child.id();
        let mut pids = vec![leader];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for pid in dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
                if ppid == Some(leader) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Peer {
    /// SIGTERM first, so that nginx's master stops its workers (SIGKILL would orphan them),
    /// then SIGKILL whatever is left.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Installs HAProxy, nginx and the chart's font when missing.
pub fn install() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for args in [
        vec!["update", "-qq"],
        [
            vec!["install", "-y", "-qq", "--no-install-recommends"],
            missing.clone(),
        ]
        .concat(),
    ] {
        let out = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("spawn apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for p in missing {
        println!("installed {p} (apt)");
    }
    Ok(())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `via` in front of `sink` (for `Direct`, nothing: the sink itself).
pub fn start(via: Via, sink: SocketAddr, binary: &Path, dir: &Path, sni: &str) -> Result<Peer> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = |name: &str| File::create(dir.join(format!("{name}.log")));
    let mut diag_addr = None;
    let mut cmd = match via {
        Via::Direct => {
            return Ok(Peer {
                addr: sink,
                diag: None,
                child: None,
            })
        }
        Via::KernelSplice | Via::Splice | Via::Userspace => {
            let config = dir.join(match via {
                Via::KernelSplice => "throughput-kernel.yaml",
                Via::Splice => "throughput-splice.yaml",
                _ => "throughput-copy.yaml",
            });
            // The kernel splice's /metrics give its share of the bytes (bulk.rs).
            let diag = match via {
                Via::KernelSplice => {
                    let d: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
                    diag_addr = Some(d);
                    format!("diag_addr: \"{d}\"\n")
                }
                _ => String::new(),
            };
            std::fs::write(
                &config,
                format!(
                    "version: v2\n{diag}proxy_service: {{web_listen_addr: \"{addr}\"}}\n\
                     upstreams: {{kube: \"{sink}\"}}\nlimits: {{max_connections: 10000}}\n"
                ),
            )?;
            let mut c = Command::new(binary);
            let (mode, relay) = match via {
                Via::KernelSplice => ("require", "kernel"),
                Via::Userspace => ("off", "copy"),
                _ => ("off", "splice"),
            };
            c.args(["serve", "--ebpf", mode, "--relay", relay, "--config"])
                .arg(&config);
            c.env("SWITCHYARD_LOG", "warn").stdout(Stdio::null());
            c
        }
        Via::Haproxy => {
            let config = dir.join("haproxy.cfg");
            std::fs::write(
                &config,
                format!(
                    "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                     timeout client 60s\n  timeout server 60s\nfrontend fe\n  bind {addr}\n  \
                     tcp-request inspect-delay 5s\n  \
                     tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  \
                     use_backend kube if {{ req.ssl_sni -m beg {sni_prefix} }}\n\
                     backend kube\n  server sink {sink}\n",
                    sni_prefix = sni.split('.').next().unwrap_or(sni),
                ),
            )?;
            let mut c = Command::new("haproxy");
            c.arg("-db").arg("-f").arg(&config).stdout(Stdio::null());
            c
        }
        Via::Nginx => {
            let config = dir.join("nginx.conf");
            let prefix = sni.split('.').next().unwrap_or(sni);
            std::fs::write(
                &config,
                format!(
                    "load_module {NGINX_STREAM};\ndaemon off;\nworker_processes auto;\n\
                     pid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 10000; }}\n\
                     stream {{\n  map $ssl_preread_server_name $up {{ ~^{prefix}\\. sink; }}\n  \
                     upstream sink {{ server {sink}; }}\n  \
                     server {{ listen {addr}; ssl_preread on; proxy_half_close on; proxy_pass $up; }}\n}}\n",
                    pid = dir.join("nginx.pid").display(),
                    err = dir.join("nginx.err").display(),
                ),
            )?;
            let mut c = Command::new("nginx");
            c.arg("-p").arg(dir).arg("-e").arg(dir.join("nginx.err"));
            c.arg("-c").arg(&config).stdout(Stdio::null());
            c
        }
    };
    let name = via
        .name()
        .split_whitespace()
        .next()
        .unwrap_or("peer")
        .to_owned()
        + match via {
            Via::Userspace => "-userspace",
            Via::Splice => "-splice",
            _ => "",
        };
    let child = cmd
        .stderr(log(&name)?)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {}", via.name()))?;
    let mut peer = Peer::spawned(addr, child, via.name(), dir)?;
    peer.diag = diag_addr;
    Ok(peer)
}

/// Waits up to 10 s until `addr` accepts a TCP connection.
fn wait_listening(addr: SocketAddr, name: &str, logs: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{name} is not listening on {addr}; see {}", logs.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
