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
mod detection;
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
use super::http;
use super::state::Proxy;
use super::trust::{Client, ClientFrom};
use super::webapi::Forwarded;
use crate::io::BoxedIo;
use detection::{Found, Routable};
use futures_util::FutureExt as _;
use preface::Preface;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tls::Tls;
use tokio::net::TcpStream;
use tracing::{field, Instrument, Span};
use upstream::ClientIo;
use web::{http_conn, Web};

/// Handles one connection accepted on the single port from `peer`.
///
/// Written so that its own future stays small while a pair is relayed (an idle
/// connection's memory): each stage is boxed, and every value a stage needs is moved
/// into it whole, never matched apart or borrowed here, so none of them is stored in this
/// future across the relay.
pub(crate) async fn handle(
    proxy: &Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Result<Finished, ConnError> {
    let found = Box::pin(detection::detect(proxy, stream, peer)).await?;
    let _active = proxy.metrics.active_guard(found.routable.label());
    let next = Box::pin(route(proxy, found)).await?;
    next.run(proxy).await
}

/// What a detected connection does next; [`Next::run`] runs it to its end.
enum Next<'a> {
    Tls(Found),
    /// A legacy plaintext pair, and its admission by the `legacy-plaintext` class.
    Relay(plaintext::PlainRelay, Admitted),
    /// Plaintext HTTP to the web route.
    Web {
        stream: TcpStream,
        pre: Preface,
        route: &'a super::state::Route,
        client: Client,
        admitted: Admitted,
    },
}

/// A stage's future, boxed.
type Stage<'a> = Pin<Box<dyn Future<Output = Result<Finished, ConnError>> + Send + 'a>>;

impl<'a> Next<'a> {
    fn run(self, proxy: &'a Arc<Proxy>) -> Stage<'a> {
        match self {
            Next::Tls(found) => {
                tls_connection(proxy, found.stream, found.pre, found.client, found.pending)
            }
            // A combinator, not an `async` block: that would store the relay twice.
            Next::Relay(relay, admitted) => Box::pin(relay.run(proxy).map(move |done| {
                drop(admitted);
                Ok(done)
            })),
            Next::Web {
                stream,
                pre,
                route,
                client,
                admitted,
            } => Box::pin(async move {
                let _admitted = admitted;
                let conn = http_conn(proxy, route, false, false, None, &client, true);
                web_connection(proxy, stream, pre, route, conn, client).await
            }),
        }
    }
}

/// Routes a detected connection: TLS goes on to its ClientHello; a legacy plaintext
/// protocol is admitted by its class (from accept when its first bytes said so), then
/// dialed or handed to the web route.
async fn route<'a>(proxy: &'a Proxy, found: Found) -> Result<Next<'a>, ConnError> {
    let route = match found.routable {
        Routable::Tls => return Ok(Next::Tls(found)),
        Routable::Ssh => "ssh",
        Routable::Http => "web",
        Routable::Postgres(_) => "postgres",
    };
    let Found {
        stream,
        pre,
        client,
        pending,
        early,
        ..
    } = found;
    let admitted = if early == LEGACY {
        pending
    } else {
        let class = proxy
            .admission
            .admit(LEGACY, client.addr.ip())
            .map_err(|r| over_budget(LEGACY, r))?;
        drop(pending);
        class
    };
    Ok(
        match plaintext::plaintext(proxy, stream, pre, route, client).await? {
            plaintext::Plain::Relay(relay) => Next::Relay(relay, admitted),
            plaintext::Plain::Web(stream, pre, route, client) => Next::Web {
                stream,
                pre,
                route,
                client,
                admitted,
            },
        },
    )
}

/// A TLS connection on the socket, from `client` (as believed): its ClientHello, route
/// and handshake ([`tls::tls`], boxed and gone once it returns), then what comes next.
/// Chained with `then` rather than written as an `async fn`, which would keep its
/// arguments and the stage's answer beside the relay for the connection's whole life.
fn tls_connection<'a, C: ClientIo>(
    proxy: &'a Arc<Proxy>,
    stream: C,
    pre: Preface,
    client: Client,
    pending: Admitted,
) -> Stage<'a> {
    let routed = Box::pin(tls::tls(proxy, stream, pre, client, Some(pending)));
    Box::pin(routed.then(move |tls| match tls {
        Err(e) => Box::pin(std::future::ready(Err(e))),
        Ok(tls) => after_tls(proxy, tls, client),
    }))
}

/// What follows a routed TLS connection's stage.
fn after_tls<'a, C: ClientIo>(proxy: &'a Arc<Proxy>, tls: Tls<'a, C>, client: Client) -> Stage<'a> {
    match tls {
        Tls::Done(done) => Box::pin(std::future::ready(Ok(done))),
        Tls::Relay(relay) => Box::pin(tls_relay::run(proxy, relay).map(Ok)),
        Tls::Web {
            stream,
            preface,
            route,
            identity,
            h2,
            admitted,
        } => {
            let conn = http_conn(proxy, route, true, h2, identity, &client, true);
            let web = web_connection(proxy, stream, preface, route, conn, client);
            Box::pin(web.map(move |done| {
                drop(admitted);
                done
            }))
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
    match Box::pin(tls::tls(proxy, tunnel, pre, client, None)).await? {
        Tls::Done(done) => Ok(done),
        Tls::Relay(relay) => Ok(tls_relay::run(proxy, relay).await),
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
