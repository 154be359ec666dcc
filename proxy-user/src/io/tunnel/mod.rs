//! The reverse tunnel's wire (`docs/agent.md`, "The wire"), shared by the agent
//! (`client::agent`) and the proxy's tunnel service (`router::tunnel`).
//!
//! An agent dials the proxy with TLS and ALPN `teleport-reversetunnel(v2)`; inside that
//! TLS a yamux session ([`mux`]) carries:
//! - one **control stream**, opened by the agent first: the agent's [`Control::Hello`]
//!   (who it is, what it serves by kind and name — never addresses), the proxy's
//!   [`Control::Welcome`] (what it accepted and refused, its id and its peers), then
//!   heartbeats both ways and the proxy's drain notice;
//! - one **stream per client connection**, opened by the proxy: a [`StreamHeader`]
//!   (service kind and name, the client's address and identity), the agent's
//!   [`StreamReply`], then the client's bytes both ways.
//!
//! Messages are JSON behind a big-endian `u32` length ([`frame`]), each kind with its own
//! size limit, so a hostile peer costs at most one bounded buffer.

pub(crate) mod control;
pub(crate) mod frame;
mod guard;
pub(crate) mod mux;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the control protocol; a Hello of another version is refused.
pub(crate) const WIRE_VERSION: u32 = 1;
/// Largest control message, bytes.
pub(crate) const MAX_CONTROL_BYTES: usize = 64 * 1024;
/// Largest stream header or reply, bytes.
pub(crate) const MAX_HEADER_BYTES: usize = 4 * 1024;

/// What kind of service an agent serves; a name is unique within its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// An SSH node (`teleport-proxy-ssh`, SNI `<node>.ssh.<proxy>`).
    Ssh,
    /// A TCP app (`teleport-tcp`, SNI `<name>.<proxy>`).
    Tcp,
    /// An HTTP app (the web front door, host `<name>.<public address>`).
    Http,
    /// Databases (`teleport-postgres|mysql|mongodb`, SNI `<name>.db.<proxy>`).
    Postgres,
    Mysql,
    Mongodb,
    /// A Kubernetes API server (TLS passed through, SNI
    /// `kube-teleport-proxy-alpn.<name>.<proxy>`).
    Kube,
}

impl Kind {
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Ssh,
        Kind::Tcp,
        Kind::Http,
        Kind::Postgres,
        Kind::Mysql,
        Kind::Mongodb,
        Kind::Kube,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Ssh => "ssh",
            Kind::Tcp => "tcp",
            Kind::Http => "http",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
            Kind::Mongodb => "mongodb",
            Kind::Kube => "kube",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service an agent offers: `kind:name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Service {
    pub(crate) kind: Kind,
    pub(crate) name: String,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// A service the proxy did not accept, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refusal {
    pub(crate) service: Service,
    pub(crate) reason: String,
}

/// The messages of the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Control {
    /// Agent → proxy, first: `agent_id` is the agent process's own id (its tunnels share
    /// it), `tunnels` how many it keeps to each proxy.
    Hello {
        version: u32,
        agent_id: String,
        tunnels: u32,
        services: Vec<Service>,
    },
    /// Proxy → agent: the tunnel is up.
    Welcome {
        proxy_id: String,
        peers: Vec<String>,
        heartbeat_ms: u64,
        accepted: Vec<Service>,
        refused: Vec<Refusal>,
    },
    /// Proxy → agent: this proxy already holds the tunnels this agent wants to it; the
    /// agent closes this one and dials for the proxies it still lacks (`peers`).
    Full {
        proxy_id: String,
        peers: Vec<String>,
    },
    /// Proxy → agent: the Hello is refused (then the tunnel closes).
    Refused {
        reason: String,
    },
    /// Either way: a heartbeat, answered by a `Pong` of the same `seq`.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Proxy → agent: the proxy is going away; open a new tunnel, streams in flight finish
    /// on this one.
    Drain,
}

/// Proxy → agent, first on each client stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamHeader {
    pub(crate) service: Service,
    /// The client's address as the proxy believed it.
    pub(crate) client: String,
    /// The client certificate's identity (`CN=…, O=…`), when one was presented.
    #[serde(default)]
    pub(crate) identity: Option<String>,
}

/// Agent → proxy, the answer to a [`StreamHeader`]: `error` set means refused (the stream
/// then closes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamReply {
    #[serde(default)]
    pub(crate) error: Option<String>,
}
