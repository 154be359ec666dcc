//! [`Config::validate`]: every check serde cannot make alone, each refusal naming its key
//! (`proxy_service.web_listen_addr`, `routes[2].upstream`, `limits.max_hello_bytes`, ...).

use super::addr::{dns_label, host_port, listen_addr};
use super::{AuthUpstreams, Config, ConfigError, Nets, ProxyProtocol, RouteMode, XffMode};
use std::path::Path;

impl Config {
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
        self.validate_acme()?;
        self.validate_trust()?;
        self.validate_tunnel()?;
        let u = &self.upstreams;
        self.validate_http()?;
        for (key, value) in [
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
        super::classes::validate(&l.classes)?;
        if l.listen_backlog == 0 {
            return Err(ConfigError::invalid(
                "limits.listen_backlog",
                "at least 1 (the kernel caps it at net.core.somaxconn)",
            ));
        }
        if l.defer_accept > std::time::Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "limits.defer_accept",
                "at most 60s (a silent client waits that long in the kernel before the proxy sees it)",
            ));
        }
        if l.verified_chains > 100_000 {
            return Err(ConfigError::invalid(
                "limits.verified_chains",
                "at most 100000 (each remembered chain holds its certificates' bytes; 0 turns the memo off)",
            ));
        }
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
        if l.max_http_head_bytes < 8192 || l.max_http_head_bytes > 1 << 20 {
            return Err(ConfigError::invalid(
                "limits.max_http_head_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if l.http2_max_streams == 0 {
            return Err(ConfigError::invalid(
                "limits.http2_max_streams",
                "must be at least 1",
            ));
        }
        if l.http_idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.http_idle_timeout",
                "must be positive",
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
}

impl Config {
    /// `trusted_proxies` with what relies on it, and every `allow_from`.
    fn validate_trust(&self) -> Result<(), ConfigError> {
        let p = &self.proxy_service;
        let untrusting = p.trusted_proxies.is_empty();
        if untrusting && p.proxy_protocol == Some(ProxyProtocol::On) {
            return Err(ConfigError::invalid(
                "proxy_service.trusted_proxies",
                "required with proxy_protocol: \"on\": the addresses of the balancers that send PROXY headers (from any other peer a connection is refused)",
            ));
        }
        if untrusting && p.trust_x_forwarded_for != XffMode::Off {
            return Err(ConfigError::invalid(
                "proxy_service.trusted_proxies",
                "required with trust_x_forwarded_for: the addresses of the balancers whose X-Forwarded-For is believed",
            ));
        }
        let mut rules: Vec<(String, &Nets)> = vec![];
        for (i, r) in self.routes.iter().enumerate() {
            rules.extend(
                r.allow_from
                    .iter()
                    .map(|n| (format!("routes[{i}].allow_from"), n)),
            );
        }
        for (i, a) in self.apps.iter().enumerate() {
            rules.extend(
                a.allow_from
                    .iter()
                    .map(|n| (format!("apps[{i}].allow_from"), n)),
            );
        }
        for (key, n) in self.allow_from.entries() {
            rules.push((format!("allow_from.{key}"), n));
        }
        if let Some((key, _)) = rules.into_iter().find(|(_, n)| n.is_empty()) {
            return Err(ConfigError::invalid(
                key,
                "an empty list would refuse every client: remove the key to allow any address",
            ));
        }
        Ok(())
    }
}

pub(super) fn readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))
}
