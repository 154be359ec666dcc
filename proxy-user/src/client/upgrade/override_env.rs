//! `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE`: the user's override of the detection of a
//! layer-7 load balancer (docs/client.md). `true`/`false` forces the connection upgrade on
//! or off for every proxy; `host:port=bool,…` decides per proxy address.

use crate::client::ClientError;
use std::collections::HashMap;

/// Override of the detection: `true`, `false`, or `host:port=bool,…`.
pub(crate) const OVERRIDE_ENV: &str = "SWITCHYARD_TLS_ROUTING_CONN_UPGRADE";

/// `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE`: forces the upgrade on or off, for every proxy
/// or per `host:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Override {
    all: Option<bool>,
    per_addr: HashMap<String, bool>,
}

impl Override {
    /// Reads the environment variable; a bad value is a usage error.
    pub(crate) fn from_env() -> Result<Override, ClientError> {
        match std::env::var(OVERRIDE_ENV) {
            Ok(v) => Override::parse(&v)
                .map_err(|e| ClientError::Usage(format!("{OVERRIDE_ENV}={v:?}: {e}"))),
            Err(std::env::VarError::NotPresent) => Ok(Override::default()),
            Err(e) => Err(ClientError::Usage(format!("{OVERRIDE_ENV}: {e}"))),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`) for all proxies, or a comma-separated
    /// list of `host:port=bool` (a bare bool in the list is the default for the others).
    pub(crate) fn parse(text: &str) -> Result<Override, String> {
        let mut o = Override::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.rsplit_once('=') {
                None => {
                    let b = parse_bool(item)?;
                    if o.all.replace(b).is_some() {
                        return Err("more than one value for all proxies".into());
                    }
                }
                Some((addr, value)) => {
                    let addr = addr.trim();
                    let value = parse_bool(value.trim())?;
                    crate::config::host_port(OVERRIDE_ENV, addr).map_err(|_| {
                        format!("`{addr}` is not host:port (write host:port=true|false)")
                    })?;
                    o.per_addr.insert(addr.to_ascii_lowercase(), value);
                }
            }
        }
        Ok(o)
    }

    /// Whether the override decides for proxy `addr`.
    pub(crate) fn decide(&self, addr: &str) -> Option<bool> {
        self.per_addr
            .get(&addr.to_ascii_lowercase())
            .copied()
            .or(self.all)
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values() {
        let o = Override::parse("true").unwrap();
        assert_eq!(o.decide("any:443"), Some(true));
        let o = Override::parse(" FALSE ").unwrap();
        assert_eq!(o.decide("any:443"), Some(false));
        let o = Override::parse("").unwrap();
        assert_eq!(o.decide("any:443"), None);
        let o = Override::parse("proxy.example.com:443=true, 127.0.0.1:3080=0").unwrap();
        assert_eq!(o.decide("Proxy.Example.com:443"), Some(true));
        assert_eq!(o.decide("127.0.0.1:3080"), Some(false));
        assert_eq!(o.decide("other:443"), None);
        let o = Override::parse("false,lb.example.com:443=true").unwrap();
        assert_eq!(o.decide("lb.example.com:443"), Some(true));
        assert_eq!(o.decide("other:443"), Some(false));
        assert!(Override::parse("maybe").is_err());
        assert!(Override::parse("proxy:443=maybe").is_err());
        assert!(Override::parse("proxy=true").is_err());
        assert!(Override::parse("true,false").is_err());
    }
}
