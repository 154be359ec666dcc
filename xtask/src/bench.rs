//! `cargo xtask bench`: speed is measured, not asserted. Starts the release `switchyard` and
//! its upstreams as real processes on 127.0.0.1, drives them with a tokio + rustls load
//! client, and reports each scenario DIRECT (client straight to the upstream) next to THROUGH
//! a peer, in one run, so the numbers share a machine and a moment.
//!
//! The new-connection rows (`connections.rs`: passthrough and terminated × sequential and
//! concurrent × direct, Switchyard, HAProxy and nginx, with each peer's CPU per connection)
//! come first, then bulk throughput (`bulk.rs`: direct, kernel splice, `splice(2)` relay,
//! userspace copy, HAProxy, nginx, single and parallel streams, CPU per GB; chart in
//! `chart.rs`), then the HTTP request rate through the web route (`http.rs`: direct,
//! Switchyard, nginx and HAProxy as TLS-terminating reverse proxies; HTTP/1.1 with `wrk`,
//! HTTP/2 with `h2load`; CPU per 10k requests), then the reverse tunnels (`tunnel.rs`:
//! throughput, connect latency, reconnect time and memory per idle stream through an agent's
//! tunnel against a terminated route of the same proxy). Every cell is measured `--runs`
//! times, interleaved across peers so drift hits them alike, and reported as median and
//! min–max.

mod bulk;
pub(crate) mod chart;
mod conn_peers;
mod conn_report;
mod connections;
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
mod terminated;
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
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs per scenario, load and peer; the report gives their median and min–max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `switchyard serve --ebpf` of the new-connection rows (`off` measures the setup
    /// without the eBPF front end; the block says which was used).
    #[arg(long, default_value = "auto", value_parser = ["auto", "require", "off"])]
    proxy_ebpf: String,
    /// Switchyard's `limits.verified_chains` in the new-connection rows (every bench
    /// connection presents the same client certificate, so the default measures a
    /// returning client; `0` makes each one verify the chain, as the direct echo does).
    #[arg(long, default_value_t = 1024)]
    verified_chains: usize,
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
    /// reverse-tunnel rows; rewrite only the throughput block of docs/benchmarks.md).
    #[arg(long, conflicts_with = "http_only")]
    throughput_only: bool,
    /// Measure only the new-connection rows (and rewrite only their block of
    /// docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["http_only", "throughput_only", "tunnel_only", "scale_only", "isolation_only"])]
    connections_only: bool,
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
    /// Measure only the terminated-route throughput rows (nothing is written to
    /// docs/benchmarks.md: its throughput block holds them with the passthrough rows).
    #[arg(long, conflicts_with_all = ["http_only", "throughput_only", "tunnel_only", "scale_only", "connections_only"])]
    terminated_only: bool,
    /// Measure only the isolation rows (postgres connect time during an SSH-handshake
    /// flood; rewrite only their block of docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["http_only", "throughput_only", "tunnel_only", "scale_only"])]
    isolation_only: bool,
}

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
    if opts.terminated_only {
        let rows = terminated::run(&binary, &out, &pki, opts.seconds, opts.runs, opts.streams)?;
        println!("{rows}");
        return Ok(());
    }
    let only = opts.throughput_only || opts.http_only || opts.tunnel_only || opts.connections_only;
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
    let cells = if only && !opts.connections_only {
        Vec::new()
    } else {
        connections::rows(root, &binary, &out, &pki, opts, &doc)?
    };
    let facts = report::Facts::collect(root, opts.seconds, opts.runs, opts.concurrency);
    if !opts.http_only && !opts.tunnel_only && !opts.connections_only {
        let bulk = bulk::run(
            &binary,
            &out,
            opts.seconds,
            opts.runs,
            opts.streams,
            &facts.chart_subtitle(),
        )?;
        let terminated =
            terminated::run(&binary, &out, &pki, opts.seconds, opts.runs, opts.streams)?;
        // Written before the HTTP rows run, so a failure there keeps these.
        let block = format!("{}; loopback.\n{bulk}{terminated}", facts.measured());
        println!("{block}");
        if !opts.no_docs {
            report::update_doc(&doc, report::THROUGHPUT_BLOCK, &block)?;
            eprintln!("xtask: updated the throughput block of {}", doc.display());
            let png = out.join("throughput.png");
            if png.exists() {
                let to = root.join("docs").join("benchmarks.png");
                std::fs::copy(&png, &to).with_context(|| format!("copy to {}", to.display()))?;
                eprintln!("xtask: wrote {}", to.display());
            }
        }
    }
    let http = if opts.throughput_only || opts.tunnel_only || opts.connections_only {
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
    if !opts.throughput_only && !opts.http_only && !opts.connections_only {
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
