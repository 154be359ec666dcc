//! The configuration file: one serde struct per YAML section, a doc comment on every field,
//! and [`Config::load`] which parses and validates with messages that name the key.
//!
//! Keys follow the reference (`version`, `auth_service.*`, `proxy_service.*`) so its
//! migration guide reads literally; `upstreams`, `routes`, `limits` and `diag_addr` are
//! Switchyard's own. Every key is documented for operators in `docs/config.md`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why a configuration was refused. Every variant names the key at fault.
#[derive(Debug, Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `v1` also opens the legacy per-protocol listeners on their default ports; `v2` (the
    /// default) opens `web_listen_addr` and only the legacy listeners set explicitly.
    #[serde(default)]
    pub(crate) version: Version,
    /// Cluster-wide settings (the reference keeps them in the auth service section).
    #[serde(default)]
    pub(crate) auth_service: AuthService,
    /// The proxy: listeners, certificates, client CA, PROXY protocol policy.
    pub(crate) proxy_service: ProxyService,
    /// Where each built-in route sends its connections.
    #[serde(default)]
    pub(crate) upstreams: Upstreams,
    /// Extra routes by SNI and/or ALPN, matched before the built-in ALPN table.
    #[serde(default)]
    pub(crate) routes: Vec<RouteConfig>,
    /// Deadlines, connection and buffer limits.
    #[serde(default)]
    pub(crate) limits: Limits,
    /// Address of the diagnostics HTTP server (`/metrics`, `/healthz`, `/readyz`); off when unset.
    #[serde(default)]
    pub(crate) diag_addr: Option<String>,
    /// Directory relative paths are resolved against (the config file's directory).
    #[serde(skip)]
    pub(crate) base_dir: PathBuf,
}

/// Configuration file version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Version {
    V1,
    #[default]
    V2,
}

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
    /// `on`: every connection must start with one PROXY header; `off`: any header is refused;
    /// unset: at most one header is accepted.
    #[serde(default)]
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
    /// Take the client address from `X-Forwarded-For` on connection upgrades (issue 5).
    #[serde(default)]
    pub(crate) trust_x_forwarded_for: bool,
    /// Certificates the proxy presents on terminated routes, chosen by SNI; the first is the
    /// default.
    #[serde(default)]
    pub(crate) https_keypairs: Vec<KeyPairFiles>,
    /// PEM bundle of the CA(s) that sign user and agent certificates; required when any route
    /// asks for a client certificate.
    #[serde(default)]
    pub(crate) client_ca_file: Option<PathBuf>,
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
    /// Plaintext HTTP server for `http/1.1`, `h2` and no-ALPN connections (must accept h2
    /// prior knowledge when clients negotiate `h2`), and for plaintext HTTP.
    pub(crate) web: Option<String>,
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
        }
    }
}

/// Default legacy listeners opened by `version: v1`.
pub(crate) const V1_SSH_LISTEN: &str = "0.0.0.0:3023";
pub(crate) const V1_TUNNEL_LISTEN: &str = "0.0.0.0:3024";

impl Config {
    /// Reads, parses and validates `path`; relative paths inside resolve against its directory.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        Config::parse(&text, &base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    pub(crate) fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.base_dir = base_dir.to_owned();
        config.validate()?;
        Ok(config)
    }

    /// A path from the file, resolved against the config file's directory.
    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        self.base_dir.join(p)
    }

    /// Checks every key whose value serde cannot check alone.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.proxy_service;
        if matches!(p.enabled.as_deref(), Some("no" | "false")) {
            return Err(ConfigError::invalid(
                "proxy_service.enabled",
                "this binary is the proxy service; it cannot run disabled",
            ));
        }
        listen_addr("proxy_service.web_listen_addr", &p.web_listen_addr)?;
        for (key, value) in self.legacy_listeners() {
            listen_addr(&format!("proxy_service.{key}"), &value)?;
        }
        if let Some(d) = &self.diag_addr {
            listen_addr("diag_addr", d)?;
        }
        for (i, a) in p.public_addr.iter().flat_map(|a| a.to_vec()).enumerate() {
            host_port(&format!("proxy_service.public_addr[{i}]"), &a)?;
        }
        for (i, kp) in p.https_keypairs.iter().enumerate() {
            readable(
                &format!("proxy_service.https_keypairs[{i}].cert_file"),
                &self.path(&kp.cert_file),
            )?;
            readable(
                &format!("proxy_service.https_keypairs[{i}].key_file"),
                &self.path(&kp.key_file),
            )?;
        }
        if let Some(ca) = &p.client_ca_file {
            readable("proxy_service.client_ca_file", &self.path(ca))?;
        }
        let u = &self.upstreams;
        for (key, value) in [
            ("web", &u.web),
            ("ssh", &u.ssh),
            ("tunnel", &u.tunnel),
            ("postgres", &u.postgres),
            ("mysql", &u.mysql),
            ("mongodb", &u.mongodb),
            ("kube", &u.kube),
        ] {
            if let Some(v) = value {
                host_port(&format!("upstreams.{key}"), v)?;
            }
        }
        for (node, a) in &u.ssh_nodes {
            let key = format!("upstreams.ssh_nodes.{node}");
            if !dns_label(node) {
                return Err(ConfigError::invalid(
                    key,
                    "a node name is one DNS label: letters, digits and inner '-'",
                ));
            }
            host_port(&key, a)?;
        }
        match &u.auth {
            Some(AuthUpstreams::One(a)) => {
                host_port("upstreams.auth", a)?;
                if self.auth_service.cluster_name.is_none() {
                    return Err(ConfigError::invalid(
                        "auth_service.cluster_name",
                        "required when upstreams.auth is a single address",
                    ));
                }
            }
            Some(AuthUpstreams::PerCluster(map)) => {
                for (cluster, a) in map {
                    host_port(&format!("upstreams.auth.{cluster}"), a)?;
                }
            }
            None => {}
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if r.sni.is_none() && r.alpn.is_none() {
                return Err(ConfigError::invalid(
                    format!("routes[{i}]"),
                    "a route needs `sni`, `alpn` or both",
                ));
            }
            if let Some(sni) = &r.sni {
                let name = sni.strip_prefix("*.").unwrap_or(sni);
                if name.is_empty() || name.contains('*') || name.contains(':') {
                    return Err(ConfigError::invalid(
                        key("sni"),
                        format!("`{sni}` is not a server name or a `*.` wildcard"),
                    ));
                }
            }
            host_port(&key("upstream"), &r.upstream)?;
            if r.mode == RouteMode::Passthrough
                && (!r.allow.is_empty() || r.client_auth == Some(true))
            {
                return Err(ConfigError::invalid(
                    key("allow"),
                    "identities can only be checked on `mode: terminate` routes",
                ));
            }
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if l.max_hello_bytes < 512 || l.max_hello_bytes > 1 << 20 {
            return Err(ConfigError::invalid(
                "limits.max_hello_bytes",
                "must be between 512 and 1048576",
            ));
        }
        if l.relay_buffer_bytes < 1024 || l.relay_buffer_bytes > 16 << 20 {
            return Err(ConfigError::invalid(
                "limits.relay_buffer_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if l.max_ws_frame_bytes < 16 * 1024 || l.max_ws_frame_bytes > 64 << 20 {
            return Err(ConfigError::invalid(
                "limits.max_ws_frame_bytes",
                "must be between 16384 and 67108864",
            ));
        }
        if l.handshake_timeout.is_zero() || l.connect_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.handshake_timeout",
                "timeouts must be positive",
            ));
        }
        Ok(())
    }

    /// The legacy listeners to open: `(key, address)`. v1 adds the default SSH and tunnel
    /// listeners when they are not set; v2 opens only what is set.
    pub(crate) fn legacy_listeners(&self) -> Vec<(&'static str, String)> {
        let p = &self.proxy_service;
        let v1 = self.version == Version::V1;
        let mut out = Vec::new();
        let mut add =
            |key, value: &Option<String>, v1_default: Option<&str>| match (value, v1_default) {
                (Some(v), _) => out.push((key, v.clone())),
                (None, Some(d)) if v1 => out.push((key, d.to_owned())),
                _ => {}
            };
        add("listen_addr", &p.listen_addr, Some(V1_SSH_LISTEN));
        add(
            "tunnel_listen_addr",
            &p.tunnel_listen_addr,
            Some(V1_TUNNEL_LISTEN),
        );
        add("kube_listen_addr", &p.kube_listen_addr, None);
        add("mysql_listen_addr", &p.mysql_listen_addr, None);
        add("postgres_listen_addr", &p.postgres_listen_addr, None);
        add("mongo_listen_addr", &p.mongo_listen_addr, None);
        out
    }
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

/// Checks a `host:port` string without resolving it.
pub(crate) fn host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::invalid(key, format!("`{value}` is not host:port ({why})"));
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("empty or invalid host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad("IPv6 addresses need brackets"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("port is not 0-65535"))?;
    Ok(())
}

fn readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
