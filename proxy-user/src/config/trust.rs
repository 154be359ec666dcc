//! The trust settings of the configuration: address ranges — [`Net`] (one `ip` or
//! `ip/prefix`, IPv4 or IPv6, parsed with `ipnet` while the file is read) and [`Nets`] (a
//! list, and whether an address is in it) for `proxy_service.trusted_proxies` and every
//! `allow_from` — the [`XffMode`] of `trust_x_forwarded_for`, and the top-level
//! `allow_from` section ([`BuiltinAllowFrom`]).

use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;

/// One address range: `10.0.0.0/8`, `2001:db8::/32`, or one address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Net(IpNet);

impl TryFrom<String> for Net {
    type Error = String;

    fn try_from(s: String) -> Result<Net, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Net(IpNet::from(ip)));
        }
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("`{s}` is not an address or a CIDR range (ip/prefix)"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has bits set after the prefix: did you mean {}?",
                net.trunc()
            ));
        }
        Ok(Net(net))
    }
}

impl Net {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A list of ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Nets(pub(crate) Vec<Net>);

impl Nets {
    /// Whether any range holds `ip`.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Nets {
    /// `[10.0.0.0/8, 192.0.2.7/32]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            n.fmt(f)?;
        }
        f.write_str("]")
    }
}

/// `proxy_service.trust_x_forwarded_for`: `false`, `true` or `hops`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum XffMode {
    /// `false`: the header is not looked at.
    #[default]
    Off,
    /// `true`: exactly one value, from a trusted proxy.
    Single,
    /// `hops`: a list through a chain of trusted proxies.
    Hops,
}

impl<'de> Deserialize<'de> for XffMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<XffMode, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = XffMode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or hops")
            }
            fn visit_bool<E>(self, v: bool) -> Result<XffMode, E> {
                Ok(if v { XffMode::Single } else { XffMode::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<XffMode, E> {
                match v {
                    "hops" => Ok(XffMode::Hops),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `allow_from` section: client addresses allowed on the built-in routes, by the
/// `upstreams` key they reach; a route without an entry allows any address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BuiltinAllowFrom {
    pub(crate) web: Option<Nets>,
    pub(crate) ssh: Option<Nets>,
    /// Every `upstreams.ssh_nodes` node.
    pub(crate) ssh_nodes: Option<Nets>,
    pub(crate) tunnel: Option<Nets>,
    pub(crate) postgres: Option<Nets>,
    pub(crate) mysql: Option<Nets>,
    pub(crate) mongodb: Option<Nets>,
    pub(crate) kube: Option<Nets>,
    /// Every auth cluster.
    pub(crate) auth: Option<Nets>,
}

impl BuiltinAllowFrom {
    /// `(key, rule)` for every key that is set.
    pub(crate) fn entries(&self) -> Vec<(&'static str, &Nets)> {
        [
            ("web", &self.web),
            ("ssh", &self.ssh),
            ("ssh_nodes", &self.ssh_nodes),
            ("tunnel", &self.tunnel),
            ("postgres", &self.postgres),
            ("mysql", &self.mysql),
            ("mongodb", &self.mongodb),
            ("kube", &self.kube),
            ("auth", &self.auth),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|n| (k, n)))
        .collect()
    }

    /// The rule for the built-in routes of `upstreams.<key>`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&Nets> {
        self.entries()
            .into_iter()
            .find_map(|(k, n)| (k == key).then_some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Result<Net, String> {
        Net::try_from(s.to_owned())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_ranges_of_both_families() {
        let nets = Nets(
            ["127.0.0.3", "10.1.0.0/16", "2001:db8::/32", "::1"]
                .map(|s| net(s).unwrap())
                .to_vec(),
        );
        assert_eq!(
            nets.to_string(),
            "[127.0.0.3/32, 10.1.0.0/16, 2001:db8::/32, ::1/128]"
        );
        for yes in ["127.0.0.3", "10.1.255.7", "2001:db8:1::9", "::1"] {
            assert!(nets.contains(ip(yes)), "{yes}");
        }
        for no in [
            "127.0.0.2",
            "10.2.0.1",
            "2001:db9::1",
            "::2",
            "203.0.113.77",
        ] {
            assert!(!nets.contains(ip(no)), "{no}");
        }
        // A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6 addresses.
        assert!(nets.contains(ip("::ffff:127.0.0.3")));
        assert!(!nets.contains(ip("::ffff:127.0.0.2")));
        assert!(!Nets::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_ranges_say_why() {
        for (s, why) in [
            ("10.0.0.0/33", "not an address or a CIDR"),
            ("office", "not an address or a CIDR"),
            ("10.0.0.0/", "not an address or a CIDR"),
            ("10.0.0.5/24", "did you mean 10.0.0.0/24?"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ] {
            let e = net(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
