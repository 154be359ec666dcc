//! What every report shares: the machine facts that say what the numbers were measured on,
//! splicing a block into docs/benchmarks.md between its markers, median and min–max, and
//! `target/bench/results.json` (the connection rows of `conn_report.rs` and the HTTP rows).

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    conn_report::{self, Cell},
    connections::SCENARIOS,
};

/// The block of docs/benchmarks.md the throughput rows rewrite.
pub const THROUGHPUT_BLOCK: &str = "throughput";
/// The block the HTTP rows rewrite (`--http-only` touches only this one).
pub const HTTP_BLOCK: &str = "http";
/// The block the reverse-tunnel rows rewrite (`--tunnel-only` touches only this one).
pub const TUNNEL_BLOCK: &str = "tunnel";

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

    /// The facts and the peers' `versions`, then one line per scenario saying what it
    /// measures.
    pub fn markdown(&self, versions: &str) -> String {
        let mut s = format!(
            "{}; loopback, {} runs × {} s per row, concurrent = {} clients; {versions}. \
             Cells: median (min–max) over the runs.\n\n",
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

/// `results.json`: the facts, the connection rows and their comparisons, and `http`, the
/// HTTP rows (an empty list when they were not measured).
pub fn json(facts: &Facts, cells: &[Cell], http: Value) -> Result<String> {
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
        "results": conn_report::results_json(cells),
        "comparisons": conn_report::comparisons_json(cells),
        "http": http,
    });
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

/// One decimal is plenty for microseconds and connections per second.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn ratio(a: f64, b: f64) -> f64 {
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
