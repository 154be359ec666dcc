//! The operator's side of a soak run: the [`Plan`] (when each SIGHUP and the binary
//! upgrade happen, how long streams live, when a process counts as steady) and the loop
//! that carries it out while the clients run: SIGHUP to the serving process, `switchyard
//! upgrade` on a thread of its own (the new pid is measured from its answer on), the old
//! process's exit watched (within `limits.drain_timeout`, with status 0), and a sample
//! every `SAMPLE_EVERY` seconds.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    mix::Tally,
    samples::{self, Event, Mark, Sample},
    servers::{Servers, DRAIN_TIMEOUT},
};

/// How often a sample is taken.
const SAMPLE_EVERY: f64 = 5.0;
/// How long past its drain deadline the old process may take to exit.
const EXIT_MARGIN: f64 = 15.0;

/// When the operator's events happen, how long streams live, when a process is steady.
pub struct Plan {
    pub seconds: f64,
    pub hups: Vec<f64>,
    pub upgrade: f64,
    pub life: (Duration, Duration),
    pub warmup: f64,
}

impl Plan {
    pub fn new(seconds: f64) -> Plan {
        let (hups, upgrade) = if seconds >= 120.0 {
            let hups = (1..).map(|i| f64::from(i) * 60.0);
            let hups = hups.take_while(|t| *t < seconds).collect();
            (hups, (seconds / 120.0).floor() * 60.0 + 30.0)
        } else {
            (vec![seconds / 3.0], seconds / 2.0)
        };
        let longest = (seconds / 6.0).clamp(6.0, 90.0);
        Plan {
            seconds,
            hups,
            upgrade,
            life: (
                Duration::from_secs_f64(longest / 3.0),
                Duration::from_secs_f64(longest),
            ),
            warmup: (seconds / 6.0).clamp(10.0, 120.0),
        }
    }
}

/// What the operator's side of the run saw: samples, events, the upgrade's pids.
pub struct Run {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    /// Old pid, new pid (the same when the upgrade failed), when.
    pub upgraded: Option<(u32, u32, f64)>,
    pub old_exit: Option<f64>,
}

/// The operator's loop: SIGHUPs, the upgrade, the old process's exit, a sample every
/// `SAMPLE_EVERY`, until the run's time is up.
pub fn operate(servers: &mut Servers, plan: &Plan, tally: &Tally) -> Result<Run> {
    let start = Instant::now();
    let mut run = Run {
        samples: Vec::new(),
        events: Vec::new(),
        upgraded: None,
        old_exit: None,
    };
    let (mut hups, mut event) = (plan.hups.iter().peekable(), String::new());
    let mut upgrading: Option<mpsc::Receiver<Result<u32>>> = None;
    let mut next_sample = 0.0;
    loop {
        let t = start.elapsed().as_secs_f64();
        if hups.next_if(|h| **h <= t).is_some() {
            match servers.sighup() {
                Ok(()) => event.push_str("SIGHUP "),
                Err(e) => tally.error(format!("SIGHUP: {e:#}")),
            }
            run.events.push(Event { t, mark: Mark::Hup });
        }
        if t >= plan.upgrade && run.upgraded.is_none() && upgrading.is_none() {
            let (tx, rx) = mpsc::channel();
            let (binary, socket) = servers.upgrade_args();
            std::thread::spawn(move || tx.send(Servers::upgrade(&binary, &socket)));
            upgrading = Some(rx);
            run.events.push(Event {
                t,
                mark: Mark::Upgrade,
            });
        }
        if let Some(Ok(result)) = upgrading.as_ref().map(mpsc::Receiver::try_recv) {
            upgrading = None;
            match result {
                Ok(new) => {
                    let old = servers.serving;
                    event.push_str(&format!("upgrade {old}->{new} "));
                    run.upgraded = Some((old, new, t));
                    servers.serving = new;
                }
                Err(e) => {
                    tally.error(format!("binary upgrade: {e:#}"));
                    run.upgraded = Some((servers.serving, servers.serving, t));
                }
            }
        }
        old_exited(servers, tally, &mut run, t, &mut event);
        if samples::process(servers.serving).is_none() {
            tally.error(format!("the serving process {} is gone", servers.serving));
            return Ok(run);
        }
        if t >= next_sample || t >= plan.seconds {
            let sample = sample(servers, &run, tally, t, std::mem::take(&mut event));
            println!("{}", samples::line(&sample, run.samples.last()));
            run.samples.push(sample);
            next_sample += SAMPLE_EVERY;
        }
        if t >= plan.seconds {
            return Ok(run);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Notes the old process's exit after the upgrade; an error when it failed, or outlived
/// its drain deadline.
fn old_exited(servers: &mut Servers, tally: &Tally, run: &mut Run, t: f64, event: &mut String) {
    let Some((old, new, at)) = run.upgraded else {
        return;
    };
    if old == new || run.old_exit.is_some() {
        return;
    }
    match servers.first() {
        (_, Some(status)) => {
            run.old_exit = Some(t);
            run.events.push(Event {
                t,
                mark: Mark::OldExit,
            });
            event.push_str(&format!("pid {old} exited after {:.0} s ", t - at));
            if !status.success() {
                tally.error(format!("the old process {old} exited with {status}"));
            }
        }
        (_, None) if t - at > DRAIN_TIMEOUT.as_secs_f64() + EXIT_MARGIN => {
            run.old_exit = Some(t);
            tally.error(format!(
                "the old process {old} still runs {:.0} s after the upgrade",
                t - at
            ));
        }
        (_, None) => {}
    }
}

/// The serving process (and the draining one) now, with the tally's counters.
fn sample(servers: &Servers, run: &Run, tally: &Tally, t: f64, event: String) -> Sample {
    let after_stop = event.starts_with("clients stopped");
    let (rss_kb, fds) = samples::process(servers.serving).unwrap_or((0, 0));
    let old = match run.upgraded {
        Some((old, new, _)) if old != new && run.old_exit.is_none() => {
            samples::process(old).map(|(rss, fds)| (old, rss, fds))
        }
        _ => None,
    };
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    Sample {
        t,
        pid: servers.serving,
        rss_kb,
        fds,
        old,
        done: tally.done(),
        streams: tally.streams_open.load(relaxed),
        bytes: tally.bytes.load(relaxed),
        unexpected: tally.unexpected(),
        refused: tally.refused(),
        lagged: tally.lagged.load(relaxed),
        event: event.trim_end().to_owned(),
        after_stop,
    }
}

/// After the clients stopped: a last sample, and the wait for the old process (its
/// streams are closed, so it should go at once); no upgrade at all is an error.
pub fn finish(servers: &mut Servers, plan: &Plan, tally: &Tally, run: &mut Run) {
    if run.upgraded.is_none() {
        tally.error("the binary upgrade did not happen within the run".to_owned());
    }
    let stopped = Instant::now();
    let mut event = String::from("clients stopped ");
    while run.upgraded.is_some_and(|(o, n, _)| o != n) && run.old_exit.is_none() {
        let t = plan.seconds + stopped.elapsed().as_secs_f64();
        old_exited(servers, tally, run, t, &mut event);
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = plan.seconds + stopped.elapsed().as_secs_f64();
    let last = sample(servers, run, tally, t, event);
    println!("{}", samples::line(&last, run.samples.last()));
    run.samples.push(last);
}
