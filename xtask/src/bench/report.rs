//! Turns the measured runs into the report: a Markdown table (printed, and spliced into
//! docs/benchmarks.md between markers), `target/bench/results.json`, and the machine facts
//! that say what the numbers were measured on.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{load::RunStats, Load, Peer, Scenario, SCENARIOS};

/// The block of docs/benchmarks.md the connection and throughput rows rewrite.
pub const RESULTS_BLOCK: &str = "results";
/// The block the HTTP rows rewrite (`--http-only` touches only this one).
pub const HTTP_BLOCK: &str = "http";
/// The block the reverse-tunnel rows rewrite (`--tunnel-only` touches only this one).
pub const TUNNEL_BLOCK: &str = "tunnel";

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

    fn label(&self) -> String {
        format!("{} ×{}", self.load.name(), self.load.clients())
    }
}

/// Median, minimum and maximum of a non-empty sample.
pub fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

/// Reads one number off a run.
type Metric = fn(&RunStats) -> f64;

const METRICS: [(&str, Metric); 4] = [
    ("conn_per_sec", |r| r.conn_per_sec),
    ("p50_us", |r| r.p50_us),
    ("p99_us", |r| r.p99_us),
    ("mean_us", |r| r.mean_us),
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

/// What the numbers were measured on and with.
pub struct Facts {
    date: String,
    nproc: String,
    kernel: String,
    cpu: String,
    commit: String,
    seconds: f64,
    runs: usize,
    concurrency: usize,
}

impl Facts {
    pub fn collect(root: &Path, seconds: f64, runs: usize, concurrency: usize) -> Facts {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    Some(
                        l.strip_prefix("model name")?
                            .trim_start_matches([' ', '\t', ':'])
                            .to_owned(),
                    )
                })
            })
            .unwrap_or_else(|| "?".into());
        let mut commit = output(root, "git", &["rev-parse", "--short", "HEAD"]);
        let dirty = output(
            root,
            "git",
            &["status", "--porcelain", "--", "proxy-user", "proxy-common"],
        );
        if !dirty.is_empty() {
            commit.push_str(" + uncommitted changes");
        }
        Facts {
            date: output(root, "date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            nproc: output(root, "nproc", &[]),
            kernel: output(root, "uname", &["-r"]),
            cpu,
            commit,
            seconds,
            runs,
            concurrency,
        }
    }

    /// One line under the chart's title: when, on what, how many runs.
    pub fn chart_subtitle(&self) -> String {
        format!(
            "{}, {} CPUs ({}), Linux {}, switchyard {}; {} runs × {} s per bar",
            self.date, self.nproc, self.cpu, self.kernel, self.commit, self.runs, self.seconds
        )
    }

    /// When and on what: `Measured DATE on N CPUs (CPU), Linux K, switchyard COMMIT`.
    pub fn measured(&self) -> String {
        format!(
            "Measured {} on {} CPUs ({}), Linux {}, switchyard {}",
            self.date, self.nproc, self.cpu, self.kernel, self.commit
        )
    }

    /// The facts, then one line per scenario saying what it measures.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{}; loopback, {} runs × {} s per row, concurrent = {} clients. Cells: median \
             (min–max) over the runs.\n\n",
            self.measured(),
            self.runs,
            self.seconds,
            self.concurrency
        );
        for sc in SCENARIOS {
            let _ = writeln!(s, "- `{}`: {}", sc.name, sc.about);
        }
        s
    }
}

fn output(dir: &Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// Results per row, then each peer against DIRECT: ratios through/direct and added latency.
pub fn table(cells: &[Cell]) -> String {
    let mut t = String::from(
        "| scenario | load | mode | conn/s | p50 µs | p99 µs | mean µs | errors |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
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
        "\n| scenario | load | peer | conn/s peer/direct | p50 peer/direct | p50 added µs | \
         p99 peer/direct | p99 added µs |\n|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for (c, d) in comparisons(cells) {
        let m = |metric| (c.spread(metric).median, d.spread(metric).median);
        let (rate, rate_d) = m(METRICS[0].1);
        let ((p50, p50_d), (p99, p99_d)) = (m(METRICS[1].1), m(METRICS[2].1));
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
    t
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

/// `results.json`: the facts, the connection rows and their comparisons, and `http`, the
/// HTTP rows (an empty list when they were not measured).
pub fn json(facts: &Facts, cells: &[Cell], http: Value) -> Result<String> {
    let spread = |c: &Cell, metric| {
        let s = c.spread(metric);
        json!({"median": round(s.median), "min": round(s.min), "max": round(s.max)})
    };
    let results: Vec<Value> = cells
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
                    "foreign_cpu": round(r.foreign_cpu * 1000.0) / 1000.0,
                })).collect::<Vec<_>>(),
            });
            for (name, metric) in METRICS {
                row[name] = spread(c, metric);
            }
            row
        })
        .collect();
    let comparisons: Vec<Value> = comparisons(cells)
        .map(|(c, d)| {
            let m = |i: usize| (c.spread(METRICS[i].1).median, d.spread(METRICS[i].1).median);
            let ((r, rd), (p50, p50d), (p99, p99d)) = (m(0), m(1), m(2));
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
        .collect();
    let doc = json!({
        "date": facts.date,
        "machine": {
            "nproc": facts.nproc.parse::<u64>().map_or_else(|_| json!(facts.nproc), |n| json!(n)),
            "kernel": facts.kernel,
            "cpu": facts.cpu,
        },
        "switchyard": facts.commit,
        "settings": {
            "seconds_per_run": facts.seconds,
            "runs": facts.runs,
            "concurrency": facts.concurrency,
            "tls_resumption": false,
        },
        "results": results,
        "comparisons": comparisons,
        "http": http,
    });
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

/// One decimal is plenty for microseconds and connections per second.
fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 1000.0).round() / 1000.0
}

/// Replaces the text between the markers `<!-- bench:NAME:begin -->` and
/// `<!-- bench:NAME:end -->` of `doc` with `block`, leaving the rest of the file alone.
pub fn update_doc(doc: &Path, name: &str, block: &str) -> Result<()> {
    let (begin, end) = (
        format!("<!-- bench:{name}:begin -->"),
        format!("<!-- bench:{name}:end -->"),
    );
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        bail!("{} lacks the {begin} … {end} markers", doc.display());
    };
    if e < b {
        bail!("{}: {end} comes before {begin}", doc.display());
    }
    let new = format!("{}{begin}\n{block}{}", &text[..b], &text[e..]);
    std::fs::write(doc, new).with_context(|| format!("write {}", doc.display()))
}
