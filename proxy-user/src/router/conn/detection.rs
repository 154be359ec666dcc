//! What comes before routing: the connection's admission by its first bytes
//! ([`first_bytes`](super::first_bytes)), then detection of the protocol through one
//! [`Preface`], PROXY headers judged on the way (`proxy_service.proxy_protocol`,
//! `trusted_proxies`; `router::trust`), counted once in the accepted metrics. [`detect`]
//! hands what it found to `conn::handle` by value: the borrows it needed stay in this
//! stage's (boxed, short-lived) future, so the connection's own future stays small while
//! a pair is relayed.

use super::error::{hex_preview, ConnError};
use super::first_bytes;
use super::preface::{Deadline, Preface};
use super::record_client;
use crate::config::ProxyProtocol;
use crate::router::admission::Admitted;
use crate::router::detect::{detect as detect_bytes, Detected, PgRequest, ProxyHeader};
use crate::router::metrics::Accepted;
use crate::router::state::Proxy;
use crate::router::trust::{proxy_verdict, Client, ClientAddr, ClientFrom, Verdict};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tracing::{field, Span};

/// A detected connection, ready to route.
pub(super) struct Found {
    pub(super) stream: TcpStream,
    /// The bytes read so far, settled (PROXY headers skipped).
    pub(super) pre: Preface,
    /// The client as believed.
    pub(super) client: Client,
    /// Its admission so far: the class of its first bytes, or `unclassified`.
    pub(super) pending: Admitted,
    /// That class's name.
    pub(super) early: &'static str,
    pub(super) routable: Routable,
}

/// Admits the connection by its first bytes, detects its protocol and counts it.
pub(super) async fn detect(
    proxy: &Proxy,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<Found, ConnError> {
    let limits = &proxy.config.limits;
    let deadline = Deadline::after(limits.handshake_timeout);
    let (pending, early) = first_bytes::admit(proxy, &stream, peer, deadline).await?;
    let mut pre = Preface::accepted(deadline, limits.max_hello_bytes);
    let mut client = Client::peer(peer);
    let detected = proxy_headers(proxy, &mut stream, &mut pre, peer, &mut client).await;
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
    Ok(Found {
        stream,
        pre,
        client,
        pending,
        early,
        routable,
    })
}

/// What detection found that can be routed: detection itself never returns anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routable {
    Tls,
    Ssh,
    Http,
    Postgres(PgRequest),
}

impl Routable {
    /// The `protocol` label of the accepted and active metrics.
    pub(super) fn label(self) -> &'static str {
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
    Ok(Some(match detect_bytes(bytes) {
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

/// Detection of the first bytes, PROXY headers judged on the way
/// (`proxy_service.proxy_protocol`, `trusted_proxies`): `client` becomes a trusted
/// header's source; an untrusted one's is only `claimed_client`. Returns what was found
/// and whether a header came first.
async fn proxy_headers(
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
