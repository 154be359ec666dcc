//! `cargo xtask bench --scale-only`: proxy memory per idle connection. For each route
//! (legacy plaintext, TLS passthrough, terminated), proxy (`scale_peers::Via`) and count N,
//! a fresh proxy is started, its RSS read once it settles, N connections opened 64 at a
//! time (each fully established: the upstream's greeting and one echoed line read through
//! it) and held, the RSS read again once it settles; (open − before) / N is the row.
//! The upstreams are child processes and the client sockets the only ones this process
//! holds, so that no process needs more than the machine's hard open-file limit allows.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustls::{pki_types::ServerName, ClientConfig};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
    time::timeout,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::{
    load,
    scale_peers::{self, Upstreams, Via},
    tunnel_servers::rss_kb,
};

/// Connections being opened at once.
const CONCURRENCY: usize = 64;
/// What the client writes; the upstream echoes it (the plaintext route's SSH banner).
const PAYLOAD: &[u8] = b"SSH-2.0-bench\r\n";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Plaintext,
    Passthrough,
    Terminated,
}

pub const ROUTES: [Route; 3] = [Route::Plaintext, Route::Passthrough, Route::Terminated];

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Plaintext => "legacy plaintext",
            Route::Passthrough => "TLS passthrough",
            Route::Terminated => "terminated (mTLS)",
        }
    }
}

/// One row: a route through a proxy at N connections.
pub struct Row {
    pub route: Route,
    pub via: Via,
    pub n: usize,
    pub before_kb: u64,
    pub open_kb: u64,
    pub open_secs: f64,
}

impl Row {
    pub fn per_conn_kb(&self) -> f64 {
        self.open_kb.saturating_sub(self.before_kb) as f64 / self.n as f64
    }
}

/// What the run found besides the rows.
pub struct Results {
    pub rows: Vec<Row>,
    /// Proxies that could not start (kernel splice without eBPF), with the reason.
    pub skipped: Vec<(Via, String)>,
    /// The hard RLIMIT_NOFILE of this process, as /proc/self/limits says.
    pub nofile_hard: String,
}

pub fn run(binary: &Path, out: &Path, pki: &Path, counts: &[usize]) -> Result<Results> {
    scale_peers::install()?;
    let logs = out.join("logs");
    let up = Upstreams::start(binary, pki, &logs)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the scale client")?;
    let plain = None;
    let pass = Some(load::client_config(pki, None, None)?);
    let term = Some(load::client_config(
        pki,
        Some("alice"),
        Some("teleport-proxy-ssh"),
    )?);
    let mut results = Results {
        rows: Vec::new(),
        skipped: Vec::new(),
        nofile_hard: nofile_hard(),
    };
    for route in ROUTES {
        let (tls, sni) = match route {
            Route::Plaintext => (&plain, ""),
            Route::Passthrough => (&pass, "kube-teleport-proxy-alpn.bench.test"),
            Route::Terminated => (&term, "ssh.bench.test"),
        };
        for via in scale_peers::ALL {
            if results.skipped.iter().any(|(v, _)| *v == via) {
                continue;
            }
            for &n in counts {
                let proxy = match scale_peers::start(via, &up, binary, pki, &logs) {
                    Ok(p) => p,
                    Err(e) if via == Via::KernelSplice => {
                        eprintln!("xtask: scale: no kernel splice: {e:#}");
                        results.skipped.push((via, format!("{e:#}")));
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let addr = match route {
                    Route::Plaintext => proxy.plain,
                    Route::Passthrough => proxy.passthrough,
                    Route::Terminated => proxy.terminated,
                };
                // No quiet::wait(): RSS does not depend on what else runs, and a shared
                // machine's builds would hold every row for minutes.
                let pids = proxy.peer.pids();
                let before_kb = settled_rss(&pids)?;
                let client = Client::new(addr, tls.clone(), sni)?;
                let started = Instant::now();
                let held = runtime.block_on(client.open(n))?;
                let open_secs = started.elapsed().as_secs_f64();
                let open_kb = settled_rss(&proxy.peer.pids())?;
                drop(held);
                let row = Row {
                    route,
                    via,
                    n,
                    before_kb,
                    open_kb,
                    open_secs,
                };
                eprintln!(
                    "xtask: scale {} {} N={n}: {:.1} KB per connection ({before_kb} → \
                     {open_kb} kB, opened in {open_secs:.1} s)",
                    route.name(),
                    via.name(),
                    row.per_conn_kb()
                );
                results.rows.push(row);
                drop(proxy);
            }
        }
    }
    Ok(results)
}

/// The `Max open files` line of /proc/self/limits: its hard column.
pub fn nofile_hard() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_owned();
            Some(line.split_whitespace().nth(4)?.to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Sum of `VmRSS` of `pids`, once two reads 1 s apart are within 1% (at most 20 s).
fn settled_rss(pids: &[u32]) -> Result<u64> {
    let read = || -> Result<u64> { pids.iter().map(|&p| rss_kb(p)).sum() };
    let mut last = read()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        let now = read()?;
        if now.abs_diff(last) as f64 <= 0.01 * last as f64 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// A connection held open.
pub enum Held {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// How to open one established connection.
pub struct Client {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Source address to bind to (the isolation flood's 127.0.0.2), if any.
    pub source: Option<std::net::IpAddr>,
}

impl Client {
    pub fn new(addr: SocketAddr, tls: Option<Arc<ClientConfig>>, sni: &str) -> Result<Client> {
        let tls = match tls {
            Some(config) => Some((
                TlsConnector::from(config),
                ServerName::try_from(sni.to_owned())?,
            )),
            None => None,
        };
        Ok(Client {
            addr,
            tls,
            source: None,
        })
    }

    /// TCP connect (from `source` when set), the TLS handshake when TLS.
    pub async fn connect(&self) -> Result<Held> {
        let tcp = match self.source {
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(self.addr).await?
            }
            None => TcpStream::connect(self.addr).await?,
        };
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            Some((connector, name)) => {
                Held::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
            }
            None => Held::Plain(tcp),
        })
    }

    /// Connects, writes [`PAYLOAD`] and reads until its echo came back (after the greeting).
    pub async fn established(&self) -> Result<Held> {
        let mut held = self.connect().await?;
        match &mut held {
            Held::Plain(s) => echo(s).await?,
            Held::Tls(s) => echo(s.as_mut()).await?,
        }
        Ok(held)
    }

    /// Opens `n` established connections, [`CONCURRENCY`] at a time.
    async fn open(self, n: usize) -> Result<Vec<Held>> {
        let me = Arc::new(self);
        let (mut held, mut tasks, mut started) = (Vec::with_capacity(n), JoinSet::new(), 0);
        while held.len() < n {
            while started < n && tasks.len() < CONCURRENCY {
                let me = me.clone();
                tasks.spawn(async move {
                    timeout(Duration::from_secs(10), me.established())
                        .await
                        .context("timed out")?
                });
                started += 1;
            }
            let Some(done) = tasks.join_next().await else {
                bail!("no task left with {} of {n} open", held.len());
            };
            let conn = done?
                .with_context(|| format!("connection {} of {n} to {}", held.len() + 1, me.addr))?;
            held.push(conn);
        }
        Ok(held)
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<()> {
    s.write_all(PAYLOAD).await?;
    s.flush().await?;
    let mut got = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !got.ends_with(PAYLOAD) {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("closed after {:?}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}
