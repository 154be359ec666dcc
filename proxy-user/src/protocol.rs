//! Every wire value both sides of Switchyard agree on, defined once: ALPN protocol names,
//! SNI conventions, the web route's own paths, the connection upgrade's header names and
//! subprotocols, and the Postgres pre-startup request codes (`docs/architecture.md` §2 and `docs/balancers.md`; the
//! operator-facing tables are in `docs/config.md` and `docs/client.md`).
//!
//! The router matches on these and the client sends them; neither defines its own copy.

/// ALPN of SSH inside TLS.
pub(crate) const SSH_ALPN: &str = "teleport-proxy-ssh";
/// ALPN of reverse-tunnel agents; also the only ALPN of the clients' layer-7 detection
/// handshake (`docs/balancers.md`).
pub(crate) const REVERSE_TUNNEL_ALPN: &str = "teleport-reversetunnel";
/// The second ALPN agents offer beside [`REVERSE_TUNNEL_ALPN`].
pub(crate) const REVERSE_TUNNEL_V2_ALPN: &str = "teleport-reversetunnelv2";
/// ALPN of database clients, by protocol.
pub(crate) const POSTGRES_ALPN: &str = "teleport-postgres";
pub(crate) const MYSQL_ALPN: &str = "teleport-mysql";
pub(crate) const MONGODB_ALPN: &str = "teleport-mongodb";
/// ALPN of TCP apps (named by SNI).
pub(crate) const TCP_ALPN: &str = "teleport-tcp";
/// The prefix every Switchyard/Teleport protocol shares.
pub(crate) const TELEPORT_PREFIX: &str = "teleport-";
/// The suffix of ALPN values whose TLS plaintext carries the ping framing (a `u32` length,
/// then the payload; length 0 is a ping).
pub(crate) const PING_SUFFIX: &str = "-ping";

/// ALPN of the TLS-ALPN-01 challenge (RFC 8737): an ACME CA validating a name.
pub(crate) const ACME_TLS_ALPN: &str = "acme-tls/1";

/// HTTP/2 and HTTP/1.1, the web route's ALPN values in server preference order.
pub(crate) const H2_ALPN: &str = "h2";
pub(crate) const HTTP1_ALPN: &str = "http/1.1";
pub(crate) const WEB_ALPN: &[&str] = &[H2_ALPN, HTTP1_ALPN];

/// ALPN prefix and suffix of direct auth dials:
/// `teleport-auth@<hex(cluster)>.teleport.cluster.local`.
pub(crate) const AUTH_ALPN_PREFIX: &str = "teleport-auth@";
pub(crate) const AUTH_ALPN_SUFFIX: &str = ".teleport.cluster.local";

/// The ALPN value of a direct auth dial to `cluster`.
pub(crate) fn auth_alpn(cluster: &str) -> String {
    format!(
        "{AUTH_ALPN_PREFIX}{}{AUTH_ALPN_SUFFIX}",
        hex::encode(cluster)
    )
}

/// SNI prefix that selects the Kubernetes upstream (passthrough, before ALPN is looked at).
pub(crate) const KUBE_SNI_PREFIX: &str = "kube-teleport-proxy-alpn.";
/// Second SNI label that marks the first one as an SSH node name: `<node>.ssh.<proxy>`.
pub(crate) const SSH_NODE_LABEL: &str = "ssh";
/// Second SNI label that marks the first one as a database name: `<name>.db.<proxy>`
/// (databases that agents serve).
pub(crate) const DB_LABEL: &str = "db";

/// The built-in terminated protocols: (route name, ALPN values in server preference). The
/// `-ping` variants route the same way and come first: a client that offers both gets the
/// ping framing, which keeps idle connections alive through balancers.
pub(crate) const BUILTIN: &[(&str, &[&str])] = &[
    ("ssh", &[SSH_ALPN]),
    ("tunnel", &[REVERSE_TUNNEL_ALPN, REVERSE_TUNNEL_V2_ALPN]),
    ("postgres", &["teleport-postgres-ping", POSTGRES_ALPN]),
    ("mysql", &["teleport-mysql-ping", MYSQL_ALPN]),
    ("mongodb", &["teleport-mongodb-ping", MONGODB_ALPN]),
];

/// `teleport-tcp` and its ping variant; routed only by a `routes:` entry naming the app.
pub(crate) const TCP_ALPNS: &[&str] = &["teleport-tcp-ping", TCP_ALPN];

/// The `-ping` variant of a protocol that has one (`teleport-tcp` → `teleport-tcp-ping`).
pub(crate) fn ping_variant(protocol: &str) -> Option<String> {
    let ping = format!("{protocol}{PING_SUFFIX}");
    let mut known = TCP_ALPNS
        .iter()
        .chain(BUILTIN.iter().flat_map(|(_, ps)| ps.iter()));
    known.any(|p| *p == ping).then_some(ping)
}

/// The connection-upgrade endpoint of the web route.
pub(crate) const UPGRADE_PATH: &str = "/webapi/connectionupgrade";
/// The discovery endpoint of the web route.
pub(crate) const PING_PATH: &str = "/webapi/ping";

/// Header naming the upgrade type for balancers that drop `Upgrade`.
pub(crate) const TELEPORT_UPGRADE_HEADER: &str = "X-Teleport-Upgrade";
/// Upgrade types and WebSocket subprotocols: with keep-alive pings, and without.
pub(crate) const UPGRADE_ALPN_PING: &str = "alpn-ping";
pub(crate) const UPGRADE_ALPN: &str = "alpn";
/// The WebSocket upgrade token.
pub(crate) const WEBSOCKET: &str = "websocket";

/// Postgres pre-startup requests (the first 8 bytes of a connection): `SSLRequest`,
/// `GSSENCRequest`, and the prefix of `CancelRequest` (then pid and key).
pub(crate) const PG_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
pub(crate) const PG_GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
pub(crate) const PG_CANCEL_REQUEST: [u8; 8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_alpn_is_hex_of_the_cluster() {
        assert_eq!(
            auth_alpn("root"),
            "teleport-auth@726f6f74.teleport.cluster.local"
        );
    }
}
