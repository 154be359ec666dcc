//! The configuration file: [`Config`] and one serde struct per YAML section ([`schema`]), a
//! doc comment on every field, and [`Config::load`] which parses and validates
//! ([`validate`]) with messages that name the key. [`addr`] holds the address types both
//! the router and the client parse (`host:port`, listen addresses, DNS labels); [`trust`]
//! the trust settings (address ranges, `trust_x_forwarded_for`, the `allow_from` section);
//! [`tunnel`] the reverse-tunnel service (which agents may serve what); [`acme`] the
//! `proxy_service.acme` section (certificates from an ACME CA).
//!
//! Keys follow the reference (`version`, `auth_service.*`, `proxy_service.*`) so its
//! migration guide reads literally; `upstreams`, `routes`, `limits` and `diag_addr` are
//! Switchyard's own. Every key is documented for operators in `docs/config.md`.

mod acme;
mod addr;
mod apps;
mod classes;
mod schema;
mod trust;
mod tunnel;
mod validate;

pub(crate) use acme::AcmeConfig;
pub(crate) use addr::{dns_label, host_port, listen_addr, HostPort};
pub(crate) use apps::{http_target, AppConfig, HttpProtocol, HttpTarget, HttpUpstream};
pub(crate) use classes::{budget, Budget, ClassLimits, CLASSES};
pub(crate) use schema::*;
#[cfg(test)]
pub(crate) use trust::Net;
pub(crate) use trust::{BuiltinAllowFrom, Nets, XffMode};
pub(crate) use tunnel::{
    service_name, ServePattern, TunnelService, MAX_STREAMS as MAX_TUNNEL_STREAMS,
};

use serde::Deserialize;
use std::path::{Path, PathBuf};
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
    /// HTTP applications reached by host name on the proxy's port.
    #[serde(default)]
    pub(crate) apps: Vec<AppConfig>,
    /// Client addresses allowed on the built-in routes, by `upstreams` key.
    #[serde(default)]
    pub(crate) allow_from: BuiltinAllowFrom,
    /// The proxy's reverse-tunnel service for agents (`docs/agent.md`); off when unset.
    #[serde(default)]
    pub(crate) tunnel: Option<TunnelService>,
    /// Deadlines, connection and buffer limits.
    #[serde(default)]
    pub(crate) limits: Limits,
    /// How plaintext pairs are relayed: `auto`, `kernel`, `splice` or `copy`
    /// (`relay::choice`; `serve --relay` wins).
    #[serde(default)]
    pub(crate) relay: crate::relay::choice::RelayMode,
    /// Whether terminated sessions go to the kernel's TLS after the handshake: `off`,
    /// `auto` or `require` (`io::ktls`; `serve --ktls` wins).
    #[serde(default)]
    pub(crate) ktls: crate::io::ktls::KtlsMode,
    /// Who protects a terminated TLS 1.3 session's records after the handshake where the
    /// kernel's TLS does not: `proxy` (the default) or `rustls` (`io::records`;
    /// `serve --tls-records` wins).
    #[serde(default)]
    pub(crate) tls_records: crate::io::records::RecordsMode,
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
            message: match yaml_hint(text, &e) {
                Some(hint) => format!("{e} ({hint})"),
                None => e.to_string(),
            },
        })?;
        config.base_dir = base_dir.to_owned();
        config.validate()?;
        Ok(config)
    }

    /// A path from the file, resolved against the config file's directory.
    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        self.base_dir.join(p)
    }

    /// The host names of `proxy_service.public_addr`, lower-cased, without ports.
    pub(crate) fn public_hosts(&self) -> Vec<String> {
        let addrs = self
            .proxy_service
            .public_addr
            .iter()
            .flat_map(|a| a.to_vec());
        addrs
            .filter_map(|a| host_port("", &a).ok())
            .map(|hp| hp.host.to_ascii_lowercase())
            .collect()
    }

    /// The host name of app `app` (validated: there is one).
    pub(crate) fn app_host(&self, app: &AppConfig) -> Option<String> {
        match &app.public_addr {
            Some(a) => Some(strip_port(a).to_ascii_lowercase()),
            None => self
                .public_hosts()
                .first()
                .map(|h| format!("{}.{h}", app.name.to_ascii_lowercase())),
        }
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

/// A hint for a YAML mistake an operator is likely to make: an IPv6 address with a port
/// written unquoted (`[::1]:3080` is a YAML sequence, so serde reads a list where it
/// wanted a string).
fn yaml_hint(text: &str, e: &serde_yaml_ng::Error) -> Option<&'static str> {
    if !e.to_string().contains("invalid type: sequence") {
        return None;
    }
    let line = text.lines().nth(e.location()?.line().checked_sub(1)?)?;
    let value = line.split_once(':')?.1.trim_start();
    (value.starts_with('[') && value.contains("]:"))
        .then_some("an IPv6 address with a port must be quoted in YAML: \"[::1]:3080\"")
}

/// `host` from `host` or `host:port` (IPv6 in brackets keeps its brackets stripped).
pub(crate) fn strip_port(a: &str) -> &str {
    if let Some(v6) = a.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => a,
    }
}

#[cfg(test)]
mod tests;
