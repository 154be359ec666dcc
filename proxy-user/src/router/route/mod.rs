//! Routing: a pure matcher from what the client said (SNI, ALPN list) to a route
//! (`docs/architecture.md`; the operator's view of the same rules is in `docs/config.md`).
//!
//! Precedence, first match wins:
//! 1. SNI `kube-teleport-proxy-alpn.*` → the Kubernetes upstream, passthrough, before ALPN;
//! 2. `routes:` entries that match (exact SNI beats `*.` wildcard beats no SNI; a route that
//!    also names an ALPN beats one that does not; among equals the first in the file);
//! 3. the built-in ALPN table, in the client's order of preference; for
//!    `teleport-proxy-ssh` an SNI `<node>.ssh.<anything>` picks `upstreams.ssh_nodes[node]`;
//! 4. for `http/1.1`, `h2`, or no ALPN: the `apps:` entry whose host is the SNI, else the
//!    web route.
//!
//! [`Table::new`] (in `build`) turns the configuration into [`RouteEntry`]s once;
//! [`Table::route`] only reads them, so it is cheap on the per-connection path and tested
//! with plain values. A table is generic over what a terminated route carries: `()` as
//! built and in tests, the route's rustls configuration once [`Table::with_tls`] has given
//! every terminated entry its own — so no terminated route can lack one.

mod agents;
mod build;
mod rules;

use agents::db_kind;
pub(crate) use agents::Agents;
#[cfg(test)]
pub(crate) use agents::NoAgents;
pub(crate) use build::{app_route, builtin_rule};
use rules::{Rule, SniMatch};

use super::hello::ClientHello;
use super::trust::AllowFrom;
use crate::io::tunnel::{Kind, Service};
use crate::protocol::{
    AUTH_ALPN_PREFIX, AUTH_ALPN_SUFFIX, BUILTIN, KUBE_SNI_PREFIX, POSTGRES_ALPN, SSH_ALPN,
    SSH_NODE_LABEL, TCP_ALPNS, WEB_ALPN,
};
use std::collections::BTreeMap;

/// Name of the route that answers the layer-7 detection probe (a handshake offering only
/// `teleport-reversetunnel`) when no `upstreams.tunnel` is configured: the handshake
/// completes with the ALPN selected, so clients learn that TLS routing reaches the proxy,
/// then the connection is closed.
pub(crate) const TUNNEL_PROBE: &str = "tunnel-probe";

/// What the proxy does with the TLS of a routed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode<T = ()> {
    /// Forward the raw TLS bytes; the upstream terminates.
    Passthrough,
    /// Terminate TLS here with `tls`; `client_auth` requires a client certificate from the
    /// cluster CA.
    Terminate { client_auth: bool, tls: T },
}

/// What a route is for, beyond relaying to its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Relays to its upstream.
    Relay,
    /// The web route: the proxy's own `/webapi/` endpoints first, then its upstream (when
    /// there is none, other paths get 404).
    Web,
    /// Answers the clients' layer-7 detection probe and closes ([`TUNNEL_PROBE`]).
    DetectionProbe,
    /// An HTTP app (`apps:`), reached by its host name; the HTTP front door serves it.
    App,
    /// The proxy's own reverse-tunnel service: agents dial in (`router::tunnel`).
    TunnelService,
    /// The services of one kind that connected agents serve (`route::agents`).
    Agent(Kind),
}

/// One destination, built from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteEntry<T = ()> {
    /// Name in logs and metrics: `web`, `ssh`, `kube`, `auth:<cluster>`, or a `routes:` name.
    pub(crate) name: String,
    pub(crate) mode: Mode<T>,
    pub(crate) role: Role,
    /// `host:port`; `None` for a route the proxy answers itself.
    pub(crate) upstream: Option<String>,
    /// ALPN values the proxy may select when it terminates, server preference first.
    pub(crate) alpn: Vec<String>,
    /// Identities (CN or O) allowed; empty allows any certificate the CA signed.
    pub(crate) allow: Vec<String>,
    /// Client addresses allowed, checked before the TLS handshake; `None` allows any.
    pub(crate) allow_from: Option<AllowFrom>,
}

/// The routing decision for one ClientHello.
#[derive(Debug)]
pub(crate) enum Decision<'a, T> {
    Route(&'a RouteEntry<T>),
    /// A service of a connected agent, through the agent route of its kind.
    Agent {
        entry: &'a RouteEntry<T>,
        service: Service,
    },
    /// No route: the reason goes to the log, the alert to the client.
    Reject {
        reason: String,
        alert: RejectAlert,
    },
}

/// The TLS alert sent with a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectAlert {
    /// No route for this server name (alert 112).
    UnrecognizedName,
    /// No route for the offered protocols (alert 120).
    NoApplicationProtocol,
    /// The route's `allow_from` does not hold the client's address (alert 49).
    AccessDenied,
}

/// All routes of one listener.
#[derive(Debug, Clone)]
pub(crate) struct Table<T = ()> {
    entries: Vec<RouteEntry<T>>,
    rules: Vec<Rule>,
    kube: Option<usize>,
    web: Option<usize>,
    /// Built-in ALPN value → entry.
    builtin: BTreeMap<String, usize>,
    /// Cluster name → auth entry.
    auth: BTreeMap<String, usize>,
    /// SSH node name → entry.
    ssh_nodes: BTreeMap<String, usize>,
    /// HTTP app host name → entry.
    apps: BTreeMap<String, usize>,
    /// Service kind → the agent route of that kind (with a `tunnel:` section only).
    agents: BTreeMap<Kind, usize>,
}

impl<T> Table<T> {
    /// Every route, in the order they were built.
    pub(crate) fn entries(&self) -> &[RouteEntry<T>] {
        &self.entries
    }

    /// The built-in entry that receives a legacy plaintext protocol: `web` (HTTP), `ssh`
    /// (`SSH-`) or `postgres` (SSLRequest and friends).
    pub(crate) fn plaintext(&self, protocol: &str) -> Option<&RouteEntry<T>> {
        let i = match protocol {
            "web" => self.web,
            "ssh" => self.builtin.get(SSH_ALPN).copied(),
            "postgres" => self.builtin.get(POSTGRES_ALPN).copied(),
            _ => None,
        };
        i.map(|i| &self.entries[i])
    }

    /// Routes one ClientHello; `agents` says which services connected agents serve.
    pub(crate) fn route(&self, hello: &ClientHello, agents: &dyn Agents) -> Decision<'_, T> {
        let sni = hello.sni.as_deref().unwrap_or("");
        if sni.starts_with(KUBE_SNI_PREFIX) {
            if let Some(d) = self.agent(Kind::Kube, sni, agents) {
                return d;
            }
            return match (self.kube, agents::sni_name(Kind::Kube, sni)) {
                (Some(i), _) => Decision::Route(&self.entries[i]),
                (None, Some(name)) if !self.agents.is_empty() => reject(
                    &format!(
                        "Kubernetes cluster {name:?}: no connected agent serves it and no upstreams.kube is configured"
                    ),
                    RejectAlert::UnrecognizedName,
                ),
                (None, _) => reject(
                    "Kubernetes SNI but no upstreams.kube is configured",
                    RejectAlert::UnrecognizedName,
                ),
            };
        }
        if let Some(i) = self.match_rules(sni, &hello.alpn) {
            return Decision::Route(&self.entries[i]);
        }
        for protocol in &hello.alpn {
            if let Some(node) = ssh_node(sni).filter(|_| protocol == SSH_ALPN) {
                if let Some(&i) = self.ssh_nodes.get(node) {
                    return Decision::Route(&self.entries[i]);
                }
                if let Some(d) = self.agent(Kind::Ssh, sni, agents) {
                    return d;
                }
                // The single-bastion set-up: no nodes configured, one `upstreams.ssh`.
                return match self.builtin.get(SSH_ALPN).filter(|_| self.ssh_nodes.is_empty()) {
                    Some(&i) => Decision::Route(&self.entries[i]),
                    None => reject(
                        &format!(
                            "SSH node {node:?} is not in upstreams.ssh_nodes and no connected agent serves it"
                        ),
                        RejectAlert::UnrecognizedName,
                    ),
                };
            }
            if let Some(d) = db_kind(protocol).and_then(|k| self.agent(k, sni, agents)) {
                return d;
            }
            if let Some(&i) = self.builtin.get(protocol) {
                return Decision::Route(&self.entries[i]);
            }
            if let Some(cluster) = auth_cluster(protocol) {
                return match cluster.and_then(|c| self.auth.get(&c).map(|&i| (c, i))) {
                    Some((_, i)) => Decision::Route(&self.entries[i]),
                    None => reject(
                        &format!("no auth upstream for ALPN {protocol}"),
                        RejectAlert::NoApplicationProtocol,
                    ),
                };
            }
            if TCP_ALPNS.contains(&protocol.as_str()) {
                if let Some(d) = self.agent(Kind::Tcp, sni, agents) {
                    return d;
                }
                return reject(
                    &format!("no TCP app route for SNI {sni:?}"),
                    RejectAlert::UnrecognizedName,
                );
            }
            if let Some(upstream) = builtin_upstream_key(protocol) {
                return reject(
                    &format!("ALPN {protocol} but no upstreams.{upstream} is configured"),
                    RejectAlert::NoApplicationProtocol,
                );
            }
        }
        let wants_web =
            hello.alpn.is_empty() || hello.alpn.iter().any(|p| WEB_ALPN.contains(&p.as_str()));
        if let Some(&i) = self.apps.get(sni).filter(|_| wants_web) {
            return Decision::Route(&self.entries[i]);
        }
        if let Some(d) = self.agent(Kind::Http, sni, agents).filter(|_| wants_web) {
            return d;
        }
        match (wants_web, self.web) {
            (true, Some(i)) => Decision::Route(&self.entries[i]),
            (true, None) => reject(
                "web request but no upstreams.web is configured",
                RejectAlert::NoApplicationProtocol,
            ),
            (false, _) => reject(
                &format!("no route for ALPN {:?}", hello.alpn),
                RejectAlert::NoApplicationProtocol,
            ),
        }
    }
}

/// `Some(Some(cluster))` for a well-formed `teleport-auth@<hex>.teleport.cluster.local`,
/// `Some(None)` for a malformed one, `None` for other protocols.
fn auth_cluster(protocol: &str) -> Option<Option<String>> {
    let rest = protocol.strip_prefix(AUTH_ALPN_PREFIX)?;
    Some(
        rest.strip_suffix(AUTH_ALPN_SUFFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| String::from_utf8(b).ok()),
    )
}

/// The node of an SSH SNI `<node>.ssh.<rest>` (already lowercase, as parsed).
fn ssh_node(sni: &str) -> Option<&str> {
    let (node, rest) = sni.split_once('.')?;
    let (label, rest) = rest.split_once('.')?;
    (label == SSH_NODE_LABEL && !node.is_empty() && !rest.is_empty()).then_some(node)
}

/// The upstream key of a built-in protocol, whether or not it is configured.
fn builtin_upstream_key(protocol: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(_, ps)| ps.contains(&protocol))
        .map(|(name, _)| *name)
}

fn reject<'a, T>(reason: &str, alert: RejectAlert) -> Decision<'a, T> {
    Decision::Reject {
        reason: reason.into(),
        alert,
    }
}

#[cfg(test)]
mod agents_tests;
#[cfg(test)]
mod tests;
