//! The processes of the tunnel rows (`tunnel.rs`): one `switchyard serve` on a fixed
//! loopback port (so that it can crash and come back where the agents dial) and two
//! `switchyard agent`s, each with an agent certificate of its own from the bench PKI.
//! Every process is killed when [`Servers`] drops, also on error. The agents log at
//! `info`, and a thread per agent reads its stderr as it comes, appends it to
//! `logs/tunnel-agent-NAME.log` (the proxy's goes to `logs/tunnel-proxy.log`), and
//! timestamps its `tunnel up`, `tunnel lost` and `tunnel failed` lines.

use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{env, tunnel::Via};

/// How long a proxy may take to print its ready line, and agents to bring tunnels up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an agent may take to come back after a restart (its backoff tops out at 8 s).
const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one proxy restart took.
pub struct Restart {
    /// From the new proxy's ready line to the agent's `tunnel up`.
    pub ready_to_up: f64,
    /// From the SIGKILL to the agent's `tunnel up`.
    pub kill_to_up: f64,
    /// From the SIGKILL to the agent's `tunnel lost`.
    pub kill_to_lost: Option<f64>,
    /// From the SIGKILL to the new proxy's ready line.
    pub kill_to_ready: f64,
    /// Dials that failed before the one that came up.
    pub failed_dials: usize,
}

/// A `switchyard serve`.
struct Proxy {
    child: Child,
    diag: SocketAddr,
    ready_at: Instant,
}

impl Proxy {
    /// Starts `serve --config CONFIG` with stderr appended to `log`, and waits for its
    /// ready line (the moment it was read is `ready_at`).
    fn start(binary: &Path, config: &Path, log: &Path) -> Result<Proxy> {
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut child = Command::new(binary)
            .args(["serve", "--config", env::path(config)?])
            .env("SWITCHYARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {} serve", binary.display()))?;
        let stdout = child.stdout.take().context("proxy stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send((line, Instant::now()));
            }
            lines.for_each(drop);
        });
        let (line, ready_at) = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(r) => r,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the tunnel proxy printed no ready line; see {}",
                    log.display()
                );
            }
        };
        let diag = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("diag="))
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no diag= address in {line:?}"))?;
        Ok(Proxy {
            child,
            diag,
            ready_at,
        })
    }

    /// SIGKILL: a crash, no drain notice.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an agent's log said, and when the bench read it.
enum Event {
    Up(Instant),
    Lost(Instant),
    Failed,
}

/// A `switchyard agent`.
pub(crate) struct Agent {
    child: Child,
    events: mpsc::Receiver<Event>,
    log: PathBuf,
}

impl Agent {
    /// Starts `agent --proxy localhost:PORT --identity IDENTITY --tunnels N --tcp …`.
    pub(crate) fn start(
        binary: &Path,
        port: u16,
        identity: &Path,
        tunnels: u32,
        services: &[(String, SocketAddr)],
        log: PathBuf,
    ) -> Result<Agent> {
        let mut cmd = Command::new(binary);
        cmd.arg("agent")
            .arg(format!("--proxy=localhost:{port}"))
            .arg(format!("--identity={}", env::path(identity)?))
            .arg(format!("--tunnels={tunnels}"));
        for (name, addr) in services {
            cmd.arg(format!("--tcp={name}={addr}"));
        }
        let mut child = cmd
            .env("SWITCHYARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {} agent", binary.display()))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                let event = if line.contains("tunnel up") {
                    Some(Event::Up(now))
                } else if line.contains("tunnel lost") {
                    Some(Event::Lost(now))
                } else if line.contains("tunnel failed") {
                    Some(Event::Failed)
                } else {
                    None
                };
                if let Some(e) = event {
                    let _ = tx.send(e);
                }
                let _ = writeln!(file, "{line}");
            }
        });
        Ok(Agent { child, events, log })
    }

    /// Waits for `n` `tunnel up` lines.
    pub(crate) fn wait_up(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut up = 0;
        while up < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Up(_)) => up += 1,
                Ok(_) => {}
                Err(_) => bail!(
                    "the agent logged {up} of {n} `tunnel up` lines within {READY_TIMEOUT:?}; see {}",
                    self.log.display()
                ),
            }
        }
        Ok(())
    }

    /// Forgets what the log said so far.
    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy and its agents.
pub struct Servers {
    binary: PathBuf,
    pki: PathBuf,
    logs: PathBuf,
    config: PathBuf,
    port: u16,
    sink: SocketAddr,
    echo: SocketAddr,
    proxy: Option<Proxy>,
    agent1: Option<Agent>,
    agent2: Option<Agent>,
}

impl Servers {
    /// Issues the agent certificates `edge1` and `edge2` into `pki`, writes
    /// `pki/switchyard-tunnel.yaml`, starts the proxy and both agents and waits for their
    /// tunnels.
    pub fn start(
        binary: &Path,
        out: &Path,
        pki: &Path,
        sink: SocketAddr,
        echo: SocketAddr,
    ) -> Result<Servers> {
        let dir = env::path(pki)?;
        for name in ["edge1", "edge2"] {
            let status = Command::new(binary)
                .args(["ca", "issue", "--dir", dir, "--name", name, "--agent"])
                .stdout(Stdio::null())
                .status()
                .context("switchyard ca issue")?;
            if !status.success() {
                bail!("switchyard ca issue --name {name} --agent failed: {status}");
            }
        }
        let port = fixed_port()?;
        let config = pki.join("switchyard-tunnel.yaml");
        let route = |via: Via, app: &str, to: SocketAddr| {
            let label = via.label(app);
            format!(
                "  - {{name: {label}, sni: {label}.bench.test, alpn: {alpn}, mode: terminate, \
                 upstream: \"{to}\"}}\n",
                alpn = super::tunnel::TCP_ALPN
            )
        };
        let yaml = format!(
            "version: v2\n\
             auth_service: {{cluster_name: bench}}\n\
             proxy_service:\n  web_listen_addr: 127.0.0.1:{port}\n  \
             https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
             client_ca_file: ca.crt\n\
             diag_addr: 127.0.0.1:0\n\
             routes:\n{}{}\
             tunnel:\n  proxy_id: bench\n  agents:\n    \
             - {{identity: switchyard-agent, serve: [\"tcp:*\"], allow: []}}\n\
             limits: {{max_connections: 10000}}\n",
            route(Via::Direct, "sink", sink),
            route(Via::Direct, "echo", echo),
        );
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        let logs = out.join("logs");
        // Appended across restarts: start each run with empty ones.
        for name in ["proxy", "agent-edge1", "agent-edge2"] {
            let _ = std::fs::remove_file(logs.join(format!("tunnel-{name}.log")));
        }
        let mut servers = Servers {
            binary: binary.to_path_buf(),
            pki: pki.to_path_buf(),
            logs,
            config,
            port,
            sink,
            echo,
            proxy: None,
            agent1: None,
            agent2: None,
        };
        servers.proxy = Some(servers.start_proxy()?);
        servers.agent1 = Some(servers.start_agent(Via::Tunnel1)?);
        servers.agent2 = Some(servers.start_agent(Via::Tunnel2)?);
        Ok(servers)
    }

    fn start_proxy(&self) -> Result<Proxy> {
        Proxy::start(
            &self.binary,
            &self.config,
            &self.logs.join("tunnel-proxy.log"),
        )
    }

    /// Agent `edge1` (one tunnel, apps `sink1`, `echo1`) or `edge2` (two, `sink2`,
    /// `echo2`), once its tunnels are up.
    fn start_agent(&self, via: Via) -> Result<Agent> {
        let (name, tunnels) = match via {
            Via::Tunnel2 => ("edge2", 2),
            _ => ("edge1", 1),
        };
        let services = [
            (via.label("sink"), self.sink),
            (via.label("echo"), self.echo),
        ];
        let agent = Agent::start(
            &self.binary,
            self.port,
            &self.pki.join(name),
            tunnels,
            &services,
            self.logs.join(format!("tunnel-agent-{name}.log")),
        )?;
        agent.wait_up(tunnels as usize)?;
        Ok(agent)
    }

    /// Where clients connect.
    pub fn proxy_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.as_ref().map_or(0, |p| p.child.id())
    }

    pub fn agent1_pid(&self) -> u32 {
        self.agent1.as_ref().map_or(0, |a| a.child.id())
    }

    /// Every process of ours, for the foreign-CPU check: this one (0: client, sink,
    /// echo), the proxy and the agents.
    pub fn pids(&self) -> Vec<u32> {
        let agents = [&self.agent1, &self.agent2];
        let agents = agents
            .iter()
            .filter_map(|a| a.as_ref().map(|a| a.child.id()));
        [0, self.proxy_pid()].into_iter().chain(agents).collect()
    }

    /// The proxy, and the agent that carries `via` (none for direct).
    pub fn cpu_pids(&self, via: Via) -> (u32, Option<u32>) {
        let agent = match via {
            Via::Direct => None,
            Via::Tunnel1 => self.agent1.as_ref(),
            Via::Tunnel2 => self.agent2.as_ref(),
        };
        (self.proxy_pid(), agent.map(|a| a.child.id()))
    }

    pub fn stop_agent2(&mut self) {
        self.agent2 = None;
    }

    /// SIGKILL to the proxy, the same configuration started again at once, and the wait
    /// for agent `edge1` to be back.
    pub fn crash_and_restart(&mut self) -> Result<Restart> {
        let agent = self.agent1.as_ref().context("agent edge1 is not running")?;
        agent.drain();
        let killed = Instant::now();
        if let Some(p) = self.proxy.take() {
            p.kill();
        }
        let proxy = self.start_proxy()?;
        let ready_at = proxy.ready_at;
        self.proxy = Some(proxy);
        let (mut lost, mut failed_dials) = (None, 0);
        let deadline = Instant::now() + UP_TIMEOUT;
        let up = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match agent.events.recv_timeout(left) {
                Ok(Event::Up(at)) => break at,
                Ok(Event::Lost(at)) => lost = Some(at),
                Ok(Event::Failed) => failed_dials += 1,
                Err(_) => bail!(
                    "agent edge1 was not back within {UP_TIMEOUT:?} of the restart; see {}",
                    agent.log.display()
                ),
            }
        };
        let secs = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
        Ok(Restart {
            ready_to_up: secs(ready_at, up),
            kill_to_up: secs(killed, up),
            kill_to_lost: lost.map(|at| secs(killed, at)),
            kill_to_ready: secs(killed, ready_at),
            failed_dials,
        })
    }

    /// A new proxy and a new agent `edge1`, neither having served anything yet.
    pub fn fresh_proxy_and_agent1(&mut self) -> Result<()> {
        self.agent1 = None;
        if let Some(p) = self.proxy.take() {
            p.kill();
        }
        self.proxy = Some(self.start_proxy()?);
        self.agent1 = Some(self.start_agent(Via::Tunnel1)?);
        Ok(())
    }

    /// Streams open on all tunnels, from the proxy's `/agents`.
    pub fn agent_streams(&self) -> Result<u64> {
        let diag = self.proxy.as_ref().context("no proxy")?.diag;
        let mut s = TcpStream::connect(diag).with_context(|| format!("connect {diag}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /agents HTTP/1.1\r\nHost: {diag}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("no body in the /agents answer")?;
        let doc: serde_json::Value = serde_json::from_str(body.trim())
            .with_context(|| format!("/agents answered {body:?}"))?;
        let streams = doc["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["tunnels"].as_array().into_iter().flatten())
            .filter_map(|t| t["streams"].as_u64())
            .sum();
        Ok(streams)
    }
}

impl Drop for Servers {
    /// Agents first, so none of them is left redialing a proxy that is gone.
    fn drop(&mut self) {
        self.agent1 = None;
        self.agent2 = None;
        self.proxy = None;
    }
}

/// Resident set size of `pid`, kB (`VmRSS` of /proc/PID/status).
pub fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// A free loopback port below the kernel's ephemeral range, for the proxy to keep across
/// its restarts: a port from that range could be taken in the moment between a kill and
/// the restart by any process's outgoing connection or port-0 listener.
fn fixed_port() -> Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, span) = (
        low.saturating_sub(12000).max(1024),
        low.saturating_sub(1024).min(12000),
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id() ^ nanos);
    for i in 0..200u64 {
        let port = from + ((seed + i * 7919) % span.max(1) as u64) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {from}..{}", from + span)
}
