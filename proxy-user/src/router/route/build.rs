//! Building the route table from a validated configuration, once per start or reload:
//! `routes:` entries with their matchers, the Kubernetes and web routes, the built-in ALPN
//! table (`protocol::BUILTIN`), SSH nodes and auth clusters; then [`Table::with_tls`]
//! gives each terminated entry its TLS configuration.

use super::{Mode, Role, RouteEntry, Rule, SniMatch, Table, TUNNEL_PROBE};
use crate::config::{AuthUpstreams, Config, RouteMode};
use crate::io::tunnel::Kind;
use crate::protocol::{ping_variant, BUILTIN, SSH_ALPN, TCP_ALPNS, TELEPORT_PREFIX, WEB_ALPN};
use crate::router::trust::AllowFrom;
use std::collections::BTreeMap;

impl Table {
    /// Builds the table of a validated configuration.
    pub(crate) fn new(config: &Config) -> Table {
        let mut t = Table {
            entries: vec![],
            rules: vec![],
            kube: None,
            web: None,
            builtin: BTreeMap::new(),
            auth: BTreeMap::new(),
            ssh_nodes: BTreeMap::new(),
            apps: BTreeMap::new(),
            agents: BTreeMap::new(),
        };
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
                    tls: (),
                },
            };
            let alpn = match &r.alpn {
                Some(a) => ping_variant(a).into_iter().chain([a.clone()]).collect(),
                None => strings(WEB_ALPN),
            };
            let entry = t.push(RouteEntry {
                name: r.name.clone().unwrap_or_else(|| format!("routes[{i}]")),
                mode,
                role: Role::Relay,
                upstream: Some(r.upstream.clone()),
                alpn,
                allow: r.allow.clone(),
                allow_from: r
                    .allow_from
                    .as_ref()
                    .map(|n| AllowFrom::new(format!("routes[{i}].allow_from"), n)),
            });
            t.rules.push(Rule {
                sni: r.sni.as_deref().map(SniMatch::parse),
                alpn: r.alpn.clone(),
                entry,
            });
        }
        // The built-in routes' `allow_from.<upstreams key>`.
        let rule = |key: &str| builtin_rule(config, key);
        if let Some(kube) = &u.kube {
            t.kube = Some(t.push(RouteEntry {
                allow_from: rule("kube"),
                ..passthrough("kube", kube)
            }));
        }
        // Without `upstreams.web` the web route still answers the proxy's own endpoints
        // (`/webapi/connectionupgrade`, `/webapi/ping`) when there is a certificate to
        // terminate with; it has no upstream and other paths get 404.
        if u.web.is_some() || !config.proxy_service.https_keypairs.is_empty() {
            let uri = u.web.as_ref().map(|w| w.http().uri);
            let web = terminate("web", false, uri.as_deref(), strings(WEB_ALPN));
            t.web = Some(t.push(RouteEntry {
                role: Role::Web,
                allow_from: rule("web"),
                ..web
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
                // The proxy's own tunnel service: agents present certificates.
                None if *name == "tunnel" && config.tunnel.is_some() => RouteEntry {
                    role: Role::TunnelService,
                    allow_from: rule(name),
                    ..terminate(name, true, None, strings(protocols))
                },
                Some(upstream) => RouteEntry {
                    allow_from: rule(name),
                    ..terminate(name, true, Some(upstream), strings(protocols))
                },
                // Answers the layer-7 detection probe; no client certificate is asked for
                // because nothing is behind it.
                None if *name == "tunnel" && t.web.is_some() => RouteEntry {
                    role: Role::DetectionProbe,
                    ..terminate(TUNNEL_PROBE, false, None, strings(protocols))
                },
                None => continue,
            };
            let entry = t.push(entry);
            for p in *protocols {
                t.builtin.insert((*p).into(), entry);
            }
        }
        for (node, addr) in &u.ssh_nodes {
            let name = format!("ssh:{node}");
            let entry = t.push(RouteEntry {
                allow_from: rule("ssh_nodes"),
                ..terminate(&name, true, Some(addr), vec![SSH_ALPN.into()])
            });
            t.ssh_nodes.insert(node.to_ascii_lowercase(), entry);
        }
        for (i, app) in config.apps.iter().enumerate() {
            let Some(host) = config.app_host(app) else {
                continue; // validation refuses such an app
            };
            let entry = t.push(RouteEntry {
                role: Role::App,
                allow: app.allow.clone(),
                allow_from: app
                    .allow_from
                    .as_ref()
                    .map(|n| AllowFrom::new(format!("apps[{i}].allow_from"), n)),
                ..terminate(
                    &app_route(&app.name),
                    app.wants_client_cert(),
                    Some(&app.uri),
                    strings(WEB_ALPN),
                )
            });
            t.apps.insert(host, entry);
        }
        if config.tunnel.is_some() {
            t.agent_routes(config);
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
            let entry = t.push(RouteEntry {
                allow_from: rule("auth"),
                ..passthrough(&format!("auth:{cluster}"), &addr)
            });
            t.auth.insert(cluster, entry);
        }
        t
    }

    /// One route per agent service kind.
    fn agent_routes(&mut self, config: &Config) {
        use crate::protocol::{MONGODB_ALPN, MYSQL_ALPN, POSTGRES_ALPN};
        let kinds: [(Kind, &str, &[&str]); 5] = [
            (Kind::Ssh, "ssh", &[SSH_ALPN]),
            (Kind::Tcp, "tcp", TCP_ALPNS),
            (
                Kind::Postgres,
                "postgres",
                &["teleport-postgres-ping", POSTGRES_ALPN],
            ),
            (Kind::Mysql, "mysql", &["teleport-mysql-ping", MYSQL_ALPN]),
            (
                Kind::Mongodb,
                "mongodb",
                &["teleport-mongodb-ping", MONGODB_ALPN],
            ),
        ];
        for (kind, key, alpn) in kinds {
            let name = format!("agent:{kind}");
            let entry = self.push(RouteEntry {
                role: Role::Agent(kind),
                allow_from: builtin_rule(config, key),
                ..terminate(&name, true, None, strings(alpn))
            });
            self.agents.insert(kind, entry);
        }
        // HTTP apps of agents: the front door serves them; a certificate is asked for only
        // by a connection's own configuration when the agent's `allow` needs one.
        let http = self.push(RouteEntry {
            role: Role::Agent(Kind::Http),
            allow_from: builtin_rule(config, "web"),
            ..terminate("agent:http", false, None, strings(WEB_ALPN))
        });
        self.agents.insert(Kind::Http, http);
        let kube = self.push(RouteEntry {
            role: Role::Agent(Kind::Kube),
            mode: Mode::Passthrough,
            upstream: None,
            allow_from: builtin_rule(config, "kube"),
            ..passthrough("agent:kube", "")
        });
        self.agents.insert(Kind::Kube, kube);
    }

    fn push(&mut self, e: RouteEntry) -> usize {
        self.entries.push(e);
        self.entries.len() - 1
    }
}

impl Table<()> {
    /// Gives every terminated entry its TLS configuration, `tls(entry)`; the first error
    /// is the table's.
    pub(crate) fn with_tls<T, E>(
        self,
        mut tls: impl FnMut(&RouteEntry) -> Result<T, E>,
    ) -> Result<Table<T>, E> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in self.entries {
            let mode = match e.mode {
                Mode::Passthrough => Mode::Passthrough,
                Mode::Terminate { client_auth, .. } => Mode::Terminate {
                    client_auth,
                    tls: tls(&e)?,
                },
            };
            entries.push(RouteEntry {
                name: e.name,
                mode,
                role: e.role,
                upstream: e.upstream,
                alpn: e.alpn,
                allow: e.allow,
                allow_from: e.allow_from,
            });
        }
        Ok(Table {
            entries,
            rules: self.rules,
            kube: self.kube,
            web: self.web,
            builtin: self.builtin,
            auth: self.auth,
            ssh_nodes: self.ssh_nodes,
            apps: self.apps,
            agents: self.agents,
        })
    }
}

/// The `allow_from.<key>` rule of the built-in routes of `upstreams.<key>` (also the
/// legacy listener of that upstream).
pub(crate) fn builtin_rule(config: &Config, key: &str) -> Option<AllowFrom> {
    let nets = config.allow_from.get(key)?;
    Some(AllowFrom::new(format!("allow_from.{key}"), nets))
}

/// The route name of app `name` in logs and metrics.
pub(crate) fn app_route(name: &str) -> String {
    format!("app:{name}")
}

/// A terminated route entry (no TLS configuration yet).
fn terminate(
    name: &str,
    client_auth: bool,
    upstream: Option<&str>,
    alpn: Vec<String>,
) -> RouteEntry {
    RouteEntry {
        name: name.into(),
        mode: Mode::Terminate {
            client_auth,
            tls: (),
        },
        role: Role::Relay,
        upstream: upstream.map(str::to_owned),
        alpn,
        allow: vec![],
        allow_from: None,
    }
}

fn passthrough(name: &str, upstream: &str) -> RouteEntry {
    RouteEntry {
        name: name.into(),
        mode: Mode::Passthrough,
        role: Role::Relay,
        upstream: Some(upstream.into()),
        alpn: vec![],
        allow: vec![],
        allow_from: None,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
