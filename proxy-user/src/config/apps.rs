//! The HTTP side of the configuration: `upstreams.web` and `apps` — their serde structs
//! ([`WebUpstream`], [`HttpUpstream`], [`AppConfig`]) and their checks (URIs, protocols,
//! host names, TLS settings), each refusal naming its key. [`http_target`] is also what the
//! router builds its upstream pools from, so both read a URI the same way.

use super::addr::{dns_label, host_port, HostPort};
use super::trust::Nets;
use super::{Config, ConfigError};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// `upstreams.web`: a bare `host:port`, or a full HTTP upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum WebUpstream {
    Addr(String),
    Http(HttpUpstream),
}

impl WebUpstream {
    /// The upstream as an [`HttpUpstream`] (`host:port` is plaintext HTTP/1.1).
    pub(crate) fn http(&self) -> HttpUpstream {
        match self {
            WebUpstream::Addr(a) => HttpUpstream {
                uri: format!("http://{a}"),
                ..HttpUpstream::default()
            },
            WebUpstream::Http(h) => h.clone(),
        }
    }
}

/// An HTTP server behind the proxy: the web upstream, or an app's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpUpstream {
    /// `http://host:port` or `https://host:port` (a path is not allowed: requests keep theirs).
    pub(crate) uri: String,
    /// What the upstream speaks: `http/1.1` (default), `h2c` (h2 prior knowledge over
    /// `http://`), `h2` (over `https://`, ALPN `h2`).
    #[serde(default)]
    pub(crate) protocol: HttpProtocol,
    /// PEM bundle of the CA(s) that sign an `https://` upstream's certificate.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Do not verify an `https://` upstream's certificate (test setups only).
    #[serde(default)]
    pub(crate) insecure_skip_verify: bool,
}

/// `protocol` of an HTTP upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) enum HttpProtocol {
    #[default]
    #[serde(rename = "http/1.1")]
    Http11,
    #[serde(rename = "h2c")]
    H2c,
    #[serde(rename = "h2")]
    H2,
}

/// One entry of `apps`: an HTTP application reached by its host name (SNI and
/// `Host`/`:authority`) on the proxy's port, with its own upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppConfig {
    /// One DNS label, used in logs and metrics and as the default host's first label.
    pub(crate) name: String,
    /// The host name clients use (`grafana.example.com`, an optional `:port` is ignored);
    /// default `<name>.<host of the first proxy_service.public_addr>`.
    #[serde(default)]
    pub(crate) public_addr: Option<String>,
    /// The app's HTTP server: `http://host:port` or `https://host:port`.
    pub(crate) uri: String,
    /// What the app's server speaks: `http/1.1` (default), `h2c`, `h2`.
    #[serde(default)]
    pub(crate) protocol: HttpProtocol,
    /// PEM CA bundle for an `https://` app.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Do not verify an `https://` app's certificate (test setups only).
    #[serde(default)]
    pub(crate) insecure_skip_verify: bool,
    /// Identities (client certificate CN or O) allowed; empty allows any valid certificate.
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// Require a client certificate from the cluster CA; default: when `allow` is set.
    #[serde(default)]
    pub(crate) client_auth: Option<bool>,
    /// Client addresses allowed (after the trusted PROXY / `X-Forwarded-For` step); unset
    /// allows any.
    #[serde(default)]
    pub(crate) allow_from: Option<Nets>,
}

impl AppConfig {
    /// The app's upstream.
    pub(crate) fn upstream(&self) -> HttpUpstream {
        HttpUpstream {
            uri: self.uri.clone(),
            protocol: self.protocol,
            ca_file: self.ca_file.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }

    /// Whether the app asks for a client certificate.
    pub(crate) fn wants_client_cert(&self) -> bool {
        self.client_auth.unwrap_or(!self.allow.is_empty())
    }
}

/// Where an HTTP upstream is, as checked: scheme, authority, protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpTarget {
    /// `https://`: TLS to the upstream.
    pub(crate) tls: bool,
    pub(crate) addr: HostPort,
    pub(crate) protocol: HttpProtocol,
}

/// Reads an HTTP upstream's URI and checks its protocol and TLS settings.
pub(crate) fn http_target(key: &str, u: &HttpUpstream) -> Result<HttpTarget, ConfigError> {
    let bad = |m: String| ConfigError::invalid(format!("{key}.uri"), m);
    let uri: http::Uri = u
        .uri
        .parse()
        .map_err(|e| bad(format!("`{}` is not a URI: {e}", u.uri)))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(bad(format!(
                "`{}`: the scheme must be http or https",
                u.uri
            )))
        }
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(format!(
            "`{}`: no path or query (requests keep their own)",
            u.uri
        )));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let with_port = match uri.port_u16() {
        Some(_) => authority.to_owned(),
        None => format!("{authority}:{}", if tls { 443 } else { 80 }),
    };
    let addr = host_port(&format!("{key}.uri"), &with_port)?;
    let protocol_key = format!("{key}.protocol");
    match (u.protocol, tls) {
        (HttpProtocol::H2c, true) => {
            return Err(ConfigError::invalid(
                protocol_key,
                "h2c is HTTP/2 without TLS: use an http:// URI, or `h2` for https://",
            ))
        }
        (HttpProtocol::H2, false) => {
            return Err(ConfigError::invalid(
                protocol_key,
                "h2 is HTTP/2 over TLS: use an https:// URI, or `h2c` for http://",
            ))
        }
        _ => {}
    }
    if tls && u.ca_file.is_none() && !u.insecure_skip_verify {
        return Err(ConfigError::invalid(
            format!("{key}.ca_file"),
            "an https:// upstream needs `ca_file` (its CA bundle) or `insecure_skip_verify: true`",
        ));
    }
    if !tls && (u.ca_file.is_some() || u.insecure_skip_verify) {
        return Err(ConfigError::invalid(
            format!("{key}.ca_file"),
            "TLS settings need an https:// URI",
        ));
    }
    Ok(HttpTarget {
        tls,
        addr,
        protocol: u.protocol,
    })
}

impl Config {
    /// `upstreams.web` and `apps`.
    pub(super) fn validate_http(&self) -> Result<(), ConfigError> {
        match &self.upstreams.web {
            Some(WebUpstream::Addr(a)) => {
                host_port("upstreams.web", a)?;
            }
            Some(WebUpstream::Http(h)) => {
                http_target("upstreams.web", h)?;
                self.readable_opt("upstreams.web.ca_file", h.ca_file.as_deref())?;
            }
            None => {}
        }
        let public: BTreeSet<String> = self.public_hosts().into_iter().collect();
        let mut names = BTreeSet::new();
        let mut hosts = BTreeSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = |k: &str| format!("apps[{i}].{k}");
            if !dns_label(&app.name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!(
                        "`{}` is not one DNS label (letters, digits and inner '-')",
                        app.name
                    ),
                ));
            }
            if !names.insert(app.name.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("two apps are named `{}`", app.name),
                ));
            }
            let Some(host) = self.app_host(app) else {
                return Err(ConfigError::invalid(
                    key("public_addr"),
                    "needed when proxy_service.public_addr is not set (the default is <name>.<public host>)",
                ));
            };
            if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() || host.contains('*') {
                return Err(ConfigError::invalid(
                    key("public_addr"),
                    format!("`{host}` is not a host name"),
                ));
            }
            if public.contains(&host) {
                return Err(ConfigError::invalid(
                    key("public_addr"),
                    format!("`{host}` is the proxy's own public_addr, which serves its web route"),
                ));
            }
            if !hosts.insert(host.clone()) {
                return Err(ConfigError::invalid(
                    key("public_addr"),
                    format!("two apps use the host name `{host}`"),
                ));
            }
            http_target(&format!("apps[{i}]"), &app.upstream())?;
            self.readable_opt(&key("ca_file"), app.ca_file.as_deref())?;
            if app.wants_client_cert() && self.proxy_service.client_ca_file.is_none() {
                return Err(ConfigError::invalid(
                    "proxy_service.client_ca_file",
                    format!(
                        "required: app `{}` asks for client certificates (allow or client_auth)",
                        app.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn readable_opt(&self, key: &str, path: Option<&std::path::Path>) -> Result<(), ConfigError> {
        match path {
            Some(p) => super::validate::readable(key, &self.path(p)),
            None => Ok(()),
        }
    }
}
