//! One tunnel on the proxy's side, from the completed TLS handshake to its end: the
//! agent opens the control stream and says Hello; the proxy checks the agent's identity
//! against `tunnel.agents`, lets the [`Registry`](super::Registry) decide what it may
//! serve, answers Welcome (or Full, or Refused), then exchanges heartbeats until the
//! tunnel ends. Three missed heartbeats close it. At SIGTERM the proxy sends the drain
//! notice and keeps the tunnel until the agent closes it (its streams in flight finish).
//! Streams the agent opens are refused: only the proxy opens client streams.

use super::registry::{Admit, Grant, Offer, Tunnel};
use super::static_services;
use crate::config::{service_name, ServePattern};
use crate::io::tls::CertIdentity;
use crate::io::tunnel::control::ControlChannel;
use crate::io::tunnel::frame::FrameError;
use crate::io::tunnel::mux::{self, Limits, Mode};
use crate::io::tunnel::{Control, Refusal, WIRE_VERSION};
use crate::router::conn::{ConnError, Finished};
use crate::router::state::Proxy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tracing::{info, warn};

/// How long an agent has to open the control stream and say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most services one Hello may offer.
const MAX_SERVICES: usize = 4096;
/// Heartbeats missed before the tunnel counts as offline.
const MISSES: u32 = 3;

static NEXT_TUNNEL: AtomicU64 = AtomicU64::new(1);

/// Serves one agent's tunnel over the terminated TLS `tls` from `peer`.
pub(crate) async fn serve<S>(
    proxy: &Proxy,
    tls: S,
    identity: CertIdentity,
    peer: String,
) -> Result<Finished, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let t = proxy
        .config
        .tunnel
        .as_ref()
        .ok_or_else(|| ConnError::NoRoute("the tunnel service is not configured".into()))?;
    let metrics = &proxy.metrics.tunnel;
    let limits = Limits {
        max_streams: t.max_streams_per_tunnel,
        window_bytes: t.window_bytes,
    };
    let mut session = mux::start(tls, Mode::Server, limits, 1);
    let control = match timeout(HELLO_TIMEOUT, session.inbound.recv()).await {
        Ok(Some(control)) => control,
        Err(_) => {
            metrics.event("refused");
            return Err(ConnError::Tunnel(format!(
                "agent {identity} opened no control stream within {HELLO_TIMEOUT:?}"
            )));
        }
        // The session ended first: say why (a broken frame, the connection gone).
        Ok(None) => {
            metrics.event("refused");
            let why = match (&mut session.done).await {
                Ok(Ok(())) => "the agent closed the session".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the session's task failed: {e}"),
            };
            return Err(ConnError::Tunnel(format!(
                "agent {identity} ended its tunnel before opening a control stream: {why}"
            )));
        }
    };
    // Only the proxy opens client streams: the agent's are dropped (reset) from now on.
    session.inbound.close();
    let mut ctl = ControlChannel::new(control);
    let refuse = |reason: String| ConnError::Tunnel(format!("agent {identity}: {reason}"));
    let hello = match timeout(HELLO_TIMEOUT, ctl.recv()).await {
        Err(_) => Err(format!("no Hello within {HELLO_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("bad Hello: {e}")),
        Ok(Ok(Control::Hello {
            version,
            agent_id,
            tunnels,
            services,
        })) => {
            check_hello(version, &agent_id, services.len()).map(|()| (agent_id, tunnels, services))
        }
        Ok(Ok(other)) => Err(format!("expected Hello, got {other:?}")),
    };
    let rule = t.rule_for(|id| identity.allowed(&[id.to_owned()]));
    let (agent_id, tunnels, services, (rule, r)) = match (hello, rule) {
        (Ok((a, n, s)), Some(rule)) => (a, n, s, rule),
        (Err(reason), _) => return Err(send_refusal(&mut ctl, metrics, refuse(reason)).await),
        (Ok(_), None) => {
            let reason = format!("identity {identity} is not in tunnel.agents");
            return Err(send_refusal(&mut ctl, metrics, refuse(reason)).await);
        }
    };
    let (valid, mut bad): (Vec<_>, Vec<_>) =
        services.into_iter().partition(|s| service_name(&s.name));
    let grant = Grant {
        identity: identity.to_string(),
        rule,
        serve: r
            .serve
            .iter()
            .filter_map(|p| ServePattern::parse(p).ok())
            .collect(),
        allow: r.allow.clone(),
    };
    let id = NEXT_TUNNEL.fetch_add(1, Ordering::Relaxed);
    let tunnel = Tunnel::new(id, session.opener.clone(), peer.clone());
    let draining = tunnel.draining.clone();
    let bytes = tunnel.bytes.clone();
    let offer = Offer {
        agent_id: &agent_id,
        tunnels,
        services: &valid,
    };
    let fixed = static_services(&proxy.config);
    let registry = &proxy.tunnels;
    let (proxy_id, peers) = (t.id(), t.peer_set());
    let admitted = registry.admit(&offer, &grant, &fixed, t.max_tunnels_per_agent, tunnel);
    let (accepted, mut refused) = match admitted {
        Err(reason) => return Err(send_refusal(&mut ctl, metrics, refuse(reason)).await),
        Ok(Admit::Full) => {
            metrics.event("full");
            let _ = ctl.send(&Control::Full { proxy_id, peers }).await;
            ctl.close().await;
            info!(
                agent_id,
                "agent already holds its tunnels to this proxy: told it so"
            );
            return Ok(Finished::answered("tunnel", "tunnel", 0, 0));
        }
        Ok(Admit::Welcome { accepted, refused }) => (accepted, refused),
    };
    let _registered = Registered(registry, &agent_id, id);
    refused.extend(bad.drain(..).map(|s| Refusal {
        reason: format!("`{}` is not a service name (one DNS label)", s.name),
        service: s,
    }));
    for r in &refused {
        metrics.event("service_refused");
        warn!(agent_id, service = %r.service, "agent service refused: {}", r.reason);
    }
    let heartbeat = t.heartbeat_interval;
    let welcome = Control::Welcome {
        proxy_id,
        peers,
        heartbeat_ms: heartbeat.as_millis() as u64,
        accepted: accepted.clone(),
        refused,
    };
    ctl.send(&welcome).await?;
    metrics.event("accepted");
    let names: Vec<String> = accepted.iter().map(|s| s.to_string()).collect();
    info!(agent_id, tunnel = id, services = ?names, "agent tunnel up");

    let mut tick = interval(heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    let mut stopping = proxy.stopping.clone();
    let mut drained = false;
    let end = loop {
        tokio::select! {
            msg = ctl.recv() => match msg {
                Ok(Control::Ping { seq }) => {
                    last_heard = Instant::now();
                    ctl.send(&Control::Pong { seq }).await?;
                }
                Ok(Control::Pong { .. }) => last_heard = Instant::now(),
                Ok(other) => break Err(format!("unexpected control message {other:?}")),
                Err(FrameError::Closed) => break Ok(if drained { "drained" } else { "closed" }),
                Err(e) => break Err(format!("control stream: {e}")),
            },
            _ = tick.tick() => {
                if last_heard.elapsed() > heartbeat * MISSES {
                    metrics.event("heartbeat_timeout");
                    return Err(ConnError::Tunnel(format!(
                        "agent {agent_id} missed {MISSES} heartbeats ({heartbeat:?} apart): offline"
                    )));
                }
                seq += 1;
                ctl.send(&Control::Ping { seq }).await?;
            }
            _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) }, if !drained => {
                drained = true;
                draining.store(true, Ordering::Relaxed);
                ctl.send(&Control::Drain).await?;
                info!(agent_id, tunnel = id, "drain notice sent");
            }
        }
    };
    session.close();
    match end {
        Ok(outcome) => {
            metrics.event(outcome);
            info!(agent_id, tunnel = id, "agent tunnel {outcome}");
            let (to, from) = (
                bytes[0].load(Ordering::Relaxed),
                bytes[1].load(Ordering::Relaxed),
            );
            Ok(Finished::answered("tunnel", "tunnel", to, from))
        }
        Err(reason) => {
            metrics.event("control_error");
            Err(ConnError::Tunnel(format!("agent {agent_id}: {reason}")))
        }
    }
}

/// A Hello's own checks, before the registry looks at it.
fn check_hello(version: u32, agent_id: &str, services: usize) -> Result<(), String> {
    if version != WIRE_VERSION {
        return Err(format!(
            "control protocol version {version}, this proxy speaks {WIRE_VERSION}"
        ));
    }
    if agent_id.is_empty() || agent_id.len() > 128 || agent_id.contains(char::is_control) {
        return Err("agent_id must be 1 to 128 printable characters".into());
    }
    if services > MAX_SERVICES {
        return Err(format!(
            "{services} services offered, at most {MAX_SERVICES}"
        ));
    }
    Ok(())
}

/// Tells the agent why, counts it, and returns the error to log.
async fn send_refusal(
    ctl: &mut ControlChannel,
    metrics: &crate::router::metrics::TunnelMetrics,
    error: ConnError,
) -> ConnError {
    metrics.event("refused");
    let reason = error.to_string();
    let _ = ctl.send(&Control::Refused { reason }).await;
    ctl.close().await;
    error
}

/// Removes the tunnel from the registry when its task ends, however it ends.
struct Registered<'a>(&'a super::Registry, &'a str, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1, self.2);
    }
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
