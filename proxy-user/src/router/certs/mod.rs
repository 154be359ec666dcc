//! TLS termination set-up: the proxy's certificates chosen by SNI (`https_keypairs`, then
//! the ACME certificate for its names, `router::acme`), the client-certificate
//! verifier (cluster CA plus a route's allow list), and one rustls `ServerConfig` per
//! terminated route, which the route table then carries in the route's entry.
//!
//! A client certificate that fails the allow list is refused *inside* the handshake, so the
//! client gets a TLS alert (`access_denied`) rather than a silent close.

mod memo;
mod sni;

pub(crate) use sni::{covered, dns_names, keypair_names, SniResolver};

use super::acme::Acme;
use super::route::{Mode, Table};
use crate::config::{Config, ConfigError};
use crate::io::tls::{provider, ticketer, CertIdentity};
use crate::router::metrics::ChainCheck;
use memo::ChainMemo;
use prometheus_client::metrics::{counter::Counter, family::Family};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::path::Path;
use std::sync::Arc;

/// Loads a PEM certificate chain and key, naming `key_prefix` in errors.
pub(crate) fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    key_prefix: &str,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect())
        .map_err(|e| {
            ConfigError::invalid(
                format!("{key_prefix}.cert_file"),
                format!("{}: {e}", cert_path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key_prefix}.cert_file"),
            format!("{}: no PEM certificate found", cert_path.display()),
        ));
    }
    let key_err = |m: String| ConfigError::invalid(format!("{key_prefix}.key_file"), m);
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| key_err(format!("{}: {e}", key_path.display())))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("{}: {e}", key_path.display())))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        key_err(format!(
            "{} does not match {}: {e}",
            key_path.display(),
            cert_path.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// The cluster CA: its webpki verifier and the memo of the chains it accepted (`None`
/// with `limits.verified_chains: 0`).
#[derive(Debug, Clone)]
struct ClusterCa {
    webpki: Arc<dyn ClientCertVerifier>,
    memo: Option<Arc<ChainMemo>>,
}

/// The cluster CA verifier plus a route's allow list.
#[derive(Debug)]
struct AllowListVerifier {
    ca: ClusterCa,
    allow: Vec<String>,
}

impl ClientCertVerifier for AllowListVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let webpki = &*self.ca.webpki;
        let verified = match &self.ca.memo {
            Some(memo) => memo.verify(webpki, end_entity, intermediates, now),
            None => webpki.verify_client_cert(end_entity, intermediates, now),
        }?;
        let identity = CertIdentity::from_der(end_entity).ok_or(
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        )?;
        if identity.allowed(&self.allow) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.webpki.supported_verify_schemes()
    }
}

/// What every terminated route's TLS is made of: the proxy's certificates chosen by SNI
/// and the cluster CA's client verifier. Kept by the running proxy, so a connection to an
/// agent's service can get a configuration with that agent's allow list.
pub(crate) struct Terminator {
    resolver: Arc<SniResolver>,
    client_verifier: Option<ClusterCa>,
}

impl Terminator {
    /// Each configured certificate's first DNS name and its expiry (Unix seconds).
    pub(crate) fn expiries(&self) -> Vec<(String, i64)> {
        let expiry = |key: &CertifiedKey| {
            let der = key.end_entity_cert().ok()?;
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            Some(cert.validity().not_after.timestamp())
        };
        let keys = self.resolver.keys.iter();
        keys.filter_map(|(names, key)| Some((names.first()?.clone(), expiry(key)?)))
            .collect()
    }

    /// Loads the certificates and the client CA; the route table says which are needed.
    /// `acme` serves the names no configured certificate covers; `checks` counts the
    /// client chains verified and remembered.
    pub(crate) fn new(
        config: &Config,
        table: &Table,
        acme: Option<Arc<Acme>>,
        checks: &Family<ChainCheck, Counter>,
    ) -> Result<Terminator, ConfigError> {
        let p = &config.proxy_service;
        let terminated = |client_auth_needed: bool| {
            table.entries().iter().any(|e| match e.mode {
                Mode::Terminate { client_auth, .. } => client_auth || !client_auth_needed,
                Mode::Passthrough => false,
            })
        };
        if terminated(false) && p.https_keypairs.is_empty() && config.acme().is_none() {
            return Err(ConfigError::invalid(
                "proxy_service.https_keypairs",
                "at least one certificate is needed for terminated routes (web, teleport-*, routes with mode: terminate), or proxy_service.acme",
            ));
        }
        let mut keys = Vec::new();
        for (i, kp) in p.https_keypairs.iter().enumerate() {
            keys.push(load_certified_key(
                &config.path(&kp.cert_file),
                &config.path(&kp.key_file),
                &format!("proxy_service.https_keypairs[{i}]"),
            )?);
        }
        let client_verifier = match (&p.client_ca_file, terminated(true)) {
            (Some(path), _) => Some(client_ca_verifier(
                &config.path(path),
                config.limits.verified_chains,
                checks,
            )?),
            (None, true) => return Err(ConfigError::invalid(
                "proxy_service.client_ca_file",
                "required: routes need client certificates (teleport-* protocols or allow lists)",
            )),
            (None, false) => None,
        };
        Ok(Terminator {
            resolver: Arc::new(SniResolver::new(keys, acme)),
            client_verifier,
        })
    }

    /// A server configuration offering `alpn`; with `client_auth`, a certificate of the
    /// cluster CA whose identity is in `allow` (empty: any) is required.
    pub(crate) fn config(
        &self,
        alpn: &[String],
        client_auth: bool,
        allow: &[String],
    ) -> Result<Arc<ServerConfig>, ConfigError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid("proxy_service.https_keypairs", e.to_string()))?;
        let builder = match (&self.client_verifier, client_auth) {
            (Some(ca), true) => builder.with_client_cert_verifier(Arc::new(AllowListVerifier {
                ca: ca.clone(),
                allow: allow.to_vec(),
            })),
            _ => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(self.resolver.clone());
        server.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        // The keys leave rustls only for a hand-over to the kernel's TLS (`io::ktls`) or
        // the proxy's record layer (`io::records`).
        server.enable_secret_extraction =
            crate::io::ktls::offered().is_some() || crate::io::records::in_proxy();
        // Resumption with stateless tickets: the session (with the client's certificate
        // chain) is encrypted into the ticket the client keeps, so resumable sessions cost
        // the proxy no memory (a cache of 1,024 per route held up to ~1 KB each, refilled
        // after every reload). Each route, and each reload, has its own ticket keys: a
        // ticket of one route never resumes on another, whose allow list may differ, nor
        // after a reload that may have changed it. TLS 1.2 clients without tickets keep
        // rustls' default cache of 256 session IDs.
        server.ticketer = ticketer().map_err(|e| {
            ConfigError::invalid(
                "proxy_service.https_keypairs",
                format!("session tickets: {e}"),
            )
        })?;
        Ok(Arc::new(server))
    }
}

/// Gives every terminated route of `table` its own rustls configuration (its ALPN list,
/// its client-certificate policy and allow list), built at start-up and at each reload.
pub(crate) fn with_tls(
    terminator: &Terminator,
    table: Table,
) -> Result<Table<Arc<ServerConfig>>, ConfigError> {
    table.with_tls(|entry| {
        let client_auth = matches!(
            entry.mode,
            Mode::Terminate {
                client_auth: true,
                ..
            }
        );
        terminator.config(&entry.alpn, client_auth, &entry.allow)
    })
}

/// The cluster CA's verifier, remembering up to `memo` verified chains (`memo`).
fn client_ca_verifier(
    path: &Path,
    memo: usize,
    checks: &Family<ChainCheck, Counter>,
) -> Result<ClusterCa, ConfigError> {
    let key = "proxy_service.client_ca_file";
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    let memo = (memo > 0).then(|| Arc::new(ChainMemo::new(memo, checks.clone())));
    Ok(ClusterCa { webpki, memo })
}
