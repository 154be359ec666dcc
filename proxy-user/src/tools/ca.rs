//! `switchyard ca`: a small certificate authority (rcgen) so a new user can try everything on
//! one machine — the cluster CA, the proxy's server certificate, user and agent client
//! certificates. Certificates made elsewhere (openssl, a corporate PKI) work just as well.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;

/// The organisation `ca issue --agent` adds: marks a certificate as an agent's, so
/// `tunnel.agents` can name all agents at once (`identity: switchyard-agent`).
pub(crate) const AGENT_ORG: &str = "switchyard-agent";

#[derive(Debug, Error)]
pub(crate) enum CaError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a CA (remove it first)")]
    Exists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name `{0}`: use letters, digits, '.', '-' and '_'")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |error| CaError::Io {
        path: path.to_owned(),
        error,
    }
}

/// What to issue.
#[derive(Debug, Clone, Default)]
pub(crate) struct IssueRequest {
    /// File stem, and the CN of the certificate.
    pub(crate) name: String,
    /// DNS names: makes a server certificate.
    pub(crate) dns: Vec<String>,
    /// IP addresses: makes a server certificate.
    pub(crate) ips: Vec<IpAddr>,
    /// Organisations (O) of the subject; route allow lists can name them.
    pub(crate) orgs: Vec<String>,
    /// Validity.
    pub(crate) ttl: Duration,
}

/// Creates `dir/ca.crt` and `dir/ca.key` (10 years). Refuses to overwrite an existing CA.
pub(crate) fn init(dir: &Path, cluster: &str) -> Result<(), CaError> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() || key.exists() {
        return Err(CaError::Exists(crt));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster} Switchyard CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, Duration::from_secs(10 * 365 * 86400));
    let key_pair = KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    write(&crt, &cert.pem(), 0o644)?;
    write(&key, &key_pair.serialize_pem(), 0o600)
}

/// Issues `dir/NAME.crt` and `dir/NAME.key` signed by `dir/ca.*`: a server certificate when
/// DNS names or IPs are given, else a client certificate with CN=NAME.
pub(crate) fn issue(dir: &Path, req: &IssueRequest) -> Result<(PathBuf, PathBuf), CaError> {
    if req.name.is_empty()
        || !req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(CaError::BadName(req.name.clone()));
    }
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let ca_pem = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;

    let server = !req.dns.is_empty() || !req.ips.is_empty();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, req.name.as_str());
    for o in &req.orgs {
        params
            .distinguished_name
            .push(DnType::OrganizationName, o.as_str());
    }
    for d in &req.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.as_str().try_into()?));
    }
    for ip in &req.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, req.ttl);
    let key_pair = KeyPair::generate()?;
    let cert = params.signed_by(&key_pair, &issuer)?;
    let crt = dir.join(format!("{}.crt", req.name));
    let key = dir.join(format!("{}.key", req.name));
    write(&crt, &cert.pem(), 0o644)?;
    write(&key, &key_pair.serialize_pem(), 0o600)?;
    Ok((crt, key))
}

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = OffsetDateTime::now_utc();
    // Backdate a little for clocks that disagree.
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + ttl;
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tls::CertIdentity as Identity;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn init_then_issue_server_and_client() {
        let dir = std::env::temp_dir().join(format!("switchyard-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir, "example").unwrap();
        assert!(matches!(init(&dir, "example"), Err(CaError::Exists(_))));
        let day = Duration::from_secs(86400);
        issue(
            &dir,
            &IssueRequest {
                name: "proxy".into(),
                dns: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                ttl: day,
                ..Default::default()
            },
        )
        .unwrap();
        let (crt, _) = issue(
            &dir,
            &IssueRequest {
                name: "alice".into(),
                orgs: vec!["devs".into()],
                ttl: day,
                ..Default::default()
            },
        )
        .unwrap();
        let der = CertificateDer::from_pem_file(&crt).unwrap();
        let id = Identity::from_der(&der).unwrap();
        assert_eq!(id.cn.as_deref(), Some("alice"));
        assert_eq!(id.orgs, ["devs"]);
        assert!(issue(
            &dir,
            &IssueRequest {
                name: "../evil".into(),
                ttl: day,
                ..Default::default()
            }
        )
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
