//! [`TestPki`]: certificates for tests, built on rcgen and written as PEM files.
//!
//! One cluster CA issues the proxy's server certificate (DNS + IP SANs) and a client
//! certificate (CN + O); an unrelated "wrong" CA issues a client certificate the proxy
//! must refuse. More leaves can be issued with [`TestPki::issue_server`],
//! [`TestPki::issue_client`] and, long expired, [`TestPki::issue_expired_client`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TempDir;

/// DNS names on the default server certificate.
pub const SERVER_DNS: &[&str] = &[
    "proxy.example.test",
    "*.example.test",
    "*.apps.example.test",
    "localhost",
];

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
}

/// One signing authority: its files and what it needs to issue more.
struct Authority {
    files: CertFiles,
    issuer: Issuer<'static, KeyPair>,
}

/// The test PKI. Files live in [`TestPki::dir`] until the value is dropped.
pub struct TestPki {
    dir: TempDir,
    ca: Authority,
    wrong_ca: Authority,
    /// The proxy's server certificate: CN `proxy.example.test`, SANs [`SERVER_DNS`] + 127.0.0.1.
    pub server: CertFiles,
    /// A client certificate from the cluster CA: CN `alice`, O `admins`.
    pub client: CertFiles,
    /// A client certificate from the unrelated CA: CN `alice`, O `admins`.
    pub wrong_client: CertFiles,
}

impl TestPki {
    /// Generates both CAs and the default leaves.
    pub fn new() -> Result<TestPki> {
        let dir = TempDir::new("pki")?;
        let ca = new_ca(&dir, "ca", "Switchyard Test CA")?;
        let wrong_ca = new_ca(&dir, "wrong-ca", "Unrelated Test CA")?;
        let mut sans: Vec<&str> = SERVER_DNS.to_vec();
        sans.push("127.0.0.1");
        let server_params = server_params("proxy.example.test", &sans)?;
        let server = issue(&dir, "server", server_params, &ca.issuer)?;
        let client = issue(
            &dir,
            "client",
            client_params("alice", Some("admins")),
            &ca.issuer,
        )?;
        let wrong_params = client_params("alice", Some("admins"));
        let wrong_client = issue(&dir, "wrong-client", wrong_params, &wrong_ca.issuer)?;
        Ok(TestPki {
            dir,
            ca,
            wrong_ca,
            server,
            client,
            wrong_client,
        })
    }

    /// The directory holding every PEM file.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.ca.files.cert.clone()
    }

    /// The unrelated CA certificate (PEM).
    pub fn wrong_ca_cert(&self) -> PathBuf {
        self.wrong_ca.files.cert.clone()
    }

    /// Issues a server certificate from the cluster CA with subject CN `cn`; each SAN
    /// that parses as an IP address becomes an IP SAN, the rest DNS SANs.
    pub fn issue_server(&self, file_stem: &str, cn: &str, sans: &[&str]) -> Result<CertFiles> {
        issue(
            &self.dir,
            file_stem,
            server_params(cn, sans)?,
            &self.ca.issuer,
        )
    }

    /// Issues a client certificate from the cluster CA: CN `cn`, O `org` when given.
    pub fn issue_client(&self, file_stem: &str, cn: &str, org: Option<&str>) -> Result<CertFiles> {
        issue(
            &self.dir,
            file_stem,
            client_params(cn, org),
            &self.ca.issuer,
        )
    }

    /// Issues a client certificate from the cluster CA, CN `cn`, that expired long ago:
    /// valid from 1 to 2 January 2020.
    pub fn issue_expired_client(&self, file_stem: &str, cn: &str) -> Result<CertFiles> {
        let mut params = client_params(cn, None);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        issue(&self.dir, file_stem, params, &self.ca.issuer)
    }
}

fn server_params(cn: &str, sans: &[&str]) -> Result<CertificateParams> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).context("server SANs")?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn client_params(cn: &str, org: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn new_ca(dir: &TempDir, file_stem: &str, cn: &str) -> Result<Authority> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let files = write_pair(dir, file_stem, &cert.pem(), &key.serialize_pem())?;
    Ok(Authority {
        files,
        issuer: Issuer::new(params, key),
    })
}

fn issue(
    dir: &TempDir,
    file_stem: &str,
    params: CertificateParams,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<CertFiles> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_pair(dir, file_stem, &cert.pem(), &key.serialize_pem())
}

fn write_pair(dir: &TempDir, file_stem: &str, cert: &str, key: &str) -> Result<CertFiles> {
    let files = CertFiles {
        cert: dir.join(&format!("{file_stem}.crt")),
        key: dir.join(&format!("{file_stem}.key")),
    };
    std::fs::write(&files.cert, cert)?;
    std::fs::write(&files.key, key)?;
    crate::set_mode(&files.key, 0o600)?;
    Ok(files)
}
