//! The proxy's reverse-tunnel service (`docs/agent.md`): agents behind NAT dial in with
//! `teleport-reversetunnel(v2)` and their client certificate, say what they serve, and
//! the proxy then reaches those services through the agents' tunnels.
//!
//! - [`registry`]: the live table of agents, their services and tunnels (process-wide,
//!   kept across reloads).
//! - [`serve`]: one tunnel — the Hello and its answer, heartbeats both ways, the drain
//!   notice at SIGTERM.
//! - [`dial`]: one client stream through a tunnel — the client's identity checked
//!   against the agent's `allow`, the stream header, the agent's reply.
//! - [`redial`]: in a new process's first seconds (a binary upgrade's successor, a
//!   restart), a connection for a name no agent serves yet waits for the agents to redial.
//!
//! Which client connections go to agents is decided by the route table
//! (`router::route`, "agents"), before any crypto.

pub(crate) mod dial;
pub(crate) mod redial;
pub(crate) mod registry;
pub(crate) mod serve;

pub(crate) use registry::Registry;

use crate::config::Config;
use crate::io::tunnel::{Kind, Service};
use std::collections::BTreeSet;

/// The names the static configuration serves by name (`upstreams.ssh_nodes`, `apps`,
/// `routes` with an exact SNI and the `teleport-tcp` ALPN): an agent may not serve them.
pub(crate) fn static_services(config: &Config) -> BTreeSet<Service> {
    let svc = |kind, name: &str| Service {
        kind,
        name: name.to_ascii_lowercase(),
    };
    let mut out = BTreeSet::new();
    for node in config.upstreams.ssh_nodes.keys() {
        out.insert(svc(Kind::Ssh, node));
    }
    for app in &config.apps {
        out.insert(svc(Kind::Http, &app.name));
    }
    for r in &config.routes {
        let tcp = r
            .alpn
            .as_deref()
            .is_some_and(|a| a.starts_with(crate::protocol::TCP_ALPN));
        if let (true, Some(sni)) = (tcp, &r.sni) {
            if let Some((label, _)) = sni.split_once('.').filter(|(l, _)| *l != "*") {
                out.insert(svc(Kind::Tcp, label));
            }
        }
    }
    out
}
