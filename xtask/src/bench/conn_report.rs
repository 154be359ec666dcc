//! The new-connection rows' report: a cell of runs per scenario × load × peer, the Markdown
//! tables of the connections block (rows with each peer's CPU per connection; every peer
//! against direct; the handshake CPU against its goal) and their rows of `results.json`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{
    connections::{Load, Peer, Scenario, SCENARIOS},
    load::RunStats,
    report::{median_min_max, ratio, round},
};

/// The block of docs/benchmarks.md these rows rewrite (`--connections-only` touches only it).
pub const BLOCK: &str = "connections";
/// Switchyard's goal for the CPU of one new terminated connection (handshake included).
const TERMINATED_CPU_GOAL_US: f64 = 200.0;

/// All runs of one scenario under one load against one peer.
pub struct Cell {
    scenario: &'static str,
    load: Load,
    peer: Peer,
    pub runs: Vec<RunStats>,
}

impl Cell {
    pub fn new(scenario: &Scenario, load: Load, peer: Peer) -> Cell {
        Cell {
            scenario: scenario.name,
            load,
            peer,
            runs: Vec::new(),
        }
    }

    fn spread(&self, metric: Metric) -> Spread {
        let (median, min, max) = median_min_max(self.runs.iter().map(metric).collect());
        Spread { median, min, max }
    }

    fn median(&self, metric: Metric) -> f64 {
        self.spread(metric).median
    }

    fn label(&self) -> String {
        format!("{} ×{}", self.load.name(), self.load.clients())
    }
}

/// Reads one number off a run.
type Metric = fn(&RunStats) -> f64;

const RATE: Metric = |r| r.conn_per_sec;
const P50: Metric = |r| r.p50_us;
const P99: Metric = |r| r.p99_us;
const CPU: Metric = |r| r.peer_cpu_us;

/// The columns of the rows table, in order, with their JSON names.
const METRICS: [(&str, Metric); 5] = [
    ("conn_per_sec", RATE),
    ("p50_us", P50),
    ("p99_us", P99),
    ("mean_us", |r| r.mean_us),
    ("peer_cpu_us_per_conn", CPU),
];

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn cell(&self) -> String {
        format!("{:.0} ({:.0}–{:.0})", self.median, self.min, self.max)
    }
}

/// Results per row, then each peer against DIRECT (ratios and added latency), then the CPU
/// per connection of each peer under the concurrent load.
pub fn table(cells: &[Cell]) -> String {
    let mut t = String::from(
        "| scenario | load | peer | conn/s | p50 µs | p99 µs | mean µs | peer CPU µs/conn | errors |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let errors: usize = c.runs.iter().map(|r| r.errors).sum();
        let _ = write!(t, "| {} | {} | {} |", c.scenario, c.label(), c.peer.name());
        for (_, metric) in METRICS {
            let _ = write!(t, " {} |", c.spread(metric).cell());
        }
        let _ = writeln!(t, " {errors} |");
    }
    t.push_str(
        "\n| scenario | load | peer | × direct conn/s | p50 peer/direct | p50 added µs | \
         p99 peer/direct | p99 added µs |\n|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for (c, d) in comparisons(cells) {
        let m = |metric| (c.median(metric), d.median(metric));
        let ((rate, rate_d), (p50, p50_d), (p99, p99_d)) = (m(RATE), m(P50), m(P99));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.2} | {:.2} | {:+.0} | {:.2} | {:+.0} |",
            c.scenario,
            c.label(),
            c.peer.name(),
            rate / rate_d,
            p50 / p50_d,
            p50 - p50_d,
            p99 / p99_d,
            p99 - p99_d
        );
    }
    t.push_str(
        "\npeer CPU µs/conn: utime + stime of the peer's own processes during the run \
         (`/proc/PID/stat` before and after: Switchyard's process, HAProxy's, nginx's master \
         and workers; for direct, the TLS echo upstream's threads, the server end of the \
         handshake), per completed connection.\n\n",
    );
    for sc in SCENARIOS {
        let _ = writeln!(t, "- {}", cpu_line(cells, sc.name));
    }
    t
}

/// `SCENARIO, concurrent ×N, CPU µs per connection: switchyard A (goal …), haproxy B, …`.
fn cpu_line(cells: &[Cell], scenario: &str) -> String {
    let concurrent = cells
        .iter()
        .filter(|c| c.scenario == scenario && matches!(c.load, Load::Concurrent(_)));
    let mut parts = Vec::new();
    let mut label = String::new();
    for c in concurrent {
        let us = c.median(CPU);
        label = c.label();
        let goal = match (scenario, c.peer) {
            ("terminated", Peer::Switchyard) => format!(
                " (goal ≤ {TERMINATED_CPU_GOAL_US:.0}: {})",
                if us <= TERMINATED_CPU_GOAL_US {
                    "met"
                } else {
                    "not met"
                }
            ),
            _ => String::new(),
        };
        parts.push(format!("{} {us:.0}{goal}", c.peer.name()));
    }
    format!(
        "`{scenario}`, {label}, CPU µs per new connection: {}",
        parts.join(", ")
    )
}

/// Every non-direct cell with the direct cell of the same scenario and load.
fn comparisons(cells: &[Cell]) -> impl Iterator<Item = (&Cell, &Cell)> {
    cells
        .iter()
        .filter(|c| c.peer != Peer::Direct)
        .filter_map(|c| {
            let direct = cells.iter().find(|d| {
                d.peer == Peer::Direct && d.scenario == c.scenario && d.load.name() == c.load.name()
            })?;
            Some((c, direct))
        })
}

/// The rows of `results.json`, every run included.
pub fn results_json(cells: &[Cell]) -> Vec<Value> {
    cells
        .iter()
        .map(|c| {
            let mut row = json!({
                "scenario": c.scenario,
                "load": c.load.name(),
                "clients": c.load.clients(),
                "mode": c.peer.name(),
                "runs": c.runs.iter().map(|r| json!({
                    "connections": r.connections,
                    "errors": r.errors,
                    "seconds": round(r.seconds),
                    "conn_per_sec": round(r.conn_per_sec),
                    "p50_us": round(r.p50_us),
                    "p99_us": round(r.p99_us),
                    "mean_us": round(r.mean_us),
                    "peer_cpu_us_per_conn": round(r.peer_cpu_us),
                    "foreign_cpu": round(r.foreign_cpu * 1000.0) / 1000.0,
                })).collect::<Vec<_>>(),
            });
            for (name, metric) in METRICS {
                let s = c.spread(metric);
                row[name] =
                    json!({"median": round(s.median), "min": round(s.min), "max": round(s.max)});
            }
            row
        })
        .collect()
}

/// The comparisons of `results.json`: every peer against direct.
pub fn comparisons_json(cells: &[Cell]) -> Vec<Value> {
    comparisons(cells)
        .map(|(c, d)| {
            let m = |metric| (c.median(metric), d.median(metric));
            let ((r, rd), (p50, p50d), (p99, p99d)) = (m(RATE), m(P50), m(P99));
            json!({
                "scenario": c.scenario,
                "load": c.load.name(),
                "mode": c.peer.name(),
                "conn_per_sec_ratio": ratio(r, rd),
                "p50_ratio": ratio(p50, p50d),
                "p99_ratio": ratio(p99, p99d),
                "p50_added_us": round(p50 - p50d),
                "p99_added_us": round(p99 - p99d),
            })
        })
        .collect()
}
