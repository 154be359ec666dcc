//! The live table of connected agents: who each is, what it serves, its tunnels. Agents
//! are keyed by the id their process sends (all of an agent's tunnels share it), and each
//! accepted service is indexed so a client connection finds its tunnel in one lookup.
//!
//! [`Registry::admit`] decides a Hello — which services are accepted, which refused and
//! why (not allowed for this identity, named by the static configuration, served by an
//! agent of another identity) — and adds the tunnel in the same step, so two tunnels of
//! one agent racing in cannot exceed the count it asked for.

use crate::config::ServePattern;
use crate::io::tunnel::mux::Opener;
use crate::io::tunnel::{Refusal, Service};
use crate::router::metrics::TunnelMetrics;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One tunnel of an agent, as the proxy uses it to open client streams.
#[derive(Clone)]
pub(crate) struct Tunnel {
    pub(crate) id: u64,
    pub(crate) opener: Opener,
    /// The address the tunnel came from.
    pub(crate) peer: String,
    /// Client streams open on it now.
    pub(crate) streams: Arc<AtomicUsize>,
    /// Set once the drain notice went out: new streams prefer other tunnels.
    pub(crate) draining: Arc<AtomicBool>,
    /// Bytes its client streams carried: to the agent, from the agent.
    pub(crate) bytes: Arc<[AtomicU64; 2]>,
    since: SystemTime,
}

impl Tunnel {
    pub(crate) fn new(id: u64, opener: Opener, peer: String) -> Tunnel {
        Tunnel {
            id,
            opener,
            peer,
            streams: Arc::default(),
            draining: Arc::default(),
            bytes: Arc::default(),
            since: SystemTime::now(),
        }
    }
}

/// What an agent's identity may do, from `tunnel.agents`.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) identity: String,
    /// The index of the `tunnel.agents` entry, for messages.
    pub(crate) rule: usize,
    pub(crate) serve: Vec<ServePattern>,
    /// Clients allowed on its services (empty: any certificate of the cluster CA).
    pub(crate) allow: Vec<String>,
}

/// A Hello as the registry needs it.
pub(crate) struct Offer<'a> {
    pub(crate) agent_id: &'a str,
    pub(crate) tunnels: u32,
    pub(crate) services: &'a [Service],
}

/// The registry's answer to a Hello.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Welcome {
        accepted: Vec<Service>,
        refused: Vec<Refusal>,
    },
    /// The agent already holds the tunnels it wants here.
    Full,
}

struct Agent {
    grant: Grant,
    services: Vec<Service>,
    tunnels: Vec<Tunnel>,
    since: SystemTime,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, Agent>,
    /// Service → agent ids serving it.
    index: BTreeMap<Service, Vec<String>>,
}

/// Every agent connected to this proxy. Lives as long as the process (reloads keep it).
pub(crate) struct Registry {
    state: Mutex<State>,
    metrics: Arc<crate::router::metrics::Metrics>,
    /// Woken when a tunnel is admitted (`redial`).
    pub(super) changed: tokio::sync::Notify,
    /// When this process's registry began: agents redial a new process in its first
    /// moments (`redial`).
    pub(super) started: tokio::time::Instant,
}

impl Registry {
    pub(crate) fn new(metrics: Arc<crate::router::metrics::Metrics>) -> Registry {
        Registry {
            state: Mutex::default(),
            metrics,
            changed: tokio::sync::Notify::new(),
            started: tokio::time::Instant::now(),
        }
    }

    fn m(&self) -> &TunnelMetrics {
        &self.metrics.tunnel
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the whole table: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides a Hello and, unless `Full`, adds `tunnel` to the agent. `fixed` are the
    /// names the static configuration serves; `max_tunnels` bounds what an agent may ask.
    /// Connections waiting for an agent to redial are woken once it is in.
    pub(crate) fn admit(
        &self,
        offer: &Offer<'_>,
        grant: &Grant,
        fixed: &BTreeSet<Service>,
        max_tunnels: u32,
        tunnel: Tunnel,
    ) -> Result<Admit, String> {
        let admitted = self.admit_locked(offer, grant, fixed, max_tunnels, tunnel);
        if let Ok(Admit::Welcome { .. }) = &admitted {
            self.changed.notify_waiters();
        }
        admitted
    }

    fn admit_locked(
        &self,
        offer: &Offer<'_>,
        grant: &Grant,
        fixed: &BTreeSet<Service>,
        max_tunnels: u32,
        tunnel: Tunnel,
    ) -> Result<Admit, String> {
        let mut st = self.lock();
        if let Some(agent) = st.agents.get(offer.agent_id) {
            if agent.grant.identity != grant.identity {
                return Err(format!(
                    "agent id {} is already connected with identity {}",
                    offer.agent_id, agent.grant.identity
                ));
            }
            let want = offer.tunnels.clamp(1, max_tunnels) as usize;
            if agent.tunnels.len() >= want {
                return Ok(Admit::Full);
            }
            st.agents
                .get_mut(offer.agent_id)
                .expect("present")
                .tunnels
                .push(tunnel);
            self.m().tunnels.inc();
            let accepted = st.agents[offer.agent_id].services.clone();
            return Ok(Admit::Welcome {
                accepted,
                refused: vec![],
            });
        }
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        let unique: BTreeSet<&Service> = offer.services.iter().collect();
        for s in unique {
            let refuse = |reason: String| Refusal {
                service: s.clone(),
                reason,
            };
            if !grant.serve.iter().any(|p| p.matches(s)) {
                refused.push(refuse(format!(
                    "identity {} may not serve {s} (tunnel.agents[{}].serve)",
                    grant.identity, grant.rule
                )));
            } else if fixed.contains(s) {
                refused.push(refuse(format!(
                    "{s} is served by the static configuration, which wins"
                )));
            } else if let Some(other) = st.index.get(s).and_then(|ids| {
                ids.iter()
                    .map(|id| &st.agents[id])
                    .find(|a| a.grant.identity != grant.identity)
            }) {
                refused.push(refuse(format!(
                    "{s} is already served by an agent with identity {}",
                    other.grant.identity
                )));
            } else {
                accepted.push(s.clone());
            }
        }
        for s in &accepted {
            let ids = st.index.entry(s.clone()).or_default();
            ids.push(offer.agent_id.to_owned());
        }
        st.agents.insert(
            offer.agent_id.to_owned(),
            Agent {
                grant: grant.clone(),
                services: accepted.clone(),
                tunnels: vec![tunnel],
                since: SystemTime::now(),
            },
        );
        self.m().agents.inc();
        self.m().tunnels.inc();
        Ok(Admit::Welcome { accepted, refused })
    }

    /// Removes a tunnel; the agent and its services go with its last one.
    pub(crate) fn remove(&self, agent_id: &str, tunnel: u64) {
        let mut st = self.lock();
        let Some(agent) = st.agents.get_mut(agent_id) else {
            return;
        };
        let before = agent.tunnels.len();
        agent.tunnels.retain(|t| t.id != tunnel);
        if agent.tunnels.len() < before {
            self.m().tunnels.dec();
        }
        if !agent.tunnels.is_empty() {
            return;
        }
        let agent = st.agents.remove(agent_id).expect("present");
        self.m().agents.dec();
        for s in agent.services {
            if let Some(ids) = st.index.get_mut(&s) {
                ids.retain(|id| id != agent_id);
                if ids.is_empty() {
                    st.index.remove(&s);
                }
            }
        }
    }

    /// True when a connected agent serves `service`.
    pub(crate) fn serves(&self, service: &Service) -> bool {
        self.lock().index.contains_key(service)
    }

    /// The tunnel to open a stream for `service` on — the least busy one that is not
    /// draining, else the least busy — and the clients allowed on it.
    pub(crate) fn pick(&self, service: &Service) -> Option<(Tunnel, Vec<String>)> {
        let st = self.lock();
        let ids = st.index.get(service)?;
        let candidates = ids.iter().flat_map(|id| {
            let a = &st.agents[id];
            a.tunnels.iter().map(move |t| (t, &a.grant.allow))
        });
        let (t, allow) = candidates.min_by_key(|(t, _)| {
            (
                t.draining.load(Ordering::Relaxed),
                t.streams.load(Ordering::Relaxed),
            )
        })?;
        Some((t.clone(), allow.clone()))
    }

    /// The clients allowed on `service` (empty: any certificate of the cluster CA), when
    /// an agent serves it.
    pub(crate) fn allow_of(&self, service: &Service) -> Option<Vec<String>> {
        let st = self.lock();
        let id = st.index.get(service)?.first()?;
        Some(st.agents[id].grant.allow.clone())
    }

    /// Marks every tunnel draining (the process is stopping).
    pub(crate) fn drain_all(&self) {
        for a in self.lock().agents.values() {
            for t in &a.tunnels {
                t.draining.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl crate::router::route::Agents for Registry {
    fn serves(&self, service: &Service) -> bool {
        Registry::serves(self, service)
    }
}

#[path = "registry_snapshot.rs"]
mod snapshot;

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
