//! One client connection through a tunnel: pick the agent's least busy tunnel, check the
//! client's identity against the agent's `allow`, open a stream, send the
//! [`StreamHeader`], and wait for the agent's [`StreamReply`] (the agent answers once it
//! has dialed its service, so a refused or unreachable service is a clear error here, not
//! an empty stream). The returned [`AgentStream`] counts itself in the tunnel's streams
//! and in `/metrics` until dropped.

use crate::io::tls::CertIdentity;
use crate::io::tunnel::frame::{self, FrameError};
use crate::io::tunnel::mux::{MuxStream, OVER_LIMIT};
use crate::io::tunnel::{Service, StreamHeader, StreamReply, MAX_HEADER_BYTES};
use crate::router::conn::ConnError;
use crate::router::state::Proxy;
use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::timeout;

/// Opens a stream to `service` for `client` (its address as believed) with `identity`.
pub(crate) async fn open(
    proxy: &Proxy,
    service: &Service,
    client: String,
    identity: Option<&CertIdentity>,
) -> Result<AgentStream, ConnError> {
    let metrics = &proxy.metrics.tunnel;
    let kind = service.kind.as_str();
    let (tunnel, allow) = proxy
        .tunnels
        .pick(service)
        .ok_or_else(|| ConnError::NoRoute(format!("no agent serves {service} now")))?;
    let allowed = match identity {
        Some(id) => id.allowed(&allow),
        None => allow.is_empty(),
    };
    if !allowed {
        metrics.stream(kind, "not_allowed");
        let who = identity.map_or("a client without a certificate".to_owned(), |i| {
            i.to_string()
        });
        return Err(ConnError::AgentDenied {
            service: service.to_string(),
            reason: format!("{who} is not allowed (tunnel.agents allow: {allow:?})"),
        });
    }
    let failed = |reason: String| {
        metrics.stream(kind, "tunnel_error");
        ConnError::Agent {
            service: service.to_string(),
            reason,
        }
    };
    // The agent dials its service before it answers: allow for its connect deadline too.
    let deadline = proxy.config.limits.connect_timeout * 2;
    let header = StreamHeader {
        service: service.clone(),
        client,
        identity: identity.map(|i| i.to_string()),
    };
    let attempt = async {
        let mut stream = tunnel.opener.open().await.map_err(FrameError::Io)?;
        frame::write(&mut stream, &header).await?;
        let reply: StreamReply = frame::read(&mut stream, MAX_HEADER_BYTES).await?;
        Ok::<_, FrameError>((stream, reply))
    };
    let (stream, reply) = match timeout(deadline, attempt).await {
        Ok(Err(FrameError::Io(e))) if e.kind() == OVER_LIMIT => {
            metrics.stream(kind, "over_limit");
            return Err(ConnError::Agent {
                service: service.to_string(),
                reason: format!("{e} (tunnel.max_streams_per_tunnel)"),
            });
        }
        Err(_) => {
            return Err(failed(format!(
                "no answer from the agent within {deadline:?}"
            )))
        }
        Ok(Err(e)) => {
            return Err(failed(format!(
                "tunnel {} to {}: {e}",
                tunnel.id, tunnel.peer
            )))
        }
        Ok(Ok(r)) => r,
    };
    if let Some(reason) = reply.error {
        metrics.stream(kind, "refused_by_agent");
        return Err(ConnError::Agent {
            service: service.to_string(),
            reason: format!("the agent refused: {reason}"),
        });
    }
    metrics.stream(kind, "opened");
    metrics.streams.inc();
    tunnel.streams.fetch_add(1, Ordering::Relaxed);
    let (to_agent, from_agent) = metrics.byte_counters();
    Ok(AgentStream {
        stream,
        count: tunnel.streams.clone(),
        metrics: proxy.metrics.clone(),
        to_agent,
        from_agent,
        tunnel_bytes: tunnel.bytes.clone(),
    })
}

/// A client stream through a tunnel, counted while it lives.
pub(crate) struct AgentStream {
    stream: MuxStream,
    count: Arc<AtomicUsize>,
    metrics: Arc<crate::router::metrics::Metrics>,
    to_agent: Counter,
    from_agent: Counter,
    /// The tunnel's own count, for its closing line.
    tunnel_bytes: Arc<[AtomicU64; 2]>,
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.metrics.tunnel.streams.dec();
    }
}

impl AsyncRead for AgentStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.from_agent.inc_by(n);
            self.tunnel_bytes[1].fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.to_agent.inc_by(n as u64);
            self.tunnel_bytes[0].fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
