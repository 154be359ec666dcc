//! Keeping other work out of the numbers on a shared machine: before a run, wait until the
//! CPUs are quiet; after it, count the CPU time that processes other than ours used during
//! it (from /proc), so a run that shared the machine with a build or a test is redone.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

/// Busy share of all CPUs above which the machine does not count as quiet.
const QUIET: f64 = 0.10;
/// Share of all CPUs that others may use during a run before it is redone. Loopback
/// traffic is partly handled in softirq time that is not charged to our processes; on a
/// quiet machine that shows up as about 1%.
pub const FOREIGN: f64 = 0.10;
/// How long each look at the CPUs lasts.
const PROBE: Duration = Duration::from_millis(300);
/// Longest wait for a quiet machine.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// CPU time counters at one moment, in clock ticks.
#[derive(Clone, Copy)]
pub struct Sample {
    at: Instant,
    busy: u64,
    ours: u64,
}

impl Sample {
    /// Reads the machine's busy time and the CPU time of `pids` (0 means this process and
    /// the children it has already waited for, such as a finished `wrk`).
    pub fn take(pids: &[u32]) -> Sample {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0);
        let ours = pids.iter().map(|&pid| process_ticks(pid)).sum();
        Sample {
            at: Instant::now(),
            busy,
            ours,
        }
    }

    /// Share of all CPUs that processes other than `pids` used since `earlier`.
    pub fn foreign_since(&self, earlier: &Sample) -> f64 {
        let foreign = self.busy.saturating_sub(earlier.busy) as f64
            - self.ours.saturating_sub(earlier.ours) as f64;
        foreign.max(0.0) / capacity(self.at - earlier.at)
    }

    /// CPU seconds the whole machine, and `pids`, spent since `earlier`.
    pub fn cpu_seconds_since(&self, earlier: &Sample) -> (f64, f64) {
        let secs = |ticks: u64| ticks as f64 / 100.0;
        (
            secs(self.busy.saturating_sub(earlier.busy)),
            secs(self.ours.saturating_sub(earlier.ours)),
        )
    }

    fn busy_since(&self, earlier: &Sample) -> f64 {
        self.busy.saturating_sub(earlier.busy) as f64 / capacity(self.at - earlier.at)
    }
}

/// Clock ticks all CPUs can spend in `d` (Linux reports 100 per second per CPU).
fn capacity(d: Duration) -> f64 {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    (d.as_secs_f64() * 100.0 * cpus as f64).max(1.0)
}

/// CPU seconds (utime + stime, all threads) that `pids` have used so far (0 as in
/// [`Sample::take`]).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| process_ticks(pid)).sum::<u64>() as f64 / 100.0
}

/// utime + stime of a process, all its threads included; 0 when it is gone. For 0 (this
/// process) also cutime + cstime: the children it has reaped, so that a load client run as
/// a child (`wrk`, `h2load`) counts as ours once it has exited. No other child is reaped
/// while a run is measured.
fn process_ticks(pid: u32) -> u64 {
    match pid {
        0 => stat_ticks("/proc/self/stat", true),
        pid => stat_ticks(format!("/proc/{pid}/stat"), false),
    }
}

/// CPU seconds (utime + stime) this process's threads named `name` have used so far.
pub fn threads_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|t| stat_ticks(t.path().join("stat"), false))
        .sum();
    ticks as f64 / 100.0
}

/// utime + stime from a `stat` file, plus cutime + cstime when `reaped`; 0 when it is gone.
fn stat_ticks(path: impl AsRef<Path>, reaped: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let children = if reaped { field(16) + field(17) } else { 0 };
    field(14) + field(15) + children
}

/// Waits until the CPUs are less than `QUIET` busy over `PROBE` (our servers idle).
pub fn wait() -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let before = Sample::take(&[]);
        thread::sleep(PROBE);
        let busy = Sample::take(&[]).busy_since(&before);
        if busy < QUIET {
            return Ok(());
        }
        if start.elapsed() > MAX_WAIT {
            bail!(
                "the CPUs stayed {busy:.0}% busy for {MAX_WAIT:?}; not measuring on a busy machine",
                busy = busy * 100.0
            );
        }
        if !told {
            eprintln!(
                "xtask: CPUs {:.0}% busy with other work; waiting for quiet before measuring",
                busy * 100.0
            );
            told = true;
        }
    }
}
