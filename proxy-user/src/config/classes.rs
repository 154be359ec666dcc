//! `limits.classes`: the budget of each connection class (`docs/config.md`). A connection
//! is `unclassified` from accept until its route is known, then takes the class of its
//! route (`ssh`, `postgres`, `web`, …). Unset values take the defaults of [`budget`].

use super::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Every class name, as in `limits.classes` and the metrics.
pub(crate) const CLASSES: [&str; 11] = [
    "unclassified",
    "legacy-plaintext",
    "web",
    "app",
    "ssh",
    "postgres",
    "mysql",
    "mongodb",
    "kube",
    "tunnel",
    "auth",
];

/// One entry of `limits.classes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassLimits {
    /// Connections of the class at once (for `unclassified`: not yet routed).
    pub(crate) max_connections: Option<usize>,
    /// TLS handshakes of the class in progress at once (the CPU-expensive part).
    pub(crate) max_handshakes: Option<usize>,
    /// Connections of the class at once from one source (an IPv4 address, an IPv6 /64).
    pub(crate) per_source: Option<usize>,
    /// New connections of the class per second, on average (a token bucket).
    pub(crate) rate: Option<f64>,
    /// New connections of the class at once beyond `rate` (the bucket's size; default:
    /// one second of `rate`).
    pub(crate) burst: Option<u32>,
    /// New connections of the class per second from one source, on average (a token
    /// bucket per source). On `unclassified` it is checked at accept, before any read.
    pub(crate) per_source_rate: Option<f64>,
    /// The size of each source's bucket (default: one second of `per_source_rate`).
    pub(crate) per_source_burst: Option<u32>,
}

/// A class's budget with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Budget {
    pub(crate) max_connections: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) per_source: usize,
    /// `(rate per second, burst)`; `None`: no rate limit.
    pub(crate) rate: Option<(f64, f64)>,
    /// The same for each source; `None`: none.
    pub(crate) per_source_rate: Option<(f64, f64)>,
}

/// The budget of `class`: its `limits.classes` entry over the defaults — generous for
/// routed classes, tighter for connections that have not said what they are yet.
pub(crate) fn budget(
    classes: &BTreeMap<String, ClassLimits>,
    class: &str,
    max_connections: usize,
) -> Budget {
    let default = match class {
        "unclassified" => Budget {
            max_connections: max_connections.min(4096),
            max_handshakes: usize::MAX,
            per_source: 1024,
            // No rate: a class's bucket is shared by every source, so one source's flood
            // would spend it for all the others (measured: a flood from 127.0.0.2 had
            // postgres from 127.0.0.1 refused at 5000/s); `per_source` bounds each client.
            rate: None,
            // None by default: many clients behind one NAT address are one source.
            per_source_rate: None,
        },
        _ => Budget {
            max_connections,
            max_handshakes: 256,
            per_source: 4096,
            rate: None,
            per_source_rate: None,
        },
    };
    let set = classes.get(class).cloned().unwrap_or_default();
    Budget {
        max_connections: set.max_connections.unwrap_or(default.max_connections),
        max_handshakes: set.max_handshakes.unwrap_or(default.max_handshakes),
        per_source: set.per_source.unwrap_or(default.per_source),
        rate: bucket(set.rate, set.burst, default.rate),
        per_source_rate: bucket(
            set.per_source_rate,
            set.per_source_burst,
            default.per_source_rate,
        ),
    }
}

/// A `(rate, burst)` from the keys set over the default; the burst defaults to one
/// second of the rate (at least 1).
fn bucket(
    rate: Option<f64>,
    burst: Option<u32>,
    default: Option<(f64, f64)>,
) -> Option<(f64, f64)> {
    match (rate, burst) {
        (Some(r), burst) => Some((r, burst.map_or(r.max(1.0), f64::from))),
        (None, Some(b)) => default.map(|(r, _)| (r, f64::from(b))),
        (None, None) => default,
    }
}

/// Checks the class names and values.
pub(crate) fn validate(classes: &BTreeMap<String, ClassLimits>) -> Result<(), ConfigError> {
    for (name, limits) in classes {
        if !CLASSES.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                format!("limits.classes.{name}"),
                format!("unknown class (classes: {})", CLASSES.join(", ")),
            ));
        }
        for (k, rate) in [
            ("rate", limits.rate),
            ("per_source_rate", limits.per_source_rate),
        ] {
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(ConfigError::invalid(
                    format!("limits.classes.{name}.{k}"),
                    "a number of connections per second above 0",
                ));
            }
        }
        if limits.per_source_burst.is_some() && limits.per_source_rate.is_none() {
            return Err(ConfigError::invalid(
                format!("limits.classes.{name}.per_source_burst"),
                "needs per_source_rate",
            ));
        }
        let burst = limits.burst.map(|b| b as usize);
        let source_burst = limits.per_source_burst.map(|b| b as usize);
        for (k, v) in [
            ("max_connections", limits.max_connections),
            ("max_handshakes", limits.max_handshakes),
            ("per_source", limits.per_source),
            ("burst", burst),
            ("per_source_burst", source_burst),
        ] {
            if v == Some(0) {
                return Err(ConfigError::invalid(
                    format!("limits.classes.{name}.{k}"),
                    "at least 1",
                ));
            }
        }
    }
    Ok(())
}
