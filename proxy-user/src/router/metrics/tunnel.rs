//! The reverse-tunnel service's metric families (`switchyard_tunnel_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StreamLabel {
    /// The service kind: `ssh`, `tcp`, `http`, `postgres`, `mysql`, `mongodb`, `kube`.
    pub(crate) kind: &'static str,
    /// `opened`, `refused_by_agent`, `not_allowed`, `over_limit`, `tunnel_error`.
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TunnelOutcome {
    /// Registrations: `accepted`, `full`, `refused`; services: `service_refused`;
    /// closes: `closed`, `heartbeat_timeout`, `drained`, `control_error`.
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Direction {
    /// `to_agent` or `from_agent`.
    pub(crate) direction: &'static str,
}

/// Connected agents, their tunnels and streams.
#[derive(Default)]
pub(crate) struct TunnelMetrics {
    pub(crate) agents: Gauge,
    pub(crate) tunnels: Gauge,
    pub(crate) streams: Gauge,
    pub(crate) streams_total: Family<StreamLabel, Counter>,
    pub(crate) events: Family<TunnelOutcome, Counter>,
    pub(crate) bytes: Family<Direction, Counter>,
}

impl TunnelMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_tunnel_agents",
            "Agents with at least one tunnel to this proxy",
            self.agents.clone(),
        );
        registry.register(
            "switchyard_tunnel_tunnels",
            "Reverse tunnels open to this proxy",
            self.tunnels.clone(),
        );
        registry.register(
            "switchyard_tunnel_streams",
            "Client streams open through reverse tunnels",
            self.streams.clone(),
        );
        registry.register(
            "switchyard_tunnel_streams_opened",
            "Client streams through reverse tunnels, by service kind and outcome",
            self.streams_total.clone(),
        );
        registry.register(
            "switchyard_tunnel_events",
            "Tunnel registrations, refused services and closes, by outcome",
            self.events.clone(),
        );
        registry.register(
            "switchyard_tunnel_bytes",
            "Bytes carried by client streams through reverse tunnels, by direction",
            self.bytes.clone(),
        );
    }

    pub(crate) fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&TunnelOutcome { outcome }).inc();
    }

    pub(crate) fn stream(&self, kind: &'static str, outcome: &'static str) {
        self.streams_total
            .get_or_create(&StreamLabel { kind, outcome })
            .inc();
    }

    /// The byte counters (`to_agent`, `from_agent`), looked up once per stream.
    pub(crate) fn byte_counters(&self) -> (Counter, Counter) {
        let get = |direction| self.bytes.get_or_create(&Direction { direction }).clone();
        (get("to_agent"), get("from_agent"))
    }
}
