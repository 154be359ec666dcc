//! The tunnel rows' report (`tunnel.rs`): the Markdown block for docs/benchmarks.md
//! (throughput with ratios to direct and the goals, connect latency, memory per
//! idle stream, reconnect time) and `target/bench/tunnel.json` with every run.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{
    load::percentile,
    report::median_min_max,
    tunnel::{Latencies, Results, Row, Run, Settings, Via, TCP_ALPN},
};

/// Goals from the issue: tunnel/direct throughput, one stream and parallel.
const GOAL_SINGLE: f64 = 0.5;
const GOAL_PARALLEL: f64 = 0.8;

/// KB of RSS per stream while open, from (before, open, after).
pub fn per_stream(kb: (u64, u64, u64), streams: usize) -> f64 {
    (kb.1 as f64 - kb.0 as f64) / streams as f64
}

fn spread(runs: &[Run], f: fn(&Run) -> f64) -> (f64, f64, f64) {
    median_min_max(runs.iter().map(f).collect())
}

fn median_gbit(rows: &[Row], streams: usize, via: Via) -> f64 {
    rows.iter()
        .find(|r| r.streams == streams && r.via == via)
        .map_or(f64::NAN, |r| spread(&r.runs, |x| x.gbit_per_s).0)
}

/// The median and min–max of `f` over the latency runs.
fn latency_spread(l: &Latencies, p: f64) -> (f64, f64, f64) {
    median_min_max(l.runs.iter().map(|us| percentile(us, p)).collect())
}

/// The block for docs/benchmarks.md.
pub fn markdown(measured: &str, s: &Settings, results: &Results) -> String {
    let Results {
        rows,
        latencies,
        restarts,
        idle,
    } = results;
    let mut t = format!(
        "{measured}; loopback. One `switchyard serve` (`SWITCHYARD_LOG=warn`) with a `tunnel:` \
         section and terminated `routes:`; agents `switchyard agent` (`SWITCHYARD_LOG=info`); \
         upstreams (a counting sink, an echo) and the rustls client (TLS 1.3, ALPN \
         `{TCP_ALPN}`, client certificate, no resumption) in the bench process. Direct = the \
         same proxy's terminated route to the same upstream. Cells: median (min–max) over \
         the runs.\n\n\
         Throughput: {runs} runs of {secs} s per row; CPU s/GB of the proxy, the agent and \
         the whole machine (client, sink and kernel included).\n\n\
         | streams | via | Gbit/s | × direct | goal | proxy CPU s/GB | agent CPU s/GB | machine CPU s/GB |\n\
         |---|---|---:|---:|---|---:|---:|---:|\n",
        runs = s.runs,
        secs = s.seconds,
    );
    for r in rows {
        let (g, lo, hi) = spread(&r.runs, |x| x.gbit_per_s);
        let ratio = g / median_gbit(rows, r.streams, Via::Direct);
        let goal = match (r.via, r.streams) {
            (Via::Direct, _) => "—".to_owned(),
            (_, 1) => met(ratio, GOAL_SINGLE),
            _ => met(ratio, GOAL_PARALLEL),
        };
        let agent = spread(&r.runs, |x| x.agent_cpu_per_gb).0;
        let _ = writeln!(
            t,
            "| {} | {} | {g:.2} ({lo:.2}–{hi:.2}) | {ratio:.2} | {goal} | {:.2} | {} | {:.2} |",
            r.streams,
            r.via.name(),
            spread(&r.runs, |x| x.proxy_cpu_per_gb).0,
            if agent.is_nan() {
                "—".to_owned()
            } else {
                format!("{agent:.2}")
            },
            spread(&r.runs, |x| x.machine_cpu_per_gb).0,
        );
    }
    let _ = write!(
        t,
        "\nConnect latency: {n} sequential new connections per run, {runs} runs; time from \
         `connect()` to the first echoed byte (TCP, full mTLS handshake, 1 byte each way).\n\n\
         | via | p50 µs | p99 µs | mean µs | p50 added µs | p99 added µs | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        n = s.connections,
        runs = s.runs,
    );
    let direct = latencies.iter().find(|l| l.via == Via::Direct);
    for l in latencies {
        let (p50, p50lo, p50hi) = latency_spread(l, 0.5);
        let (p99, p99lo, p99hi) = latency_spread(l, 0.99);
        let mean = median_min_max(
            l.runs
                .iter()
                .map(|us| us.iter().sum::<f64>() / us.len() as f64)
                .collect(),
        )
        .0;
        let added = |p| match direct {
            Some(d) if l.via != Via::Direct => {
                format!("{:+.0}", latency_spread(l, p).0 - latency_spread(d, p).0)
            }
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            t,
            "| {} | {p50:.0} ({p50lo:.0}–{p50hi:.0}) | {p99:.0} ({p99lo:.0}–{p99hi:.0}) | {mean:.0} | {} | {} | {} |",
            l.via.name(),
            added(0.5),
            added(0.99),
            l.errors
        );
    }
    let _ = write!(
        t,
        "\nMemory: RSS before and with N idle connections open (each echoed one byte), on a \
         fresh proxy (and agent) per pass; after = once they closed.\n\n\
         | via | N | proxy RSS before / open / after MB | proxy KB per stream | agent RSS before / open / after MB | agent KB per stream | seconds to open N |\n\
         |---|---:|---|---:|---|---:|---:|\n"
    );
    let mb = |kb: (u64, u64, u64)| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            kb.0 as f64 / 1024.0,
            kb.1 as f64 / 1024.0,
            kb.2 as f64 / 1024.0
        )
    };
    for i in idle {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.1} | {} | {} | {:.1} |",
            i.via.name(),
            i.streams,
            mb(i.proxy_kb),
            per_stream(i.proxy_kb, i.streams),
            i.agent_kb.map_or("—".to_owned(), mb),
            i.agent_kb.map_or("—".to_owned(), |a| format!(
                "{:.1}",
                per_stream(a, i.streams)
            )),
            i.seconds_to_open
        );
    }
    if !restarts.is_empty() {
        let _ = write!(
            t,
            "\nReconnect after a proxy crash (SIGKILL, started again on the same port), {} \
             times, agent with one tunnel; the agent's first retry is 1 s ± 25 % after the \
             loss.\n\n\
             | interval | median ms | min ms | max ms |\n|---|---:|---:|---:|\n",
            restarts.len()
        );
        let row = |t: &mut String, name: &str, v: Vec<f64>| {
            if v.is_empty() {
                return;
            }
            let (m, lo, hi) = median_min_max(v);
            let _ = writeln!(
                t,
                "| {name} | {:.0} | {:.0} | {:.0} |",
                m * 1e3,
                lo * 1e3,
                hi * 1e3
            );
        };
        row(
            &mut t,
            "new proxy ready → agent's `tunnel up`",
            restarts.iter().map(|r| r.ready_to_up).collect(),
        );
        row(
            &mut t,
            "kill → agent's `tunnel up`",
            restarts.iter().map(|r| r.kill_to_up).collect(),
        );
        row(
            &mut t,
            "kill → agent's `tunnel lost`",
            restarts.iter().filter_map(|r| r.kill_to_lost).collect(),
        );
        row(
            &mut t,
            "kill → new proxy ready",
            restarts.iter().map(|r| r.kill_to_ready).collect(),
        );
        let failed: usize = restarts.iter().map(|r| r.failed_dials).sum();
        let _ = writeln!(t, "\nFailed dials before a tunnel came up: {failed}.");
    }
    t
}

fn met(ratio: f64, goal: f64) -> String {
    if ratio >= goal {
        format!("≥ {goal}×: met")
    } else {
        format!("≥ {goal}×: not met")
    }
}

/// `tunnel.json`: every run of every row.
pub fn json(measured: &str, results: &Results) -> Value {
    let Results {
        rows,
        latencies,
        restarts,
        idle,
    } = results;
    json!({
        "measured": measured,
        "throughput": rows.iter().map(|r| json!({
            "streams": r.streams,
            "via": r.via.name(),
            "runs": r.runs.iter().map(|x| json!({
                "gbit_per_s": x.gbit_per_s,
                "bytes": x.bytes,
                "seconds": x.seconds,
                "proxy_cpu_s_per_gb": x.proxy_cpu_per_gb,
                "agent_cpu_s_per_gb": if x.agent_cpu_per_gb.is_nan() { Value::Null } else { json!(x.agent_cpu_per_gb) },
                "machine_cpu_s_per_gb": x.machine_cpu_per_gb,
                "foreign_cpu": x.foreign_cpu,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "connect_latency": latencies.iter().map(|l| json!({
            "via": l.via.name(),
            "errors": l.errors,
            "runs": l.runs.iter().map(|us| json!({
                "connections": us.len(),
                "p50_us": percentile(us, 0.5),
                "p99_us": percentile(us, 0.99),
                "max_us": us.last().copied().unwrap_or(f64::NAN),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "reconnect": restarts.iter().map(|r| json!({
            "ready_to_up_s": r.ready_to_up,
            "kill_to_up_s": r.kill_to_up,
            "kill_to_lost_s": r.kill_to_lost,
            "kill_to_ready_s": r.kill_to_ready,
            "failed_dials": r.failed_dials,
        })).collect::<Vec<_>>(),
        "idle_memory": idle.iter().map(|i| json!({
            "via": i.via.name(),
            "streams": i.streams,
            "agents_counted_streams": i.agents_counted,
            "proxy_rss_kb": [i.proxy_kb.0, i.proxy_kb.1, i.proxy_kb.2],
            "agent_rss_kb": i.agent_kb.map(|a| [a.0, a.1, a.2]),
            "proxy_kb_per_stream": per_stream(i.proxy_kb, i.streams),
            "agent_kb_per_stream": i.agent_kb.map(|a| per_stream(a, i.streams)),
            "seconds_to_open": i.seconds_to_open,
        })).collect::<Vec<_>>(),
    })
}
