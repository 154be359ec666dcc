//! The routing state a connection runs against ([`Proxy`]): the configuration, the route
//! table with each terminated route's TLS configuration, the metrics, and the rate limit of
//! refusal log lines. Built once at start-up and again at each SIGHUP reload; a connection
//! keeps the `Proxy` it was accepted with.

use super::certs;
use super::metrics::Metrics;
use super::ratelimit::RateLimit;
use super::route::{Mode, RouteEntry, Table};
use crate::config::{Config, ConfigError};
use rustls::ServerConfig;
use std::sync::Arc;
use std::time::Duration;

/// Everything a connection needs, built once at start-up.
pub(crate) struct Proxy {
    pub(crate) config: Config,
    pub(crate) table: Table,
    /// TLS configuration of each `table.entries[i]` that terminates.
    pub(crate) tls: Vec<Option<Arc<ServerConfig>>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Rate limit for log lines about unrecognised or malformed input.
    pub(crate) noise: RateLimit,
}

impl Proxy {
    /// Builds the routes and loads certificates; errors name the configuration key.
    pub(crate) fn new(config: Config, metrics: Arc<Metrics>) -> Result<Proxy, ConfigError> {
        let table = Table::new(&config);
        let tls = certs::server_configs(&config, &table)?;
        for (key, _) in config.legacy_listeners() {
            legacy_route(&config, key)?;
        }
        Ok(Proxy {
            config,
            table,
            tls,
            metrics,
            noise: RateLimit::new(10, Duration::from_secs(10)),
        })
    }
}

/// The route of a legacy listener key (`listen_addr` → ssh, ...).
pub(crate) fn legacy_route(config: &Config, key: &str) -> Result<RouteEntry, ConfigError> {
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
        upstream,
        alpn: vec![],
        allow: vec![],
    })
}
