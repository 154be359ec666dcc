//! Budgets per connection class (`limits.classes`, `docs/config.md`): a flood of one kind
//! of connection cannot take the permits and the handshake CPU of the others.
//!
//! A connection is admitted twice: at accept into `unclassified` (by the peer's address),
//! held until its route is known; then into its route's class ([`class_of`]) by the
//! client's address as believed, held for its life, with a handshake permit of that class
//! around a terminated route's TLS handshake. Each check is a counter or a semaphore's
//! `try_acquire`, so a refusal costs no crypto: the caller closes (or sends a TLS alert)
//! at once. Sources are IPv4 addresses and IPv6 /64s. A class's `rate` is one token
//! bucket for all its sources, its `per_source_rate` one bucket per source ([`bucket`]):
//! set on `unclassified`, it refuses a flooding source at accept, before anything is read.

mod bucket;
mod class;

pub(crate) use class::class_of;

use super::metrics::{ClassLabel, ClassRefusal, Metrics};
use crate::config::{budget, Budget, Config, CLASSES};
use bucket::{SourceBuckets, TokenBucket};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The class of connections not yet routed.
pub(crate) const UNCLASSIFIED: &str = "unclassified";
/// The class of legacy plaintext connections (SSH, HTTP, Postgres without TLS).
pub(crate) const LEGACY: &str = "legacy-plaintext";

/// Why a class refused a connection (the metric's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxConnections,
    PerSource,
    PerSourceRate,
    MaxHandshakes,
    Rate,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerSource => "per_source",
            Refusal::PerSourceRate => "per_source_rate",
            Refusal::MaxHandshakes => "max_handshakes",
            Refusal::Rate => "rate",
        }
    }
}

struct Class {
    name: &'static str,
    state: Mutex<State>,
    handshakes: Arc<Semaphore>,
    /// Handshake permits a reload withdrew while they were in use: forgotten when they
    /// come back.
    deficit: Arc<AtomicUsize>,
}

/// A class's budget (replaced at reload) and what it counts.
struct State {
    budget: Budget,
    active: usize,
    per_source: HashMap<IpAddr, usize>,
    /// The token bucket of `budget.rate`.
    bucket: TokenBucket,
    /// The buckets of `budget.per_source_rate`.
    sources: SourceBuckets,
}

impl State {
    /// Takes a token when the rate allows one more connection now.
    fn take_token(&mut self, now: Instant) -> bool {
        match self.budget.rate {
            Some(limit) => self.bucket.take(limit, now),
            None => true,
        }
    }

    /// Takes a token from `source`'s bucket when its rate allows one more now.
    fn take_source_token(&mut self, source: IpAddr, now: Instant) -> bool {
        match self.budget.per_source_rate {
            Some(limit) => self.sources.take(source, limit, now),
            None => true,
        }
    }
}

/// Every class's budget and counts; one per process (a reload keeps the counts and the
/// budgets of the start).
pub(crate) struct Admission {
    classes: Vec<Class>,
    metrics: Arc<Metrics>,
}

/// A connection counted in its class until dropped.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    class: usize,
    source: IpAddr,
}

impl Admission {
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Admission {
        let limits = &config.limits;
        let classes = CLASSES
            .iter()
            .map(|&name| {
                let budget = budget(&limits.classes, name, limits.max_connections);
                Class {
                    name,
                    state: Mutex::new(State {
                        budget,
                        active: 0,
                        per_source: HashMap::new(),
                        bucket: TokenBucket::full(
                            budget.rate.map_or(0.0, |(_, burst)| burst),
                            Instant::now(),
                        ),
                        sources: SourceBuckets::default(),
                    }),
                    handshakes: Arc::new(Semaphore::new(handshake_permits(budget))),
                    deficit: Arc::default(),
                }
            })
            .collect();
        Admission { classes, metrics }
    }

    /// Takes the budgets of a reloaded configuration; the counts go on (connections
    /// admitted under the old budgets stay).
    pub(crate) fn reconfigure(&self, config: &Config) {
        let limits = &config.limits;
        for c in &self.classes {
            let new = budget(&limits.classes, c.name, limits.max_connections);
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            let (old, now) = (handshake_permits(st.budget), handshake_permits(new));
            if now > old {
                c.handshakes.add_permits(now - old);
            } else {
                // Free permits are withdrawn now; those of handshakes in flight when
                // they end.
                let forgotten = c.handshakes.forget_permits(old - now);
                c.deficit
                    .fetch_add(old - now - forgotten, Ordering::Relaxed);
            }
            if new.rate != st.budget.rate {
                st.bucket = TokenBucket::full(new.rate.map_or(0.0, |(_, b)| b), Instant::now());
            }
            if new.per_source_rate != st.budget.per_source_rate {
                st.sources.clear();
            }
            st.budget = new;
        }
    }

    fn index(&self, class: &str) -> usize {
        self.classes
            .iter()
            .position(|c| c.name == class)
            .expect("a class of CLASSES")
    }

    /// Admits a connection from `ip` into `class`, or says which budget refuses it.
    pub(crate) fn admit(self: &Arc<Self>, class: &str, ip: IpAddr) -> Result<Admitted, Refusal> {
        let i = self.index(class);
        let c = &self.classes[i];
        let source = source_key(ip);
        let label = ClassLabel { class: c.name };
        let refused = |reason: Refusal| {
            let l = ClassRefusal {
                class: c.name,
                reason: reason.label(),
            };
            self.metrics.classes.refused.get_or_create(&l).inc();
            reason
        };
        {
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.active >= st.budget.max_connections {
                return Err(refused(Refusal::MaxConnections));
            }
            let per_source = st.budget.per_source;
            if st.per_source.get(&source).is_some_and(|n| *n >= per_source) {
                return Err(refused(Refusal::PerSource));
            }
            let now = Instant::now();
            // The source's own bucket first: a flooding source must not spend the
            // class's tokens.
            if !st.take_source_token(source, now) {
                return Err(refused(Refusal::PerSourceRate));
            }
            if !st.take_token(now) {
                return Err(refused(Refusal::Rate));
            }
            *st.per_source.entry(source).or_default() += 1;
            st.active += 1;
        }
        self.metrics.classes.admitted.get_or_create(&label).inc();
        self.metrics.classes.active.get_or_create(&label).inc();
        Ok(Admitted {
            admission: self.clone(),
            class: i,
            source,
        })
    }
}

impl Admitted {
    /// The class's permit for one TLS handshake, held while it runs.
    pub(crate) fn handshake(&self) -> Result<Handshake, Refusal> {
        let c = &self.admission.classes[self.class];
        let metrics = &self.admission.metrics.classes;
        let Ok(permit) = c.handshakes.clone().try_acquire_owned() else {
            let l = ClassRefusal {
                class: c.name,
                reason: Refusal::MaxHandshakes.label(),
            };
            metrics.refused.get_or_create(&l).inc();
            return Err(Refusal::MaxHandshakes);
        };
        let gauge = metrics
            .handshakes
            .get_or_create(&ClassLabel { class: c.name })
            .clone();
        gauge.inc();
        Ok(Handshake {
            permit: Some(permit),
            deficit: c.deficit.clone(),
            gauge,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let c = &self.admission.classes[self.class];
        {
            let mut st = c.state.lock().unwrap_or_else(|p| p.into_inner());
            st.active = st.active.saturating_sub(1);
            if let Some(n) = st.per_source.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    st.per_source.remove(&self.source);
                }
            }
        }
        let label = ClassLabel { class: c.name };
        self.admission
            .metrics
            .classes
            .active
            .get_or_create(&label)
            .dec();
    }
}

/// A TLS handshake in progress, counted until dropped.
pub(crate) struct Handshake {
    permit: Option<OwnedSemaphorePermit>,
    deficit: Arc<AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.gauge.dec();
        let owed = self
            .deficit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
        if owed.is_ok() {
            if let Some(p) = self.permit.take() {
                p.forget();
            }
        }
    }
}

/// The permits of a class's handshake semaphore.
fn handshake_permits(b: Budget) -> usize {
    b.max_handshakes.min(Semaphore::MAX_PERMITS)
}

/// An IPv4 address, or an IPv6 address's /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(s.into())
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
