//! TLS pieces both sides share: the rustls crypto provider, and who a certificate says
//! its holder is ([`CertIdentity`]: subject CN and organisations), which the router checks
//! against allow lists and logs, and the client shows in its messages.

use rustls::crypto::CryptoProvider;
use std::fmt;
use std::sync::Arc;

/// The crypto provider used everywhere (ring: no C toolchain beyond cc needed).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A stateless session-ticket maker of the same provider: its own random keys, rotated
/// every 6 hours (rustls' `TicketRotator`). A session lives in the ticket the client
/// holds, encrypted, not in the proxy's memory.
pub(crate) fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    rustls::crypto::ring::Ticketer::new()
}

/// Who a certificate says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CertIdentity {
    /// Subject common name.
    pub(crate) cn: Option<String>,
    /// Subject organisations.
    pub(crate) orgs: Vec<String>,
}

impl CertIdentity {
    /// Reads CN and O from a DER certificate.
    pub(crate) fn from_der(der: &[u8]) -> Option<CertIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let identity = CertIdentity {
            cn: subject
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned),
            orgs: subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok())
                .map(str::to_owned)
                .collect(),
        };
        Some(identity)
    }

    /// True when the CN or one of the organisations is in `allow` (an empty list allows all).
    pub(crate) fn allowed(&self, allow: &[String]) -> bool {
        allow.is_empty()
            || allow
                .iter()
                .any(|a| self.cn.as_deref() == Some(a) || self.orgs.contains(a))
    }
}

impl fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CN={}", self.cn.as_deref().unwrap_or("-"))?;
        for o in &self.orgs {
            write!(f, ",O={o}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_by_cn_or_org() {
        let id = CertIdentity {
            cn: Some("alice".into()),
            orgs: vec!["devs".into()],
        };
        assert!(id.allowed(&[]));
        assert!(id.allowed(&["alice".into()]));
        assert!(id.allowed(&["devs".into()]));
        assert!(!id.allowed(&["bob".into(), "ops".into()]));
        assert_eq!(id.to_string(), "CN=alice,O=devs");
    }
}
