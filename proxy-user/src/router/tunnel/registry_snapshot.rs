//! The `/agents` answer: the registry's agents, their services and tunnels as JSON (a
//! child module of `registry`, so it reads the table's private state directly).

use super::Registry;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

impl Registry {
    /// The agents JSON of the diagnostics address (`/agents`).
    pub(crate) fn snapshot(&self, proxy_id: &str, peers: &[String]) -> serde_json::Value {
        let st = self.lock();
        let rfc3339 = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let agents: Vec<_> = st
            .agents
            .iter()
            .map(|(id, a)| {
                let tunnels: Vec<_> = a
                    .tunnels
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.id,
                            "peer": t.peer,
                            "since": rfc3339(t.since),
                            "streams": t.streams.load(Ordering::Relaxed),
                            "draining": t.draining.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                json!({
                    "agent_id": id,
                    "identity": a.grant.identity,
                    "since": rfc3339(a.since),
                    "services": a.services.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "tunnels": tunnels,
                })
            })
            .collect();
        json!({ "proxy_id": proxy_id, "peers": peers, "agents": agents })
    }
}
