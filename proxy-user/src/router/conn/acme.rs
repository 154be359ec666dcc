//! The TLS-ALPN-01 answer (RFC 8737), before any other routing: a ClientHello offering
//! only `acme-tls/1` for a name whose challenge is pending (`router::acme`) completes a
//! handshake with the challenge certificate, negotiating `acme-tls/1`, and is closed —
//! that is all the CA looks at. `acme-tls/1` in any other ClientHello is refused with the
//! `no_application_protocol` alert, as an unknown protocol is.
//!
//! The CA's addresses are unknown in advance, so `allow_from` rules do not apply to these
//! answers; they reveal nothing but a digest the CA already holds.

use super::error::{ConnError, Finished};
use super::preface::Preface;
use super::tls::Tls;
use super::tls_end::{handshake_reason, linger, send_alert};
use super::upstream::ClientIo;
use crate::io::Prefixed;
use crate::protocol::ACME_TLS_ALPN;
use crate::router::hello::ClientHello;
use crate::router::route::RejectAlert;
use crate::router::state::Proxy;
use tokio::io::AsyncWriteExt;
use tracing::info;

/// The route name of challenge answers in logs and metrics.
pub(super) const ACME_ROUTE: &str = "acme-challenge";

/// Whether the ClientHello is the ACME server's, or anyone's offering its protocol.
pub(super) fn offers_acme(hello: &ClientHello) -> bool {
    hello.alpn.iter().any(|p| p == ACME_TLS_ALPN)
}

/// Answers the challenge for the SNI of `hello`, or refuses.
pub(super) async fn answer<'a, C: ClientIo>(
    proxy: &'a Proxy,
    mut client: C,
    pre: Preface,
    hello: &ClientHello,
) -> Result<Tls<'a, C>, ConnError> {
    let sni = hello.sni.as_deref().unwrap_or("");
    let only_acme = matches!(hello.alpn.as_slice(), [only] if only == ACME_TLS_ALPN);
    let config = proxy
        .acme
        .as_ref()
        .filter(|_| only_acme)
        .and_then(|a| a.challenge_tls(sni));
    let Some(config) = config else {
        proxy.metrics.route("none", "reject");
        send_alert(&mut client, RejectAlert::NoApplicationProtocol).await;
        return Err(ConnError::NoRoute(format!(
            "ALPN {ACME_TLS_ALPN} for {sni:?}: no ACME challenge is pending for that name"
        )));
    };
    tracing::Span::current().record("route", ACME_ROUTE);
    proxy.metrics.route(ACME_ROUTE, "terminate");
    let deadline = pre.deadline;
    let replay = Prefixed::new(pre.into_rest(), client);
    let accept = tokio_rustls::TlsAcceptor::from(config)
        .accept(replay)
        .into_fallible();
    match deadline.run("TLS-ALPN-01 handshake", accept).await? {
        Ok(mut tls) => {
            let _ = tls.shutdown().await;
            info!(name = sni, "answered an ACME TLS-ALPN-01 challenge");
            Ok(Tls::Done(Finished::answered(ACME_ROUTE, "none", 0, 0)))
        }
        Err((error, io)) => {
            let reason = handshake_reason(&error);
            linger(io).await;
            proxy.metrics.handshake_failed(ACME_ROUTE, reason);
            Err(ConnError::Handshake {
                route: ACME_ROUTE.to_owned(),
                reason,
                error,
            })
        }
    }
}
