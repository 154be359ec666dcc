//! `cargo xtask bench`: speed is measured, not asserted. Starts the release `switchyard` and
//! its upstreams as real processes on 127.0.0.1, drives them with a tokio + rustls load
//! client, and reports each scenario DIRECT (client straight to the upstream) next to THROUGH
//! a peer (Switchyard today), in one run, so the numbers share a machine and a moment.
//!
//! The shape is a list of scenarios × loads × peers; every cell is measured `--runs` times,
//! interleaved across peers so drift hits them alike, and reported as median and min–max.
//! Bulk throughput (`bulk.rs`: direct, kernel splice, `splice(2)` relay, userspace copy,
//! HAProxy, nginx, single and parallel streams, CPU per GB; chart in `chart.rs`) follows
//! the connection scenarios, then the HTTP request rate through the web route (`http.rs`:
//! direct, Switchyard, nginx and HAProxy as TLS-terminating reverse proxies; HTTP/1.1 with
//! `wrk`, HTTP/2 with `h2load`; CPU per 10k requests), then the reverse tunnels
//! (`tunnel.rs`: throughput, connect latency, reconnect time and memory per idle stream
//! through an agent's tunnel against a terminated route of the same proxy).

mod bulk;
pub(crate) mod chart;
pub(crate) mod env;
mod http;
mod isolation;
mod isolation_report;
pub(crate) mod load;
mod peers;
mod quiet;
mod report;
mod scale;
mod scale_peers;
mod scale_report;
mod throughput;
mod tunnel;
mod tunnel_report;
pub(crate) mod tunnel_servers;
pub(crate) mod upstream;

use std::{
    env as std_env,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use self::{env::Env, load::Target, report::Cell};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs per scenario, load and peer; the report gives their median and min–max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Clients of the concurrent load.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Leave docs/benchmarks.md alone (results still go to target/bench/).
    #[arg(long)]
    no_docs: bool,
    /// Parallel streams of the parallel throughput rows.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Measure only throughput (skip the new-connection scenarios, the HTTP and the
    /// reverse-tunnel rows).
    #[arg(long, conflicts_with = "http_only")]
    throughput_only: bool,
    /// Measure only the HTTP request rate through the web route (and rewrite only its
    /// block of docs/benchmarks.md).
    #[arg(long)]
    http_only: bool,
    /// Keep-alive connections of the HTTP/1.1 rows (`wrk -t1 -c N`).
    #[arg(long, default_value_t = 32)]
    wrk_connections: usize,
    /// Connections of the HTTP/2 rows (`h2load -t1 -c N`).
    #[arg(long, default_value_t = 8)]
    h2_clients: usize,
    /// Concurrent streams per connection of the HTTP/2 rows (`h2load -m N`).
    #[arg(long, default_value_t = 16)]
    h2_streams: usize,
    /// Measure only the reverse-tunnel rows (and rewrite only their block of
    /// docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["http_only", "throughput_only"])]
    tunnel_only: bool,
    /// Sequential new connections per run and via of the tunnel's connect-latency rows.
    #[arg(long, default_value_t = 200)]
    tunnel_connections: usize,
    /// Idle connections held open for the tunnel's memory rows.
    #[arg(long, default_value_t = 1000)]
    tunnel_idle: usize,
    /// Proxy restarts of the tunnel's reconnect rows.
    #[arg(long, default_value_t = 10)]
    tunnel_restarts: usize,
    /// Measure only memory per idle connection (and rewrite only its block of
    /// docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["http_only", "throughput_only", "tunnel_only"])]
    scale_only: bool,
    /// Idle connections per scale row, comma-separated (the machine's hard open-file
    /// limit of 20000 caps one process at about 9,900 relayed pairs).
    #[arg(long, value_delimiter = ',', default_values_t = [2000, 9000])]
    scale_connections: Vec<usize>,
    /// Measure only the isolation rows (postgres connect time during an SSH-handshake
    /// flood; rewrite only their block of docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["http_only", "throughput_only", "tunnel_only", "scale_only"])]
    isolation_only: bool,
}

/// What a scenario does on each connection. The eBPF issue adds bulk throughput here.
#[derive(Clone, Copy)]
pub enum Workload {
    /// TCP connect, full TLS handshake, write 1 byte, read the upstream's greeting line, close.
    NewConnections(Route),
}

/// How Switchyard handles the scenario's TLS.
#[derive(Clone, Copy)]
pub enum Route {
    /// SNI `kube-teleport-proxy-alpn.*`: raw TLS forwarded to a TLS upstream.
    Passthrough,
    /// ALPN `teleport-proxy-ssh` with a client certificate: TLS ends at the proxy, plaintext
    /// to the upstream.
    Terminated,
}

pub struct Scenario {
    pub name: &'static str,
    /// One line for the report: what the client does and what DIRECT is.
    pub about: &'static str,
    pub workload: Workload,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "passthrough",
        about: "TLS handshake (SNI kube-teleport-proxy-alpn.bench.test) + 1 byte + greeting; \
                direct = the same TLS upstream without the proxy",
        workload: Workload::NewConnections(Route::Passthrough),
    },
    Scenario {
        name: "terminated",
        about: "mTLS handshake (ALPN teleport-proxy-ssh, client cert) + 1 byte + greeting; \
                direct = an mTLS echo upstream doing the same TLS work",
        workload: Workload::NewConnections(Route::Terminated),
    },
];

/// Whom the client connects to. HAProxy and nginx join here as further peers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Straight to the upstream: the baseline every peer is compared with.
    Direct,
    Switchyard,
}

pub const PEERS: &[Peer] = &[Peer::Direct, Peer::Switchyard];

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Switchyard => "switchyard",
        }
    }
}

/// How many clients run at once.
#[derive(Clone, Copy)]
pub enum Load {
    /// One client, one connection after the other: latency without queueing.
    Sequential,
    /// N clients in parallel: connections per second at saturation.
    Concurrent(usize),
}

impl Load {
    pub fn name(self) -> &'static str {
        match self {
            Load::Sequential => "sequential",
            Load::Concurrent(_) => "concurrent",
        }
    }

    pub fn clients(self) -> usize {
        match self {
            Load::Sequential => 1,
            Load::Concurrent(n) => n,
        }
    }
}

/// Warm-up per scenario, load and peer before the measured runs (not reported).
const WARMUP: Duration = Duration::from_millis(500);
/// Attempts per run when other work shares the CPUs during it.
const ATTEMPTS: usize = 3;

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.concurrency == 0 || opts.seconds <= 0.0 {
        bail!("--runs, --concurrency and --seconds must be positive");
    }
    if opts.wrk_connections == 0 || opts.h2_clients == 0 || opts.h2_streams == 0 {
        bail!("--wrk-connections, --h2-clients and --h2-streams must be positive");
    }
    if opts.tunnel_connections == 0 || opts.tunnel_idle == 0 || opts.streams == 0 {
        bail!("--tunnel-connections, --tunnel-idle and --streams must be positive");
    }
    let target_dir =
        std_env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    if cfg!(debug_assertions) {
        // The load client shares two cores with what it measures: run it optimised.
        crate::setup::run()?;
        crate::cargo(&["build", "--release", "-p", "proxy-user", "-p", "xtask"])?;
        let exe = target_dir.join("release").join("xtask");
        eprintln!("xtask: running the bench from {}", exe.display());
        let err = Command::new(&exe).args(std_env::args_os().skip(1)).exec();
        return Err(err).with_context(|| format!("exec {}", exe.display()));
    }
    crate::cargo(&["build", "--release", "-p", "proxy-user"])?;
    let binary = target_dir.join("release").join("switchyard");
    let out = target_dir.join("bench");
    let pki = env::make_pki(&binary, &out)?;
    let started = Instant::now();
    let doc = root.join("docs").join("benchmarks.md");
    let only = opts.throughput_only || opts.http_only || opts.tunnel_only;
    if opts.scale_only || (!only && !opts.isolation_only) {
        scale_rows(root, &binary, &out, &pki, opts, &doc)?;
        if opts.scale_only {
            return Ok(());
        }
    }
    if opts.isolation_only || !only {
        let measured = report::Facts::collect(root, opts.seconds, opts.runs, 0).measured();
        let rows = isolation::run(&binary, &out, &pki)?;
        let block = isolation_report::markdown(&measured, &rows);
        println!("{block}");
        if !opts.no_docs {
            report::update_doc(&doc, isolation_report::BLOCK, &block)?;
            eprintln!("xtask: updated the isolation block of {}", doc.display());
        }
        if opts.isolation_only {
            return Ok(());
        }
    }
    let cells = if only {
        Vec::new()
    } else {
        connections(&binary, &out, &pki, opts)?
    };
    let facts = report::Facts::collect(root, opts.seconds, opts.runs, opts.concurrency);
    if !opts.http_only && !opts.tunnel_only {
        let bulk = bulk::run(
            &binary,
            &out,
            opts.seconds,
            opts.runs,
            opts.streams,
            &facts.chart_subtitle(),
        )?;
        // Written before the HTTP rows run, so a failure there keeps these.
        let block = format!("{}\n{}{bulk}", facts.markdown(), report::table(&cells));
        println!("{block}");
        if !opts.no_docs {
            report::update_doc(&doc, report::RESULTS_BLOCK, &block)?;
            eprintln!("xtask: updated the results block of {}", doc.display());
            let png = out.join("throughput.png");
            if png.exists() {
                let to = root.join("docs").join("benchmarks.png");
                std::fs::copy(&png, &to).with_context(|| format!("copy to {}", to.display()))?;
                eprintln!("xtask: wrote {}", to.display());
            }
        }
    }
    let http = if opts.throughput_only || opts.tunnel_only {
        None
    } else {
        let settings = http::Settings {
            // wrk and h2load take whole seconds.
            seconds: opts.seconds.ceil() as u64,
            runs: opts.runs,
            wrk_connections: opts.wrk_connections,
            h2_clients: opts.h2_clients,
            h2_streams: opts.h2_streams,
        };
        let http = http::run(&binary, &out, &pki, &settings, &facts.measured())?;
        println!("{}", http.markdown);
        if !opts.no_docs {
            report::update_doc(&doc, report::HTTP_BLOCK, &http.markdown)?;
            eprintln!("xtask: updated the HTTP block of {}", doc.display());
        }
        Some(http)
    };
    if !opts.throughput_only && !opts.http_only {
        let settings = tunnel::Settings {
            seconds: opts.seconds,
            runs: opts.runs,
            streams: opts.streams,
            connections: opts.tunnel_connections,
            idle: opts.tunnel_idle,
            restarts: opts.tunnel_restarts,
        };
        let tunnel = tunnel::run(&binary, &out, &pki, &settings, &facts.measured())?;
        println!("{}", tunnel.markdown);
        if !opts.no_docs {
            report::update_doc(&doc, report::TUNNEL_BLOCK, &tunnel.markdown)?;
            eprintln!("xtask: updated the tunnel block of {}", doc.display());
        }
    }
    eprintln!(
        "xtask: measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if opts.tunnel_only {
        // Its rows are in tunnel.json; results.json keeps the last run that had its rows.
        return Ok(());
    }
    let json = out.join("results.json");
    let http_json = http.map_or_else(|| serde_json::json!([]), |h| h.json);
    std::fs::write(&json, report::json(&facts, &cells, http_json)?)
        .with_context(|| format!("write {}", json.display()))?;
    eprintln!("xtask: wrote {}", json.display());
    Ok(())
}

/// The memory-per-idle-connection rows, printed and written to their block.
fn scale_rows(
    root: &Path,
    binary: &Path,
    out: &Path,
    pki: &Path,
    opts: &Options,
    doc: &Path,
) -> Result<()> {
    if opts.scale_connections.contains(&0) {
        bail!("--scale-connections must be positive");
    }
    let measured = report::Facts::collect(root, opts.seconds, opts.runs, 0).measured();
    let results = scale::run(binary, out, pki, &opts.scale_connections)?;
    let block = scale_report::markdown(&measured, &opts.scale_connections, &results);
    println!("{block}");
    if !opts.no_docs {
        report::update_doc(doc, scale_report::BLOCK, &block)?;
        eprintln!("xtask: updated the scale block of {}", doc.display());
    }
    Ok(())
}

/// The new-connection scenarios: every scenario × load × peer, `--runs` times each.
fn connections(binary: &Path, out: &Path, pki: &Path, opts: &Options) -> Result<Vec<Cell>> {
    let env = Env::start(binary, out, pki)?;
    let pids = env.pids();
    let duration = Duration::from_secs_f64(opts.seconds);
    let loads = [Load::Sequential, Load::Concurrent(opts.concurrency)];
    let runtime = tokio::runtime::Runtime::new().context("starting the load client runtime")?;
    let mut cells = Vec::new();
    for scenario in SCENARIOS {
        let targets = PEERS
            .iter()
            .map(|&peer| Ok((peer, Arc::new(env.target(scenario, peer)?))))
            .collect::<Result<Vec<(Peer, Arc<Target>)>>>()?;
        for load in loads {
            let mut row: Vec<Cell> = targets
                .iter()
                .map(|(peer, _)| Cell::new(scenario, load, *peer))
                .collect();
            for (_, target) in &targets {
                quiet::wait()?;
                runtime.block_on(load::measure(target.clone(), load.clients(), WARMUP))?;
            }
            for run in 1..=opts.runs {
                for ((peer, target), cell) in targets.iter().zip(&mut row) {
                    let stats = measure_quietly(&runtime, target, load, duration, &pids)?;
                    eprintln!(
                        "xtask: {} {} {} run {run}/{}: {:.0} conn/s, p50 {:.0} us, p99 {:.0} us",
                        scenario.name,
                        load.name(),
                        peer.name(),
                        opts.runs,
                        stats.conn_per_sec,
                        stats.p50_us,
                        stats.p99_us
                    );
                    cell.runs.push(stats);
                }
            }
            cells.extend(row);
        }
    }
    drop(runtime);
    drop(env);
    Ok(cells)
}

/// One measured run, redone when other work took more than `quiet::FOREIGN` of the CPUs
/// during it (the machine is shared).
fn measure_quietly(
    runtime: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    load: Load,
    duration: Duration,
    pids: &[u32],
) -> Result<load::RunStats> {
    for attempt in 1..=ATTEMPTS {
        quiet::wait()?;
        let before = quiet::Sample::take(pids);
        let stats = runtime.block_on(load::measure(target.clone(), load.clients(), duration))?;
        let foreign = quiet::Sample::take(pids).foreign_since(&before);
        let stats = load::RunStats {
            foreign_cpu: foreign,
            ..stats
        };
        if foreign <= quiet::FOREIGN {
            return Ok(stats);
        }
        eprintln!(
            "xtask: other processes used {:.0}% of the CPUs during the run; {}",
            foreign * 100.0,
            if attempt < ATTEMPTS {
                "redoing it"
            } else {
                "keeping it anyway"
            }
        );
        if attempt == ATTEMPTS {
            return Ok(stats);
        }
    }
    unreachable!("the last attempt returns")
}
