//! The proxy's certificate chosen by SNI: the `https_keypairs` certificate whose DNS
//! names match (exactly or by one-label wildcard), else the ACME certificate for one of
//! its names, else the first configured one; and the names themselves, which ACME leaves
//! to the explicit keypairs.

use super::super::acme::Acme;
use super::load_certified_key;
use crate::config::{Config, ConfigError};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Chooses the proxy's certificate by SNI: a configured certificate whose DNS names match
/// (exactly or by wildcard), else the ACME certificate for one of its names, else the
/// first configured one (or the ACME one when none is configured).
pub(crate) struct SniResolver {
    pub(super) keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    acme: Option<Arc<Acme>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.keys.iter().map(|(n, _)| n).collect();
        let acme = self.acme.as_ref().map(|a| &a.names);
        f.debug_struct("SniResolver")
            .field("keys", &names)
            .field("acme", &acme)
            .finish()
    }
}

impl SniResolver {
    pub(crate) fn new(keys: Vec<Arc<CertifiedKey>>, acme: Option<Arc<Acme>>) -> SniResolver {
        let keys = keys
            .into_iter()
            .map(|k| (dns_names(k.end_entity_cert().ok()), k))
            .collect();
        SniResolver { keys, acme }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            for (names, key) in &self.keys {
                if names.iter().any(|n| name_matches(n, &sni)) {
                    return Some(key.clone());
                }
            }
            if let Some(acme) = self.acme.as_ref().filter(|a| a.covers(&sni)) {
                return Some(acme.current_key());
            }
        }
        match (self.keys.first(), &self.acme) {
            (Some((_, k)), _) => Some(k.clone()),
            (None, Some(acme)) => Some(acme.current_key()),
            (None, None) => None,
        }
    }
}

/// Whether a certificate of `https_keypairs` (DNS names `keypair_names`) covers `name`.
pub(crate) fn covered(keypair_names: &[String], name: &str) -> bool {
    keypair_names.iter().any(|n| name_matches(n, name))
}

/// The DNS names of every `https_keypairs` certificate.
pub(crate) fn keypair_names(config: &Config) -> Result<Vec<String>, ConfigError> {
    let mut names = Vec::new();
    for (i, kp) in config.proxy_service.https_keypairs.iter().enumerate() {
        let key = load_certified_key(
            &config.path(&kp.cert_file),
            &config.path(&kp.key_file),
            &format!("proxy_service.https_keypairs[{i}]"),
        )?;
        names.extend(dns_names(key.end_entity_cert().ok()));
    }
    Ok(names)
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

pub(crate) fn dns_names(cert: Option<&CertificateDer<'_>>) -> Vec<String> {
    let Some(Ok((_, cert))) = cert.map(|c| x509_parser::parse_x509_certificate(c)) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn name_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == sni,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("proxy.example.com", "proxy.example.com"));
    }
}
