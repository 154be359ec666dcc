//! Prometheus metrics (every family is listed in `docs/config.md`, `diag_addr`): the metric
//! `diag_addr` `/metrics`.
//!
//! The label sets are in [`labels`]; the reverse-tunnel families in [`tunnel`], the ACME
//! certificates' in [`acme`]. Label values are `&'static str` where the set is fixed
//! and `String` where it comes from the configuration (route names), so they stay bounded.

mod acme;
mod classes;
mod labels;
mod tunnel;

pub(crate) use acme::AcmeMetrics;
pub(crate) use classes::{ClassLabel, ClassMetrics, ClassRefusal, FirstBytesLabel};
pub(crate) use labels::*;
pub(crate) use tunnel::TunnelMetrics;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric the proxy exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) upgrades: Family<Upgrade, Counter>,
    pub(crate) claims: Family<Claim, Counter>,
    pub(crate) accepted: Family<Accepted, Counter>,
    pub(crate) active: Family<Protocol, Gauge>,
    pub(crate) detect: Family<Outcome, Counter>,
    pub(crate) routes: Family<RouteAction, Counter>,
    pub(crate) handshake_seconds: Histogram,
    pub(crate) handshake_failures: Family<HandshakeFailure, Counter>,
    pub(crate) handshakes: Family<Handshake, Counter>,
    pub(crate) client_chains: Family<ChainCheck, Counter>,
    pub(crate) relay_bytes: Family<Bytes, Counter>,
    pub(crate) ktls: Family<KtlsLabel, Counter>,
    pub(crate) upstream_errors: Family<UpstreamLabel, Counter>,
    pub(crate) ebpf_loaded: Gauge,
    pub(crate) http_requests: Family<HttpLabel, Counter>,
    pub(crate) http_seconds: Family<RouteLabel, Histogram>,
    pub(crate) tunnel: TunnelMetrics,
    pub(crate) refused: Family<Reason, Counter>,
    pub(crate) classes: ClassMetrics,
    pub(crate) acme: AcmeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            upgrades: Family::default(),
            claims: Family::default(),
            accepted: Family::default(),
            active: Family::default(),
            detect: Family::default(),
            routes: Family::default(),
            handshake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            handshake_failures: Family::default(),
            handshakes: Family::default(),
            client_chains: Family::default(),
            relay_bytes: Family::default(),
            ktls: Family::default(),
            upstream_errors: Family::default(),
            ebpf_loaded: Gauge::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            tunnel: TunnelMetrics::default(),
            refused: Family::default(),
            classes: ClassMetrics::default(),
            acme: AcmeMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "switchyard_connection_upgrades",
            "Requests to /webapi/connectionupgrade, by upgrade kind and outcome",
            m.upgrades.clone(),
        );
        registry.register(
            "switchyard_client_address_claims",
            "Client addresses claimed by PROXY headers and X-Forwarded-For, by kind and outcome",
            m.claims.clone(),
        );
        registry.register(
            "switchyard_accepted_connections",
            "Connections accepted, by ingress path and detected protocol",
            m.accepted.clone(),
        );
        registry.register(
            "switchyard_active_connections",
            "Connections being handled, by protocol",
            m.active.clone(),
        );
        registry.register(
            "switchyard_detect_outcomes",
            "Outcomes of first-bytes detection",
            m.detect.clone(),
        );
        registry.register(
            "switchyard_route_decisions",
            "Routing decisions, by route and action",
            m.routes.clone(),
        );
        registry.register(
            "switchyard_tls_handshake_seconds",
            "Time from accept to a completed TLS handshake on terminated routes",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "switchyard_tls_handshakes",
            "Completed TLS handshakes on terminated routes, by route and kind (full or resumed)",
            m.handshakes.clone(),
        );
        registry.register(
            "switchyard_client_chains",
            "Client certificate chains checked on terminated routes, by result: verified (the \
             CA's signatures checked), remembered (the same chain verified before, \
             limits.verified_chains), refused",
            m.client_chains.clone(),
        );
        registry.register(
            "switchyard_tls_handshake_failures",
            "Failed TLS handshakes on terminated routes, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "switchyard_relay_bytes",
            "Bytes relayed, by direction and relay mode",
            m.relay_bytes.clone(),
        );
        registry.register(
            "switchyard_ktls_sessions",
            "Terminated sessions on routes that may go to the kernel's TLS (ktls: auto or \
             require), by route and outcome",
            m.ktls.clone(),
        );
        registry.register(
            "switchyard_upstream_connect_errors",
            "Failed connections to upstreams, by route",
            m.upstream_errors.clone(),
        );
        registry.register(
            "switchyard_ebpf_loaded",
            "1 when the eBPF front end is loaded and attached",
            m.ebpf_loaded.clone(),
        );
        registry.register(
            "switchyard_http_requests",
            "HTTP requests on the web route and the apps, by route and status class",
            m.http_requests.clone(),
        );
        registry.register(
            "switchyard_http_request_seconds",
            "Time from an HTTP request's head to the end of its response body, by route",
            m.http_seconds.clone(),
        );
        registry.register(
            "switchyard_connections_refused",
            "Connections refused at accept, before any byte was read, by reason",
            m.refused.clone(),
        );
        m.tunnel.register(&mut registry);
        m.classes.register(&mut registry);
        m.acme.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn detect(&self, outcome: &'static str) {
        self.detect.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts a connection refused at accept (`fd_limit`).
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn claim(&self, kind: &'static str, outcome: &'static str) {
        self.claims.get_or_create(&Claim { kind, outcome }).inc();
    }

    pub(crate) fn upgrade(&self, kind: &'static str, outcome: &'static str) {
        self.upgrades
            .get_or_create(&Upgrade { kind, outcome })
            .inc();
    }

    /// The request counters of HTTP route `name`, looked up once so that a request
    /// costs no label hashing or allocation.
    pub(crate) fn http_route(&self, name: &str) -> std::sync::Arc<HttpRoute> {
        let counter = |class| {
            let label = HttpLabel {
                route: name.to_owned(),
                class,
            };
            self.http_requests.get_or_create(&label).clone()
        };
        let seconds = self.http_seconds.get_or_create(&RouteLabel {
            route: name.to_owned(),
        });
        std::sync::Arc::new(HttpRoute {
            name: name.to_owned(),
            classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(counter),
            seconds: seconds.clone(),
        })
    }

    pub(crate) fn route(&self, route: &str, action: &'static str) {
        self.routes
            .get_or_create(&RouteAction {
                route: route.to_owned(),
                action,
            })
            .inc();
    }

    pub(crate) fn handshake_done(&self, route: &str, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.handshakes
            .get_or_create(&Handshake {
                route: route.to_owned(),
                kind,
            })
            .inc();
    }

    /// Counts a session of a route that may go to the kernel's TLS: `handed_over`,
    /// `kept_cipher` (the kernel does not take its cipher), `kept_closed` (the client
    /// closed first), `kept_framing` (a `-ping` ALPN, framed in userspace), `failed`.
    pub(crate) fn ktls(&self, route: &str, outcome: &'static str) {
        self.ktls
            .get_or_create(&KtlsLabel {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }

    pub(crate) fn handshake_failed(&self, route: &str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeFailure {
                route: route.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts a finished relay: the kernel's share as `kernel_splice`, the rest as `splice`
    /// when the `splice(2)` relay moved it, as `ktls` when the kernel held the TLS
    /// session, else as `userspace`.
    pub(crate) fn relayed(&self, s: &crate::relay::RelayStats) {
        let kernel = (s.kernel_to_upstream, s.kernel_to_client);
        if kernel != (0, 0) {
            self.bytes("kernel_splice", kernel.0, kernel.1);
        }
        self.bytes(
            match s.mode {
                "splice" => "splice",
                "ktls" => "ktls",
                _ => "userspace",
            },
            s.client_to_upstream - kernel.0,
            s.upstream_to_client - kernel.1,
        );
    }

    /// Registers a collector read at each scrape (the eBPF front end's map counters).
    pub(crate) fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    fn bytes(&self, mode: &'static str, to_upstream: u64, to_client: u64) {
        for (direction, n) in [
            ("client_to_upstream", to_upstream),
            ("upstream_to_client", to_client),
        ] {
            self.relay_bytes
                .get_or_create(&Bytes { direction, mode })
                .inc_by(n);
        }
    }

    /// Counts a connection as active for `protocol` until the guard is dropped.
    pub(crate) fn active_guard(&self, protocol: &'static str) -> ActiveGuard {
        let gauge = self.active.get_or_create(&Protocol { protocol }).clone();
        gauge.inc();
        ActiveGuard(gauge)
    }
}

/// One HTTP route (`web`, `app:<name>`, `none`): its name and request counters.
pub(crate) struct HttpRoute {
    pub(crate) name: String,
    /// `switchyard_http_requests_total` for `1xx` … `5xx`.
    classes: [Counter; 5],
    seconds: Histogram,
}

impl HttpRoute {
    /// Counts one request answered with `status` that took `seconds`.
    pub(crate) fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.seconds.observe(seconds);
    }
}

/// Decrements `switchyard_active_connections` on drop.
pub(crate) struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
