//! One TLS connection to the proxy: TCP connect within a deadline, then a rustls client
//! handshake with the user's certificate, an SNI and an ALPN list. Failures are named —
//! proxy unreachable, client certificate refused, proxy certificate not trusted, no route —
//! so a local proxy can report each connection in one line.
//!
//! SNI and the name the proxy's certificate is checked against may differ: SSH node and
//! app names travel as SNI labels under the proxy's name, while the certificate is the
//! proxy's own ([`Verify::Proxy`]). Passthrough routes (Kubernetes) check the upstream's
//! certificate against the SNI itself ([`Verify::Sni`]).
//!
//! Under that TLS connection is a [`Transport`]: TCP to the proxy (through `HTTPS_PROXY`
//! when set), or, when the proxy is behind a layer-7 load balancer ([`super::balancer`]),
//! the tunnel of a connection upgrade ([`super::upgrade`]). The TLS handshake inside is
//! the same either way. Only the plain ALPNs are offered (never the `-ping` variants):
//! keep-alive through a balancer comes from the upgrade's own pings.

use super::identity::Identity;
use super::transport::Transport;
use super::upgrade::{Endpoint, Override, UpgradeMode};
use super::{balancer, ClientError};
use crate::io::tls::provider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::SingleCertAndKey;
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Deadline for TCP connect plus TLS handshake.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which name the server certificate must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// The proxy's host name (or IP) from `--proxy`.
    Proxy,
    /// The SNI sent (passthrough routes, whose upstream terminates TLS).
    Sni,
}

/// The user's identity and the proxy's address: makes [`Connector`]s.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    /// `host:port` from `--proxy` / `SWITCHYARD_PROXY`.
    pub(crate) proxy: String,
    /// The host part, the proxy's public name.
    pub(crate) host: String,
    pub(crate) identity: Identity,
    /// The proxy address with the cluster CA: detection and the upgrade's outer TLS.
    pub(crate) endpoint: Endpoint,
    /// `--upgrade-mode`.
    pub(crate) upgrade_mode: UpgradeMode,
    /// `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE`.
    pub(crate) upgrade_override: Arc<Override>,
    /// `-v`: the detection's outcome is logged at info.
    pub(crate) verbose: bool,
}

impl Dialer {
    /// Checks `proxy` is `host:port`.
    pub(crate) fn new(proxy: &str, identity: Identity) -> Result<Dialer, ClientError> {
        crate::config::host_port("--proxy", proxy)
            .map_err(|e| ClientError::Usage(format!("{e} (set --proxy or SWITCHYARD_PROXY)")))?;
        let (host, _) = proxy.rsplit_once(':').expect("checked host:port");
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let webpki =
            WebPkiServerVerifier::builder_with_provider(identity.roots.clone(), provider())
                .build()
                .map_err(|e| ClientError::Usage(format!("cluster CA unusable: {e}")))?;
        let endpoint = Endpoint::new(proxy, &host, webpki)?;
        Ok(Dialer {
            proxy: proxy.to_owned(),
            host,
            identity,
            endpoint,
            upgrade_mode: UpgradeMode::default(),
            upgrade_override: Arc::new(Override::default()),
            verbose: false,
        })
    }

    /// Sets how the proxy is reached behind a layer-7 load balancer.
    pub(crate) fn with_upgrade(
        mut self,
        mode: UpgradeMode,
        over: Override,
        verbose: bool,
    ) -> Dialer {
        self.upgrade_mode = mode;
        self.upgrade_override = Arc::new(over);
        self.verbose = verbose;
        self
    }

    /// A connector for one kind of connection: SNI (`None`: the proxy's name), ALPN list.
    pub(crate) fn connector(
        &self,
        sni: Option<&str>,
        alpn: &[&str],
        verify: Verify,
    ) -> Result<Connector, ClientError> {
        let sni = sni.unwrap_or(&self.host).to_owned();
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| ClientError::Usage(format!("`{sni}` is not a valid TLS server name")))?;
        let proxy_name = ServerName::try_from(self.host.clone())
            .map_err(|_| ClientError::Usage(format!("`{}` is not a host name or IP", self.host)))?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(self.identity.roots.clone(), provider())
                .build()
                .map_err(|e| ClientError::Usage(format!("cluster CA unusable: {e}")))?;
        let verifier = NamedVerifier {
            inner: webpki,
            name: (verify == Verify::Proxy).then_some(proxy_name),
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Usage(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.identity.key.clone())));
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Ok(Connector {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            proxy: self.proxy.clone(),
            sni,
            alpn: alpn.iter().map(|a| a.to_string()).collect(),
            subject: self.identity.subject.clone(),
            endpoint: self.endpoint.clone(),
            upgrade_mode: self.upgrade_mode,
            upgrade_override: self.upgrade_override.clone(),
            verbose: self.verbose,
        })
    }
}

/// Dials one kind of TLS connection to the proxy, as often as needed.
#[derive(Clone)]
pub(crate) struct Connector {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    pub(crate) proxy: String,
    pub(crate) sni: String,
    pub(crate) alpn: Vec<String>,
    subject: String,
    endpoint: Endpoint,
    upgrade_mode: UpgradeMode,
    upgrade_override: Arc<Override>,
    verbose: bool,
}

impl Connector {
    /// Transport (TCP, or the upgrade's tunnel) and TLS handshake within [`DIAL_TIMEOUT`].
    pub(crate) async fn dial(&self) -> Result<TlsStream<Transport>, ClientError> {
        let unreachable = |error| ClientError::Unreachable {
            proxy: self.proxy.clone(),
            error,
        };
        let attempt = async {
            let transport = self.transport().await?;
            self.handshake(transport).await
        };
        tokio::time::timeout(DIAL_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS session within {DIAL_TIMEOUT:?}"),
                )))
            })
    }

    /// What the TLS connection runs over: the detection (cached per address) decides
    /// between TCP and the connection upgrade.
    pub(crate) async fn transport(&self) -> Result<Transport, ClientError> {
        let upgrade = balancer::upgrade_required(
            &self.endpoint,
            &self.upgrade_override,
            self.upgrade_mode,
            self.verbose,
        )
        .await?;
        if upgrade {
            Ok(self.endpoint.tunnel(self.upgrade_mode).await?.transport())
        } else {
            let tcp = self.endpoint.tcp().await;
            tcp.map(Transport::Tcp)
                .map_err(|error| ClientError::Unreachable {
                    proxy: self.proxy.clone(),
                    error,
                })
        }
    }

    /// The TLS handshake (SNI, ALPN, client certificate) over `transport`.
    pub(crate) async fn handshake(
        &self,
        transport: Transport,
    ) -> Result<TlsStream<Transport>, ClientError> {
        self.connector
            .connect(self.server_name.clone(), transport)
            .await
            .map_err(|e| self.classify_handshake(e))
    }

    /// A failure during the handshake: `access_denied` there is what the proxy answers a
    /// ClientHello from an address the route's `allow_from` does not hold (under TLS 1.3
    /// a refused certificate arrives later, on the first read: [`Connector::classify`]).
    fn classify_handshake(&self, error: io::Error) -> ClientError {
        let alert = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        match alert {
            Some(rustls::Error::AlertReceived(a @ AlertDescription::AccessDenied)) => {
                ClientError::Denied {
                    proxy: self.proxy.clone(),
                    sni: self.sni.clone(),
                    alpn: self.alpn.clone(),
                    subject: self.subject.clone(),
                    alert: format!("{a:?}"),
                }
            }
            _ => self.classify(error),
        }
    }

    /// Names a TLS-level failure: during the handshake, or (TLS 1.3 decides on the client
    /// certificate after the client's handshake is done) on the first read.
    pub(crate) fn classify(&self, error: io::Error) -> ClientError {
        let proxy = self.proxy.clone();
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(alert)) => match alert {
                AlertDescription::UnrecognisedName | AlertDescription::NoApplicationProtocol => {
                    ClientError::NoRoute {
                        proxy,
                        sni: self.sni.clone(),
                        alpn: self.alpn.clone(),
                        alert: format!("{alert:?}"),
                    }
                }
                AlertDescription::BadCertificate
                | AlertDescription::CertificateRequired
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                // A chain from another CA whose name matches the cluster CA's fails on the
                // signature: the proxy answers decrypt_error.
                | AlertDescription::DecryptError => ClientError::CertRefused {
                    proxy,
                    subject: self.subject.clone(),
                    alert: format!("{alert:?}"),
                },
                _ => ClientError::Tls { proxy, error },
            },
            Some(rustls::Error::InvalidCertificate(e)) => ClientError::ServerCert {
                proxy,
                name: format!("{:?}", self.server_name),
                error: format!("{e:?}"),
            },
            _ => ClientError::Tls { proxy, error },
        }
    }
}

/// Checks the server's chain against the cluster CA and `name` (or, without it, the SNI).
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
