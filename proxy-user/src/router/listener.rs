//! The accept loop of each listener under a connection limit: every connection gets its
//! `tracing` span and one closing line (the audit line after a relay, a rate-limited
//! refusal otherwise), and shutdown drains live connections.
//!
//! Shape (mini-redis `server.rs`): `serve(listener, proxy, shutdown)`; a semaphore permit is
//! taken before each accept, so at `limits.max_connections` new clients wait in the kernel's
//! backlog; on shutdown the loop stops accepting and waits, up to `limits.drain_timeout`,
//! for every permit to come back. Out of file descriptors, new clients are refused at once
//! (`fdlimit`).

use super::conn::{self, ConnError};
use super::fdlimit::{self, Reserve};
use super::state::Proxy;
use super::state::Route;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{error, field, info, info_span, warn, Instrument};

/// What a listener does with its connections.
#[derive(Clone)]
pub(crate) enum Ingress {
    /// The single port: detect, route, relay.
    Multiplex,
    /// A legacy per-protocol listener: relay everything to one upstream (shared: each
    /// connection's task holds a pointer, not a copy).
    Fixed(Arc<Route>),
}

/// Accepts connections until `shutdown` turns true. Each connection uses the [`Proxy`]
/// current when it was accepted (SIGHUP swaps it), and holds one of the process-wide
/// `permits` (`limits.max_connections`) while it lives.
pub(crate) async fn serve(
    listener: TcpListener,
    ingress: Ingress,
    proxies: watch::Receiver<Arc<Proxy>>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reserve = Reserve::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if fdlimit::out_of_fds(&e) => {
                    let proxy = proxies.borrow().clone();
                    refuse_at_limit(&listener, &mut reserve, &proxy, &e).await;
                    continue;
                }
                Err(e) => {
                    // Other accept errors: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let proxy = proxies.borrow().clone();
        tokio::spawn(connection(proxy, ingress.clone(), stream, peer, permit));
    }
}

/// Out of descriptors: refuses the waiting client with the spare descriptor (closed at
/// once, counted, logged rate-limited), or, with no spare, waits a moment for one to free.
async fn refuse_at_limit(
    listener: &TcpListener,
    reserve: &mut Reserve,
    proxy: &Proxy,
    error: &std::io::Error,
) {
    let refused = reserve.release() && matches!(listener.accept().await, Ok((_closed, _)));
    reserve.restore();
    proxy.metrics.refused("fd_limit");
    if let Some(suppressed) = proxy.noise.allow() {
        warn!(
            suppressed,
            refused,
            "out of file descriptors ({error}): new connections are refused until some close; raise LimitNOFILE / ulimit -n"
        );
    }
    if !refused {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits, up to `deadline`, until every connection permit has come back.
pub(crate) async fn drain(permits: &Semaphore, max: usize, deadline: Duration) {
    let live = max - permits.available_permits();
    if live > 0 {
        info!(live, "draining: waiting for live connections to finish");
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(deadline, permits.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            live = max - permits.available_permits(),
            "drain deadline reached; closing remaining connections"
        );
    }
}

/// One connection's task: runs it inside its span, logs how it ended, then gives its
/// `permit` back. Not an `async fn`: an idle relayed connection's memory is this task, and
/// each async layer would store the arguments again; the stages are boxed for the same
/// reason, so the task holds the one it is in rather than room for the largest.
fn connection(
    proxy: Arc<Proxy>,
    ingress: Ingress,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> {
    let span = info_span!(
        "conn",
        peer = %peer,
        client = field::Empty,
        client_from = field::Empty,
        claimed_client = field::Empty,
        sni = field::Empty,
        alpn = field::Empty,
        negotiated = field::Empty,
        route = field::Empty,
        service = field::Empty,
        identity = field::Empty,
        resumed = field::Empty,
        ktls = field::Empty,
        records = field::Empty,
        upgrade = field::Empty,
    );
    async move {
        let _ = stream.set_nodelay(true);
        let started = Instant::now();
        let result = match &ingress {
            Ingress::Multiplex => Box::pin(conn::handle(&proxy, stream, peer)).await,
            Ingress::Fixed(route) => Box::pin(conn::fixed(&proxy, stream, peer, route)).await,
        };
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(done) => {
                let s = &done.stats;
                proxy.metrics.relayed(s);
                // An upgraded connection's line also carries the inner connection's span.
                let _inner = done.inner.as_ref().map(|span| span.enter());
                info!(
                    target: "switchyard::audit",
                    route = %done.route,
                    bytes_to_upstream = s.client_to_upstream,
                    bytes_to_client = s.upstream_to_client,
                    relay = s.mode,
                    kernel_to_upstream = s.kernel_to_upstream,
                    kernel_to_client = s.kernel_to_client,
                    duration_ms = ms,
                    error = s.error.as_ref().map(field::display),
                    "connection closed"
                );
            }
            Err(e) => log_failure(&proxy, &e, ms),
        }
        drop(permit);
    }
    .instrument(span)
}

/// Counts and logs a failed connection. Refusals are rate-limited (a flood of bad
/// clients must not become a flood of log lines); the count of suppressed lines is
/// reported with the next line that passes.
fn log_failure(proxy: &Proxy, e: &ConnError, duration_ms: u64) {
    if let ConnError::Inner { span, error } = e {
        // In the inner connection's span: its client, SNI and route are on the line.
        let _inner = span.enter();
        return log_failure(proxy, error, duration_ms);
    }
    let outcome = e.detect_outcome();
    if let Some(outcome) = outcome {
        proxy.metrics.detect(outcome);
    }
    let quiet = matches!(e, ConnError::Io(_));
    if quiet {
        info!(duration_ms, "connection ended: {e}");
        return;
    }
    let Some(suppressed) = proxy.noise.allow() else {
        return;
    };
    if suppressed > 0 {
        warn!(suppressed, "similar messages were suppressed");
    }
    match e {
        ConnError::Handshake { reason, .. } => {
            warn!(reason, duration_ms, "connection refused: {e}")
        }
        ConnError::Upstream { .. } => error!(duration_ms, "{e}"),
        ConnError::SourceRefused { .. } => warn!(
            outcome = "source_refused",
            duration_ms, "connection refused: {e}"
        ),
        ConnError::Upgrade(r) => warn!(
            outcome = "upgrade_refused",
            status = r.status,
            duration_ms,
            "connection refused: {e}"
        ),
        _ => warn!(
            outcome = outcome.unwrap_or("no_route"),
            duration_ms, "connection refused: {e}"
        ),
    }
}
