//! Routing: a pure matcher from what the client said (SNI, ALPN list) to a route
//! (DESIGN.md §2).
//!
//! Precedence, first match wins:
//! 1. SNI `kube-teleport-proxy-alpn.*` → the Kubernetes upstream, passthrough, before ALPN;
//! 2. `routes:` entries that match (exact SNI beats `*.` wildcard beats no SNI; a route that
//!    also names an ALPN beats one that does not; among equals the first in the file);
//! 3. the built-in ALPN table, in the client's order of preference; for
//!    `teleport-proxy-ssh` an SNI `<node>.ssh.<anything>` picks `upstreams.ssh_nodes[node]`;
//! 4. the web upstream for `http/1.1`, `h2`, or no ALPN.
//!
//! [`Table::new`] turns the configuration into [`RouteEntry`]s once; [`Table::route`] only
//! reads them, so it is cheap on the per-connection path and tested with plain values.

use super::hello::ClientHello;
use crate::config::{AuthUpstreams, Config, RouteMode};
use crate::protocol::{
    ping_variant, AUTH_ALPN_PREFIX, AUTH_ALPN_SUFFIX, BUILTIN, KUBE_SNI_PREFIX, PING_SUFFIX,
    POSTGRES_ALPN, SSH_ALPN, SSH_NODE_LABEL, TCP_ALPNS, TELEPORT_PREFIX, WEB_ALPN,
};
use std::collections::BTreeMap;

/// Name of the route that answers the layer-7 detection probe (a handshake offering only
/// `teleport-reversetunnel`) when no `upstreams.tunnel` is configured: the handshake
/// completes with the ALPN selected, so clients learn that TLS routing reaches the proxy,
/// then the connection is closed.
pub(crate) const TUNNEL_PROBE: &str = "tunnel-probe";

/// What the proxy does with the TLS of a routed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward the raw TLS bytes; the upstream terminates.
    Passthrough,
    /// Terminate TLS here; `client_auth` requires a client certificate from the cluster CA.
    Terminate { client_auth: bool },
}

/// One destination, built from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteEntry {
    /// Name in logs and metrics: `web`, `ssh`, `kube`, `auth:<cluster>`, or a `routes:` name.
    pub(crate) name: String,
    pub(crate) mode: Mode,
    /// `host:port`.
    pub(crate) upstream: String,
    /// ALPN values the proxy may select when it terminates, server preference first.
    pub(crate) alpn: Vec<String>,
    /// Identities (CN or O) allowed; empty allows any certificate the CA signed.
    pub(crate) allow: Vec<String>,
}

/// A `routes:` entry's matcher, pointing at its [`RouteEntry`].
#[derive(Debug, Clone)]
struct Rule {
    sni: Option<SniMatch>,
    alpn: Option<String>,
    entry: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SniMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Wildcard(String),
}

impl SniMatch {
    fn parse(s: &str) -> SniMatch {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix('*') {
            Some(suffix) => SniMatch::Wildcard(suffix.to_owned()),
            None => SniMatch::Exact(s),
        }
    }

    /// Specificity of a match (higher wins), or `None`.
    fn matches(&self, sni: &str) -> Option<u8> {
        match self {
            SniMatch::Exact(name) => (name == sni).then_some(2),
            SniMatch::Wildcard(suffix) => sni
                .strip_suffix(suffix.as_str())
                .filter(|label| !label.is_empty() && !label.contains('.'))
                .map(|_| 1),
        }
    }
}

/// The routing decision for one ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Index into [`Table::entries`].
    Route(usize),
    /// No route: the reason goes to the log, the alert to the client.
    Reject { reason: String, alert: RejectAlert },
}

/// The TLS alert sent with a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectAlert {
    /// No route for this server name (alert 112).
    UnrecognizedName,
    /// No route for the offered protocols (alert 120).
    NoApplicationProtocol,
}

/// All routes of one listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) entries: Vec<RouteEntry>,
    rules: Vec<Rule>,
    kube: Option<usize>,
    web: Option<usize>,
    /// Built-in ALPN value → entry.
    builtin: BTreeMap<String, usize>,
    /// Cluster name → auth entry.
    auth: BTreeMap<String, usize>,
    /// SSH node name → entry.
    ssh_nodes: BTreeMap<String, usize>,
}

impl Table {
    /// Builds the table of a validated configuration.
    pub(crate) fn new(config: &Config) -> Table {
        let mut t = Table::default();
        let u = &config.upstreams;
        for (i, r) in config.routes.iter().enumerate() {
            let is_teleport = r
                .alpn
                .as_deref()
                .is_some_and(|a| a.starts_with(TELEPORT_PREFIX));
            let mode = match r.mode {
                RouteMode::Passthrough => Mode::Passthrough,
                RouteMode::Terminate => Mode::Terminate {
                    client_auth: r.client_auth.unwrap_or(is_teleport || !r.allow.is_empty()),
                },
            };
            let alpn = match &r.alpn {
                Some(a) => ping_variant(a).into_iter().chain([a.clone()]).collect(),
                None => strings(WEB_ALPN),
            };
            let entry = t.push(RouteEntry {
                name: r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
                mode,
                upstream: r.upstream.clone(),
                alpn,
                allow: r.allow.clone(),
            });
            t.rules.push(Rule {
                sni: r.sni.as_deref().map(SniMatch::parse),
                alpn: r.alpn.clone(),
                entry,
            });
        }
        if let Some(kube) = &u.kube {
            t.kube = Some(t.push(passthrough("kube", kube)));
        }
        // Without `upstreams.web` the web route still answers the proxy's own endpoints
        // (`/webapi/connectionupgrade`, `/webapi/ping`) when there is a certificate to
        // terminate with; its upstream is empty and other paths get 404.
        let web = u
            .web
            .clone()
            .or_else(|| (!config.proxy_service.https_keypairs.is_empty()).then(String::new));
        if let Some(web) = web {
            t.web = Some(t.push(RouteEntry {
                name: "web".into(),
                mode: Mode::Terminate { client_auth: false },
                upstream: web,
                alpn: strings(WEB_ALPN),
                allow: vec![],
            }));
        }
        for (name, protocols) in BUILTIN {
            let upstream = match *name {
                "ssh" => &u.ssh,
                "tunnel" => &u.tunnel,
                "postgres" => &u.postgres,
                "mysql" => &u.mysql,
                _ => &u.mongodb,
            };
            let entry = match upstream {
                Some(upstream) => RouteEntry {
                    name: (*name).into(),
                    mode: Mode::Terminate { client_auth: true },
                    upstream: upstream.clone(),
                    alpn: strings(protocols),
                    allow: vec![],
                },
                // Answers the layer-7 detection probe; no client certificate is asked for
                // because nothing is behind it.
                None if *name == "tunnel" && t.web.is_some() => RouteEntry {
                    name: TUNNEL_PROBE.into(),
                    mode: Mode::Terminate { client_auth: false },
                    upstream: String::new(),
                    alpn: strings(protocols),
                    allow: vec![],
                },
                None => continue,
            };
            let entry = t.push(entry);
            for p in *protocols {
                t.builtin.insert((*p).into(), entry);
            }
        }
        for (node, addr) in &u.ssh_nodes {
            let entry = t.push(RouteEntry {
                name: format!("ssh:{node}"),
                mode: Mode::Terminate { client_auth: true },
                upstream: addr.clone(),
                alpn: vec![SSH_ALPN.into()],
                allow: vec![],
            });
            t.ssh_nodes.insert(node.to_ascii_lowercase(), entry);
        }
        let clusters: Vec<(String, String)> = match &u.auth {
            Some(AuthUpstreams::One(a)) => config
                .auth_service
                .cluster_name
                .iter()
                .map(|c| (c.clone(), a.clone()))
                .collect(),
            Some(AuthUpstreams::PerCluster(m)) => m.clone().into_iter().collect(),
            None => vec![],
        };
        for (cluster, addr) in clusters {
            let entry = t.push(passthrough(&format!("auth:{cluster}"), &addr));
            t.auth.insert(cluster, entry);
        }
        t
    }

    /// The built-in entry that receives a legacy plaintext protocol: `web` (HTTP), `ssh`
    /// (`SSH-`) or `postgres` (SSLRequest and friends).
    pub(crate) fn plaintext(&self, protocol: &str) -> Option<usize> {
        match protocol {
            "web" => self.web,
            "ssh" => self.builtin.get(SSH_ALPN).copied(),
            "postgres" => self.builtin.get(POSTGRES_ALPN).copied(),
            _ => None,
        }
    }

    /// The web route, which also serves the proxy's own `/webapi/` endpoints.
    pub(crate) fn web(&self) -> Option<usize> {
        self.web
    }

    fn push(&mut self, e: RouteEntry) -> usize {
        self.entries.push(e);
        self.entries.len() - 1
    }

    /// Routes one ClientHello.
    pub(crate) fn route(&self, hello: &ClientHello) -> Decision {
        let sni = hello.sni.as_deref().unwrap_or("");
        if sni.starts_with(KUBE_SNI_PREFIX) {
            return match self.kube {
                Some(i) => Decision::Route(i),
                None => reject(
                    "Kubernetes SNI but no upstreams.kube is configured",
                    RejectAlert::UnrecognizedName,
                ),
            };
        }
        if let Some(i) = self.match_rules(sni, &hello.alpn) {
            return Decision::Route(i);
        }
        for protocol in &hello.alpn {
            if let Some(node) = ssh_node(sni).filter(|_| protocol == SSH_ALPN) {
                return match self.ssh_nodes.get(node) {
                    Some(&i) => Decision::Route(i),
                    None => reject(
                        &format!("SSH node {node:?} is not in upstreams.ssh_nodes"),
                        RejectAlert::UnrecognizedName,
                    ),
                };
            }
            if let Some(&i) = self.builtin.get(protocol) {
                return Decision::Route(i);
            }
            if let Some(cluster) = auth_cluster(protocol) {
                return match cluster.and_then(|c| self.auth.get(&c).map(|&i| (c, i))) {
                    Some((_, i)) => Decision::Route(i),
                    None => reject(
                        &format!("no auth upstream for ALPN {protocol}"),
                        RejectAlert::NoApplicationProtocol,
                    ),
                };
            }
            if TCP_ALPNS.contains(&protocol.as_str()) {
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
        match (wants_web, self.web) {
            (true, Some(i)) => Decision::Route(i),
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

    /// The most specific matching `routes:` entry, first in file order among equals.
    fn match_rules(&self, sni: &str, alpn: &[String]) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for rule in &self.rules {
            let sni_score = match &rule.sni {
                Some(m) => match m.matches(sni) {
                    Some(s) => s,
                    None => continue,
                },
                None => 0,
            };
            let alpn_score = match &rule.alpn {
                Some(a)
                    if alpn
                        .iter()
                        .any(|p| p == a || p.strip_suffix(PING_SUFFIX) == Some(a)) =>
                {
                    1
                }
                Some(_) => continue,
                None => 0,
            };
            let score = sni_score * 2 + alpn_score;
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, rule.entry));
            }
        }
        best.map(|(_, e)| e)
    }
}

/// `Some(Some(cluster))` for a well-formed `teleport-auth@<hex>.teleport.cluster.local`,
/// `Some(None)` for a malformed one, `None` for other protocols.
pub(crate) fn auth_cluster(protocol: &str) -> Option<Option<String>> {
    let rest = protocol.strip_prefix(AUTH_ALPN_PREFIX)?;
    Some(
        rest.strip_suffix(AUTH_ALPN_SUFFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| String::from_utf8(b).ok()),
    )
}

/// The node of an SSH SNI `<node>.ssh.<rest>` (already lowercase, as parsed).
pub(crate) fn ssh_node(sni: &str) -> Option<&str> {
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

fn passthrough(name: &str, upstream: &str) -> RouteEntry {
    RouteEntry {
        name: name.into(),
        mode: Mode::Passthrough,
        upstream: upstream.into(),
        alpn: vec![],
        allow: vec![],
    }
}

fn reject(reason: &str, alert: RejectAlert) -> Decision {
    Decision::Reject {
        reason: reason.into(),
        alert,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
