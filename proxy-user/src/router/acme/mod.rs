//! Certificates from an ACME CA (`proxy_service.acme`, `docs/acme.md`): the process-wide
//! [`Acme`] holds the names, the certificate being served (swapped in place, so reloads
//! and live connections never see a gap), the pending TLS-ALPN-01 answers and the state
//! directory; [`order`] runs the life cycle (obtain, renew at two thirds of the lifetime,
//! back off on failure) and [`failure`] tells its failures apart; [`challenge`] makes the
//! RFC 8737 certificates, [`store`] keeps the files, [`client`] is the HTTPS client the
//! protocol runs over.
//!
//! Until a certificate is issued the names are served with a self-signed placeholder.

mod challenge;
mod client;
mod failure;
pub(crate) mod order;
mod store;

use super::metrics::Metrics;
use crate::config::{Config, ConfigError};
use crate::io::tls::provider;
use challenge::Challenges;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::Store;
use tracing::{info, warn};

/// The certificate being served for the ACME names.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) key: Arc<CertifiedKey>,
    /// Validity, Unix seconds.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// The DNS names it carries.
    pub(crate) names: Vec<String>,
    /// The self-signed stand-in served until the CA issues one.
    pub(crate) placeholder: bool,
}

impl Served {
    /// When to renew: two thirds into the lifetime; at once for the placeholder or a
    /// certificate that does not carry every name.
    pub(crate) fn renew_at(&self, wanted: &[String]) -> SystemTime {
        let complete = wanted.iter().all(|n| self.names.contains(n));
        if self.placeholder || !complete {
            return SystemTime::now();
        }
        let at = self.not_before + (self.not_after - self.not_before) * 2 / 3;
        UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0))
    }
}

/// The ACME state of the running proxy (kept across reloads).
pub(crate) struct Acme {
    /// The names obtained for (those no `https_keypairs` entry covers), first one the
    /// certificate's name in logs and metrics.
    pub(crate) names: Vec<String>,
    uri: String,
    email: Option<String>,
    http: client::AcmeHttp,
    store: Store,
    served: RwLock<Served>,
    challenges: Arc<Challenges>,
    challenge_tls: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
}

impl Acme {
    /// The ACME state when `proxy_service.acme` is enabled and some name is left once
    /// the names that `covered` (an explicit keypair) claims are taken out.
    pub(crate) fn new(
        config: &Config,
        covered: impl Fn(&str) -> bool,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Acme>>, ConfigError> {
        let Some(section) = config.acme() else {
            return Ok(None);
        };
        let (names, explicit): (Vec<String>, Vec<String>) = config
            .acme_candidate_names()
            .into_iter()
            .partition(|n| !covered(n));
        if !explicit.is_empty() {
            info!(names = ?explicit, "ACME: these names are served from https_keypairs, which win over ACME");
        }
        if names.is_empty() {
            warn!("ACME is enabled but https_keypairs covers every name: nothing to obtain");
            return Ok(None);
        }
        let bad = |k: &str, m: String| ConfigError::invalid(format!("proxy_service.acme.{k}"), m);
        let dir = config.acme_state_dir();
        let store =
            Store::open(&dir).map_err(|e| bad("state_dir", format!("{}: {e}", dir.display())))?;
        let ca_file = section.ca_file.as_ref().map(|p| config.path(p));
        let http = client::AcmeHttp::new(config.acme_uri(), ca_file.as_deref())?;
        let challenges = Arc::new(Challenges::default());
        let challenge_tls = challenge::server_config(challenges.clone())
            .map_err(|e| bad("uri", format!("TLS-ALPN-01 configuration: {e}")))?;
        let served = match store.load() {
            Ok(Some(stored)) => match served_from(&stored.chain, &stored.key_pem) {
                Ok(s) => {
                    info!(names = ?s.names, not_after = %rfc3339(s.not_after), dir = %dir.display(), "ACME: serving the stored certificate");
                    Some(s)
                }
                Err(e) => {
                    warn!(dir = %dir.display(), "ACME: the stored certificate is unusable, obtaining a new one: {e}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                warn!(dir = %dir.display(), "ACME: cannot read the stored certificate, obtaining a new one: {e}");
                None
            }
        };
        let served = match served {
            Some(s) => s,
            None => {
                warn!(names = ?names, "ACME: no certificate yet: serving a self-signed placeholder until the CA issues one");
                placeholder(&names)
                    .map_err(|e| bad("uri", format!("placeholder certificate: {e}")))?
            }
        };
        if !served.placeholder {
            metrics.acme.expires(&names[0], served.not_after);
        }
        Ok(Some(Arc::new(Acme {
            names,
            uri: config.acme_uri().to_owned(),
            email: section.email.clone(),
            http,
            store,
            served: RwLock::new(served),
            challenges,
            challenge_tls,
            metrics,
        })))
    }

    /// The certificate being served now.
    pub(crate) fn served(&self) -> Served {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The key new handshakes get.
    pub(crate) fn current_key(&self) -> Arc<CertifiedKey> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key
            .clone()
    }

    /// Swaps in a new certificate: handshakes from now on get it, open connections keep
    /// theirs.
    fn swap(&self, new: Served) {
        self.metrics.acme.expires(&self.names[0], new.not_after);
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// Whether `sni` is one of the ACME names.
    pub(crate) fn covers(&self, sni: &str) -> bool {
        self.names.iter().any(|n| n == sni)
    }

    /// The TLS configuration answering a TLS-ALPN-01 validation of `sni`, when one is
    /// pending for that name.
    pub(crate) fn challenge_tls(&self, sni: &str) -> Option<Arc<ServerConfig>> {
        self.challenges
            .pending(sni)
            .then(|| self.challenge_tls.clone())
    }
}

/// A chain and PEM key as served, with their validity and names.
fn served_from(chain: &[CertificateDer<'static>], key_pem: &str) -> Result<Served, String> {
    let leaf = chain.first().ok_or("no certificate in the chain")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    let key = CertifiedKey::new(chain.to_vec(), signing);
    key.keys_match().map_err(|e| e.to_string())?;
    Ok(Served {
        key: Arc::new(key),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        names: super::certs::dns_names(Some(leaf)),
        placeholder: false,
    })
}

/// A self-signed certificate for `names`, valid from now for 90 days.
fn placeholder(names: &[String]) -> Result<Served, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard ACME placeholder");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(90);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Served {
        key: challenge::certified(cert.der().clone(), &key)?,
        not_before: now.unix_timestamp(),
        not_after: params.not_after.unix_timestamp(),
        names: names.to_vec(),
        placeholder: true,
    })
}

/// Unix seconds as RFC 3339, for log lines.
pub(crate) fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
