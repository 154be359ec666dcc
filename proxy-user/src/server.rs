//! The server: builds the routing state from the configuration ([`Proxy`]), runs the accept
//! loop of each listener under a connection limit, gives every connection its `tracing`
//! span, logs how it ended, and drains on shutdown.
//!
//! Shape (mini-redis `server.rs`): `serve(listener, proxy, shutdown)`; a semaphore permit is
//! taken before each accept, so at `limits.max_connections` new clients wait in the kernel's
//! backlog; on shutdown the loop stops accepting and waits, up to `limits.drain_timeout`,
//! for every permit to come back.

use crate::config::{Config, ConfigError};
use crate::conn::{self, ConnError};
use crate::metrics::Metrics;
use crate::relay::relay_plain;
use crate::route::{Mode, RouteEntry, Table};
use crate::tls;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{error, field, info, info_span, warn, Instrument};

/// Everything a connection needs, built once at start-up.
pub struct Proxy {
    pub config: Config,
    pub table: Table,
    /// TLS configuration of each `table.entries[i]` that terminates.
    pub tls: Vec<Option<Arc<ServerConfig>>>,
    pub metrics: Arc<Metrics>,
    /// Rate limit for log lines about unrecognised or malformed input.
    noise: RateLimit,
}

impl Proxy {
    /// Builds the routes and loads certificates; errors name the configuration key.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Proxy, ConfigError> {
        let table = Table::new(&config);
        let tls = tls::server_configs(&config, &table)?;
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

/// What a listener does with its connections.
#[derive(Clone)]
pub enum Ingress {
    /// The single port: detect, route, relay.
    Multiplex,
    /// A legacy per-protocol listener: relay everything to one upstream.
    Fixed(RouteEntry),
}

/// The route of a legacy listener key (`listen_addr` → ssh, ...).
pub fn legacy_route(config: &Config, key: &str) -> Result<RouteEntry, ConfigError> {
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

/// Accepts connections until `shutdown` turns true. Each connection uses the [`Proxy`]
/// current when it was accepted (SIGHUP swaps it), and holds one of the process-wide
/// `permits` (`limits.max_connections`) while it lives.
pub async fn serve(
    listener: TcpListener,
    ingress: Ingress,
    proxies: watch::Receiver<Arc<Proxy>>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let proxy = proxies.borrow().clone();
        let ingress = ingress.clone();
        tokio::spawn(async move {
            connection(proxy, ingress, stream, peer).await;
            drop(permit);
        });
    }
}

/// Waits, up to `deadline`, until every connection permit has come back.
pub async fn drain(permits: &Semaphore, max: usize, deadline: Duration) {
    let live = max - permits.available_permits();
    if live > 0 {
        info!(live, "draining: waiting for live connections to finish");
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(deadline, permits.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            live = max - permits.available_permits(),
            "drain deadline reached; closing remaining connections"
        );
    }
}

/// Runs one connection inside its span and logs how it ended.
async fn connection(proxy: Arc<Proxy>, ingress: Ingress, stream: TcpStream, peer: SocketAddr) {
    let span = info_span!(
        "conn",
        client = %peer,
        real_client = field::Empty,
        sni = field::Empty,
        alpn = field::Empty,
        negotiated = field::Empty,
        route = field::Empty,
        identity = field::Empty,
        upgrade = field::Empty,
    );
    async move {
        let _ = stream.set_nodelay(true);
        let started = Instant::now();
        let result = match ingress {
            Ingress::Multiplex => conn::handle(&proxy, stream).await,
            Ingress::Fixed(route) => fixed(&proxy, stream, &route).await,
        };
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(done) => {
                let s = &done.stats;
                proxy.metrics.relayed(s);
                // An upgraded connection's line also carries the inner connection's span.
                let _inner = done.inner.as_ref().map(|span| span.enter());
                info!(
                    target: "switchyard::audit",
                    route = %done.route,
                    bytes_to_upstream = s.client_to_upstream,
                    bytes_to_client = s.upstream_to_client,
                    relay = s.mode,
                    kernel_to_upstream = s.kernel_to_upstream,
                    kernel_to_client = s.kernel_to_client,
                    duration_ms = ms,
                    error = s.error.as_ref().map(field::display),
                    "connection closed"
                );
            }
            Err(e) => proxy.log_failure(&e, ms),
        }
    }
    .instrument(span)
    .await
}

/// A legacy listener's connection: straight to its upstream.
async fn fixed(
    proxy: &Proxy,
    stream: TcpStream,
    route: &RouteEntry,
) -> Result<conn::Finished, ConnError> {
    tracing::Span::current().record("route", route.name.as_str());
    proxy.metrics.route(&route.name, "relay");
    let _active = proxy.metrics.active_guard("legacy");
    let upstream =
        TcpStream::connect(&route.upstream)
            .await
            .map_err(|error| ConnError::Upstream {
                route: route.name.clone(),
                upstream: route.upstream.clone(),
                error,
            })?;
    let _ = upstream.set_nodelay(true);
    let stats = relay_plain(stream, upstream, 0, proxy.config.limits.relay_buffer_bytes).await;
    Ok(conn::Finished {
        inner: None,
        route: route.name.clone(),
        stats,
    })
}

impl Proxy {
    /// Counts and logs a failed connection. Refusals are rate-limited (a flood of bad
    /// clients must not become a flood of log lines); the count of suppressed lines is
    /// reported with the next line that passes.
    fn log_failure(&self, e: &ConnError, duration_ms: u64) {
        let outcome = e.detect_outcome();
        if let Some(outcome) = outcome {
            self.metrics.detect(outcome);
        }
        let quiet = matches!(e, ConnError::Io(_));
        if quiet {
            info!(duration_ms, "connection ended: {e}");
            return;
        }
        let Some(suppressed) = self.noise.allow() else {
            return;
        };
        if suppressed > 0 {
            warn!(suppressed, "similar messages were suppressed");
        }
        match e {
            ConnError::Handshake { reason, .. } => {
                warn!(reason, duration_ms, "connection refused: {e}")
            }
            ConnError::Upstream { .. } => error!(duration_ms, "{e}"),
            ConnError::Upgrade(r) => warn!(
                outcome = "upgrade_refused",
                status = r.status,
                duration_ms,
                "connection refused: {e}"
            ),
            _ => warn!(
                outcome = outcome.unwrap_or("no_route"),
                duration_ms, "connection refused: {e}"
            ),
        }
    }
}

/// Allows `burst` events per `window`; reports how many were suppressed since the last allowed.
struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLimit {
    fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed_before)` when this event may be logged, `None` when it is suppressed.
    fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.elapsed() >= self.window {
            s.0 = Instant::now();
            s.1 = 0;
        }
        if s.1 < self.burst {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_suppresses_and_reports() {
        let r = RateLimit::new(2, Duration::from_millis(50));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.allow(), Some(2));
    }
}
