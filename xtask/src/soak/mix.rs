//! The load of a soak run and its tally. Three loops share one tokio runtime until `stop`:
//! short connections of every kind at `rate` per second (weighted towards the cheap
//! kinds; at most `MAX_IN_FLIGHT` at once, the rest counted as lagged, not as errors), a
//! fixed number of long-lived streams (each lives a random time in `life`, then closes
//! cleanly and a stream of the next kind takes its place), and one bad-input probe every
//! `bad_every`. What is unexpected is counted once, with the first messages kept.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet, time::sleep};

use super::{
    bad::{Bad, Probes, BAD},
    clients::{Clients, Kind, KINDS},
};

/// Short connections in flight at most; beyond it the client is behind, not the proxy.
const MAX_IN_FLIGHT: usize = 400;
/// Error messages kept for the summary.
const KEEP_ERRORS: usize = 10;
/// The short connections' kinds, in proportion: one cycle of 16.
const SHORT: [Kind; 16] = {
    use Kind::*;
    [
        Legacy,
        Passthrough,
        Terminated,
        Web,
        Legacy,
        Passthrough,
        Terminated,
        Web,
        Tunnel,
        UpgradeWs,
        Legacy,
        Passthrough,
        Terminated,
        Web,
        Tunnel,
        UpgradeLegacy,
    ]
};
/// The streams' kinds, taken in turn.
const STREAMS: [Kind; 6] = {
    use Kind::*;
    [
        Legacy,
        Passthrough,
        Terminated,
        Tunnel,
        UpgradeWs,
        UpgradeLegacy,
    ]
};

pub struct Load {
    pub rate: u32,
    pub streams: usize,
    pub life: (Duration, Duration),
    pub bad_every: Duration,
}

pub struct Tally {
    start: Instant,
    done: [AtomicU64; KINDS.len()],
    refused: [AtomicU64; BAD.len()],
    unexpected: AtomicU64,
    pub bytes: AtomicU64,
    pub streams_open: AtomicU64,
    pub lagged: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    pub fn started() -> Tally {
        Tally {
            start: Instant::now(),
            done: Default::default(),
            refused: Default::default(),
            unexpected: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            streams_open: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            errors: Mutex::default(),
        }
    }

    /// Connections that ended as they should, every kind.
    pub fn done(&self) -> u64 {
        self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// Bad input refused as expected.
    pub fn refused(&self) -> u64 {
        self.refused.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    pub fn unexpected(&self) -> u64 {
        self.unexpected.load(Ordering::Relaxed)
    }

    /// Counts an unexpected error and keeps its message if it is among the first.
    pub fn error(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < KEEP_ERRORS {
            let at = self.start.elapsed().as_secs_f64();
            eprintln!("xtask: soak: unexpected at {at:.1} s: {what}");
            errors.push(format!("{at:.1} s: {what}"));
        }
    }

    pub fn first_errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors lock").clone()
    }

    /// `kind N, …` of the connections done, and of the refusals.
    pub fn breakdown(&self) -> (String, String) {
        let list = |names: Vec<&str>, counts: &[AtomicU64]| {
            let parts: Vec<String> = names
                .iter()
                .zip(counts)
                .map(|(n, c)| format!("{n} {}", c.load(Ordering::Relaxed)))
                .collect();
            parts.join(", ")
        };
        (
            list(KINDS.iter().map(|k| k.name()).collect(), &self.done),
            list(BAD.iter().map(|b| b.name()).collect(), &self.refused),
        )
    }

    fn ok(&self, kind: Kind) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.done[i].fetch_add(1, Ordering::Relaxed);
    }

    fn refusal(&self, bad: Bad) {
        let i = BAD.iter().position(|b| *b == bad).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the three loops until `stop`, then waits for what is in flight.
pub async fn run(
    clients: Arc<Clients>,
    probes: Arc<Probes>,
    tally: Arc<Tally>,
    load: Load,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = JoinSet::new();
    for i in 0..load.streams {
        let (clients, tally, stop) = (clients.clone(), tally.clone(), stop.clone());
        let life = load.life;
        tasks.spawn(async move {
            sleep(Duration::from_millis(50 * i as u64)).await;
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let kind = STREAMS[(i + n) % STREAMS.len()];
                let span = life.1.saturating_sub(life.0).as_millis() as u64;
                let lives = life.0 + Duration::from_millis(random.next() % span.max(1));
                let until = tokio::time::Instant::now() + lives;
                tally.streams_open.fetch_add(1, Ordering::Relaxed);
                let seed = (i * 1_000_003 + n) as u64;
                let r = clients.stream(kind, seed, until, &stop, &tally.bytes).await;
                tally.streams_open.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Ok(()) => tally.ok(kind),
                    Err(e) => tally.error(format!("{} stream: {e:#}", kind.name())),
                }
                n += 1;
            }
        });
    }
    {
        let (probes, tally, stop) = (probes.clone(), tally.clone(), stop.clone());
        tasks.spawn(async move {
            let mut probing = JoinSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let bad = BAD[n as usize % BAD.len()];
                let (probes, tally) = (probes.clone(), tally.clone());
                probing.spawn(async move {
                    match probes.probe(bad, n).await {
                        Ok(()) => tally.refusal(bad),
                        Err(e) => tally.error(format!("{}: {e:#}", bad.name())),
                    }
                });
                n += 1;
                sleep(load.bad_every).await;
                while probing.try_join_next().is_some() {}
            }
            while probing.join_next().await.is_some() {}
        });
    }
    shorts(clients, tally, load.rate, &stop).await;
    while tasks.join_next().await.is_some() {}
}

/// `rate` short connections per second, counted from the start so that a stall is made
/// up for, up to one second's worth (more is counted as lagged).
async fn shorts(clients: Arc<Clients>, tally: Arc<Tally>, rate: u32, stop: &AtomicBool) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut started = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(10)).await;
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        if due > started + u64::from(rate) {
            tally
                .lagged
                .fetch_add(due - started - u64::from(rate), Ordering::Relaxed);
            started = due - u64::from(rate);
        }
        while started < due {
            let seed = started;
            started += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tally.lagged.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let kind = SHORT[seed as usize % SHORT.len()];
            let (clients, tally) = (clients.clone(), tally.clone());
            tokio::spawn(async move {
                match clients.short(kind, seed).await {
                    Ok(()) => tally.ok(kind),
                    Err(e) => tally.error(format!("{}: {e:#}", kind.name())),
                }
                drop(permit);
            });
        }
    }
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// xorshift64: the streams' lifetimes, reproducible from run to run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
