//! The routing state a connection runs against ([`Proxy`]): the configuration, the route
//! table with each terminated route's TLS configuration, the metrics, the rate limit of
//! refusal log lines, and the registry of connected agents (which outlives reloads). Built once at start-up and again at each SIGHUP reload; a connection
//! keeps the `Proxy` it was accepted with.

use super::acme::Acme;
use super::admission::Admission;
use super::certs;
use super::http::Front;
use super::metrics::Metrics;
use super::ratelimit::RateLimit;
use super::route::{builtin_rule, Mode, Role, RouteEntry, Table};
use super::tunnel::Registry;
use crate::config::{Config, ConfigError};
use rustls::ServerConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A route of the running proxy: a terminated one carries its rustls configuration.
pub(crate) type Route = RouteEntry<Arc<ServerConfig>>;

/// Everything a connection needs, built once at start-up.
pub(crate) struct Proxy {
    pub(crate) config: Config,
    /// The routes, each terminated one with its TLS configuration.
    pub(crate) table: Table<Arc<ServerConfig>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The HTTP servers behind the web route and the apps, with their connection pools.
    pub(crate) front: Front,
    /// Rate limit for log lines about unrecognised or malformed input.
    pub(crate) noise: RateLimit,
    /// Turns true when the process starts draining (SIGTERM): kept-alive HTTP connections
    /// then close once their requests in flight are answered.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The connected agents (process-wide: reloads keep them).
    pub(crate) tunnels: Arc<Registry>,
    /// The certificates and client verifier, for configurations made per connection (an
    /// agent's service with its allow list).
    pub(crate) terminator: certs::Terminator,
    /// The budgets of the connection classes (process-wide: reloads keep the counts).
    pub(crate) admission: Arc<Admission>,
    /// The ACME certificate and its pending challenges (process-wide, like the agents).
    pub(crate) acme: Option<Arc<Acme>>,
}

/// What outlives a reload: the agents, the class budgets' counts, the ACME state.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) tunnels: Arc<Registry>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) acme: Option<Arc<Acme>>,
}

impl Proxy {
    /// Builds the routes and loads certificates; errors name the configuration key.
    pub(crate) fn new(
        config: Config,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
        shared: Shared,
    ) -> Result<Proxy, ConfigError> {
        let Shared {
            tunnels,
            admission,
            acme,
        } = shared;
        let table = Table::new(&config);
        let terminator =
            certs::Terminator::new(&config, &table, acme.clone(), &metrics.client_chains)?;
        let table = certs::with_tls(&terminator, table)?;
        for (key, _) in config.legacy_listeners() {
            legacy_route(&config, key)?;
        }
        let front = Front::new(&config, &metrics)?;
        metrics.acme.keypairs(&terminator.expiries());
        Ok(Proxy {
            config,
            table,
            metrics,
            front,
            noise: RateLimit::new(10, Duration::from_secs(10)),
            stopping,
            tunnels,
            terminator,
            admission,
            acme,
        })
    }
}

/// The route of a legacy listener key (`listen_addr` → ssh, ...).
pub(crate) fn legacy_route(config: &Config, key: &str) -> Result<Route, ConfigError> {
    let u = &config.upstreams;
    let (name, upstream) = match key {
        "listen_addr" => ("ssh", &u.ssh),
        "tunnel_listen_addr" => ("tunnel", &u.tunnel),
        "kube_listen_addr" => ("kube", &u.kube),
        "mysql_listen_addr" => ("mysql", &u.mysql),
        "postgres_listen_addr" => ("postgres", &u.postgres),
        _ => ("mongodb", &u.mongodb),
    };
    let upstream = upstream.clone().ok_or_else(|| {
        ConfigError::invalid(
            format!("proxy_service.{key}"),
            format!("this legacy listener needs upstreams.{name}"),
        )
    })?;
    Ok(RouteEntry {
        name: format!("legacy-{name}"),
        mode: Mode::Passthrough,
        role: Role::Relay,
        upstream: Some(upstream),
        alpn: vec![],
        allow: vec![],
        allow_from: builtin_rule(config, name),
    })
}
