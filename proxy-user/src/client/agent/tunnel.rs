//! One tunnel on the agent's side: dial the proxy (TLS with the agent's certificate and
//! ALPN `teleport-reversetunnel` + `v2`, through a layer-7 balancer's connection upgrade
//! or `HTTPS_PROXY` when needed: the same [`Connector`] as every client), open the control
//! stream, say Hello, then serve the streams the proxy opens and exchange heartbeats
//! until the tunnel ends. After the proxy's drain notice the tunnel keeps serving the
//! streams in flight while [`run`] returns, so the caller dials a new one at once.

use super::stream;
use super::Mesh;
use crate::client::dial::Connector;
use crate::client::ClientError;
use crate::io::tunnel::control::ControlChannel;
use crate::io::tunnel::frame::FrameError;
use crate::io::tunnel::mux::{self, Limits, Mode};
use crate::io::tunnel::{Control, Service, WIRE_VERSION};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tracing::{info, warn};

/// Added to a tunnel that ended before the proxy answered, for no reason TLS gave.
const NO_SERVICE_HINT: &str = " (the proxy closed the tunnel before answering the agent's \
    Hello: does its configuration have a `tunnel:` section? docs/agent.md)";

/// Heartbeats missed before the tunnel counts as lost.
const MISSES: u32 = 3;
/// How long the proxy has to answer the Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams the proxy may open at once on one tunnel (the most any proxy's
/// `tunnel.max_streams_per_tunnel` allows), and the receive window across them.
const LIMITS: Limits = Limits {
    max_streams: crate::config::MAX_TUNNEL_STREAMS,
    window_bytes: 256 * 1024 * 1024,
};

/// What one agent process shares between its tunnels.
pub(crate) struct Agent {
    pub(crate) id: String,
    pub(crate) tunnels: u32,
    pub(crate) services: Arc<BTreeMap<Service, String>>,
    pub(crate) connector: Connector,
    pub(crate) mesh: Mesh,
}

/// How a tunnel attempt ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// It was up, then ended (logged); `drained` after a drain notice.
    Lost { drained: bool },
    /// The proxy already holds this agent's tunnels.
    Full,
    /// It never came up.
    Failed(String),
}

/// Dials, registers and serves one tunnel.
pub(crate) async fn run(agent: &Agent) -> Ended {
    let tls = match agent.connector.dial().await {
        Ok(t) => t,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let mut session = mux::start(tls, Mode::Client, LIMITS, 256);
    let hello = Control::Hello {
        version: WIRE_VERSION,
        agent_id: agent.id.clone(),
        tunnels: agent.tunnels,
        services: agent.services.keys().cloned().collect(),
    };
    let opened = async {
        let mut ctl = ControlChannel::new(session.opener.open().await?);
        ctl.send(&hello).await?;
        Ok::<_, std::io::Error>(ctl)
    };
    let mut ctl = match opened.await {
        Ok(c) => c,
        Err(e) => return Ended::Failed(why(&agent.connector, &mut session, e.to_string()).await),
    };
    let welcome = match timeout(WELCOME_TIMEOUT, ctl.recv()).await {
        Err(_) => return Ended::Failed(format!("no answer to Hello within {WELCOME_TIMEOUT:?}")),
        Ok(Err(e)) => {
            return Ended::Failed(why(&agent.connector, &mut session, e.to_string()).await)
        }
        Ok(Ok(m)) => m,
    };
    let (proxy_id, heartbeat) = match welcome {
        Control::Welcome {
            proxy_id,
            peers,
            heartbeat_ms,
            accepted,
            refused,
        } => {
            agent.mesh.learn(&peers);
            let names: Vec<String> = accepted.iter().map(|s| s.to_string()).collect();
            info!(proxy = proxy_id, peers = ?peers, services = ?names, "tunnel up");
            for r in refused {
                warn!(proxy = proxy_id, service = %r.service, "the proxy refused a service: {}", r.reason);
            }
            (proxy_id, Duration::from_millis(heartbeat_ms.max(100)))
        }
        Control::Full { proxy_id, peers } => {
            agent.mesh.learn(&peers);
            info!(
                proxy = proxy_id,
                "this proxy already holds our tunnels; dialing for the others"
            );
            return Ended::Full;
        }
        Control::Refused { reason } => {
            return Ended::Failed(format!("the proxy refused the agent: {reason}"))
        }
        other => return Ended::Failed(format!("unexpected answer to Hello: {other:?}")),
    };
    let _held = agent.mesh.hold(&proxy_id);
    let mut streams = JoinSet::new();
    let mut tick = interval(heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    let reason = loop {
        tokio::select! {
            s = session.inbound.recv() => match s {
                Some(s) => {
                    let services = agent.services.clone();
                    streams.spawn(async move { stream::serve(s, &services).await });
                }
                None => break "the tunnel closed".to_owned(),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            msg = ctl.recv() => match msg {
                Ok(Control::Ping { seq }) => {
                    last_heard = Instant::now();
                    if ctl.send(&Control::Pong { seq }).await.is_err() {
                        break "the tunnel closed".to_owned();
                    }
                }
                Ok(Control::Pong { .. }) => last_heard = Instant::now(),
                Ok(Control::Drain) => {
                    info!(proxy = proxy_id, streams = streams.len(), "drain notice: opening a new tunnel, streams in flight finish here");
                    drop(_held);
                    tokio::spawn(finish(session, streams, ctl, agent.services.clone()));
                    return Ended::Lost { drained: true };
                }
                Ok(other) => break format!("unexpected control message {other:?}"),
                Err(FrameError::Closed) => break "the proxy closed the tunnel".to_owned(),
                Err(e) => break format!("control stream: {e}"),
            },
            _ = tick.tick() => {
                if last_heard.elapsed() > heartbeat * MISSES {
                    break format!("the proxy missed {MISSES} heartbeats: offline");
                }
                seq += 1;
                if ctl.send(&Control::Ping { seq }).await.is_err() {
                    break "the tunnel closed".to_owned();
                }
            }
        }
    };
    session.close();
    warn!(proxy = proxy_id, "tunnel lost: {reason}");
    Ended::Lost { drained: false }
}

/// After a drain notice: serves what is in flight, and the streams the draining proxy
/// still opens (connections it accepted before handing its sockets over, routed a moment
/// later), until none has been left for [`DRAIN_LINGER`], answering the proxy's
/// heartbeats meanwhile (the control stream must stay open: the proxy takes its end as
/// the tunnel's), then closes the tunnel.
async fn finish(
    mut session: mux::Session,
    mut streams: JoinSet<()>,
    mut ctl: ControlChannel,
    services: Arc<BTreeMap<Service, String>>,
) {
    let mut idle_since = Instant::now();
    loop {
        if streams.is_empty() && idle_since.elapsed() >= DRAIN_LINGER {
            break;
        }
        let linger = tokio::time::sleep_until(idle_since + DRAIN_LINGER);
        tokio::select! {
            s = session.inbound.recv() => match s {
                Some(s) => {
                    let services = services.clone();
                    streams.spawn(async move { stream::serve(s, &services).await });
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                idle_since = Instant::now();
            }
            _ = linger, if streams.is_empty() => {}
            msg = ctl.recv() => match msg {
                Ok(Control::Ping { seq }) => {
                    if ctl.send(&Control::Pong { seq }).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            },
        }
    }
    ctl.close().await;
    session.close();
}

/// How long a drained tunnel stays open with no stream, for streams the draining proxy
/// still opens.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// Why the tunnel failed before it came up: the TLS layer's reason when there is one
/// (a refused certificate shows up on the first read under TLS 1.3).
async fn why(connector: &Connector, session: &mut mux::Session, fallback: String) -> String {
    // The session ends by itself on the TLS error; closing it first would hide the error.
    let ended = timeout(Duration::from_secs(1), &mut session.done).await;
    session.close();
    use yamux::{ConnectionError, FrameDecodeError};
    let error = match ended {
        Ok(Ok(Err(ConnectionError::Io(e) | ConnectionError::Decode(FrameDecodeError::Io(e))))) => {
            connector.classify(e)
        }
        _ => return format!("{fallback}{NO_SERVICE_HINT}"),
    };
    match error {
        ClientError::CertRefused { .. } | ClientError::Denied { .. } => error.to_string(),
        other => format!("{other}{NO_SERVICE_HINT}"),
    }
}
