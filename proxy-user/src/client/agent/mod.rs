//! `switchyard agent` (`docs/agent.md`): serves services on a machine that can only dial
//! out. It keeps tunnels to the proxy ([`tunnel`]), declares its services by kind and
//! name, and dials a service only when the proxy asks for one it declared ([`stream`]).
//!
//! Staying up: each tunnel has its own worker that reconnects with backoff and jitter
//! (about 1 s, doubling to a cap of 8 s; a drain notice redials at once). With several
//! proxies behind one balancer ([`Mesh`]), the proxies name each other in their answer
//! and the agent keeps `tunnels` workers per named proxy, dialing through the balancer
//! until it holds that many tunnels to each; a proxy that already holds them answers
//! `Full` and the worker tries again later.

pub(crate) mod config;
mod stream;
mod tunnel;

pub(crate) use config::{AgentArgs, AgentConfig};

use super::ClientError;
use crate::protocol::{REVERSE_TUNNEL_ALPN, REVERSE_TUNNEL_V2_ALPN};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};
use tunnel::{Agent, Ended};

/// First reconnect delay, and the cap it doubles up to.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(8);

/// `switchyard agent`: runs until SIGINT/SIGTERM.
pub(crate) async fn run(args: AgentArgs) -> Result<(), ClientError> {
    run_settled(args.settle()?).await
}

/// Runs an agent of a settled configuration until SIGINT/SIGTERM (dev mode runs one in
/// the proxy's process).
pub(crate) async fn run_settled(config: AgentConfig) -> Result<(), ClientError> {
    let dialer = config.client.dialer()?;
    let alpn = [REVERSE_TUNNEL_ALPN, REVERSE_TUNNEL_V2_ALPN];
    let connector = dialer.connector(None, &alpn, super::dial::Verify::Proxy)?;
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let id = format!("{host}-{:016x}", rand::rng().random::<u64>());
    let names: Vec<String> = config.services.keys().map(|s| s.to_string()).collect();
    info!(agent_id = id, proxy = dialer.proxy, tunnels = config.tunnels, services = ?names, "agent starting");
    println!("switchyard agent id={id} proxy={}", dialer.proxy);
    let agent = Arc::new(Agent {
        id,
        tunnels: config.tunnels,
        services: Arc::new(config.services),
        connector,
        mesh: Mesh::default(),
    });
    let supervise = async {
        let mut workers = 0usize;
        loop {
            let want = agent.mesh.wanted(agent.tunnels);
            while workers < want {
                workers += 1;
                tokio::spawn(worker(agent.clone(), workers));
            }
            agent.mesh.changed.notified().await;
        }
    };
    tokio::select! {
        _ = supervise => Ok(()),
        _ = super::local::interrupted() => {
            info!("agent stopping");
            Ok(())
        }
    }
}

/// Keeps one tunnel up, forever.
async fn worker(agent: Arc<Agent>, n: usize) {
    let mut backoff = Backoff::default();
    loop {
        agent.mesh.wait_for_gap(agent.tunnels).await;
        match tunnel::run(&agent).await {
            Ended::Lost { drained: true, .. } => {
                backoff.reset();
                continue;
            }
            Ended::Lost { .. } => backoff.reset(),
            Ended::Full => {}
            Ended::Failed(e) => warn!(worker = n, "tunnel failed: {e}"),
        }
        let wait = backoff.next();
        tracing::debug!(worker = n, ?wait, "reconnecting");
        tokio::time::sleep(wait).await;
    }
}

/// Reconnect delays: 1 s, 2 s, 4 s, 8 s, 8 s … each ±25 %.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next(&mut self) -> Duration {
        let base = BACKOFF_START
            .saturating_mul(1 << self.failures.min(8))
            .min(BACKOFF_CAP);
        self.failures += 1;
        base.mul_f64(rand::rng().random_range(0.75..1.25))
    }
}

/// The proxies this agent knows of and how many tunnels it holds to each.
#[derive(Default)]
pub(crate) struct Mesh {
    state: Mutex<MeshState>,
    changed: Notify,
}

#[derive(Default)]
struct MeshState {
    peers: BTreeSet<String>,
    held: BTreeMap<String, usize>,
}

impl Mesh {
    fn lock(&self) -> std::sync::MutexGuard<'_, MeshState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the proxies a proxy named.
    pub(crate) fn learn(&self, peers: &[String]) {
        let mut st = self.lock();
        let before = st.peers.len();
        st.peers.extend(peers.iter().cloned());
        if st.peers.len() != before {
            info!(peers = ?st.peers, "proxies known");
            drop(st);
            self.changed.notify_waiters();
        }
    }

    /// Counts a tunnel to `proxy` until the guard is dropped.
    pub(crate) fn hold(&self, proxy: &str) -> Held<'_> {
        *self.lock().held.entry(proxy.to_owned()).or_default() += 1;
        Held(self, proxy.to_owned())
    }

    /// Workers wanted: `tunnels` per known proxy (at least one proxy).
    fn wanted(&self, tunnels: u32) -> usize {
        tunnels as usize * self.lock().peers.len().max(1)
    }

    /// Returns once some known proxy lacks tunnels (or none is known yet).
    async fn wait_for_gap(&self, tunnels: u32) {
        loop {
            let notified = self.changed.notified();
            {
                let st = self.lock();
                let full = |p: &String| st.held.get(p).copied().unwrap_or(0) >= tunnels as usize;
                if st.peers.is_empty() || !st.peers.iter().all(full) {
                    return;
                }
            }
            notified.await;
        }
    }
}

/// A tunnel held to one proxy.
pub(crate) struct Held<'a>(&'a Mesh, String);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0.lock().held.get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::default();
        let secs: Vec<f64> = (0..6).map(|_| b.next().as_secs_f64()).collect();
        for (s, base) in secs.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(*s >= base * 0.75 && *s < base * 1.25, "{secs:?}");
        }
        b.reset();
        assert!(b.next() < Duration::from_millis(1250));
    }

    #[tokio::test]
    async fn workers_wait_while_every_known_proxy_is_held() {
        let mesh = Mesh::default();
        assert_eq!(mesh.wanted(2), 2);
        mesh.wait_for_gap(1).await; // nothing known yet: dial
        mesh.learn(&["p1".into(), "p2".into()]);
        assert_eq!(mesh.wanted(2), 4);
        let a = mesh.hold("p1");
        mesh.wait_for_gap(1).await; // p2 lacks one
        let b = mesh.hold("p2");
        let wait = tokio::time::timeout(Duration::from_millis(50), mesh.wait_for_gap(1));
        assert!(wait.await.is_err(), "both held: no dialing");
        drop(b);
        mesh.wait_for_gap(1).await;
        drop(a);
    }
}
