//! The HTTPS client the ACME protocol runs over: hyper-util's pooled client with
//! hyper-rustls on the proxy's crypto provider, trusting `proxy_service.acme.ca_file` (a
//! private CA) or else the system's roots. Transport failures come back as
//! [`Unreachable`] and a directory URL that does not answer success as [`NotADirectory`],
//! so the life cycle can tell "the CA is down" and "this is not the CA" from what the CA
//! said.

use crate::config::ConfigError;
use crate::io::tls::provider;
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// How long one request to the CA may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The CA could not be reached: connection refused, DNS, TLS, or no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unreachable(String);

/// The directory URL answered, but not with success (a wrong path, a web page).
#[derive(Debug, thiserror::Error)]
#[error("GET {uri} answered {status}")]
pub(crate) struct NotADirectory {
    uri: String,
    status: http::StatusCode,
}

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// The client handed to `instant-acme`, knowing the directory's URL.
#[derive(Clone)]
pub(crate) struct AcmeHttp {
    inner: Inner,
    directory: String,
}

impl AcmeHttp {
    /// A client for the directory at `directory`, trusting the PEM bundle at `ca_file`, or
    /// the system's roots without one.
    pub(crate) fn new(directory: &str, ca_file: Option<&Path>) -> Result<AcmeHttp, ConfigError> {
        let key = "proxy_service.acme.ca_file";
        let mut roots = RootCertStore::empty();
        let (added, source) = match ca_file {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect())
                    .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
                (
                    roots.add_parsable_certificates(certs).0,
                    path.display().to_string(),
                )
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let added = roots.add_parsable_certificates(found.certs).0;
                (added, "the system's CA certificates".to_owned())
            }
        };
        if added == 0 {
            return Err(ConfigError::invalid(
                key,
                format!("{source}: no CA certificate found to trust the ACME directory with"),
            ));
        }
        let tls = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid(key, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            inner: Client::builder(TokioExecutor::new()).build(https),
            directory: directory.to_owned(),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let uri = req.uri().clone();
        let directory = req.method() == http::Method::GET && uri == self.directory.as_str();
        let fut = self.inner.request(req);
        Box::pin(async move {
            let unreachable = |m: String| instant_acme::Error::Other(Box::new(Unreachable(m)));
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(rsp)) if directory && !rsp.status().is_success() => {
                    let status = rsp.status();
                    let uri = uri.to_string();
                    Err(instant_acme::Error::Other(Box::new(NotADirectory {
                        uri,
                        status,
                    })))
                }
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(unreachable(format!("{uri}: {}", error_chain(&e)))),
                Err(_) => Err(unreachable(format!(
                    "{uri}: no answer within {REQUEST_TIMEOUT:?}"
                ))),
            }
        })
    }
}

/// `e` and its sources, `: `-separated (hyper-util's own message is only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
