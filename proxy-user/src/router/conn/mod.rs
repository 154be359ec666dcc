//! One client connection of the single port, from accept to close: detect the protocol
//! (stripping PROXY headers, whose source is the client only from a trusted proxy:
//! `router::trust`), then hand it to the stage that routes it — [`tls`] (read the
//! ClientHello, route, pass through or terminate; [`tls_end`] its alerts and failed ends),
//! [`plaintext`] (legacy SSH, HTTP and
//! Postgres), [`web`] (the web route's own endpoints and the connection upgrade) — and
//! [`upstream`] (dial, relay). Each stage returns what comes next, and this module chains
//! them: a terminated web connection goes to `web`, and the inner connection of an upgrade
//! comes back to `tls` as a connection of its own (one level deep), from the client a
//! trusted `X-Forwarded-For` names. The client used for decisions, and how it was
//! obtained, are recorded once in the connection's span (`client`, `client_from`; a claim
//! not believed is `claimed_client`).
//!
//! A connection counts against the `unclassified` budget from accept until its route is
//! known, then against its route's class (`router::admission`); one whose first bytes
//! ([`first_bytes`]: the kernel's classification, else a peek) are a legacy plaintext
//! protocol counts against `legacy-plaintext` from accept.
//!
//! Everything before the relay reads through one [`Preface`] and runs under its one
//! [`Deadline`] (`limits.handshake_timeout`), so a slow or silent client costs a timer, not a
//! thread. Each failure is a [`ConnError`] with the metric outcome it counts as; the caller
//! logs it once in the connection's span.

mod acme;
mod error;
mod first_bytes;
mod plaintext;
mod preface;
mod tls;
mod tls_end;
mod tls_relay;
mod upstream;
mod web;

pub(crate) use error::{ConnError, Finished};
pub(crate) use plaintext::fixed;

use super::admission::{Admitted, Refusal, LEGACY};
use super::detect::{detect, Detected, PgRequest, ProxyHeader};
use super::http;
use super::metrics::Accepted;
use super::state::Proxy;
use super::trust::{proxy_verdict, Client, ClientAddr, ClientFrom, Verdict};
use super::webapi::Forwarded;
use crate::config::ProxyProtocol;
use crate::io::BoxedIo;
use error::hex_preview;
use preface::{Deadline, Preface};
use std::net::SocketAddr;
use std::sync::Arc;
use tls::Tls;
use tokio::net::TcpStream;
use tracing::{field, Instrument, Span};
use upstream::ClientIo;
use web::{http_conn, Web};

/// What detection found that can be routed: detection itself never returns anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routable {
    Tls,
    Ssh,
    Http,
    Postgres(PgRequest),
}

impl Routable {
    /// The `protocol` label of the accepted and active metrics.
    fn label(self) -> &'static str {
        match self {
            Routable::Tls => "tls",
            Routable::Ssh => "ssh",
            Routable::Http => "http",
            Routable::Postgres(_) => "postgres",
        }
    }
}

/// One answer of first-bytes detection.
enum Step {
    Proxy(ProxyHeader),
    Routable(Routable),
}

/// Detection of the bytes read so far: `None` while more are needed.
fn step(bytes: &[u8]) -> Result<Option<Step>, ConnError> {
    Ok(Some(match detect(bytes) {
        Detected::NeedMore => return Ok(None),
        Detected::Proxy(h) => Step::Proxy(h),
        Detected::BadProxy(m) => return Err(ConnError::BadProxy(m)),
        Detected::Unknown => return Err(ConnError::Unknown(hex_preview(bytes))),
        Detected::Tls => Step::Routable(Routable::Tls),
        Detected::Ssh => Step::Routable(Routable::Ssh),
        Detected::Http => Step::Routable(Routable::Http),
        Detected::Postgres(r) => Step::Routable(Routable::Postgres(r)),
    }))
}

/// Handles one connection accepted on the single port from `peer`.
pub(crate) async fn handle(
    proxy: &Arc<Proxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<Finished, ConnError> {
    let limits = &proxy.config.limits;
    let deadline = Deadline::after(limits.handshake_timeout);
    // Each stage boxed, so the relay's state is not sized for them (an idle pair's memory).
    let (pending, early) = Box::pin(first_bytes::admit(proxy, &stream, peer, deadline)).await?;
    let mut pre = Preface::accepted(deadline, limits.max_hello_bytes);
    let mut client = Client::peer(peer);
    let detected = Box::pin(first_bytes(proxy, &mut stream, &mut pre, peer, &mut client)).await;
    // Once, whatever detection ended with: every closing line names the client.
    record_client(&Span::current(), &client);
    let (routable, header) = detected?;
    pre.settle();
    let ingress = if header { "proxy_protocol" } else { "direct" };
    let protocol = routable.label();
    proxy.metrics.detect(protocol);
    proxy
        .metrics
        .accepted
        .get_or_create(&Accepted {
            ingress_path: ingress,
            protocol,
        })
        .inc();
    let _active = proxy.metrics.active_guard(protocol);
    let route = match routable {
        Routable::Tls => {
            return Box::pin(tls_connection(proxy, stream, pre, client, pending)).await
        }
        Routable::Ssh => "ssh",
        Routable::Http => "web",
        Routable::Postgres(_) => "postgres",
    };
    let _class = if early == LEGACY {
        pending
    } else {
        let class = proxy
            .admission
            .admit(LEGACY, client.addr.ip())
            .map_err(|r| over_budget(LEGACY, r))?;
        drop(pending);
        class
    };
    // Boxed, as each stage that lives on: the task holds the stage it is in.
    match Box::pin(plaintext::plaintext(proxy, stream, pre, route, &client)).await? {
        plaintext::Plain::Relay(relay) => Ok(Box::pin(relay.run(proxy)).await),
        plaintext::Plain::Web(stream, pre, route) => {
            let conn = http_conn(proxy, route, false, false, None, &client, true);
            Box::pin(web_connection(proxy, stream, pre, route, conn, client)).await
        }
    }
}

/// Detection of the first bytes, PROXY headers judged on the way
/// (`proxy_service.proxy_protocol`, `trusted_proxies`): `client` becomes a trusted
/// header's source; an untrusted one's is only `claimed_client`. Returns what was found
/// and whether a header came first.
async fn first_bytes(
    proxy: &Proxy,
    stream: &mut TcpStream,
    pre: &mut Preface,
    peer: SocketAddr,
    client: &mut Client,
) -> Result<(Routable, bool), ConnError> {
    let service = &proxy.config.proxy_service;
    let policy = service.proxy_protocol;
    let peer_trusted = service.trusted_proxies.contains(peer.ip());
    let mut header = false;
    let routable = loop {
        let h = match pre.read_until(stream, "protocol preface", step).await? {
            Step::Routable(r) => break r,
            Step::Proxy(h) => h,
        };
        if policy == Some(ProxyProtocol::Off) {
            return Err(ConnError::ProxyForbidden);
        }
        if header {
            return Err(ConnError::SecondProxy);
        }
        let from = ClientFrom::proxy(h.version);
        proxy.metrics.detect(from.label());
        let verdict = proxy_verdict(policy, peer_trusted);
        if let Some(src) = h.source {
            let outcome = match verdict {
                Verdict::Believe => {
                    *client = Client {
                        addr: ClientAddr::Socket(src),
                        from,
                    };
                    "believed"
                }
                Verdict::Claim => "ignored",
                Verdict::Refuse => "refused",
            };
            if verdict != Verdict::Believe {
                Span::current().record("claimed_client", field::display(src));
            }
            proxy.metrics.claim(from.label(), outcome);
        }
        if verdict == Verdict::Refuse {
            return Err(ConnError::ProxyUntrusted { peer });
        }
        pre.skip(h.len);
        header = true;
    };
    if policy == Some(ProxyProtocol::On) && !header {
        return Err(ConnError::ProxyRequired);
    }
    Ok((routable, header))
}
/// A TLS connection on the socket, from `client` (as believed).
async fn tls_connection<C: ClientIo>(
    proxy: &Arc<Proxy>,
    stream: C,
    pre: Preface,
    client: Client,
    pending: Admitted,
) -> Result<Finished, ConnError> {
    match Box::pin(tls::tls(proxy, stream, pre, &client, Some(pending))).await? {
        Tls::Done(done) => Ok(done),
        Tls::Relay(relay) => Ok(Box::pin(tls_relay::run(proxy, relay)).await),
        Tls::Web {
            stream,
            preface,
            route,
            identity,
            h2,
            admitted: _admitted,
        } => {
            let conn = http_conn(proxy, route, true, h2, identity, &client, true);
            Box::pin(web_connection(proxy, stream, preface, route, conn, client)).await
        }
    }
}

/// The web route; an upgrade's inner connection is routed in its own span, from the
/// client a trusted `X-Forwarded-For` names (else the same client), and the closing line
/// carries both spans.
async fn web_connection<C: ClientIo>(
    proxy: &Arc<Proxy>,
    stream: C,
    pre: Preface,
    route: &super::state::Route,
    conn: http::Conn,
    client: Client,
) -> Result<Finished, ConnError> {
    match web::web(proxy, stream, pre, route, conn).await? {
        Web::Done(done) => Ok(done),
        Web::Upgraded {
            tunnel,
            preface,
            span,
            forwarded_for,
        } => {
            let client = match forwarded_for {
                Forwarded::Believed(addr) => Client {
                    addr,
                    from: ClientFrom::XForwardedFor,
                },
                Forwarded::Claimed(_) | Forwarded::None => client,
            };
            let inner = inner_connection(proxy, tunnel, preface, client);
            match inner.instrument(span.clone()).await {
                Ok(done) => Ok(Finished {
                    inner: Some(span),
                    ..done
                }),
                Err(error) => Err(ConnError::Inner {
                    span,
                    error: Box::new(error),
                }),
            }
        }
    }
}

/// The TLS connection inside an upgrade, routed like a direct one, one level deep: its
/// web route and apps are HTTP that does not upgrade again.
async fn inner_connection(
    proxy: &Arc<Proxy>,
    tunnel: BoxedIo,
    pre: Preface,
    client: Client,
) -> Result<Finished, ConnError> {
    match Box::pin(tls::tls(proxy, tunnel, pre, &client, None)).await? {
        Tls::Done(done) => Ok(done),
        Tls::Relay(relay) => Ok(Box::pin(tls_relay::run(proxy, relay)).await),
        Tls::Web {
            stream,
            preface,
            route,
            identity,
            h2,
            admitted: _admitted,
        } => {
            let conn = http_conn(proxy, route, true, h2, identity, &client, false);
            match web::web(proxy, stream, preface, route, conn).await? {
                Web::Done(done) => Ok(done),
                // `upgrades: false`: HTTP refuses the upgrade, so no tunnel comes back.
                Web::Upgraded { .. } => Err(ConnError::NoRoute(
                    "a connection upgrade inside an upgrade".into(),
                )),
            }
        }
    }
}

/// The error of a refusal by a class's budget.
pub(crate) fn over_budget(class: &'static str, refusal: Refusal) -> ConnError {
    ConnError::OverBudget {
        class,
        reason: refusal.label(),
    }
}

/// Records the client used for decisions, and how it was obtained, on `span`.
pub(super) fn record_client(span: &Span, client: &Client) {
    span.record("client", field::display(client.addr));
    span.record("client_from", field::display(client.from.label()));
}
