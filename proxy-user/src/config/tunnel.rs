//! The `tunnel:` section: the proxy's reverse-tunnel service (`docs/agent.md`). Agents
//! dial in with `teleport-reversetunnel`; `agents` says which agent identities may serve
//! which names (`kind:name`, `kind:*`), and which clients may then reach them. With this
//! section the tunnel route is the proxy's own; without it `upstreams.tunnel` relays as
//! before.

use super::addr::dns_label;
use super::{Config, ConfigError};
use crate::io::tunnel::{Kind, Service};
use serde::Deserialize;
use std::time::Duration;

/// `tunnel` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TunnelService {
    /// This proxy's name among its peers, told to agents (default: the host name).
    #[serde(default)]
    pub(crate) proxy_id: Option<String>,
    /// Every proxy behind the same balancer, this one included: agents keep dialing until
    /// they hold tunnels to each (the agent mesh). Empty: just this one.
    #[serde(default)]
    pub(crate) peers: Vec<String>,
    /// Heartbeat period on the control stream; three missed make the tunnel offline (`5s`).
    #[serde(default = "heartbeat", with = "humantime_serde")]
    pub(crate) heartbeat_interval: Duration,
    /// Tunnels one agent may hold to this proxy (`8`).
    #[serde(default = "max_tunnels")]
    pub(crate) max_tunnels_per_agent: u32,
    /// Client streams open at once on one tunnel (`1024`); further ones are refused.
    #[serde(default = "max_streams")]
    pub(crate) max_streams_per_tunnel: usize,
    /// How far a tunnel's streams may grow their receive windows beyond the 256 KiB each
    /// starts with, bytes in all (`268435456`): with that, the most an agent can make the
    /// proxy buffer for one tunnel is 256 KiB × (`max_streams_per_tunnel` + 64) plus this.
    #[serde(default = "window")]
    pub(crate) window_bytes: usize,
    /// Which agents may serve what, first matching entry wins.
    pub(crate) agents: Vec<AgentRule>,
}

/// Most streams per tunnel: what the agent's own limit accepts from a proxy.
pub(crate) const MAX_STREAMS: usize = 4096;

fn heartbeat() -> Duration {
    Duration::from_secs(5)
}
fn max_tunnels() -> u32 {
    8
}
fn max_streams() -> usize {
    1024
}
fn window() -> usize {
    256 * 1024 * 1024
}

/// One entry of `tunnel.agents`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentRule {
    /// The agent certificate's CN or one of its O values.
    pub(crate) identity: String,
    /// What it may serve: `kind:name` or `kind:*` (kinds: ssh, tcp, http, postgres, mysql,
    /// mongodb, kube).
    pub(crate) serve: Vec<String>,
    /// Client identities (CN or O) allowed on what it serves; empty allows any certificate
    /// the cluster CA signed (and, for HTTP apps, clients without one).
    #[serde(default)]
    pub(crate) allow: Vec<String>,
}

/// A parsed `serve` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServePattern {
    pub(crate) kind: Kind,
    /// `None` for `*`.
    pub(crate) name: Option<String>,
}

impl ServePattern {
    pub(crate) fn parse(s: &str) -> Result<ServePattern, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not kind:name or kind:*"))?;
        let kind = Kind::parse(kind).ok_or_else(|| {
            format!("unknown kind `{kind}` (ssh, tcp, http, postgres, mysql, mongodb, kube)")
        })?;
        let name = match name {
            "*" => None,
            n if service_name(n) => Some(n.to_ascii_lowercase()),
            n => return Err(format!("`{n}` is not a name (one DNS label) or *")),
        };
        Ok(ServePattern { kind, name })
    }

    pub(crate) fn matches(&self, s: &Service) -> bool {
        self.kind == s.kind && self.name.as_ref().is_none_or(|n| *n == s.name)
    }
}

/// A service name: one DNS label (it travels as the first label of an SNI or host).
pub(crate) fn service_name(s: &str) -> bool {
    dns_label(s)
}

impl Config {
    /// Checks `tunnel`: patterns parse, limits are sane, no `upstreams.tunnel` beside it.
    pub(crate) fn validate_tunnel(&self) -> Result<(), ConfigError> {
        let Some(t) = &self.tunnel else {
            return Ok(());
        };
        if self.upstreams.tunnel.is_some() {
            return Err(ConfigError::invalid(
                "tunnel",
                "the proxy's own tunnel service and upstreams.tunnel both want teleport-reversetunnel; keep one",
            ));
        }
        if self.proxy_service.client_ca_file.is_none() {
            return Err(ConfigError::invalid(
                "proxy_service.client_ca_file",
                "required by the tunnel service: agents present certificates from the cluster CA",
            ));
        }
        if t.agents.is_empty() {
            return Err(ConfigError::invalid(
                "tunnel.agents",
                "no agent may register anything: list at least one identity and what it may serve",
            ));
        }
        for (i, rule) in t.agents.iter().enumerate() {
            for (j, p) in rule.serve.iter().enumerate() {
                ServePattern::parse(p).map_err(|m| {
                    ConfigError::invalid(format!("tunnel.agents[{i}].serve[{j}]"), m)
                })?;
            }
        }
        for (key, id) in t
            .proxy_id
            .iter()
            .map(|p| ("tunnel.proxy_id", p))
            .chain(t.peers.iter().map(|p| ("tunnel.peers", p)))
        {
            if id.is_empty() || id.len() > 253 || id.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{id}` is not a proxy name"),
                ));
            }
        }
        if t.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "tunnel.heartbeat_interval",
                "at least 100ms",
            ));
        }
        if !(1..=MAX_STREAMS).contains(&t.max_streams_per_tunnel) {
            return Err(ConfigError::invalid(
                "tunnel.max_streams_per_tunnel",
                format!("between 1 and {MAX_STREAMS} (what an agent accepts)"),
            ));
        }
        if t.max_tunnels_per_agent == 0 {
            return Err(ConfigError::invalid(
                "tunnel.max_tunnels_per_agent",
                "at least 1",
            ));
        }
        Ok(())
    }
}

impl TunnelService {
    /// This proxy's id: `proxy_id`, else the host name.
    pub(crate) fn id(&self) -> String {
        self.proxy_id.clone().unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The peers told to agents: `peers` with this proxy's id in it.
    pub(crate) fn peer_set(&self) -> Vec<String> {
        let mut peers = self.peers.clone();
        let me = self.id();
        if !peers.contains(&me) {
            peers.push(me);
        }
        peers.sort();
        peers.dedup();
        peers
    }

    /// The first rule for an agent identity, with its index.
    pub(crate) fn rule_for(&self, matches: impl Fn(&str) -> bool) -> Option<(usize, &AgentRule)> {
        self.agents
            .iter()
            .enumerate()
            .find(|(_, r)| matches(&r.identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_patterns() {
        let p = ServePattern::parse("ssh:*").unwrap();
        let node = |n: &str| Service {
            kind: Kind::Ssh,
            name: n.into(),
        };
        assert!(p.matches(&node("a")));
        let p = ServePattern::parse("ssh:Node1").unwrap();
        assert!(p.matches(&node("node1")) && !p.matches(&node("node2")));
        assert!(!p.matches(&Service {
            kind: Kind::Tcp,
            name: "node1".into()
        }));
        for bad in ["ssh", "gopher:x", "ssh:a.b", "tcp:", "http:-x"] {
            assert!(ServePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_name_the_key() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca = ca.path().display();
        let parse = |extra: &str, ca_line: bool| {
            let ca_key = if ca_line {
                format!(", client_ca_file: '{ca}'")
            } else {
                String::new()
            };
            let text =
                format!("proxy_service: {{web_listen_addr: '127.0.0.1:0'{ca_key}}}\n{extra}");
            Config::parse(&text, std::path::Path::new("."))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let ok = "tunnel: {agents: [{identity: edge, serve: ['ssh:*']}]}\n";
        assert_eq!(parse(ok, true), Ok(()));
        let cases = [
            (ok, false, "proxy_service.client_ca_file"),
            ("tunnel: {agents: []}\n", true, "tunnel.agents"),
            (
                "tunnel: {agents: [{identity: e, serve: ['ftp:x']}]}\n",
                true,
                "tunnel.agents[0].serve[0]",
            ),
            (
                "tunnel: {heartbeat_interval: 1ms, agents: [{identity: e, serve: ['ssh:*']}]}\n",
                true,
                "tunnel.heartbeat_interval",
            ),
            (
                "tunnel: {agents: [{identity: e, serve: ['ssh:*'], typo: 1}]}\n",
                true,
                "unknown field",
            ),
        ];
        for (extra, ca_line, key) in cases {
            let e = parse(extra, ca_line).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let both = format!("upstreams: {{tunnel: 't:1'}}\n{ok}");
        assert!(parse(&both, true).unwrap_err().contains("keep one"));
    }
}
