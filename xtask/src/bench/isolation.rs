//! `cargo xtask bench --isolation-only`: does an SSH-handshake flood from one source slow
//! down another class? A probe opens `teleport-postgres` connections one after the other
//! (TCP connect, full mTLS handshake, one line echoed by the plaintext upstream) for
//! `PHASE` on an idle proxy, then again while flood clients bound to 127.0.0.2 open TLS
//! connections with ALPN `teleport-proxy-ssh` and close each right after its handshake, as
//! fast as one core of this machine lets them. The proxy's CPU share during the flood comes
//! from /proc/PID/stat, Switchyard's refusals from its `/metrics`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::time::timeout;

use super::{
    env::path,
    load, peers, quiet,
    scale::Client,
    scale_peers::{self, Upstreams},
};

/// How long each phase (idle, flood) probes.
const PHASE: Duration = Duration::from_secs(5);
/// Flood clients at once.
const FLOOD_CLIENTS: usize = 64;
/// Where the flood comes from.
const FLOOD_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Switchyard's budgets for the flooded class.
pub const SSH_BUDGET: &str = "{max_handshakes: 16, per_source: 32, rate: 300, burst: 100}";
/// The second budget row also refuses a source opening more than 1000 connections a second
/// at accept, before anything is read (`unclassified.per_source_rate`; HAProxy's row has
/// the same 1000/s per source; the probe's own ~300–700/s stay under it).
pub const UNCLASSIFIED: &str = "{per_source_rate: 1000, per_source_burst: 1000}";
/// HAProxy's closest equivalent: per-source limits on the one terminating frontend.
pub const HAPROXY_LIMITS: &str = "stick-table type ip size 100k expire 30s store \
    conn_cur,conn_rate(1s); tcp-request connection track-sc0 src; tcp-request connection \
    reject if { sc0_conn_cur gt 32 } || { sc0_conn_rate gt 1000 }";

/// Who is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Budgets,
    BudgetsWide,
    /// As `BudgetsWide`, with the eBPF front end: the per-source rate also holds the
    /// flood's SYNs back in the kernel.
    Kernel,
    Defaults,
    Haproxy,
    /// The control row: no flood at all, one core kept busy by a spinning thread of the
    /// bench instead, so the table shows what a core's worth of unrelated CPU load alone
    /// does to the probe on this machine.
    Spin,
}

pub const ALL: [Who; 6] = [
    Who::Budgets,
    Who::BudgetsWide,
    Who::Kernel,
    Who::Defaults,
    Who::Haproxy,
    Who::Spin,
];

impl Who {
    pub fn name(self) -> &'static str {
        match self {
            Who::Budgets => "switchyard, ssh budget",
            Who::BudgetsWide => "switchyard, ssh budget + per-source rate at accept",
            Who::Kernel => {
                "switchyard --ebpf require, ssh budget + per-source rate (SYNs in the kernel)"
            }
            Who::Defaults => "switchyard, default budgets",
            Who::Haproxy => "haproxy, per-source limits",
            Who::Spin => "switchyard, no flood: one core busy spinning (control)",
        }
    }
}

/// Probe latencies of one phase, µs, sorted.
pub struct Phase {
    pub us: Vec<f64>,
    pub errors: usize,
}

/// One idle phase followed by one flood phase, on the same proxy.
pub struct Round {
    pub idle: Phase,
    pub flood: Phase,
    /// CPU share of one core the proxy used during the flood phase (100 = one core).
    pub proxy_cpu: f64,
    /// Flood connections per second: handshakes completed, and refused or failed.
    pub flood_ok: f64,
    pub flood_refused: f64,
}

impl Round {
    /// p99 under flood ÷ p99 idle, within this round.
    pub fn ratio(&self) -> f64 {
        load::percentile(&self.flood.us, 0.99) / load::percentile(&self.idle.us, 0.99)
    }
}

pub struct Row {
    pub who: Who,
    /// [`ROUNDS`] rounds, idle and flood alternating, so that the VM's slow minutes fall
    /// on both phases alike.
    pub rounds: Vec<Round>,
    /// `switchyard_class_refused_total` lines after the floods (Switchyard only).
    pub refused: Vec<String>,
}

/// Idle/flood rounds per row.
pub const ROUNDS: usize = 3;

pub fn run(binary: &Path, out: &Path, pki: &Path) -> Result<Vec<Row>> {
    scale_peers::install()?;
    let logs = out.join("logs");
    let up = Upstreams::start(binary, pki, &logs)?;
    let probe_tls = load::client_config(pki, Some("alice"), Some("teleport-postgres"))?;
    let flood_tls = load::client_config(pki, Some("alice"), Some("teleport-proxy-ssh"))?;
    let probe_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for who in ALL {
        let (addr, diag, child) = start(who, &up, binary, pki, &logs)?;
        let peer = peers::Peer::spawned(addr, child, who.name(), &logs)?;
        let pids = peer.pids();
        let probe = Client::new(addr, Some(probe_tls.clone()), "postgres.bench.test")?;
        let mut flooder = Client::new(addr, Some(flood_tls.clone()), "ssh.bench.test")?;
        flooder.source = Some(FLOOD_SOURCE);
        let flooder = Arc::new(flooder);
        probe_rt.block_on(probe_for(&probe, Duration::from_millis(300)));
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            quiet::wait()?;
            let idle = probe_rt.block_on(probe_for(&probe, PHASE));
            let flood = if who == Who::Spin {
                Flood::spin()
            } else {
                Flood::start(flooder.clone())?
            };
            std::thread::sleep(Duration::from_secs(1));
            let (cpu0, t0, n0) = (quiet::cpu_seconds(&pids), Instant::now(), flood.counts());
            let during = probe_rt.block_on(probe_for(&probe, PHASE));
            let secs = t0.elapsed().as_secs_f64();
            let proxy_cpu = (quiet::cpu_seconds(&pids) - cpu0) / secs * 100.0;
            let n1 = flood.counts();
            drop(flood);
            let round = Round {
                idle,
                flood: during,
                proxy_cpu,
                flood_ok: (n1.0 - n0.0) as f64 / secs,
                flood_refused: (n1.1 - n0.1) as f64 / secs,
            };
            eprintln!(
                "xtask: isolation {}: idle p50/p99 {:.0}/{:.0} us, flood p50/p99 {:.0}/{:.0} \
                 us ({:.2}x), proxy CPU {:.0}%, flood {:.0} ok/s {:.0} refused/s",
                who.name(),
                load::percentile(&round.idle.us, 0.5),
                load::percentile(&round.idle.us, 0.99),
                load::percentile(&round.flood.us, 0.5),
                load::percentile(&round.flood.us, 0.99),
                round.ratio(),
                round.proxy_cpu,
                round.flood_ok,
                round.flood_refused
            );
            rounds.push(round);
        }
        let refused = match diag {
            Some(d) => metrics(
                d,
                &[
                    "switchyard_class_refused_total",
                    "switchyard_ebpf_syn_dropped_total",
                ],
            )?,
            None => Vec::new(),
        };
        rows.push(Row {
            who,
            rounds,
            refused,
        });
    }
    Ok(rows)
}

/// Starts the proxy: its address, its diag address (Switchyard) and the child.
fn start(
    who: Who,
    up: &Upstreams,
    binary: &Path,
    pki: &Path,
    logs: &Path,
) -> Result<(SocketAddr, Option<SocketAddr>, std::process::Child)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], peers::free_port()?));
    let log = std::fs::File::create(logs.join(format!(
        "isolation-{}.log",
        who.name().split(',').next().unwrap_or("proxy")
    )))?;
    let (mut cmd, diag) = if who == Who::Haproxy {
        let pem = pki.join("proxy.pem");
        let both = std::fs::read_to_string(pki.join("proxy.crt"))?
            + &std::fs::read_to_string(pki.join("proxy.key"))?;
        std::fs::write(&pem, both)?;
        let config = pki.join("isolation-haproxy.cfg");
        let limits: String = HAPROXY_LIMITS
            .split("; ")
            .map(|l| format!("  {l}\n"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 9900\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 60s\n  timeout server 60s\nfrontend fe\n  bind {addr} ssl \
                 crt {pem} ca-file {ca} verify required alpn teleport-proxy-ssh,teleport-postgres\n\
                 {limits}  use_backend pg if {{ ssl_fc_alpn -i teleport-postgres }}\n  \
                 default_backend ssh\nbackend ssh\n  server ssh {ssh}\n\
                 backend pg\n  server pg {ssh}\n",
                pem = path(&pem)?,
                ca = path(&pki.join("ca.crt"))?,
                ssh = up.ssh,
            ),
        )?;
        let mut c = Command::new("haproxy");
        c.arg("-db").arg("-f").arg(&config);
        (c, None)
    } else {
        let diag = SocketAddr::from(([127, 0, 0, 1], peers::free_port()?));
        let classes = match who {
            Who::Budgets => format!("{{ssh: {SSH_BUDGET}}}"),
            Who::BudgetsWide | Who::Kernel => {
                format!("{{ssh: {SSH_BUDGET}, unclassified: {UNCLASSIFIED}}}")
            }
            _ => "{}".to_owned(),
        };
        let extra = format!("diag_addr: \"{diag}\"\n");
        let yaml = scale_peers::switchyard_yaml(addr, up, "", &classes) + &extra;
        let config = pki.join("isolation-switchyard.yaml");
        std::fs::write(&config, yaml)?;
        let mut c = Command::new(binary);
        let ebpf = if who == Who::Kernel { "require" } else { "off" };
        c.args(["serve", "--ebpf", ebpf, "--config"]).arg(&config);
        c.env("SWITCHYARD_LOG", "warn");
        (c, Some(diag))
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", who.name()))?;
    Ok((addr, diag, child))
}

/// Sequential probe connections for `d`.
async fn probe_for(probe: &Client, d: Duration) -> Phase {
    let end = Instant::now() + d;
    let (mut us, mut errors) = (Vec::new(), 0);
    while Instant::now() < end {
        let start = Instant::now();
        match timeout(Duration::from_secs(5), probe.established()).await {
            Ok(Ok(_)) => us.push(start.elapsed().as_secs_f64() * 1e6),
            _ => errors += 1,
        }
    }
    us.sort_by(f64::total_cmp);
    if us.is_empty() {
        us.push(f64::NAN);
    }
    Phase { us, errors }
}

/// The flood: its own one-worker runtime, [`FLOOD_CLIENTS`] tasks until dropped (or, for
/// the control row, one thread spinning until dropped).
struct Flood {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(client: Arc<Client>) -> Result<Flood> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for _ in 0..FLOOD_CLIENTS {
            let (client, stop) = (client.clone(), stop.clone());
            let (ok, refused) = (ok.clone(), refused.clone());
            runtime.spawn(async move {
                while !stop.load(Relaxed) {
                    match timeout(Duration::from_secs(5), client.connect()).await {
                        Ok(Ok(_)) => ok.fetch_add(1, Relaxed),
                        _ => refused.fetch_add(1, Relaxed),
                    };
                }
            });
        }
        Ok(Flood {
            stop,
            ok,
            refused,
            runtime: Some(runtime),
            spinner: None,
        })
    }

    /// No connections: one thread burning a core, as the flood's runtime does.
    fn spin() -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let spinner = std::thread::spawn(move || {
            while !spinning.load(Relaxed) {
                std::hint::spin_loop();
            }
        });
        Flood {
            stop,
            ok: Arc::new(AtomicUsize::new(0)),
            refused: Arc::new(AtomicUsize::new(0)),
            runtime: None,
            spinner: Some(spinner),
        }
    }

    /// Handshakes completed, and connections refused or failed, so far.
    fn counts(&self) -> (usize, usize) {
        (self.ok.load(Relaxed), self.refused.load(Relaxed))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        if let Some(spinner) = self.spinner.take() {
            let _ = spinner.join();
        }
    }
}

/// The lines of `diag`'s `/metrics` that start with `name`.
pub(super) fn metrics(diag: SocketAddr, names: &[&str]) -> Result<Vec<String>> {
    let mut s = TcpStream::connect(diag).context("diag_addr")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| names.iter().any(|n| l.starts_with(n)))
        .map(str::to_owned)
        .collect())
}
