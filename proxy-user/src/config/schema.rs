//! The sections of the configuration file, one serde struct each, every field documented
//! (the operator's reference is `docs/config.md`). Defaults live here; checks that serde
//! cannot make are in `validate`.

use super::apps::WebUpstream;
use super::trust::{Nets, XffMode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `auth_service` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthService {
    /// Name of this cluster; `teleport-auth@<hex(name)>` reaches `upstreams.auth` when that is
    /// a single address.
    #[serde(default)]
    pub(crate) cluster_name: Option<String>,
    /// `multiplex` tells clients to use TLS routing on the web port; `separate` tells them to
    /// use the legacy listeners (published by `/webapi/ping`).
    #[serde(default)]
    pub(crate) proxy_listener_mode: Option<ListenerMode>,
}

/// `auth_service.proxy_listener_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ListenerMode {
    Multiplex,
    Separate,
}

/// `proxy_service` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyService {
    /// Accepted for compatibility with the reference (`enabled: "yes"`); must not be "no".
    #[serde(default)]
    pub(crate) enabled: Option<String>,
    /// The single port every protocol arrives on, `ip:port`.
    pub(crate) web_listen_addr: String,
    /// Public address(es) clients use, `host:port`; the first names the proxy in dev output.
    #[serde(default)]
    pub(crate) public_addr: Option<OneOrMany>,
    /// Legacy SSH listener (v1 default `0.0.0.0:3023`): plain relay to `upstreams.ssh`.
    #[serde(default)]
    pub(crate) listen_addr: Option<String>,
    /// Legacy reverse-tunnel listener (v1 default `0.0.0.0:3024`): relay to `upstreams.tunnel`.
    #[serde(default)]
    pub(crate) tunnel_listen_addr: Option<String>,
    /// Legacy Kubernetes listener: TLS passthrough to `upstreams.kube`.
    #[serde(default)]
    pub(crate) kube_listen_addr: Option<String>,
    /// Legacy MySQL listener: relay to `upstreams.mysql`.
    #[serde(default)]
    pub(crate) mysql_listen_addr: Option<String>,
    /// Legacy Postgres listener: relay to `upstreams.postgres`.
    #[serde(default)]
    pub(crate) postgres_listen_addr: Option<String>,
    /// Legacy MongoDB listener: relay to `upstreams.mongodb`.
    #[serde(default)]
    pub(crate) mongo_listen_addr: Option<String>,
    /// `on`: every connection must start with one PROXY header from a trusted proxy; `off`:
    /// any header is refused; unset: at most one header is accepted, and its address is
    /// believed only from a trusted proxy.
    #[serde(default)]
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
    /// The balancers (addresses or CIDR ranges) whose PROXY headers and `X-Forwarded-For`
    /// are believed; from any other peer they are never the client's address.
    #[serde(default)]
    pub(crate) trusted_proxies: Nets,
    /// Whether, and how, the client address of a connection upgrade comes from
    /// `X-Forwarded-For` sent by a trusted proxy: `false`, `true` (exactly one value) or
    /// `hops` (the right-most address that is not a trusted proxy).
    #[serde(default)]
    pub(crate) trust_x_forwarded_for: XffMode,
    /// Certificates the proxy presents on terminated routes, chosen by SNI; the first is the
    /// default.
    #[serde(default)]
    pub(crate) https_keypairs: Vec<KeyPairFiles>,
    /// PEM bundle of the CA(s) that sign user and agent certificates; required when any route
    /// asks for a client certificate.
    #[serde(default)]
    pub(crate) client_ca_file: Option<PathBuf>,
    /// Certificates from an ACME CA for the names of `public_addr` and the apps, with the
    /// TLS-ALPN-01 challenge answered on this port; an `https_keypairs` entry wins for its
    /// names.
    #[serde(default)]
    pub(crate) acme: Option<super::AcmeConfig>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `proxy_service.proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProxyProtocol {
    On,
    Off,
}

/// One entry of `proxy_service.https_keypairs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyPairFiles {
    /// PEM certificate chain, leaf first.
    pub(crate) cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key_file: PathBuf,
}

/// `upstreams` section: `host:port` of each built-in destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstreams {
    /// The web route's HTTP server (the proxy's own web application) for `http/1.1`, `h2`
    /// and no-ALPN connections and for plaintext HTTP: `host:port` (HTTP/1.1), or an
    /// [`HttpUpstream`] naming its URI and protocol. The proxy terminates HTTP, so clients
    /// may speak h2 or HTTP/1.1 whatever the upstream speaks.
    pub(crate) web: Option<WebUpstream>,
    /// Plaintext SSH server: `teleport-proxy-ssh` connections that name no node, and legacy
    /// `SSH-` connections.
    pub(crate) ssh: Option<String>,
    /// SSH nodes by name: `teleport-proxy-ssh` with SNI `<node>.ssh.<proxy name>` goes to
    /// the node's address; an unknown node is refused.
    #[serde(default)]
    pub(crate) ssh_nodes: BTreeMap<String, String>,
    /// Reverse-tunnel service: `teleport-reversetunnel(v2)`.
    pub(crate) tunnel: Option<String>,
    /// Postgres: `teleport-postgres` and plaintext SSLRequest/GSSENCRequest/CancelRequest.
    pub(crate) postgres: Option<String>,
    /// MySQL: `teleport-mysql`.
    pub(crate) mysql: Option<String>,
    /// MongoDB: `teleport-mongodb`.
    pub(crate) mongodb: Option<String>,
    /// Kubernetes (TLS, passthrough): SNI `kube-teleport-proxy-alpn.*`.
    pub(crate) kube: Option<String>,
    /// Auth service (TLS, passthrough): `teleport-auth@<hex(cluster)>.teleport.cluster.local`;
    /// one address for `auth_service.cluster_name`, or a map cluster name → address.
    pub(crate) auth: Option<AuthUpstreams>,
}

/// `upstreams.auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum AuthUpstreams {
    One(String),
    PerCluster(BTreeMap<String, String>),
}

/// One entry of `routes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// Name used in logs and metrics (default `routes[N]`).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Exact server name, or `*.example.com` matching exactly one more label.
    #[serde(default)]
    pub(crate) sni: Option<String>,
    /// An ALPN protocol the client must offer.
    #[serde(default)]
    pub(crate) alpn: Option<String>,
    /// `terminate` (the proxy runs TLS) or `passthrough` (the upstream does).
    pub(crate) mode: RouteMode,
    /// `host:port`.
    pub(crate) upstream: String,
    /// Identities (client certificate CN or O) allowed; empty allows any valid certificate.
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// Require a client certificate; default: when `alpn` is a `teleport-*` protocol or
    /// `allow` is set. Only for `terminate`.
    #[serde(default)]
    pub(crate) client_auth: Option<bool>,
    /// Client addresses allowed, checked before the TLS handshake; unset allows any.
    #[serde(default)]
    pub(crate) allow_from: Option<Nets>,
}

/// `routes[].mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RouteMode {
    Terminate,
    Passthrough,
}

/// `limits` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// One deadline for detection, PROXY header and TLS handshake (`10s`).
    #[serde(with = "humantime_serde")]
    pub(crate) handshake_timeout: Duration,
    /// Deadline for connecting to an upstream (`5s`).
    #[serde(with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    /// How long SIGTERM waits for live connections before closing them (`30s`).
    #[serde(with = "humantime_serde")]
    pub(crate) drain_timeout: Duration,
    /// Connections handled at once; further clients wait in the listen backlog (`10000`).
    pub(crate) max_connections: usize,
    /// Largest ClientHello (or PROXY header plus preface) accepted, bytes (`16384`).
    pub(crate) max_hello_bytes: usize,
    /// Relay buffer per direction, bytes (`65536`).
    pub(crate) relay_buffer_bytes: usize,
    /// How often the proxy pings an idle `alpn-ping` upgrade or `-ping` ALPN connection, so
    /// a balancer's idle timeout does not cut it (`30s`; `0s` turns pings off).
    #[serde(with = "humantime_serde")]
    pub(crate) ping_interval: Duration,
    /// Largest WebSocket frame or message, and largest ping-framing frame, accepted on a
    /// connection upgrade, bytes (`1048576`); larger ones close the connection (code 1009).
    pub(crate) max_ws_frame_bytes: usize,
    /// How long an HTTP connection on the web route or an app may sit with no request in
    /// flight before the proxy closes it (`60s`); also bounds the head of every request
    /// after the first (the first is under `handshake_timeout`).
    #[serde(with = "humantime_serde")]
    pub(crate) http_idle_timeout: Duration,
    /// Largest HTTP request head (request line and headers), bytes (`65536`); larger
    /// heads get `431`.
    pub(crate) max_http_head_bytes: usize,
    /// Concurrent streams an HTTP/2 client may open on one connection (`100`).
    pub(crate) http2_max_streams: u32,
    /// Pending connections each listener keeps for accept (`4096`; the kernel caps it at
    /// `net.core.somaxconn`).
    pub(crate) listen_backlog: u32,
    /// `TCP_DEFER_ACCEPT` on the single port (`1s`; `0s` off): a connection reaches the
    /// proxy once its first bytes are there (so the kernel's first-bytes class is known
    /// at accept), a silent one only after about this long.
    #[serde(with = "humantime_serde")]
    pub(crate) defer_accept: Duration,
    /// Client certificate chains the proxy remembers having verified (`1024`; `0` off): a
    /// client presenting the same chain again skips the chain's signature checks (its
    /// handshake signature and the allow list are still checked every time).
    pub(crate) verified_chains: usize,
    /// Budgets per connection class (`unclassified`, `ssh`, `web`, …): connections,
    /// handshakes in progress and connections per source at once.
    pub(crate) classes: BTreeMap<String, super::ClassLimits>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_hello_bytes: 16 * 1024,
            relay_buffer_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(30),
            max_ws_frame_bytes: 1024 * 1024,
            http_idle_timeout: Duration::from_secs(60),
            max_http_head_bytes: 64 * 1024,
            http2_max_streams: 100,
            listen_backlog: crate::io::LISTEN_BACKLOG,
            verified_chains: 1024,
            defer_accept: Duration::from_secs(1),
            classes: BTreeMap::new(),
        }
    }
}
