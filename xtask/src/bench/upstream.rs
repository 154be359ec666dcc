//! The TLS echo upstreams, served in the bench process on their own two-worker runtime (like
//! a `demo-upstream` process): they greet like `demo-upstream --name NAME`, then echo.
//!
//! Why not `demo-upstream --tls-cert`: it leaves Nagle on, and after a TLS 1.3 handshake its
//! greeting follows the session tickets, so it waits for the client's delayed ACK — a 40 ms
//! stall on every connection that would drown the proxy's cost. And it asks for no client
//! certificate, so as the DIRECT baseline of the terminated scenario it would do less TLS
//! work than the proxy. These set TCP_NODELAY like the proxy does.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use rustls::{server::WebPkiClientVerifier, ServerConfig};
use tokio::{io::AsyncWriteExt as _, net::TcpListener, runtime::Runtime};
use tokio_rustls::TlsAcceptor;

use super::{load, quiet};

/// The upstream runtime's threads: their CPU is the direct rows' server end.
const THREAD: &str = "bench-upstream";

pub struct TlsEchoes {
    /// `upstream=kube`, the kube certificate, no client certificate: the passthrough upstream.
    pub kube: SocketAddr,
    /// `upstream=ssh`, the proxy's certificate, client certificate required against the
    /// same CA, the terminated route's ALPN: the DIRECT baseline of the terminated scenario.
    pub ssh: SocketAddr,
    runtime: Option<Runtime>,
}

impl TlsEchoes {
    pub fn start(pki: &Path, ssh_alpn: &str) -> Result<TlsEchoes> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(THREAD)
            .enable_all()
            .build()
            .context("starting the upstream runtime")?;
        let provider = load::provider();
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
        };

        let (certs, key) = load::cert_and_key(pki, "kube")?;
        let kube = builder()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;

        let roots = Arc::new(load::roots(&pki.join("ca.crt"))?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .context("client certificate verifier")?;
        let (certs, key) = load::cert_and_key(pki, "proxy")?;
        let mut ssh = builder()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        ssh.alpn_protocols = vec![ssh_alpn.as_bytes().to_vec()];

        Ok(TlsEchoes {
            kube: serve(&runtime, kube, "kube")?,
            ssh: serve(&runtime, ssh, "ssh")?,
            runtime: Some(runtime),
        })
    }
}

impl TlsEchoes {
    /// CPU seconds the upstreams' threads have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        quiet::threads_cpu_seconds(THREAD)
    }
}

impl Drop for TlsEchoes {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Listens on 127.0.0.1:0 and serves the echo there until the runtime stops.
fn serve(runtime: &Runtime, config: ServerConfig, name: &'static str) -> Result<SocketAddr> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let greeting = format!("upstream={name}\n");
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, greeting) = (acceptor.clone(), greeting.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                if w.write_all(greeting.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}
