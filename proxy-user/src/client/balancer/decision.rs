//! What the detection saw and what it decided, pure: a handshake's result classified
//! ([`Outcome`]), the path chosen for an address and why ([`Decision`], [`Why`]), and
//! the log line that says so.

use crate::client::upgrade::{tls_error, UpgradeMode, OVERRIDE_ENV};
use crate::protocol::REVERSE_TUNNEL_ALPN as PROBE_ALPN;
use rustls::{AlertDescription, PeerMisbehaved};
use std::fmt;
use std::io;

/// What one handshake offering only [`PROBE_ALPN`] showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The offered ALPN was negotiated.
    Negotiated,
    /// The handshake completed without ALPN.
    NoAlpn,
    /// The server chose an ALPN that was not offered.
    Unoffered(Option<String>),
    /// The server refused with `no_application_protocol`.
    NoApplicationProtocolAlert,
    /// Anything else: another alert, a reset, …
    Other(String),
}

/// Classifies a handshake result: the negotiated ALPN, or the error.
pub(crate) fn classify(result: Result<Option<&[u8]>, &io::Error>) -> Outcome {
    match result {
        Ok(None) => Outcome::NoAlpn,
        Ok(Some(p)) if p == PROBE_ALPN.as_bytes() => Outcome::Negotiated,
        Ok(Some(p)) => Outcome::Unoffered(Some(String::from_utf8_lossy(p).into_owned())),
        Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)) => {
                Outcome::NoApplicationProtocolAlert
            }
            Some(rustls::Error::PeerMisbehaved(
                PeerMisbehaved::SelectedUnofferedApplicationProtocol,
            )) => Outcome::Unoffered(None),
            _ => Outcome::Other(tls_error(e)),
        },
    }
}

/// The path chosen for an address, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) upgrade: bool,
    pub(crate) why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    Override,
    Negotiated,
    NoAlpn,
    Unoffered(Option<String>),
    /// `no_application_protocol`, confirmed: the second handshake negotiated this (or none).
    AlertConfirmed(Option<String>),
    /// `no_application_protocol` twice: a TLS router without a tunnel route.
    RouterRefusesTunnel,
    /// Detection inconclusive (kept out of the cache).
    Inconclusive(String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Override => write!(f, "{OVERRIDE_ENV}"),
            Why::Negotiated => write!(f, "{PROBE_ALPN} negotiated"),
            Why::NoAlpn => write!(f, "no ALPN negotiated"),
            Why::Unoffered(Some(p)) => write!(f, "it negotiated ALPN {p:?}, which was not offered"),
            Why::Unoffered(None) => write!(f, "it negotiated an ALPN that was not offered"),
            Why::AlertConfirmed(Some(p)) => write!(
                f,
                "{PROBE_ALPN} refused with no_application_protocol, {p} accepted"
            ),
            Why::AlertConfirmed(None) => write!(
                f,
                "{PROBE_ALPN} refused with no_application_protocol, then no ALPN negotiated"
            ),
            Why::RouterRefusesTunnel => write!(
                f,
                "it routes by ALPN but has no route for {PROBE_ALPN} (no_application_protocol)"
            ),
            Why::Inconclusive(e) => write!(f, "detection inconclusive: {e}"),
        }
    }
}

impl Decision {
    /// One log line: "proxy A is behind a layer-7 load balancer (why): using …".
    pub(crate) fn describe(&self, addr: &str, mode: UpgradeMode) -> String {
        match (self.upgrade, &self.why) {
            (true, Why::Override) => format!(
                "proxy {addr}: connection upgrade forced by {OVERRIDE_ENV}: using {mode} connection upgrade"
            ),
            (false, Why::Override) => format!(
                "proxy {addr}: connection upgrade turned off by {OVERRIDE_ENV}: TLS routing directly"
            ),
            (true, why) => format!(
                "proxy {addr} is behind a layer-7 load balancer ({why}): using {mode} connection upgrade"
            ),
            (false, why) => format!("proxy {addr} does TLS routing directly ({why})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_err(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_outcomes() {
        assert_eq!(
            classify(Ok(Some(b"teleport-reversetunnel"))),
            Outcome::Negotiated
        );
        assert_eq!(classify(Ok(None)), Outcome::NoAlpn);
        assert_eq!(
            classify(Ok(Some(b"http/1.1"))),
            Outcome::Unoffered(Some("http/1.1".into()))
        );
        let alert = tls_err(rustls::Error::AlertReceived(
            AlertDescription::NoApplicationProtocol,
        ));
        assert_eq!(classify(Err(&alert)), Outcome::NoApplicationProtocolAlert);
        let unoffered = tls_err(rustls::Error::PeerMisbehaved(
            PeerMisbehaved::SelectedUnofferedApplicationProtocol,
        ));
        assert_eq!(classify(Err(&unoffered)), Outcome::Unoffered(None));
        let other = tls_err(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure,
        ));
        assert!(matches!(classify(Err(&other)), Outcome::Other(_)));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(classify(Err(&reset)), Outcome::Other(_)));
    }

    #[test]
    fn decisions_read_as_one_line() {
        let d = Decision {
            upgrade: true,
            why: Why::NoAlpn,
        };
        assert_eq!(
            d.describe("127.0.0.1:8443", UpgradeMode::Websocket),
            "proxy 127.0.0.1:8443 is behind a layer-7 load balancer (no ALPN negotiated): using websocket connection upgrade"
        );
        let d = Decision {
            upgrade: false,
            why: Why::Override,
        };
        assert!(d
            .describe("p:443", UpgradeMode::Legacy)
            .contains("turned off by SWITCHYARD_TLS_ROUTING_CONN_UPGRADE"));
    }
}
