//! Reverse tunnels (`cargo xtask bench --tunnel-only`, and part of the full run): one
//! `switchyard serve` with a `tunnel:` section and two `routes:` entries, and `switchyard
//! agent` processes dialing out to it, all in front of the same two upstreams in the bench
//! process: a sink that counts what it receives and an echo. Every client is the bench's
//! own rustls client (TLS 1.3, ALPN `teleport-tcp`, client certificate `alice`, no
//! resumption), and every comparison is the same data to the same upstream over the same
//! proxy, once through an agent's tunnel (SNI `sink1.bench.test`: the agent's TCP app
//! `sink1`) and once over a terminated route (SNI `sinkd.bench.test`, `mode: terminate`,
//! upstream the sink itself): the tunnel's cost is the difference.
//!
//! What it measures, in this order (`tunnel_servers.rs` starts and restarts the processes):
//!
//! 1. Throughput of 1 and `--streams` parallel streams, tunnel against direct, with the
//!    proxy's, the agent's and the machine's CPU seconds per GB. The agent `edge1` keeps
//!    one tunnel (`--tunnels 1`: every stream in one yamux session), `edge2` the default
//!    two (the parallel streams spread over both).
//! 2. Connect latency: time from `connect()` to the first echoed byte of a new connection
//!    (TCP, full mTLS handshake, 1 byte written, 1 byte read back), sequential.
//! 3. Reconnect time after a proxy crash: SIGKILL, the same configuration started again on
//!    the same port, time from its ready line to the agent's next `tunnel up` line (and
//!    from the kill). The agent resets its backoff when a tunnel that was up is lost, so
//!    each one is its first retry: 1 s ± 25 %.
//! 4. Memory per idle stream: RSS of the proxy and of the agent before and after opening
//!    `--tunnel-idle` connections that each echoed one byte and then stay open, against
//!    the proxy's RSS for as many over the direct route. Each pass starts on a fresh proxy
//!    (and, for the tunnel, a fresh agent), so the allocator holds nothing from before.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, StreamOwned};
use tokio::runtime::Runtime;

use super::{
    load::{self, percentile},
    quiet::{self, Sample},
    tunnel_report,
    tunnel_servers::{rss_kb, Restart, Servers},
    ATTEMPTS,
};

/// The ALPN of TCP apps, tunnelled or routed.
pub const TCP_ALPN: &str = "teleport-tcp";
/// Size of each write of the throughput streams, and of the sink's reads.
const CHUNK: usize = 256 * 1024;
/// Warm-up per via and stream count before the measured runs.
const WARMUP: Duration = Duration::from_millis(500);
/// A socket read or write that takes longer than this fails the run.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy and the agent get to settle before and after the idle streams.
const SETTLE: Duration = Duration::from_secs(1);

/// The load of the tunnel rows.
pub struct Settings {
    pub seconds: f64,
    pub runs: usize,
    /// Parallel streams of the parallel throughput rows.
    pub streams: usize,
    /// Sequential new connections per run and via of the latency rows.
    pub connections: usize,
    /// Idle streams held open for the memory rows.
    pub idle: usize,
    /// Proxy restarts of the reconnect rows.
    pub restarts: usize,
}

/// The Markdown block for docs/benchmarks.md (the JSON went to `target/bench/tunnel.json`).
pub struct Outcome {
    pub markdown: String,
}

/// Who carries the client's bytes to the upstream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// The terminated `routes:` entry of the same proxy, straight to the upstream.
    Direct,
    /// Agent `edge1`, one tunnel.
    Tunnel1,
    /// Agent `edge2`, two tunnels (the agent's default).
    Tunnel2,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct (terminated route)",
            Via::Tunnel1 => "tunnel, 1 per agent",
            Via::Tunnel2 => "tunnel, 2 per agent",
        }
    }

    /// The first label of the SNI for `app` (`sink` or `echo`).
    pub fn label(self, app: &str) -> String {
        match self {
            Via::Direct => format!("{app}d"),
            Via::Tunnel1 => format!("{app}1"),
            Via::Tunnel2 => format!("{app}2"),
        }
    }
}

/// Where the client connects and under which name.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

impl Target {
    pub fn new(addr: SocketAddr, via: Via, app: &str, tls: Arc<ClientConfig>) -> Result<Target> {
        Ok(Target {
            addr,
            name: ServerName::try_from(format!("{}.bench.test", via.label(app)))?,
            tls,
        })
    }

    /// TCP connect and the TLS handshake.
    fn connect(&self) -> Result<Tls> {
        let tcp =
            TcpStream::connect(self.addr).with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let conn = ClientConnection::new(self.tls.clone(), self.name.clone())?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .with_context(|| format!("TLS handshake with {:?}", self.name))?;
        }
        Ok(tls)
    }

    /// A new connection that has echoed one byte: the latency rows time this, the memory
    /// rows keep it open.
    pub fn echoed(&self) -> Result<Tls> {
        let mut tls = self.connect()?;
        tls.write_all(b"x")?;
        tls.flush()?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
            .with_context(|| format!("reading the echo through {:?}", self.name))?;
        if b != *b"x" {
            bail!("the echo through {:?} answered {b:?}", self.name);
        }
        Ok(tls)
    }
}

/// close_notify, FIN, close.
fn close(mut tls: Tls) {
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let _ = tls.sock.shutdown(Shutdown::Both);
}

/// The bulk upstream: reads every connection to EOF and adds what it read to one counter.
pub struct Sink {
    pub addr: SocketAddr,
    total: Arc<AtomicU64>,
}

impl Sink {
    pub fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let total = Arc::new(AtomicU64::new(0));
        let counter = total.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                thread::spawn(move || {
                    let mut s = stream;
                    let mut buf = vec![0u8; CHUNK];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Sink { addr, total })
    }

    /// A sink at `addr` served by someone else (`terminated.rs`'s TLS sink), who adds what
    /// it reads to [`Sink::counter`].
    pub fn counting(addr: SocketAddr) -> Sink {
        Sink {
            addr,
            total: Arc::default(),
        }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.total.clone()
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The echo upstream, on its own two-worker runtime (like a separate process would be):
/// echoes every connection until EOF; holds a thousand idle ones without a thread each.
pub struct Echo {
    pub addr: SocketAddr,
    _runtime: Runtime,
}

impl Echo {
    pub fn start() -> Result<Echo> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-echo")
            .enable_all()
            .build()
            .context("starting the echo runtime")?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(Echo {
            addr,
            _runtime: runtime,
        })
    }
}

/// One throughput run.
#[derive(Clone, Copy)]
pub struct Run {
    pub gbit_per_s: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub proxy_cpu_per_gb: f64,
    /// NaN for direct.
    pub agent_cpu_per_gb: f64,
    pub machine_cpu_per_gb: f64,
    /// Share of all CPUs that processes other than the bench's used during the run.
    pub foreign_cpu: f64,
}

/// The runs of one via under one stream count.
pub struct Row {
    pub streams: usize,
    pub via: Via,
    pub runs: Vec<Run>,
}

/// `streams` streams through `target` for `duration`: each writes for the duration, and
/// the run ends when the sink has counted every byte written. The proxy's CPU is that of
/// `proxy` (its processes), the agent's that of `agent`.
pub(super) fn throughput(
    target: &Target,
    sink: &Sink,
    streams: usize,
    duration: Duration,
    proxy: &[u32],
    agent: Option<u32>,
) -> Result<Run> {
    let cpu_of = |pid: Option<u32>| pid.map_or(0.0, |p| quiet::cpu_seconds(&[p]));
    let before = (Sample::take(&[]), quiet::cpu_seconds(proxy), cpu_of(agent));
    let base = sink.total();
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let target = target.clone();
            thread::spawn(move || -> Result<(u64, Tls)> {
                let mut tls = target.connect()?;
                let chunk = vec![0x5au8; CHUNK];
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    tls.write_all(&chunk)?;
                    sent += CHUNK as u64;
                }
                tls.flush()?;
                Ok((sent, tls))
            })
        })
        .collect();
    let mut sent = 0;
    let mut open = Vec::new();
    for h in handles {
        let (n, tls) = h
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
        sent += n;
        open.push(tls);
    }
    let wait = Instant::now() + Duration::from_secs(30);
    while sink.total() - base < sent {
        if Instant::now() > wait {
            bail!(
                "the sink counted {} of {sent} bytes within 30 s",
                sink.total() - base
            );
        }
        thread::sleep(Duration::from_micros(500));
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = (Sample::take(&[]), quiet::cpu_seconds(proxy), cpu_of(agent));
    open.into_iter().for_each(close);
    let gb = sent as f64 / 1e9;
    Ok(Run {
        gbit_per_s: sent as f64 * 8.0 / seconds / 1e9,
        bytes: sent,
        seconds,
        proxy_cpu_per_gb: (after.1 - before.1) / gb,
        agent_cpu_per_gb: agent.map_or(f64::NAN, |_| (after.2 - before.2) / gb),
        machine_cpu_per_gb: after.0.cpu_seconds_since(&before.0).0 / gb,
        foreign_cpu: 0.0,
    })
}

/// Runs `f`, redone (up to `ATTEMPTS` times) when processes other than `pids` used more
/// than `quiet::FOREIGN` of the CPUs during it; returns its value and that share.
pub(super) fn quietly<T>(
    pids: &[u32],
    what: &str,
    mut f: impl FnMut() -> Result<T>,
) -> Result<(T, f64)> {
    for attempt in 1..=ATTEMPTS {
        quiet::wait()?;
        let before = Sample::take(pids);
        let value = f()?;
        let foreign = Sample::take(pids).foreign_since(&before);
        if foreign <= quiet::FOREIGN || attempt == ATTEMPTS {
            return Ok((value, foreign));
        }
        eprintln!(
            "xtask: other processes used {:.0}% of the CPUs during {what}; redoing it",
            foreign * 100.0
        );
    }
    unreachable!("the last attempt returns")
}

/// Connect latencies of one via: per run, µs, sorted.
pub struct Latencies {
    pub via: Via,
    pub runs: Vec<Vec<f64>>,
    pub errors: usize,
}

/// One pass of the memory rows.
pub struct Idle {
    pub via: Via,
    pub streams: usize,
    /// Streams on all tunnels according to the proxy's `/agents`, with the N open.
    pub agents_counted: u64,
    /// (before, with the streams open, after they closed), kB.
    pub proxy_kb: (u64, u64, u64),
    pub agent_kb: Option<(u64, u64, u64)>,
    pub seconds_to_open: f64,
}

/// Everything the tunnel rows measured.
pub struct Results {
    pub rows: Vec<Row>,
    pub latencies: Vec<Latencies>,
    pub restarts: Vec<Restart>,
    pub idle: Vec<Idle>,
}

/// Measures everything and returns the block for docs/benchmarks.md; writes
/// `out/tunnel.json`. `measured` says when and on what.
pub fn run(
    binary: &Path,
    out: &Path,
    pki: &Path,
    settings: &Settings,
    measured: &str,
) -> Result<Outcome> {
    let started = Instant::now();
    let sink = Sink::start()?;
    let echo = Echo::start()?;
    let mut servers = Servers::start(binary, out, pki, sink.addr, echo.addr)?;
    let client = Client {
        addr: servers.proxy_addr(),
        tls: load::client_config(pki, Some("alice"), Some(TCP_ALPN))?,
    };
    for via in [Via::Direct, Via::Tunnel1, Via::Tunnel2] {
        close(
            client
                .target(via, "echo")?
                .echoed()
                .with_context(|| format!("first echo via {}", via.name()))?,
        );
    }
    let rows = throughput_rows(&servers, &client, &sink, settings)?;
    let latencies = latency_rows(&servers, &client, settings)?;
    // Only edge1 stays for the rest.
    servers.stop_agent2();
    let restarts = reconnect_rows(&mut servers, &client, settings)?;
    let idle = idle_rows(&mut servers, &client, settings)?;
    drop(servers);
    eprintln!(
        "xtask: tunnel rows measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let results = Results {
        rows,
        latencies,
        restarts,
        idle,
    };
    let json_path = out.join("tunnel.json");
    let doc = tunnel_report::json(measured, &results);
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", json_path.display()))?;
    eprintln!("xtask: wrote {}", json_path.display());
    Ok(Outcome {
        markdown: tunnel_report::markdown(measured, settings, &results),
    })
}

/// The bench's client: the proxy's address and the TLS it speaks.
struct Client {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
}

impl Client {
    /// The app `app` (`sink` or `echo`) through `via`.
    fn target(&self, via: Via, app: &str) -> Result<Target> {
        Target::new(self.addr, via, app, self.tls.clone())
    }
}

/// 1. Throughput: 1 stream direct and through edge1's tunnel, then `--streams` direct and
///    through edge1 (one tunnel) and edge2 (two); runs interleaved.
fn throughput_rows(
    servers: &Servers,
    client: &Client,
    sink: &Sink,
    settings: &Settings,
) -> Result<Vec<Row>> {
    let duration = Duration::from_secs_f64(settings.seconds);
    let mut rows = Vec::new();
    for (n, vias) in [
        (1, &[Via::Direct, Via::Tunnel1][..]),
        (
            settings.streams,
            &[Via::Direct, Via::Tunnel1, Via::Tunnel2][..],
        ),
    ] {
        let targets = vias
            .iter()
            .map(|&via| Ok((via, client.target(via, "sink")?)))
            .collect::<Result<Vec<_>>>()?;
        let mut row: Vec<Row> = vias
            .iter()
            .map(|&via| Row {
                streams: n,
                via,
                runs: Vec::new(),
            })
            .collect();
        for (via, t) in &targets {
            quiet::wait()?;
            let (proxy, agent) = servers.cpu_pids(*via);
            throughput(t, sink, n, WARMUP, &[proxy], agent)
                .with_context(|| format!("warm-up of {} ×{n}", via.name()))?;
        }
        for i in 1..=settings.runs {
            for ((via, t), r) in targets.iter().zip(&mut row) {
                let what = format!("tunnel throughput ×{n} {}", via.name());
                let (proxy, agent) = servers.cpu_pids(*via);
                let (m, foreign) = quietly(&servers.pids(), &what, || {
                    throughput(t, sink, n, duration, &[proxy], agent).with_context(|| what.clone())
                })?;
                eprintln!(
                    "xtask: {what} run {i}/{}: {:.2} Gbit/s, proxy {:.2} agent {:.2} machine {:.2} CPU s/GB",
                    settings.runs,
                    m.gbit_per_s,
                    m.proxy_cpu_per_gb,
                    m.agent_cpu_per_gb,
                    m.machine_cpu_per_gb
                );
                r.runs.push(Run {
                    foreign_cpu: foreign,
                    ..m
                });
            }
        }
        rows.extend(row);
    }
    Ok(rows)
}

/// 2. Connect latency: `--tunnel-connections` sequential new connections per run, direct
///    and through edge1, after an unreported warm-up.
fn latency_rows(servers: &Servers, client: &Client, settings: &Settings) -> Result<Vec<Latencies>> {
    let mut latencies: Vec<Latencies> = [Via::Direct, Via::Tunnel1]
        .into_iter()
        .map(|via| Latencies {
            via,
            runs: Vec::new(),
            errors: 0,
        })
        .collect();
    for l in &latencies {
        let t = client.target(l.via, "echo")?;
        for _ in 0..settings.connections.min(50) {
            close(t.echoed()?);
        }
    }
    for i in 1..=settings.runs {
        for l in &mut latencies {
            let t = client.target(l.via, "echo")?;
            let what = format!("tunnel connect latency {}", l.via.name());
            let ((us, errors), _) = quietly(&servers.pids(), &what, || {
                let (mut us, mut errors) = (Vec::new(), 0);
                for _ in 0..settings.connections {
                    let start = Instant::now();
                    match t.echoed() {
                        Ok(tls) => {
                            us.push(start.elapsed().as_secs_f64() * 1e6);
                            close(tls);
                        }
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("xtask: {what}: {e:#}");
                            }
                            errors += 1;
                        }
                    }
                }
                us.sort_by(f64::total_cmp);
                Ok((us, errors))
            })?;
            if us.is_empty() {
                bail!("{what}: no connection succeeded");
            }
            eprintln!(
                "xtask: {what} run {i}/{}: p50 {:.0} us, p99 {:.0} us, {errors} errors",
                settings.runs,
                percentile(&us, 0.5),
                percentile(&us, 0.99)
            );
            l.runs.push(us);
            l.errors += errors;
        }
    }
    Ok(latencies)
}

/// 3. Reconnect: `--tunnel-restarts` proxy crashes, each followed by an echo through
///    edge1's new tunnel.
fn reconnect_rows(
    servers: &mut Servers,
    client: &Client,
    settings: &Settings,
) -> Result<Vec<Restart>> {
    let echo1 = client.target(Via::Tunnel1, "echo")?;
    let mut restarts = Vec::new();
    for i in 1..=settings.restarts {
        let r = servers.crash_and_restart()?;
        close(echo1.echoed().context("an echo after the restart")?);
        eprintln!(
            "xtask: tunnel reconnect {i}/{}: ready → tunnel up {:.0} ms, kill → up {:.0} ms ({} failed dials)",
            settings.restarts,
            r.ready_to_up * 1e3,
            r.kill_to_up * 1e3,
            r.failed_dials
        );
        restarts.push(r);
    }
    Ok(restarts)
}

/// 4. Memory: `--tunnel-idle` idle connections over the direct route (fresh proxy), then
///    through edge1 (fresh proxy and agent).
fn idle_rows(servers: &mut Servers, client: &Client, settings: &Settings) -> Result<Vec<Idle>> {
    let mut idle = Vec::new();
    for via in [Via::Direct, Via::Tunnel1] {
        if via == Via::Direct {
            servers.crash_and_restart()?;
        } else {
            servers.fresh_proxy_and_agent1()?;
        }
        let t = client.target(via, "echo")?;
        let agent = (via != Via::Direct).then(|| servers.agent1_pid());
        let proxy = servers.proxy_pid();
        thread::sleep(SETTLE);
        let rss = |pid: u32| rss_kb(pid).with_context(|| format!("RSS of {pid}"));
        let before = (rss(proxy)?, agent.map(rss).transpose()?);
        let start = Instant::now();
        let mut open = Vec::with_capacity(settings.idle);
        for _ in 0..settings.idle {
            open.push(
                t.echoed().with_context(|| {
                    format!("idle stream {} via {}", open.len() + 1, via.name())
                })?,
            );
        }
        let seconds_to_open = start.elapsed().as_secs_f64();
        thread::sleep(SETTLE);
        let with = (rss(proxy)?, agent.map(rss).transpose()?);
        let counted = servers.agent_streams()?;
        open.into_iter().for_each(close);
        thread::sleep(SETTLE);
        let after = (rss(proxy)?, agent.map(rss).transpose()?);
        let pass = Idle {
            via,
            streams: settings.idle,
            agents_counted: counted,
            proxy_kb: (before.0, with.0, after.0),
            agent_kb: before
                .1
                .zip(with.1)
                .zip(after.1)
                .map(|((b, w), a)| (b, w, a)),
            seconds_to_open,
        };
        eprintln!(
            "xtask: idle ×{} {}: proxy {:.1} KB/stream{}, /agents counted {counted} streams",
            pass.streams,
            via.name(),
            tunnel_report::per_stream(pass.proxy_kb, pass.streams),
            pass.agent_kb.map_or(String::new(), |a| format!(
                ", agent {:.1} KB/stream",
                tunnel_report::per_stream(a, pass.streams)
            ))
        );
        idle.push(pass);
    }
    Ok(idle)
}
