//! The TLS-ALPN-01 answers (RFC 8737): while an order is pending, each name being
//! validated has a self-signed certificate carrying the `acmeIdentifier` extension (the
//! SHA-256 of the key authorization). A ClientHello that offers only `acme-tls/1` for such
//! a name completes a handshake with it, negotiating `acme-tls/1`, and is closed.

use crate::io::tls::provider;
use crate::protocol::ACME_TLS_ALPN;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The pending challenges, by name (lower case).
#[derive(Debug, Default)]
pub(crate) struct Challenges {
    by_name: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers `name` with the certificate for `digest` (SHA-256 of the key
    /// authorization) until [`Challenges::remove`].
    pub(crate) fn insert(&self, name: &str, digest: &[u8]) -> Result<(), rcgen::Error> {
        let key = challenge_certificate(name, digest)?;
        self.lock().insert(name.to_ascii_lowercase(), key);
        Ok(())
    }

    pub(crate) fn remove(&self, name: &str) {
        self.lock().remove(&name.to_ascii_lowercase());
    }

    /// Whether a challenge for `name` is pending.
    pub(crate) fn pending(&self, name: &str) -> bool {
        self.lock().contains_key(&name.to_ascii_lowercase())
    }

    fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.lock().get(&name.to_ascii_lowercase()).cloned()
    }
}

/// Picks the challenge certificate by SNI; none for a name without a pending challenge,
/// which fails the handshake.
#[derive(Debug)]
struct Resolver(Arc<Challenges>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get(hello.server_name()?)
    }
}

/// The server configuration of challenge answers: only `acme-tls/1`, certificates from
/// `challenges`.
pub(crate) fn server_config(challenges: Arc<Challenges>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(challenges)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.as_bytes().to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate for `name` with the critical `acmeIdentifier` extension.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    certified(cert.der().clone(), &key)
}

/// `cert` with `key`, as rustls serves them.
pub(crate) fn certified(
    cert: CertificateDer<'static>,
    key: &KeyPair,
) -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], signing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_certificate_names_the_host_and_carries_the_digest() {
        let challenges = Challenges::default();
        let digest = [7u8; 32];
        challenges.insert("Proxy.Example.test", &digest).unwrap();
        assert!(challenges.pending("proxy.example.test"));
        let key = challenges.get("proxy.example.test").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING of 32 bytes.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        challenges.remove("proxy.example.test");
        assert!(!challenges.pending("proxy.example.test"));
    }
}
