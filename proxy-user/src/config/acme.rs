//! `proxy_service.acme`: certificates from an ACME CA (RFC 8555) with the TLS-ALPN-01
//! challenge answered on the web port (RFC 8737). The keys `enabled`, `email` and `uri` are
//! the reference's; `ca_file` (a private CA's directory) and `state_dir` are Switchyard's.
//! The names come from `public_addr` and the apps' host names; which of them an explicit
//! `https_keypairs` entry already covers is decided where the keypairs are loaded
//! (`router::acme`).

use super::validate::readable;
use super::{host_port, Config, ConfigError};
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;
use std::path::PathBuf;

/// Let's Encrypt's production directory: the reference's default `uri`.
pub(crate) const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Where the account key and certificates are kept unless `state_dir` says otherwise.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/switchyard/acme";

/// `proxy_service.acme`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcmeConfig {
    /// `"yes"`/`true` obtains and renews the web certificate from the CA at `uri`.
    #[serde(default, deserialize_with = "yes_no")]
    pub(crate) enabled: bool,
    /// Contact address registered with the account (`mailto:`), for the CA's expiry notices.
    #[serde(default)]
    pub(crate) email: Option<String>,
    /// The ACME directory URL (`https://`); default Let's Encrypt's production directory.
    #[serde(default)]
    pub(crate) uri: Option<String>,
    /// PEM bundle trusted for the directory's HTTPS instead of the system's roots (a
    /// private ACME CA).
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Directory of the account key, the certificate and its key (created 0700, files
    /// 0600); default `/var/lib/switchyard/acme`.
    #[serde(default)]
    pub(crate) state_dir: Option<PathBuf>,
}

/// `enabled: "yes"` as the reference writes it, or a YAML boolean.
fn yes_no<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum YesNo {
        Bool(bool),
        Text(String),
    }
    match YesNo::deserialize(d)? {
        YesNo::Bool(b) => Ok(b),
        YesNo::Text(t) => match t.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(true),
            "no" | "false" | "off" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "enabled: {other:?} is neither \"yes\" nor \"no\""
            ))),
        },
    }
}

impl Config {
    /// The ACME section when it is enabled.
    pub(crate) fn acme(&self) -> Option<&AcmeConfig> {
        self.proxy_service.acme.as_ref().filter(|a| a.enabled)
    }

    /// The directory URL of the ACME CA.
    pub(crate) fn acme_uri(&self) -> &str {
        self.acme()
            .and_then(|a| a.uri.as_deref())
            .unwrap_or(DEFAULT_DIRECTORY)
    }

    /// Where the ACME state lives, resolved against the config file's directory.
    pub(crate) fn acme_state_dir(&self) -> PathBuf {
        let dir = self.acme().and_then(|a| a.state_dir.clone());
        self.path(&dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)))
    }

    /// Every name the proxy answers for by name: the `public_addr` hosts, then the apps'
    /// host names, lower-cased, without duplicates. IP addresses are left out (TLS-ALPN-01
    /// for IP identifiers is not supported here).
    pub(crate) fn acme_candidate_names(&self) -> Vec<String> {
        let apps = self.apps.iter().filter_map(|a| self.app_host(a));
        let mut names: Vec<String> = Vec::new();
        for name in self.public_hosts().into_iter().chain(apps) {
            if name.parse::<IpAddr>().is_err() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The checks of `proxy_service.acme`.
    pub(super) fn validate_acme(&self) -> Result<(), ConfigError> {
        let Some(acme) = self.acme() else {
            return Ok(());
        };
        let key = |k: &str| format!("proxy_service.acme.{k}");
        let uri = self.acme_uri();
        let Some(rest) = uri.strip_prefix("https://") else {
            return Err(ConfigError::invalid(
                key("uri"),
                format!("{uri:?} is not an https:// ACME directory URL"),
            ));
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains(':') && host_port("", authority).is_err() {
            return Err(ConfigError::invalid(
                key("uri"),
                format!("{uri:?} has no host"),
            ));
        }
        if let Some(email) = &acme.email {
            let ok = email
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
            if !ok {
                return Err(ConfigError::invalid(
                    key("email"),
                    format!("{email:?} is not an email address"),
                ));
            }
        }
        if let Some(ca) = &acme.ca_file {
            readable(&key("ca_file"), &self.path(ca))?;
        }
        if self.acme_candidate_names().is_empty() {
            return Err(ConfigError::invalid(
                "proxy_service.acme",
                "no names to obtain a certificate for: set proxy_service.public_addr to the \
                 proxy's DNS name (IP addresses cannot be validated by TLS-ALPN-01)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(acme: &str, extra: &str) -> Result<Config, String> {
        let text = format!(
            "proxy_service:\n  web_listen_addr: 127.0.0.1:3080\n  public_addr: [proxy.example.com:443, 192.0.2.1:443]\n  acme: {acme}\n{extra}"
        );
        Config::parse(&text, Path::new("/etc/switchyard")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_reference_vocabulary_and_defaults() {
        let c = parse("{enabled: \"yes\", email: ops@example.com}", "").unwrap();
        assert_eq!(c.acme_uri(), super::DEFAULT_DIRECTORY);
        assert_eq!(c.acme_state_dir(), Path::new(super::DEFAULT_STATE_DIR));
        let apps = "apps: [{name: wiki, uri: 'http://127.0.0.1:1'}]";
        let c = parse("{enabled: true, state_dir: acme}", apps).unwrap();
        assert_eq!(c.acme_state_dir(), Path::new("/etc/switchyard/acme"));
        // IP addresses cannot be validated by TLS-ALPN-01; the app's name is added.
        assert_eq!(
            c.acme_candidate_names(),
            ["proxy.example.com", "wiki.proxy.example.com"]
        );
        assert!(parse("{enabled: \"no\", uri: 'not checked'}", "")
            .unwrap()
            .acme()
            .is_none());
    }

    #[test]
    fn refusals_name_the_key() {
        let e = parse("{enabled: \"yes\", uri: 'http://ca.test/dir'}", "").unwrap_err();
        assert!(
            e.contains("proxy_service.acme.uri") && e.contains("https://"),
            "{e}"
        );
        let e = parse("{enabled: \"yes\", email: nobody}", "").unwrap_err();
        assert!(e.contains("proxy_service.acme.email"), "{e}");
        let e = parse("{enabled: \"yes\", ca_file: /nonexistent/ca.crt}", "").unwrap_err();
        assert!(e.contains("proxy_service.acme.ca_file"), "{e}");
        let e = parse("{enabled: maybe}", "").unwrap_err();
        assert!(e.contains("neither"), "{e}");
        let e = parse("{enabled: \"yes\", url: x}", "").unwrap_err();
        assert!(e.contains("unknown field `url`"), "{e}");
    }
}
