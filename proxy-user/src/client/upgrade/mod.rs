//! The connection upgrade through a layer-7 load balancer (docs/balancers.md, "Layer 7"):
//! TLS to the balancer with ALPN `http/1.1`, `GET /webapi/connectionupgrade`, `101
//! Switching Protocols`, and then a byte stream (WebSocket binary messages, or the legacy
//! ping framing) that carries the client's real TLS handshake with its SNI and ALPN.
//!
//! - `websocket` (default): `Upgrade: websocket`, `Sec-WebSocket-Protocol: alpn-ping, alpn`;
//!   the server picks `alpn-ping` and sends ping frames, which the pump answers.
//! - `legacy` (`--upgrade-mode legacy`, for balancers that pass only custom upgrades):
//!   `Upgrade: alpn-ping` plus `X-Teleport-Upgrade: alpn-ping`; `alpn-ping` is framed
//!   `u32 length || payload` (length 0 is a ping), `alpn` is raw.
//!
//! This file owns the [`Endpoint`] (the proxy's address and how its certificate is
//! checked, for every TLS connection made without the user's certificate) and opens a
//! [`Tunnel`] through it. [`request`] writes the request and checks the answer (pure),
//! [`tunnel`] runs one upgrade on an open stream, [`override_env`] reads
//! `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE`. The framings themselves are
//! [`crate::io::wire`]'s.

mod override_env;
mod request;
mod tunnel;

pub(crate) use override_env::{Override, OVERRIDE_ENV};
pub(crate) use request::UpgradeMode;
pub(crate) use tunnel::{upgrade, Tunnel};

use super::transport;
use super::ClientError;
use crate::io::tls::provider;
use crate::protocol::HTTP1_ALPN as HTTP1;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::fmt;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The proxy's (or its balancer's) address and how to check its certificate, for the
/// TLS connections that carry no user certificate: detection, the outer TLS of an
/// upgrade, `probe`.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `host:port`.
    pub(crate) addr: String,
    /// The host part: SNI of the outer TLS, and the name its certificate must carry.
    pub(crate) host: String,
    server_name: ServerName<'static>,
    verifier: Arc<dyn ServerCertVerifier>,
    /// The outer TLS of the upgrade (ALPN `http/1.1`), one configuration for the life of
    /// the endpoint so its sessions resume.
    outer: TlsConnector,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(
        addr: &str,
        host: &str,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Endpoint, ClientError> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::Usage(format!("`{host}` is not a host name or IP")))?;
        let outer = tls_connector(&verifier, &[HTTP1])?;
        Ok(Endpoint {
            addr: addr.to_owned(),
            host: host.to_owned(),
            server_name,
            verifier,
            outer,
        })
    }

    /// TCP to the address (through `HTTPS_PROXY` when set).
    pub(crate) async fn tcp(&self) -> io::Result<TcpStream> {
        transport::tcp_connect(&self.addr).await
    }

    /// A TLS client offering `alpn`, SNI the host, no client certificate.
    pub(crate) fn tls_connector(&self, alpn: &[&str]) -> Result<TlsConnector, ClientError> {
        tls_connector(&self.verifier, alpn)
    }

    /// TLS over `io` (TCP, or a tunnel) with `connector`.
    pub(crate) async fn tls<S>(&self, connector: &TlsConnector, io: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        connector.connect(self.server_name.clone(), io).await
    }

    /// TCP, TLS with ALPN `http/1.1`, and the upgrade: the tunnel's byte stream.
    pub(crate) async fn tunnel(&self, mode: UpgradeMode) -> Result<Tunnel, ClientError> {
        let unreachable = |error| ClientError::Unreachable {
            proxy: self.addr.clone(),
            error,
        };
        let failed = |error: String| ClientError::Upgrade {
            proxy: self.addr.clone(),
            mode,
            error,
        };
        let tcp = self.tcp().await.map_err(unreachable)?;
        let tls = self
            .tls(&self.outer, tcp)
            .await
            .map_err(|e| failed(format!("TLS with the load balancer: {}", tls_error(&e))))?;
        upgrade(tls, mode, &self.addr).await.map_err(|e| match mode {
            UpgradeMode::Websocket if e.starts_with("answered ") => failed(format!(
                "{e} (a balancer that passes only custom upgrades needs --upgrade-mode legacy; `switchyard probe` checks both)"
            )),
            _ => failed(e),
        })
    }
}

fn tls_connector(
    verifier: &Arc<dyn ServerCertVerifier>,
    alpn: &[&str],
) -> Result<TlsConnector, ClientError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Usage(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS error in plain words (rustls' own text when it is one).
pub(crate) fn tls_error(e: &io::Error) -> String {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("certificate not vouched for by the CA: {c:?}")
        }
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}
