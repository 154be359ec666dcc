//! Address types both sides parse: [`HostPort`] (an upstream, the proxy a client dials),
//! listen addresses, and DNS labels (SSH node and app names). Each parser names the key
//! (or flag) whose value it refuses, so a message reads "config key `upstreams.ssh`: …".

use super::ConfigError;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// A `host:port` that has been checked (not resolved): `host` without IPv6 brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a `host:port` string without resolving it; `key` names it in the error.
pub(crate) fn host_port(key: &str, value: &str) -> Result<HostPort, ConfigError> {
    let bad = |why: &str| ConfigError::invalid(key, format!("`{value}` is not host:port ({why})"));
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("empty or invalid host"));
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if !v6.is_empty() => v6,
        Some(_) => return Err(bad("empty or invalid host")),
        None if host.contains(':') => return Err(bad("IPv6 addresses need brackets")),
        None => host,
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("port is not 0-65535"))?;
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// Parses a listen address (`ip:port`, or `host:port` that resolves).
pub(crate) fn listen_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = value.parse() {
        return Ok(a);
    }
    host_port(key, value)?;
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError::invalid(key, format!("`{value}` does not resolve")))
}

/// One DNS label: letters, digits and inner hyphens, at most 63 bytes.
pub(crate) fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(v: &str) -> Result<(String, u16), String> {
        host_port("k", v)
            .map(|h| (h.host, h.port))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn host_port_is_parsed_with_ipv6_unbracketed() {
        assert_eq!(
            hp("proxy.example.com:443"),
            Ok(("proxy.example.com".into(), 443))
        );
        assert_eq!(hp("[::1]:3080"), Ok(("::1".into(), 3080)));
        assert_eq!(
            host_port("k", "[::1]:3080").unwrap().to_string(),
            "[::1]:3080"
        );
        assert_eq!(host_port("k", "a:1").unwrap().to_string(), "a:1");
    }

    #[test]
    fn bad_host_ports_name_the_key_and_the_reason() {
        for (value, why) in [
            ("proxy", "no port"),
            (":443", "empty or invalid host"),
            ("[]:443", "empty or invalid host"),
            ("a b:1", "empty or invalid host"),
            ("::1:443", "IPv6 addresses need brackets"),
            ("proxy:99999", "port is not 0-65535"),
            ("proxy:", "port is not 0-65535"),
        ] {
            let e = hp(value).unwrap_err();
            assert!(
                e.contains("config key `k`") && e.contains(why),
                "{value}: {e}"
            );
        }
    }

    #[test]
    fn dns_labels() {
        assert!(dns_label("node-1"));
        assert!(!dns_label("-node"));
        assert!(!dns_label("a.b"));
        assert!(!dns_label(&"x".repeat(64)));
    }
}
