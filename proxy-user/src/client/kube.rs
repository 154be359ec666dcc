//! Kubernetes: `proxy kube` terminates kubectl's TLS locally with freshly generated
//! certificates (a local CA in an ephemeral kubeconfig, which also holds the client
//! certificate kubectl must present) and dials the proxy
//! with SNI `kube-teleport-proxy-alpn.<proxy host>`, which the proxy passes through to the
//! Kubernetes upstream; `kube config` writes a kubeconfig that reaches the proxy directly
//! with `tls-server-name` set to that SNI.

use super::dial::{Dialer, Verify};
use super::local::{self, Local};
use super::ClientError;
use crate::io::tls::provider;
use crate::protocol::{HTTP1_ALPN as HTTP1, KUBE_SNI_PREFIX};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The SNI that selects the Kubernetes upstream, or cluster `name` that an agent serves.
pub(crate) fn kube_sni(dialer: &Dialer, name: Option<&str>) -> Result<String, ClientError> {
    match name {
        None => Ok(format!("{KUBE_SNI_PREFIX}{}", dialer.host)),
        Some(n) if crate::config::dns_label(n) => Ok(format!(
            "{KUBE_SNI_PREFIX}{}.{}",
            n.to_ascii_lowercase(),
            dialer.host
        )),
        Some(n) => Err(ClientError::Usage(format!(
            "--kube {n}: a cluster name is one DNS label (letters, digits, '-')"
        ))),
    }
}

/// `switchyard proxy kube`: serves until SIGINT/SIGTERM, then removes its kubeconfig.
pub(crate) async fn proxy_kube(
    dialer: &Dialer,
    sni: &str,
    port: u16,
    verbose: bool,
) -> Result<(), ClientError> {
    let connector = dialer.connector(Some(sni), &[HTTP1], Verify::Sni)?;
    let local_pki = LocalPki::generate()
        .map_err(|e| ClientError::Protocol(format!("generating local certificates: {e}")))?;
    let config = local_pki.server_config()?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = local::bind(port).await?;
    let path = std::env::temp_dir().join(format!(
        "switchyard-kube-{}-{}.yaml",
        std::process::id(),
        addr.port()
    ));
    let text = kubeconfig(
        &format!("https://{addr}"),
        None,
        &local_pki.ca_pem,
        Some((&local_pki.client_pem, &local_pki.client_key_pem)),
    );
    write_private(&path, &text)?;
    let _remove = RemoveOnDrop(path.clone());
    println!("switchyard ready addr={addr}");
    println!("kubeconfig={}", path.display());
    println!(
        "local proxy for Kubernetes via {} (SNI {sni}); use:\n  kubectl --kubeconfig {} get --raw /version",
        dialer.proxy,
        path.display()
    );
    local::serve(
        listener,
        connector,
        Local::Tls(acceptor),
        verbose,
        local::interrupted(),
    )
    .await
}

/// A kubeconfig that talks to the proxy itself, with the user's certificate.
pub(crate) fn direct_kubeconfig(dialer: &Dialer, sni: &str) -> String {
    let id = &dialer.identity;
    kubeconfig(
        &format!("https://{}", dialer.proxy),
        Some(sni),
        &id.ca_pem,
        Some((&id.cert_pem, &id.key_pem)),
    )
}

/// Certificates made at each start of `proxy kube`: a local CA, the listener's certificate
/// and the one kubectl must present, so only holders of the kubeconfig use the listener.
struct LocalPki {
    ca_pem: String,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    ca_der: CertificateDer<'static>,
    client_pem: String,
    client_key_pem: String,
}

impl LocalPki {
    fn generate() -> Result<LocalPki, rcgen::Error> {
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "switchyard proxy kube (local)");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate()?;
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
            .signed_by(&server_key, &issuer)?;
        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::CommonName, "kubectl");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &issuer)?;
        Ok(LocalPki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server: (
                server.der().clone(),
                PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            ),
            client_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// The listener's TLS: its certificate, kubectl's certificate required, HTTP/1.1.
    fn server_config(&self) -> Result<ServerConfig, ClientError> {
        let err = |e: String| ClientError::Protocol(format!("local TLS: {e}"));
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| err(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let (cert, key) = (self.server.0.clone(), self.server.1.clone_key());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_client_cert_verifier(verifier)
                    .with_single_cert(vec![cert], key)
            })
            .map_err(|e| err(e.to_string()))?;
        config.alpn_protocols = vec![HTTP1.as_bytes().to_vec()];
        Ok(config)
    }
}

fn kubeconfig(
    server: &str,
    tls_server_name: Option<&str>,
    ca_pem: &str,
    user: Option<(&str, &str)>,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut out = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n",
        b64(ca_pem)
    );
    if let Some(name) = tls_server_name {
        out += &format!("    tls-server-name: {name}\n");
    }
    out += "users:\n- name: switchyard\n  user:";
    match user {
        Some((cert, key)) => {
            out += &format!(
                "\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(cert),
                b64(key)
            )
        }
        None => out += " {}\n",
    }
    out += "contexts:\n- name: switchyard\n  context:\n    cluster: switchyard\n    user: switchyard\ncurrent-context: switchyard\n";
    out
}

/// Writes `text` to `path`, readable by the owner only (it may hold a private key).
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(ClientError::io(format!("writing {}", path.display())))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
