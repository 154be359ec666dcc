//! The throughput part of `cargo xtask bench`: every peer of `peers.rs` in front of one
//! sink, single stream and parallel streams, runs interleaved across peers, and the table
//! (median and min–max of the runs, ratios to direct and to HAProxy, CPU seconds per GB)
//! plus `target/bench/throughput.json` and the chart `target/bench/throughput.png`
//! (`chart.rs`).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    chart, isolation,
    peers::{self, Via},
    quiet,
    throughput::{self, Run},
};

/// Warm-up per peer and load before the measured runs.
const WARMUP: Duration = Duration::from_millis(500);

/// The runs of one peer under one load.
struct Row {
    streams: usize,
    via: Via,
    runs: Vec<Run>,
    /// Per run, the share of the clients' bytes the kernel moved (kernel splice only).
    kernel_shares: Vec<f64>,
}

/// Median, min and max of one number over the runs.
fn spread(runs: &[Run], f: fn(&Run) -> f64) -> (f64, f64, f64) {
    super::report::median_min_max(runs.iter().map(f).collect())
}

/// Measures and returns the Markdown table; writes `out/throughput.json` and, unless the
/// chart cannot be drawn (said on stderr), `out/throughput.png` with `subtitle` under its
/// title.
pub fn run(
    binary: &Path,
    out: &Path,
    seconds: f64,
    runs: usize,
    streams: usize,
    subtitle: &str,
) -> Result<String> {
    peers::install()?;
    let sink = throughput::sink()?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut started = Vec::new();
    for via in peers::ALL {
        started.push((
            via,
            peers::start(via, sink, binary, &logs, throughput::SNI)?,
        ));
    }
    let duration = Duration::from_secs_f64(seconds);
    let mut rows = Vec::new();
    for n in [1, streams] {
        let mut row: Vec<Row> = peers::ALL
            .iter()
            .map(|&via| Row {
                streams: n,
                via,
                runs: Vec::new(),
                kernel_shares: Vec::new(),
            })
            .collect();
        for (via, peer) in &started {
            quiet::wait()?;
            throughput::measure(peer.addr, n, WARMUP, &[])
                .with_context(|| format!("warm-up of {} ×{n}", via.name()))?;
        }
        for i in 1..=runs {
            for ((via, peer), r) in started.iter().zip(&mut row) {
                quiet::wait()?;
                let before = peer.diag.map(relayed).transpose()?;
                let m = throughput::measure(peer.addr, n, duration, &peer.pids())
                    .with_context(|| format!("{} ×{n}", via.name()))?;
                if let (Some(diag), Some(before)) = (peer.diag, before) {
                    let share = kernel_share(diag, before, m.bytes)?;
                    eprintln!("xtask: kernel splice ×{n} run {i}: {:.1}% of the bytes moved in the kernel", share * 100.0);
                    r.kernel_shares.push(share);
                }
                eprintln!(
                    "xtask: throughput ×{n} {} run {i}/{runs}: {:.2} Gbit/s, peer {:.2} CPU s/GB, machine {:.2} CPU s/GB",
                    via.name(),
                    m.gbit_per_s,
                    m.peer_cpu_per_gb,
                    m.machine_cpu_per_gb
                );
                r.runs.push(m);
            }
        }
        rows.extend(row);
    }
    drop(started);
    let json = out.join("throughput.json");
    std::fs::write(&json, serde_json::to_string_pretty(&to_json(&rows))?)
        .with_context(|| format!("write {}", json.display()))?;
    eprintln!("xtask: wrote {}", json.display());
    let png = out.join("throughput.png");
    let bars: Vec<chart::Bar> = rows
        .iter()
        .map(|r| chart::Bar {
            streams: r.streams,
            via: r.via.name(),
            gbit: spread(&r.runs, |x| x.gbit_per_s),
            peer_cpu_per_gb: spread(&r.runs, |x| x.peer_cpu_per_gb).0,
            machine_cpu_per_gb: spread(&r.runs, |x| x.machine_cpu_per_gb).0,
        })
        .collect();
    match chart::draw(&bars, streams, subtitle, &png) {
        Ok(()) => eprintln!("xtask: wrote {}", png.display()),
        Err(e) => eprintln!("xtask: no chart: {e:#}"),
    }
    Ok(table(&rows, seconds, runs))
}

/// Bytes the proxy behind `diag` has relayed from its clients so far: (moved by the kernel,
/// copied in userspace), as its `/metrics` count them when each connection ends.
fn relayed(diag: SocketAddr) -> Result<(f64, f64)> {
    let (mut kernel, mut user) = (0.0, 0.0);
    for line in isolation::metrics(diag, &["switchyard_relay_bytes_total{"])? {
        if !line.contains("direction=\"client_to_upstream\"") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("a metric line without a value: {line}"))?;
        if line.contains("mode=\"kernel_splice\"") {
            kernel += value;
        } else if line.contains("mode=\"userspace\"") {
            user += value;
        }
    }
    Ok((kernel, user))
}

/// The kernel's share of one run's client bytes: waits (at most 10 s) until the proxy has
/// counted at least `bytes` more than `before` — it counts a connection when its relay ends,
/// just after the client has read the sink's count.
fn kernel_share(diag: SocketAddr, before: (f64, f64), bytes: u64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = relayed(diag)?;
        let (kernel, user) = (now.0 - before.0, now.1 - before.1);
        if kernel + user >= bytes as f64 {
            return Ok(kernel / (kernel + user));
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the kernel splice counted {} of the run's {bytes} bytes after 10 s",
                kernel + user
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median_of(rows: &[Row], streams: usize, via: Via) -> f64 {
    rows.iter()
        .find(|r| r.streams == streams && r.via == via)
        .map_or(f64::NAN, |r| spread(&r.runs, |x| x.gbit_per_s).0)
}

fn table(rows: &[Row], seconds: f64, runs: usize) -> String {
    let mut t = format!(
        "\nThroughput through a TLS passthrough route (ClientHello, then raw bytes to a sink), \
         {runs} runs of {seconds} s per row, median (min–max). CPU s/GB: the peer's own \
         processes / the whole machine (client, sink and kernel work included).\n\n\
         The kernel splice's last column is the share of the client's bytes the kernel \
         moved (the rest was copied in userspace before or instead of the switch).\n\n\
         | streams | via | Gbit/s | × direct | × haproxy | peer CPU s/GB | machine CPU s/GB | in the kernel |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let (g, lo, hi) = spread(&r.runs, |x| x.gbit_per_s);
        let direct = median_of(rows, r.streams, Via::Direct);
        let haproxy = median_of(rows, r.streams, Via::Haproxy);
        let _ = writeln!(
            t,
            "| {} | {} | {g:.2} ({lo:.2}–{hi:.2}) | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.streams,
            r.via.name(),
            g / direct,
            g / haproxy,
            spread(&r.runs, |x| x.peer_cpu_per_gb).0,
            spread(&r.runs, |x| x.machine_cpu_per_gb).0,
            share(&r.kernel_shares),
        );
    }
    t
}

/// The median share in percent with its range, or `—` where the peer has none.
fn share(shares: &[f64]) -> String {
    if shares.is_empty() {
        return "—".to_owned();
    }
    let (m, lo, hi) = super::report::median_min_max(shares.iter().map(|s| s * 100.0).collect());
    format!("{m:.1}% ({lo:.1}–{hi:.1})")
}

fn to_json(rows: &[Row]) -> serde_json::Value {
    json!(rows
        .iter()
        .map(|r| json!({
            "streams": r.streams,
            "via": r.via.name(),
            "runs": r.runs.iter().map(|x| json!({
                "gbit_per_s": x.gbit_per_s,
                "bytes": x.bytes,
                "seconds": x.seconds,
                "peer_cpu_s_per_gb": x.peer_cpu_per_gb,
                "machine_cpu_s_per_gb": x.machine_cpu_per_gb,
            })).collect::<Vec<_>>(),
            "kernel_shares": r.kernel_shares,
        }))
        .collect::<Vec<_>>())
}
