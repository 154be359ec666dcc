//! The new-connection rows of `cargo xtask bench`: what a scenario, a load and a peer are,
//! and the measuring loop — every scenario × load × peer (direct, Switchyard, HAProxy,
//! nginx), `--runs` times each, interleaved across peers, each run also timing the CPU the
//! peer's own processes spent on it — whose tables go to the connections block of
//! docs/benchmarks.md (`--connections-only` measures only these).

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    conn_peers,
    conn_report::{self, Cell},
    env::Env,
    load::{self, RunStats, Target},
    quiet, report, Options, ATTEMPTS,
};

/// What a scenario does on each connection.
#[derive(Clone, Copy)]
pub enum Workload {
    /// TCP connect, full TLS handshake, write 1 byte, read the upstream's greeting line, close.
    NewConnections(Route),
}

/// How the peer handles the scenario's TLS.
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

/// Whom the client connects to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Straight to the upstream: the baseline every peer is compared with.
    Direct,
    Switchyard,
    /// HAProxy doing Switchyard's work (`conn_peers.rs`).
    Haproxy,
    /// nginx `stream` doing Switchyard's work (`conn_peers.rs`).
    Nginx,
}

pub const PEERS: &[Peer] = &[Peer::Direct, Peer::Switchyard, Peer::Haproxy, Peer::Nginx];

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Switchyard => "switchyard",
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
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

/// Measures the rows, prints their tables and, unless `--no-docs`, writes them to the
/// connections block of `doc`.
pub fn rows(
    root: &Path,
    binary: &Path,
    out: &Path,
    pki: &Path,
    opts: &Options,
    doc: &Path,
) -> Result<Vec<Cell>> {
    let env = Env::start(binary, out, pki, &opts.proxy_ebpf, opts.verified_chains)?;
    let facts = report::Facts::collect(root, opts.seconds, opts.runs, opts.concurrency);
    let cells = measure(&env, opts)?;
    let block = format!(
        "{}\nSwitchyard ran `serve --ebpf {}` with `limits.verified_chains: {}` (every \
         connection presents the same client certificate: {}).\n\n{}",
        facts.markdown(&conn_peers::versions()),
        opts.proxy_ebpf,
        opts.verified_chains,
        if opts.verified_chains == 0 {
            "each one verifies its chain, as the direct echo does"
        } else {
            "after the first, the proxy remembers the chain it verified"
        },
        conn_report::table(&cells)
    );
    drop(env);
    println!("{block}");
    if !opts.no_docs {
        report::update_doc(doc, conn_report::BLOCK, &block)?;
        eprintln!("xtask: updated the connections block of {}", doc.display());
    }
    Ok(cells)
}

/// Every scenario × load × peer, `--runs` times each.
fn measure(env: &Env, opts: &Options) -> Result<Vec<Cell>> {
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
                    let stats = measure_quietly(&runtime, env, *peer, target, load, duration)?;
                    eprintln!(
                        "xtask: {} {} {} run {run}/{}: {:.0} conn/s, p50 {:.0} us, p99 {:.0} us, \
                         peer CPU {:.0} us/conn",
                        scenario.name,
                        load.name(),
                        peer.name(),
                        opts.runs,
                        stats.conn_per_sec,
                        stats.p50_us,
                        stats.p99_us,
                        stats.peer_cpu_us
                    );
                    cell.runs.push(stats);
                }
            }
            cells.extend(row);
        }
    }
    Ok(cells)
}

/// One measured run with the CPU time `peer` spent per completed connection, redone when
/// other work took more than `quiet::FOREIGN` of the CPUs during it (the machine is shared).
fn measure_quietly(
    runtime: &tokio::runtime::Runtime,
    env: &Env,
    peer: Peer,
    target: &Arc<Target>,
    load: Load,
    duration: Duration,
) -> Result<RunStats> {
    for attempt in 1..=ATTEMPTS {
        quiet::wait()?;
        let pids = env.pids();
        let before = quiet::Sample::take(&pids);
        let cpu_before = env.peer_cpu(peer);
        let stats = runtime.block_on(load::measure(target.clone(), load.clients(), duration))?;
        let peer_cpu = env.peer_cpu(peer) - cpu_before;
        let foreign = quiet::Sample::take(&pids).foreign_since(&before);
        let stats = RunStats {
            foreign_cpu: foreign,
            peer_cpu_us: peer_cpu * 1e6 / stats.connections as f64,
            ..stats
        };
        if foreign <= quiet::FOREIGN || attempt == ATTEMPTS {
            if foreign > quiet::FOREIGN {
                eprintln!(
                    "xtask: other processes used {:.0}% of the CPUs during the run; keeping it anyway",
                    foreign * 100.0
                );
            }
            return Ok(stats);
        }
        eprintln!(
            "xtask: other processes used {:.0}% of the CPUs during the run; redoing it",
            foreign * 100.0
        );
    }
    unreachable!("the last attempt returns")
}
