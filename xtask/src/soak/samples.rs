//! What a soak run records: a [`Sample`] every few seconds (the serving process's RSS from
//! `/proc/PID/status` and open descriptors from `/proc/PID/fd`, the draining one's beside
//! it, the tally's counters), the operator's [`Event`]s, the table line printed per
//! sample, the CSV beside the chart, and the trend of each process over its steady state
//! (after a warm-up): first and last value and the least-squares slope per 10 minutes.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use crate::bench::tunnel_servers::rss_kb;

pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    pub pid: u32,
    pub rss_kb: u64,
    pub fds: u64,
    /// The process draining after the upgrade: pid, RSS, fds.
    pub old: Option<(u32, u64, u64)>,
    pub done: u64,
    pub streams: u64,
    pub bytes: u64,
    pub unexpected: u64,
    pub refused: u64,
    pub lagged: u64,
    /// What happened since the previous sample.
    pub event: String,
    /// Taken once the clients had stopped: the idle process, not part of the trend.
    pub after_stop: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Hup,
    Upgrade,
    OldExit,
}

pub struct Event {
    pub t: f64,
    pub mark: Mark,
}

/// RSS (kB) and open descriptors of `pid`; `None` once it is gone (or a zombie).
pub fn process(pid: u32) -> Option<(u64, u64)> {
    let rss = rss_kb(pid).ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

pub fn header() -> String {
    format!(
        "{:>7} {:>8} {:>8} {:>6} {:>9} {:>7} {:>7} {:>9} {:>10} {:>8}  event",
        "t s",
        "pid",
        "RSS MiB",
        "fds",
        "conns",
        "conn/s",
        "streams",
        "MB echoed",
        "unexpected",
        "refused"
    )
}

pub fn line(s: &Sample, prev: Option<&Sample>) -> String {
    let rate = match prev {
        Some(p) if s.t - p.t >= 1.0 => format!("{:.0}", (s.done - p.done) as f64 / (s.t - p.t)),
        _ => "-".to_owned(),
    };
    let old = s.old.map_or(String::new(), |(pid, rss, fds)| {
        format!(
            " [draining {pid}: {:.1} MiB, {fds} fds]",
            rss as f64 / 1024.0
        )
    });
    format!(
        "{:>7.0} {:>8} {:>8.1} {:>6} {:>9} {:>7} {:>7} {:>9.1} {:>10} {:>8}  {}{old}",
        s.t,
        s.pid,
        s.rss_kb as f64 / 1024.0,
        s.fds,
        s.done,
        rate,
        s.streams,
        s.bytes as f64 / 1e6,
        s.unexpected,
        s.refused,
        s.event
    )
}

pub fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut csv = String::from(
        "t_s,pid,rss_kb,fds,old_pid,old_rss_kb,old_fds,conns_done,streams_open,\
         bytes_echoed,unexpected,refused,lagged,event\n",
    );
    for s in samples {
        let (op, or, of) = s
            .old
            .map_or((String::new(), String::new(), String::new()), |o| {
                (o.0.to_string(), o.1.to_string(), o.2.to_string())
            });
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{op},{or},{of},{},{},{},{},{},{},{}",
            s.t,
            s.pid,
            s.rss_kb,
            s.fds,
            s.done,
            s.streams,
            s.bytes,
            s.unexpected,
            s.refused,
            s.lagged,
            s.event
        );
    }
    std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))
}

/// One process over its steady state.
pub struct Trend {
    pub pid: u32,
    pub from: f64,
    pub to: f64,
    pub rss_kb: (u64, u64),
    pub fds: (u64, u64),
    pub rss_kb_per_10min: f64,
    pub fds_per_10min: f64,
}

/// The trend of each serving process, from `warmup` seconds after it began serving.
pub fn trends(samples: &[Sample], warmup: f64) -> Vec<Trend> {
    let mut pids: Vec<u32> = Vec::new();
    for s in samples {
        if !pids.contains(&s.pid) {
            pids.push(s.pid);
        }
    }
    pids.into_iter()
        .filter_map(|pid| {
            let own: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.pid == pid && !s.after_stop)
                .collect();
            let began = own.first()?.t;
            let steady: Vec<&Sample> = own.into_iter().filter(|s| s.t >= began + warmup).collect();
            let (first, last) = (steady.first()?, steady.last()?);
            let slope = |f: fn(&Sample) -> u64| {
                let points: Vec<(f64, f64)> = steady.iter().map(|s| (s.t, f(s) as f64)).collect();
                slope(&points) * 600.0
            };
            Some(Trend {
                pid,
                from: first.t,
                to: last.t,
                rss_kb: (first.rss_kb, last.rss_kb),
                fds: (first.fds, last.fds),
                rss_kb_per_10min: slope(|s| s.rss_kb),
                fds_per_10min: slope(|s| s.fds),
            })
        })
        .collect()
}

impl Trend {
    pub fn line(&self) -> String {
        let (rss_slope, fds_slope) = if self.to - self.from >= SLOPE_SPAN {
            (
                format!(" ({:+.2} MiB per 10 min)", self.rss_kb_per_10min / 1024.0),
                format!(" ({:+.1} per 10 min)", self.fds_per_10min),
            )
        } else {
            (String::new(), " (too short a span for slopes)".to_owned())
        };
        format!(
            "pid {} from {:.0} s to {:.0} s: RSS {:.1} -> {:.1} MiB{rss_slope}, fds {} -> {}{fds_slope}",
            self.pid,
            self.from,
            self.to,
            self.rss_kb.0 as f64 / 1024.0,
            self.rss_kb.1 as f64 / 1024.0,
            self.fds.0,
            self.fds.1,
        )
    }
}

/// Steady states shorter than this get no slope: it would extrapolate noise.
const SLOPE_SPAN: f64 = 300.0;

/// Least-squares slope of `y` over `x`; 0 with fewer than two distinct `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}
