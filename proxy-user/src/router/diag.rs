//! The diagnostics HTTP server on `diag_addr`: `/metrics` (Prometheus text), `/healthz`
//! (the process answers), `/readyz` (accepting connections; 503 while draining) and
//! `/agents` (the connected agents, their services and tunnels, as JSON). After a binary
//! upgrade hands the port to a successor, this process stops accepting on it, so every
//! answer there is the successor's.

use super::state::Proxy;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

/// Serves diagnostics until the process exits or `released` turns true. `draining`
/// turns `/readyz` to 503.
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: watch::Receiver<Arc<Proxy>>,
    draining: watch::Receiver<bool>,
    mut released: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = released.wait_for(|r| *r) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors (or another accept error): wait instead of spinning.
            Err(e) => {
                debug!(error = %e, "diag accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let current = proxy.borrow().clone();
                let response = answer(&req, &current, *draining.borrow());
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "diag connection error");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, proxy: &Proxy, draining: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.metrics.encode(),
        ),
        "/agents" => match &proxy.config.tunnel {
            Some(t) => (
                StatusCode::OK,
                "application/json",
                proxy.tunnels.snapshot(&t.id(), &t.peer_set()).to_string() + "\n",
            ),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "no tunnel service: the configuration has no `tunnel:` section\n".to_owned(),
            ),
        },
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        "/readyz" => (
            StatusCode::OK,
            "text/plain",
            format!("ready pid={}\n", std::process::id()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /agents\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
