//! The user's identity for client commands: certificate, key and cluster CA read from files
//! (`--identity DIR` as `switchyard ca issue` writes it, or `--cert/--key/--ca`), checked
//! before any network traffic so that an expired, unreadable or mismatched certificate
//! fails with one clear line.

use super::ClientError;
use crate::io::tls::provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the identity files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

impl IdentityFiles {
    /// `--identity PATH`: `DIR/NAME` names `DIR/NAME.crt`, `DIR/NAME.key` and `DIR/ca.crt`;
    /// a plain `DIR` must hold exactly one `NAME.crt` with its `NAME.key` besides `ca.crt`.
    pub(crate) fn from_identity(path: &Path) -> Result<IdentityFiles, ClientError> {
        if !path.is_dir() {
            let dir = path.parent().unwrap_or(Path::new("."));
            return Ok(IdentityFiles {
                cert: path.with_extension("crt"),
                key: path.with_extension("key"),
                ca: dir.join("ca.crt"),
            });
        }
        let entries = std::fs::read_dir(path).map_err(|e| ClientError::identity(path, e))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".crt").map(str::to_owned))
            .filter(|n| n != "ca" && path.join(format!("{n}.key")).is_file())
            .collect();
        names.sort();
        match names.as_slice() {
            [name] => Ok(IdentityFiles {
                cert: path.join(format!("{name}.crt")),
                key: path.join(format!("{name}.key")),
                ca: path.join("ca.crt"),
            }),
            [] => Err(ClientError::identity(
                path,
                "no NAME.crt with NAME.key besides ca.crt",
            )),
            many => Err(ClientError::identity(
                path,
                format!(
                    "holds several identities ({}); name one: --identity {}/NAME",
                    many.join(", "),
                    path.display()
                ),
            )),
        }
    }
}

/// A loaded, checked identity.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The certificate chain and signing key presented to the proxy.
    pub(crate) key: Arc<CertifiedKey>,
    /// The cluster CA, trusted for the proxy's (and passthrough upstreams') certificates.
    pub(crate) roots: Arc<RootCertStore>,
    /// PEM text of the files, for kubeconfigs.
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) ca_pem: String,
    /// Subject of the certificate, for messages (`CN=alice,O=devs`).
    pub(crate) subject: String,
}

impl Identity {
    /// Reads and checks the files: readable, PEM, key matches certificate, valid now, CA usable.
    pub(crate) fn load(files: &IdentityFiles) -> Result<Identity, ClientError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| ClientError::identity(p, e));
        let (cert_pem, key_pem, ca_pem) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
        let certs = pem_certs(&files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ClientError::identity(&files.key, e))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| ClientError::identity(&files.key, e))?;
        check_validity(&files.cert, &certs[0])?;
        let subject = crate::io::tls::CertIdentity::from_der(&certs[0])
            .map(|i| i.to_string())
            .unwrap_or_default();
        let key = CertifiedKey::new(certs, signing);
        key.keys_match().map_err(|e| {
            ClientError::identity(
                &files.key,
                format!("does not match {}: {e}", files.cert.display()),
            )
        })?;
        let roots = roots_from_pem(&files.ca, &ca_pem)?;
        Ok(Identity {
            key: Arc::new(key),
            roots: Arc::new(roots),
            cert_pem,
            key_pem,
            ca_pem,
            subject,
        })
    }
}

/// Reads a CA file (PEM, one or more certificates) into a root store.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let pem = std::fs::read_to_string(path).map_err(|e| ClientError::identity(path, e))?;
    roots_from_pem(path, &pem)
}

fn roots_from_pem(path: &Path, pem: &str) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(path, pem)? {
        roots.add(c).map_err(|e| ClientError::identity(path, e))?;
    }
    Ok(roots)
}

fn pem_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::identity(path, e))?;
    if certs.is_empty() {
        return Err(ClientError::identity(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Refuses a certificate that is not yet or no longer valid, naming the time.
fn check_validity(path: &Path, der: &[u8]) -> Result<(), ClientError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| ClientError::identity(path, e))?;
    let v = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > v.not_after {
        return Err(ClientError::identity(
            path,
            format!("certificate expired at {} (issue a new one)", v.not_after),
        ));
    }
    if now < v.not_before {
        return Err(ClientError::identity(
            path,
            format!("certificate not valid before {}", v.not_before),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ca;
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    use std::time::Duration;
    use tempfile::TempDir;

    /// A fresh CA in a temporary directory (removed on drop).
    fn pki() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        ca::init(dir.path(), "test").unwrap();
        dir
    }

    fn issue(dir: &Path, name: &str, ttl: Duration) {
        let req = ca::IssueRequest {
            name: name.into(),
            ttl,
            ..Default::default()
        };
        ca::issue(dir, &req).unwrap();
    }

    /// `dir/NAME.crt` and `.key`: a client certificate from `dir`'s CA that was valid for
    /// one day in 2020.
    fn issue_expired(dir: &Path, name: &str) {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let ca_key = KeyPair::from_pem(&read("ca.key")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&read("ca.crt"), ca_key).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    #[test]
    fn directory_with_one_identity_loads() {
        let tmp = pki();
        let dir = tmp.path();
        issue(dir, "alice", Duration::from_secs(3600));
        let files = IdentityFiles::from_identity(dir).unwrap();
        assert_eq!(files.cert, dir.join("alice.crt"));
        let id = Identity::load(&files).unwrap();
        assert_eq!(id.subject, "CN=alice");
        issue(dir, "bob", Duration::from_secs(3600));
        let e = IdentityFiles::from_identity(dir).unwrap_err().to_string();
        assert!(e.contains("several identities (alice, bob)"), "{e}");
        let bob = IdentityFiles::from_identity(&dir.join("bob")).unwrap();
        assert_eq!(Identity::load(&bob).unwrap().subject, "CN=bob");
    }

    #[test]
    fn mismatched_expired_and_missing_files_are_refused() {
        let tmp = pki();
        let dir = tmp.path();
        issue(dir, "alice", Duration::from_secs(3600));
        issue(dir, "bob", Duration::from_secs(3600));
        let mixed = IdentityFiles {
            cert: dir.join("alice.crt"),
            key: dir.join("bob.key"),
            ca: dir.join("ca.crt"),
        };
        let e = Identity::load(&mixed).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        issue_expired(dir, "old");
        let old = IdentityFiles::from_identity(&dir.join("old")).unwrap();
        let e = Identity::load(&old).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let none = IdentityFiles::from_identity(&dir.join("nobody")).unwrap();
        let e = Identity::load(&none).unwrap_err().to_string();
        assert!(
            e.contains("nobody.crt") && e.contains("No such file"),
            "{e}"
        );
    }
}
