//! The relays a routed TLS connection ends in: raw TLS to a passthrough upstream, the
//! plaintext of a terminated connection to its upstream or an agent's stream, or — the
//! session handed to the kernel's TLS (`io::ktls`) — the kTLS socket spliced to its
//! upstream. `tls::tls`
//! prepares them (dials, sends the ClientHello on) and returns; its caller runs them, so a
//! long-lived connection's task holds the relay alone, not the routing and handshake
//! stage's state beside it (an idle connection's memory).

use futures_util::FutureExt as _;
use std::future::Future;
use std::pin::Pin;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, Span};

use super::error::{ConnError, Finished};
use super::preface::{Deadline, Preface};
use super::upstream::{connect, relay_client, ClientIo};
use crate::io::ktls::{self, hand_over, handover, HandOver};
use crate::io::records::Session;
use crate::io::tunnel::Service;
use crate::io::{wire, BoxedIo, Prefixed};
use crate::protocol::PING_SUFFIX;
use crate::relay::records::relay_records;
use crate::relay::splice_pipe::relay_ktls;
use crate::relay::{relay, RelayStats};
use crate::router::admission::Admitted;
use crate::router::state::{Proxy, Route};
use crate::router::trust::Client;
use crate::router::tunnel::dial;

/// A routed TLS connection's relay, ready to run with [`run`].
pub(crate) enum Relay<'a, C> {
    /// Passthrough: the ClientHello and what followed it are already upstream.
    Pass {
        client: C,
        upstream: PassUpstream,
        /// Bytes read from the client before (for the splice's ordering), and of those,
        /// the ones sent on.
        consumed: u64,
        sent: u64,
        route: &'a Route,
        admitted: Admitted,
    },
    /// Terminated, the session in the kernel: the kTLS client socket and its upstream;
    /// `early` bytes of plaintext rustls had decrypted are already sent on.
    Ktls {
        client: TcpStream,
        upstream: TcpStream,
        early: u64,
        route: &'a Route,
        admitted: Admitted,
    },
    /// Terminated, the session out of rustls, its records protected by the proxy
    /// (`io::records`); `early` bytes of plaintext are already sent on.
    Records {
        client: TcpStream,
        upstream: TcpStream,
        session: Box<Session>,
        client_closed: bool,
        early: u64,
        route: &'a Route,
        admitted: Admitted,
    },
    /// Terminated: the plaintext to the upstream or an agent's stream.
    Terminated {
        tls: Box<TlsStream<Prefixed<C>>>,
        upstream: BoxedIo,
        route: &'a Route,
        admitted: Admitted,
    },
}

/// Where a passthrough connection's raw TLS goes.
pub(crate) enum PassUpstream {
    /// The route's upstream: spliced when the client is the socket itself.
    Tcp(TcpStream),
    /// A Kubernetes API server behind an agent: its tunnel stream.
    Agent(BoxedIo),
}

/// A passthrough route: dials the upstream (or, for a Kubernetes API server behind an
/// agent, opens the agent's stream) and sends on the ClientHello and whatever followed it,
/// as read; the preface's buffer is gone before the relay starts.
pub(super) async fn pass_through<'a, C: ClientIo>(
    proxy: &Proxy,
    client: C,
    pre: Preface,
    route: &'a Route,
    service: Option<Service>,
    from: &Client,
    admitted: Admitted,
) -> Result<Relay<'a, C>, ConnError> {
    let (consumed, sent) = (pre.consumed(), pre.rest().len() as u64);
    let upstream = if let Some(service) = &service {
        let mut agent = dial::open(proxy, service, from.addr.to_string(), None).await?;
        agent.write_all(pre.rest()).await?;
        PassUpstream::Agent(Box::new(agent))
    } else {
        let mut upstream = connect(proxy, route).await?;
        upstream.write_all(pre.rest()).await?;
        PassUpstream::Tcp(upstream)
    };
    Ok(Relay::Pass {
        client,
        upstream,
        consumed,
        sent,
        route,
        admitted,
    })
}

/// A terminated route's own upstream: dialed, then, when the session may leave rustls
/// (`leave`: read record by record) and its ALPN is not a `-ping` one, handed to the
/// kernel's TLS or the proxy's record layer within the handshake's deadline.
pub(super) async fn terminated_tcp<'a, C: ClientIo>(
    proxy: &Proxy,
    tls: Box<TlsStream<Prefixed<C>>>,
    route: &'a Route,
    admitted: Admitted,
    (leave, ping): (bool, bool),
    deadline: Deadline,
) -> Result<Relay<'a, C>, ConnError> {
    let mut upstream = connect(proxy, route).await?;
    // The kTLS outcome, counted where sessions may go to the kernel.
    let ktls = |outcome| {
        if ktls::offered().is_some() {
            proxy.metrics.ktls(&route.name, outcome);
        }
    };
    if !leave || ping {
        if leave {
            // The ping framing is added in rustls' stream.
            ktls("kept_framing");
        }
        return Ok(in_userspace(tls, upstream, route, admitted));
    }
    let (handed, session) = match deadline
        .run("TLS hand-over", hand_over(tls, C::into_tcp))
        .await
    {
        Err(timeout) => {
            ktls("failed");
            return Err(timeout);
        }
        Ok(Err(error)) => {
            ktls("failed");
            let route = route.name.clone();
            return Err(ConnError::Ktls { route, error });
        }
        Ok(Ok(HandOver::Userspace { tls, why })) => {
            ktls(match why {
                handover::CLIENT_CLOSED => "kept_closed",
                _ => "kept_cipher",
            });
            debug!("the session stays in rustls: {why}");
            return Ok(in_userspace(tls, upstream, route, admitted));
        }
        Ok(Ok(HandOver::Kernel(handed))) => {
            ktls("handed_over");
            if let Some(cipher) = handed.cipher {
                Span::current().record("ktls", tracing::field::debug(cipher));
            }
            (handed, None)
        }
        Ok(Ok(HandOver::Proxy(handed, session))) => {
            ktls("kept_cipher");
            Span::current().record("records", "proxy");
            (handed, Some(session))
        }
    };
    upstream.write_all(&handed.early).await?;
    if handed.client_closed {
        upstream.shutdown().await?;
    }
    let early = handed.early.len() as u64;
    Ok(match session {
        None => Relay::Ktls {
            client: handed.socket,
            upstream,
            early,
            route,
            admitted,
        },
        Some(session) => Relay::Records {
            client: handed.socket,
            upstream,
            session: Box::new(session),
            client_closed: handed.client_closed,
            early,
            route,
            admitted,
        },
    })
}

/// A terminated session that stays in rustls (reading ahead again) relayed to `upstream`.
fn in_userspace<'a, C: ClientIo>(
    mut tls: Box<TlsStream<Prefixed<C>>>,
    upstream: TcpStream,
    route: &'a Route,
    admitted: Admitted,
) -> Relay<'a, C> {
    tls.get_mut().0.read_ahead_from_now();
    Relay::Terminated {
        tls,
        upstream: Box::new(upstream),
        route,
        admitted,
    }
}

/// Runs `relay` to its end: raw TLS both ways, or the terminated plaintext through the
/// ping framing when the negotiated ALPN is a `-ping` one. Not an `async fn`: that would
/// store `relay` again beside the relay's own state for the connection's whole life; each
/// way is a future of its own, boxed, with the route's name and the admission carried by
/// a `map`.
pub(crate) fn run<'a, C: ClientIo>(
    proxy: &Proxy,
    relay_: Relay<'a, C>,
) -> Pin<Box<dyn Future<Output = Finished> + Send + 'a>> {
    let limits = &proxy.config.limits;
    let buffer = limits.relay_buffer_bytes;
    match relay_ {
        Relay::Pass {
            client,
            upstream,
            consumed,
            sent,
            route,
            admitted,
        } => {
            let moved: Pin<Box<dyn Future<Output = RelayStats> + Send>> = match upstream {
                PassUpstream::Agent(agent) => Box::pin(relay(client, agent, buffer)),
                PassUpstream::Tcp(upstream) => {
                    Box::pin(relay_client(client, upstream, consumed, buffer))
                }
            };
            Box::pin(moved.map(move |mut stats| {
                drop(admitted);
                stats.client_to_upstream += sent;
                Finished::relayed(&route.name, stats)
            }))
        }
        Relay::Ktls {
            client,
            upstream,
            early,
            route,
            admitted,
        } => Box::pin(relay_ktls(client, upstream, buffer).map(move |mut stats| {
            drop(admitted);
            stats.client_to_upstream += early;
            Finished::relayed(&route.name, stats)
        })),
        Relay::Records {
            client,
            upstream,
            session,
            client_closed,
            early,
            route,
            admitted,
        } => {
            let moved = relay_records(client, upstream, *session, buffer, client_closed);
            Box::pin(moved.map(move |mut stats| {
                drop(admitted);
                stats.client_to_upstream += early;
                Finished::relayed(&route.name, stats)
            }))
        }
        Relay::Terminated {
            tls,
            upstream,
            route,
            admitted,
        } => {
            let ping = tls
                .get_ref()
                .1
                .alpn_protocol()
                .is_some_and(|p| p.ends_with(PING_SUFFIX.as_bytes()));
            let moved: Pin<Box<dyn Future<Output = RelayStats> + Send>> = if ping {
                let framed =
                    wire::ping_framed(tls, Some(limits.ping_interval), limits.max_ws_frame_bytes);
                Box::pin(relay(framed, upstream, buffer))
            } else {
                Box::pin(relay(tls, upstream, buffer))
            };
            Box::pin(moved.map(move |stats| {
                drop(admitted);
                Finished::relayed(&route.name, stats)
            }))
        }
    }
}
