//! Budgets per connection class (`limits.classes`, `docs/config.md`): a flood of one kind
//! of connection cannot take the permits and the handshake CPU of the others.
//!
//! A connection is admitted twice: at accept into `unclassified` (by the peer's address),
//! held until its route is known; then into its route's class ([`class_of`]) by the
//! client's address as believed, held for its life, with a handshake permit of that class
//! around a terminated route's TLS handshake. Each check is a counter or a semaphore's
//! `try_acquire`, so a refusal costs no crypto: the caller closes (or sends a TLS alert)
//! at once. Sources are IPv4 addresses and IPv6 /64s.

use super::metrics::{ClassLabel, ClassRefusal, Metrics};
use super::route::{Mode, Role};
use super::state::Route;
use crate::config::{budget, Budget, Config, CLASSES};
use crate::io::tunnel::Kind;
use crate::protocol::{AUTH_ALPN_PREFIX, MONGODB_ALPN, MYSQL_ALPN, POSTGRES_ALPN, SSH_ALPN};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
    MaxHandshakes,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerSource => "per_source",
            Refusal::MaxHandshakes => "max_handshakes",
        }
    }
}

struct Class {
    name: &'static str,
    budget: Budget,
    /// Connections now, and per source.
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
    handshakes: Arc<Semaphore>,
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
                    budget,
                    counts: Mutex::default(),
                    handshakes: Arc::new(Semaphore::new(
                        budget.max_handshakes.min(Semaphore::MAX_PERMITS),
                    )),
                }
            })
            .collect();
        Admission { classes, metrics }
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
            let mut counts = c.counts.lock().unwrap_or_else(|p| p.into_inner());
            if counts.0 >= c.budget.max_connections {
                return Err(refused(Refusal::MaxConnections));
            }
            let from = counts.1.entry(source).or_default();
            if *from >= c.budget.per_source {
                return Err(refused(Refusal::PerSource));
            }
            *from += 1;
            counts.0 += 1;
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
            _permit: permit,
            gauge,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let c = &self.admission.classes[self.class];
        {
            let mut counts = c.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.0 = counts.0.saturating_sub(1);
            if let Some(n) = counts.1.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    counts.1.remove(&self.source);
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
    _permit: OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.gauge.dec();
    }
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

/// The class of a route.
pub(crate) fn class_of(route: &Route) -> &'static str {
    let alpn = route.alpn.first().map(String::as_str).unwrap_or("");
    let base = alpn
        .strip_suffix(crate::protocol::PING_SUFFIX)
        .unwrap_or(alpn);
    match route.role {
        Role::Web | Role::DetectionProbe => "web",
        Role::App | Role::Agent(Kind::Http) | Role::Agent(Kind::Tcp) => "app",
        Role::TunnelService => "tunnel",
        Role::Agent(Kind::Kube) => "kube",
        Role::Agent(Kind::Ssh) => "ssh",
        Role::Agent(Kind::Postgres) => "postgres",
        Role::Agent(Kind::Mysql) => "mysql",
        Role::Agent(Kind::Mongodb) => "mongodb",
        Role::Relay => match base {
            SSH_ALPN => "ssh",
            POSTGRES_ALPN => "postgres",
            MYSQL_ALPN => "mysql",
            MONGODB_ALPN => "mongodb",
            _ if route.name == "kube" => "kube",
            _ if route.name.starts_with("auth:") || base.starts_with(AUTH_ALPN_PREFIX) => "auth",
            _ if matches!(route.mode, Mode::Passthrough) => "app",
            _ => "app",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_count_per_class_and_per_source_and_give_back_on_drop() {
        let text = "proxy_service: {web_listen_addr: '127.0.0.1:0'}\n\
            limits: {classes: {ssh: {per_source: 2, max_connections: 3, max_handshakes: 1}}}\n";
        let config = Config::parse(text, std::path::Path::new(".")).unwrap();
        let a = Arc::new(Admission::new(&config, Arc::new(Metrics::new())));
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let x = a.admit("ssh", one).unwrap();
        let _y = a.admit("ssh", one).unwrap();
        assert_eq!(a.admit("ssh", one).err(), Some(Refusal::PerSource));
        let _z = a.admit("ssh", two).unwrap();
        assert_eq!(a.admit("ssh", two).err(), Some(Refusal::MaxConnections));
        // Other classes are untouched.
        assert!(a.admit("postgres", one).is_ok());
        let h = x.handshake().unwrap();
        assert_eq!(x.handshake().err(), Some(Refusal::MaxHandshakes));
        drop(h);
        assert!(x.handshake().is_ok());
        drop(x);
        assert!(
            a.admit("ssh", one).is_ok(),
            "a dropped connection gives its place back"
        );
        // IPv6 sources are counted by /64.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(source_key(v6a), source_key(v6b));
    }
}
