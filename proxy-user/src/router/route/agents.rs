//! Routing to the services of connected agents (`docs/agent.md`, "Names and
//! precedence"). Each kind names its service in the SNI, the same way the client's local
//! proxies write it:
//!
//! | kind | SNI |
//! |---|---|
//! | ssh | `<node>.ssh.<proxy>` |
//! | postgres, mysql, mongodb | `<name>.db.<proxy>` |
//! | tcp | `<name>.<proxy>` |
//! | http | `<name>.<public address>` (the front door checks the request's host) |
//! | kube | `kube-teleport-proxy-alpn.<name>.<proxy>` |
//!
//! Static names win: a `routes:` entry, an `upstreams.ssh_nodes` node or an app is
//! routed before any agent is asked, and the registry refuses an agent that would serve
//! one of those names. Agents win over the catch-all upstreams (`upstreams.kube`,
//! `upstreams.postgres`, …): a name an agent serves goes to it.

use super::{Decision, Table};
use crate::io::tunnel::{Kind, Service};
use crate::protocol::{DB_LABEL, SSH_NODE_LABEL};
use crate::protocol::{KUBE_SNI_PREFIX, MONGODB_ALPN, MYSQL_ALPN, PING_SUFFIX, POSTGRES_ALPN};
use std::collections::BTreeSet;

/// Which services connected agents serve now.
pub(crate) trait Agents {
    fn serves(&self, service: &Service) -> bool;
}

/// No agents (the tests of static routing).
#[cfg(test)]
pub(crate) struct NoAgents;

#[cfg(test)]
impl Agents for NoAgents {
    fn serves(&self, _: &Service) -> bool {
        false
    }
}

impl Agents for BTreeSet<Service> {
    fn serves(&self, service: &Service) -> bool {
        self.contains(service)
    }
}

/// The service name a kind reads from an SNI (already lower-case), if it has one.
pub(crate) fn sni_name(kind: Kind, sni: &str) -> Option<&str> {
    let labelled = |label: &str| {
        let (name, rest) = sni.split_once('.')?;
        let (l, rest) = rest.split_once('.')?;
        (l == label && !rest.is_empty()).then_some(name)
    };
    let name = match kind {
        Kind::Ssh => labelled(SSH_NODE_LABEL),
        Kind::Postgres | Kind::Mysql | Kind::Mongodb => labelled(DB_LABEL),
        // HTTP apps: the front door checks the rest is a public address.
        Kind::Tcp | Kind::Http => sni.split_once('.').map(|(n, _)| n),
        Kind::Kube => sni
            .strip_prefix(KUBE_SNI_PREFIX)
            .and_then(|r| r.split_once('.'))
            .map(|(n, _)| n),
    }?;
    (!name.is_empty()).then_some(name)
}

/// The database kind of an ALPN value (plain or `-ping`).
pub(crate) fn db_kind(protocol: &str) -> Option<Kind> {
    match protocol.strip_suffix(PING_SUFFIX).unwrap_or(protocol) {
        POSTGRES_ALPN => Some(Kind::Postgres),
        MYSQL_ALPN => Some(Kind::Mysql),
        MONGODB_ALPN => Some(Kind::Mongodb),
        _ => None,
    }
}

impl<T> Table<T> {
    /// The agent route for `kind` when the SNI names a service a connected agent serves.
    pub(super) fn agent<'a>(
        &'a self,
        kind: Kind,
        sni: &str,
        agents: &dyn Agents,
    ) -> Option<Decision<'a, T>> {
        let &entry = self.agents.get(&kind)?;
        let service = Service {
            kind,
            name: sni_name(kind, sni)?.to_owned(),
        };
        agents.serves(&service).then(|| Decision::Agent {
            entry: &self.entries[entry],
            service,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_sni() {
        assert_eq!(
            sni_name(Kind::Ssh, "node1.ssh.proxy.example"),
            Some("node1")
        );
        assert_eq!(sni_name(Kind::Ssh, "node1.proxy.example"), None);
        assert_eq!(
            sni_name(Kind::Postgres, "orders.db.localhost"),
            Some("orders")
        );
        assert_eq!(sni_name(Kind::Mysql, "orders.db."), None);
        assert_eq!(sni_name(Kind::Tcp, "echo.localhost"), Some("echo"));
        assert_eq!(sni_name(Kind::Tcp, "localhost"), None);
        assert_eq!(
            sni_name(Kind::Kube, "kube-teleport-proxy-alpn.edge.localhost"),
            Some("edge")
        );
        // The plain kube SNI names no cluster: it is `upstreams.kube`'s.
        assert_eq!(
            sni_name(Kind::Kube, "kube-teleport-proxy-alpn.localhost"),
            None
        );
        assert_eq!(db_kind("teleport-mysql-ping"), Some(Kind::Mysql));
        assert_eq!(db_kind("teleport-proxy-ssh"), None);
    }
}
