//! The connection classes' metric families (`switchyard_class_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassLabel {
    pub(crate) class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassRefusal {
    pub(crate) class: &'static str,
    /// `max_connections`, `per_source` or `max_handshakes`.
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FirstBytesLabel {
    /// `kernel` (the eBPF front end, by socket cookie), `peek`, or `none` (no byte yet).
    pub(crate) source: &'static str,
    /// `tls`, `ssh`, `http`, `postgres`, `proxy`, `unknown`, or `none`.
    pub(crate) class: &'static str,
}

/// Per class: connections now, handshakes now, admitted and refused; and how each
/// connection's first bytes were known at accept.
#[derive(Default)]
pub(crate) struct ClassMetrics {
    pub(crate) active: Family<ClassLabel, Gauge>,
    pub(crate) handshakes: Family<ClassLabel, Gauge>,
    pub(crate) admitted: Family<ClassLabel, Counter>,
    pub(crate) refused: Family<ClassRefusal, Counter>,
    pub(crate) first_bytes: Family<FirstBytesLabel, Counter>,
}

impl ClassMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_class_active",
            "Connections of each class now (unclassified: not yet routed)",
            self.active.clone(),
        );
        registry.register(
            "switchyard_class_handshakes",
            "TLS handshakes in progress, by class",
            self.handshakes.clone(),
        );
        registry.register(
            "switchyard_class_admitted",
            "Connections admitted into each class",
            self.admitted.clone(),
        );
        registry.register(
            "switchyard_class_refused",
            "Connections refused by their class's budget, by class and reason",
            self.refused.clone(),
        );
        registry.register(
            "switchyard_first_bytes_at_accept",
            "Accepted connections by what their first bytes were known as at accept, and from where",
            self.first_bytes.clone(),
        );
    }
}
