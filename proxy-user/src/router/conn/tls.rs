//! A TLS connection: read the whole ClientHello, answer an ACME TLS-ALPN-01 validation
//! (`conn::acme`) before anything else, route it (a TLS alert when there is no
//! route, or when the route's `allow_from` does not hold the client's address), then pass
//! the raw TLS through to the upstream, or terminate it here (mTLS where the route asks
//! for it) and relay the plaintext — through the ping framing for `-ping`
//! ALPNs — or, on the web route and the HTTP apps, hand it to HTTP.

use super::acme;
use super::error::{ConnError, Finished};
use super::over_budget;
use super::preface::Preface;
use super::tls_end::{handshake_reason, linger, send_alert};
use super::tls_relay::{pass_through, terminated_tcp, Relay};
use super::upstream::{connect, ClientIo};
use crate::io::tunnel::{Kind, Service};
use crate::io::{tls::CertIdentity, BoxedIo, Prefixed};
use crate::protocol::{H2_ALPN, PING_SUFFIX, REVERSE_TUNNEL_ALPN};
use crate::router::admission::{class_of, Admitted};
use crate::router::hello;
use crate::router::route::{Decision, Mode, RejectAlert, Role, TUNNEL_PROBE};
use crate::router::state::Proxy;
use crate::router::state::Route;
use crate::router::trust::{self, Client};
use crate::router::tunnel::{self, dial};
use rustls::{HandshakeKind, ServerConfig};
use std::sync::Arc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn, Span};

/// How a TLS connection goes on after [`tls`].
pub(crate) enum Tls<'a, C> {
    /// Answered, or over: nothing more to do.
    Done(Finished),
    /// Routed: the relay comes next, once this stage's state is gone (`tls_relay`).
    Relay(Relay<'a, C>),
    /// The web route or an HTTP app, terminated: HTTP comes next, on the plaintext
    /// `stream` with a fresh `preface` under the same deadline.
    Web {
        stream: Box<TlsStream<Prefixed<C>>>,
        preface: Preface,
        route: &'a Route,
        /// The client certificate's identity, when one was presented.
        identity: Option<CertIdentity>,
        /// The client negotiated `h2`.
        h2: bool,
        /// Its place in its class's budget, held for the connection's life.
        admitted: Admitted,
    },
}

/// TLS: read the whole ClientHello, route it, check the route's `allow_from` against
/// `from` (the client as believed), then pass through or terminate.
pub(crate) async fn tls<'a, C: ClientIo>(
    proxy: &'a Proxy,
    mut client: C,
    mut pre: Preface,
    from: Client,
    pending: Option<Admitted>,
) -> Result<Tls<'a, C>, ConnError> {
    let from = &from;
    let max = proxy.config.limits.max_hello_bytes;
    let hello = pre
        .read_until(&mut client, "ClientHello", |b| hello::parse(b, max))
        .await?;
    let span = Span::current();
    if let Some(sni) = &hello.sni {
        span.record("sni", sni.as_str());
    }
    span.record("alpn", tracing::field::debug(&hello.alpn));
    if acme::offers_acme(&hello) {
        return Box::pin(acme::answer(proxy, client, pre, &hello)).await;
    }
    let waits = proxy.config.tunnel.is_some();
    let deadline = pre.deadline.at();
    let decision = tunnel::redial::route(&proxy.table, &hello, &proxy.tunnels, waits, deadline);
    let (route, service) = match decision.await {
        Decision::Route(route) => (route, None),
        Decision::Agent { entry, service } => {
            span.record("service", tracing::field::display(&service));
            (entry, Some(service))
        }
        Decision::Reject { reason, alert } => {
            proxy.metrics.route("none", "reject");
            send_alert(&mut client, alert).await;
            return Err(ConnError::NoRoute(reason));
        }
    };
    span.record("route", route.name.as_str());
    if let Err(reason) = trust::allowed(route.allow_from.as_ref(), from) {
        proxy.metrics.route(&route.name, "source_refused");
        send_alert(&mut client, RejectAlert::AccessDenied).await;
        return Err(ConnError::SourceRefused {
            route: route.name.clone(),
            reason,
        });
    }
    // Its route's class takes over from `unclassified`; refused before any crypto.
    let class = class_of(route);
    let admitted = match proxy.admission.admit(class, from.addr.ip()) {
        Ok(a) => a,
        Err(r) => {
            send_alert(&mut client, RejectAlert::AccessDenied).await;
            return Err(over_budget(class, r));
        }
    };
    drop(pending);
    let config = match &route.mode {
        Mode::Terminate { tls, .. } => match &service {
            Some(s) => agent_tls(proxy, route, s, tls)?,
            None => tls.clone(),
        },
        Mode::Passthrough => {
            proxy.metrics.route(&route.name, "passthrough");
            let relay = pass_through(proxy, client, pre, route, service, from, admitted);
            return Ok(Tls::Relay(Box::pin(relay).await?));
        }
    };
    proxy.metrics.route(&route.name, "terminate");
    let handshake = match admitted.handshake() {
        Ok(h) => h,
        Err(r) => {
            send_alert(&mut client, RejectAlert::AccessDenied).await;
            return Err(over_budget(class, r));
        }
    };
    let started = Instant::now();
    let deadline = pre.deadline;
    let inner = pre.inner();
    // A session that may leave rustls is read record by record until then.
    let ktls = may_go_to_kernel(route, service.as_ref(), &client);
    let replay = if ktls {
        Prefixed::record_exact(pre.into_rest(), client)
    } else {
        Prefixed::reading_ahead(pre.into_rest(), client)
    };
    // Boxed: the handshake's state is not kept in the connection's task for its life.
    let accept = Box::pin(
        tokio_rustls::TlsAcceptor::from(config)
            .accept(replay)
            .into_fallible(),
    );
    let tls = match deadline.run("TLS handshake", accept).await {
        Err(timeout) => {
            proxy.metrics.handshake_failed(&route.name, "timeout");
            return Err(timeout);
        }
        Ok(Err((error, io))) => {
            let reason = handshake_reason(&error);
            Box::pin(linger(io)).await;
            if reason == "no_certificate" && is_detection_probe(&hello.alpn) {
                // A client checking for a layer-7 balancer: it learnt what it wanted from
                // the ALPN; not a refusal worth a warning.
                debug!("answered a TLS routing probe (no client certificate)");
                return Ok(Tls::Done(Finished::answered(TUNNEL_PROBE, "none", 0, 0)));
            }
            proxy.metrics.handshake_failed(&route.name, reason);
            return Err(ConnError::Handshake {
                route: route.name.clone(),
                reason,
                error,
            });
        }
        Ok(Ok(tls)) => tls,
    };
    drop(handshake);
    proxy
        .metrics
        .handshake_seconds
        .observe(started.elapsed().as_secs_f64());
    let (_, session) = tls.get_ref();
    let resumed = session.handshake_kind() == Some(HandshakeKind::Resumed);
    proxy.metrics.handshake_done(&route.name, resumed);
    if resumed {
        span.record("resumed", true);
    }
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| CertIdentity::from_der(c));
    let identity = cert.as_ref().map(|id| id.to_string());
    if let Some(id) = &identity {
        span.record("identity", id.as_str());
    }
    let negotiated = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    if let Some(p) = &negotiated {
        span.record("negotiated", p.as_str());
    }
    if route.role == Role::DetectionProbe {
        // An agent (both tunnel ALPNs), not a client's probe (only the first); agents
        // retry, so the line is rate-limited.
        let agent = !is_detection_probe(&hello.alpn);
        if let Some(suppressed) = agent.then(|| proxy.noise.allow()).flatten() {
            warn!(suppressed, "an agent dialed in, but this proxy has no `tunnel:` section (docs/agent.md): closed");
        }
        debug!("answered a TLS routing probe (no upstreams.tunnel configured)");
        return Ok(Tls::Done(Finished::answered(&route.name, "none", 0, 0)));
    }
    if matches!(route.role, Role::Web | Role::App | Role::Agent(Kind::Http)) {
        return Ok(Tls::Web {
            stream: Box::new(tls),
            preface: inner,
            route,
            identity: cert,
            admitted,
            h2: negotiated.as_deref() == Some(H2_ALPN),
        });
    }
    let tls = Box::new(tls);
    let upstream: BoxedIo = match (route.role, service) {
        (Role::TunnelService, _) => {
            let cert = cert.unwrap_or_default();
            let serve = tunnel::serve::serve(proxy, tls, cert, from.addr.to_string());
            return Box::pin(serve).await.map(Tls::Done);
        }
        (Role::Agent(_), Some(service)) => {
            let agent = dial::open(proxy, &service, from.addr.to_string(), cert.as_ref());
            Box::new(Box::pin(agent).await?)
        }
        (Role::Relay, None) => {
            let ping = negotiated
                .as_deref()
                .is_some_and(|p| p.ends_with(PING_SUFFIX));
            let relay = terminated_tcp(proxy, tls, route, admitted, (ktls, ping), deadline);
            return Box::pin(relay).await.map(Tls::Relay);
        }
        _ => Box::new(Box::pin(connect(proxy, route)).await?),
    };
    Ok(Tls::Relay(Relay::Terminated {
        tls,
        upstream,
        route,
        admitted,
    }))
}

/// Whether a terminated session may leave rustls after its handshake, to the kernel's TLS
/// or the proxy's own record layer: this process hands sessions over (`ktls:
/// auto|require` on a kernel that has it, or `tls_records: proxy`), the route
/// relays to its own upstream (not HTTP, not an agent's stream) and the client is the
/// accepted socket itself (not a connection upgrade's tunnel).
fn may_go_to_kernel<C: ClientIo>(route: &Route, service: Option<&Service>, client: &C) -> bool {
    (crate::io::ktls::offered().is_some() || crate::io::records::in_proxy())
        && route.role == Role::Relay
        && service.is_none()
        && client.is_tcp()
}

/// The TLS configuration for a connection to an agent's service: the route's own, or,
/// when the agent's `allow` names clients, one that requires a certificate in it — so a
/// client it does not name is refused inside the handshake, with an alert it can read.
fn agent_tls(
    proxy: &Proxy,
    route: &Route,
    service: &Service,
    tls: &Arc<ServerConfig>,
) -> Result<Arc<ServerConfig>, ConnError> {
    let allow = proxy.tunnels.allow_of(service).unwrap_or_default();
    if allow.is_empty() {
        return Ok(tls.clone());
    }
    proxy
        .terminator
        .config(&route.alpn, true, &allow)
        .map_err(|e| ConnError::Tunnel(format!("TLS configuration for {service}: {e}")))
}

/// The clients' layer-7 detection handshake offers exactly `teleport-reversetunnel`
/// (agents also offer `teleport-reversetunnelv2`, and always present a certificate).
fn is_detection_probe(alpn: &[String]) -> bool {
    matches!(alpn, [only] if only == REVERSE_TUNNEL_ALPN)
}
