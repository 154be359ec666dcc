//! Whose address a connection is from (`docs/balancers.md`, "Trusted proxies"): the TCP
//! peer, unless a PROXY header or `X-Forwarded-For` from a trusted proxy
//! (`proxy_service.trusted_proxies`) names another; and the source rules of routes
//! (`allow_from`) checked against that address. Pure values: the connection code records
//! them in its span and acts on the verdicts.

use crate::config::{Nets, ProxyProtocol};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// How the client address used for decisions was obtained (`client_from` in logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFrom {
    /// The TCP peer itself.
    Peer,
    ProxyV1,
    ProxyV2,
    XForwardedFor,
}

impl ClientFrom {
    pub(crate) fn label(self) -> &'static str {
        match self {
            ClientFrom::Peer => "peer",
            ClientFrom::ProxyV1 => "proxy_v1",
            ClientFrom::ProxyV2 => "proxy_v2",
            ClientFrom::XForwardedFor => "x_forwarded_for",
        }
    }

    /// The PROXY protocol version of a header.
    pub(crate) fn proxy(version: u8) -> ClientFrom {
        if version == 1 {
            ClientFrom::ProxyV1
        } else {
            ClientFrom::ProxyV2
        }
    }
}

/// A client address: an IP, with the port when it is known (`X-Forwarded-For` may give
/// only the IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAddr {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl ClientAddr {
    pub(crate) fn ip(self) -> IpAddr {
        match self {
            ClientAddr::Ip(ip) => ip,
            ClientAddr::Socket(s) => s.ip(),
        }
    }

    /// As a socket address (port 0 when only the IP is known).
    pub(crate) fn socket(self) -> SocketAddr {
        match self {
            ClientAddr::Ip(ip) => SocketAddr::new(ip, 0),
            ClientAddr::Socket(s) => s,
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Ip(ip) => ip.fmt(f),
            ClientAddr::Socket(s) => s.fmt(f),
        }
    }
}

/// The client of a connection as the proxy decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) addr: ClientAddr,
    pub(crate) from: ClientFrom,
}

impl Client {
    /// The TCP peer as the client.
    pub(crate) fn peer(peer: SocketAddr) -> Client {
        Client {
            addr: ClientAddr::Socket(peer),
            from: ClientFrom::Peer,
        }
    }
}

/// What to do with a PROXY header (`proxy_protocol` is not `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// From a trusted proxy: its source is the client.
    Believe,
    /// From anyone else under an unset `proxy_protocol`: consumed, its source only
    /// logged (`claimed_client`).
    Claim,
    /// From anyone else under `proxy_protocol: on`: the connection is refused.
    Refuse,
}

/// The verdict on a PROXY header from a peer that is (or is not) a trusted proxy.
pub(crate) fn proxy_verdict(policy: Option<ProxyProtocol>, peer_trusted: bool) -> Verdict {
    match (peer_trusted, policy) {
        (true, _) => Verdict::Believe,
        (false, Some(ProxyProtocol::On)) => Verdict::Refuse,
        (false, _) => Verdict::Claim,
    }
}

/// A route's rule on client addresses: the ranges, and the configuration key they come
/// from (for the refusal's log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowFrom {
    /// `routes[2].allow_from`, `apps[0].allow_from`, `allow_from.postgres`.
    pub(crate) key: String,
    pub(crate) nets: Nets,
}

impl AllowFrom {
    pub(crate) fn new(key: impl Into<String>, nets: &Nets) -> AllowFrom {
        AllowFrom {
            key: key.into(),
            nets: nets.clone(),
        }
    }

    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        self.nets.contains(ip)
    }

    /// `Err(reason)` when `client` may not use the route.
    pub(crate) fn check(&self, client: &Client) -> Result<(), String> {
        if self.allows(client.addr.ip()) {
            return Ok(());
        }
        Err(format!(
            "client {} (from {}) is not in {}: {}",
            client.addr.ip(),
            client.from.label(),
            self.key,
            self.nets
        ))
    }
}

/// Checks an optional rule: no rule allows everyone.
pub(crate) fn allowed(rule: Option<&AllowFrom>, client: &Client) -> Result<(), String> {
    rule.map_or(Ok(()), |r| r.check(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Net;

    fn nets(list: &[&str]) -> Nets {
        Nets(
            list.iter()
                .map(|s| Net::try_from(s.to_string()).unwrap())
                .collect(),
        )
    }

    #[test]
    fn proxy_headers_are_believed_only_from_trusted_peers() {
        use ProxyProtocol::On;
        assert_eq!(proxy_verdict(Some(On), true), Verdict::Believe);
        assert_eq!(proxy_verdict(None, true), Verdict::Believe);
        assert_eq!(proxy_verdict(Some(On), false), Verdict::Refuse);
        assert_eq!(proxy_verdict(None, false), Verdict::Claim);
    }

    #[test]
    fn allow_from_names_the_rule_and_how_the_address_was_learnt() {
        let rule = AllowFrom::new("allow_from.postgres", &nets(&["10.1.0.0/16"]));
        let office = Client {
            addr: ClientAddr::Ip("10.1.2.3".parse().unwrap()),
            from: ClientFrom::XForwardedFor,
        };
        assert_eq!(rule.check(&office), Ok(()));
        let home = Client {
            addr: ClientAddr::Socket("203.0.113.77:5555".parse().unwrap()),
            from: ClientFrom::ProxyV2,
        };
        assert_eq!(
            rule.check(&home).unwrap_err(),
            "client 203.0.113.77 (from proxy_v2) is not in allow_from.postgres: [10.1.0.0/16]"
        );
        assert_eq!(allowed(None, &home), Ok(()));
        assert!(allowed(Some(&rule), &home).is_err());
        assert_eq!(ClientAddr::Ip("::1".parse().unwrap()).socket().port(), 0);
        assert_eq!(
            Client::peer("127.0.0.2:1".parse().unwrap()).from.label(),
            "peer"
        );
    }
}
