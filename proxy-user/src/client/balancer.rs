//! Is the proxy behind a layer-7 load balancer (DESIGN.md §4)? Before the first real dial
//! to an address, one TLS handshake offers only ALPN `teleport-reversetunnel` (no client
//! certificate): a proxy doing TLS routing negotiates it; a balancer that terminates TLS
//! answers with no ALPN, an ALPN that was not offered, or a `no_application_protocol`
//! alert. Then every connection tunnels through the connection upgrade.
//!
//! A Switchyard proxy without `upstreams.tunnel` also answers `teleport-reversetunnel`
//! with `no_application_protocol`. So that alert is confirmed with a second handshake
//! offering `teleport-reversetunnel, http/1.1`: a TLS-terminating balancer negotiates
//! `http/1.1` (or nothing), a TLS router refuses again (it reads the ALPN list, and has no
//! route for the first one) — then TLS routing works directly.
//!
//! The answer is cached per address for the life of the process, and logged once (info
//! with `-v`, else debug). `SWITCHYARD_TLS_ROUTING_CONN_UPGRADE` decides instead when it
//! names the address (or all addresses).

use super::upgrade::{tls_error, Endpoint, Override, UpgradeMode, OVERRIDE_ENV};
use super::ClientError;
use crate::protocol::HTTP1_ALPN as HTTP1;
use rustls::{AlertDescription, PeerMisbehaved};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tracing::{debug, info};

/// The ALPN the detection offers.
pub(crate) use crate::protocol::REVERSE_TUNNEL_ALPN as PROBE_ALPN;
/// Deadline of one detection handshake.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// One detection handshake offering `alpn`: the outcome, or an error that is not about
/// ALPN (unreachable, certificate not trusted).
async fn handshake(endpoint: &Endpoint, alpn: &[&str]) -> Result<Outcome, ClientError> {
    let unreachable = |error| ClientError::Unreachable {
        proxy: endpoint.addr.clone(),
        error,
    };
    let connector = endpoint.tls_connector(alpn)?;
    let attempt = async {
        let tcp = endpoint.tcp().await.map_err(unreachable)?;
        match endpoint.tls(&connector, tcp).await {
            Ok(mut tls) => {
                let outcome = classify(Ok(tls.get_ref().1.alpn_protocol()));
                let _ = tls.shutdown().await;
                Ok(outcome)
            }
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(c)) => Err(ClientError::ServerCert {
                    proxy: endpoint.addr.clone(),
                    name: endpoint.host.clone(),
                    error: format!("{c:?}"),
                }),
                _ => Ok(classify(Err(&e))),
            },
        }
    };
    tokio::time::timeout(DETECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS session within {DETECT_TIMEOUT:?}"),
            )))
        })
}

/// Runs the detection against `endpoint` (no cache, no override).
pub(crate) async fn detect(endpoint: &Endpoint) -> Result<Decision, ClientError> {
    let decide = |upgrade, why| Ok(Decision { upgrade, why });
    match handshake(endpoint, &[PROBE_ALPN]).await? {
        Outcome::Negotiated => decide(false, Why::Negotiated),
        Outcome::NoAlpn => decide(true, Why::NoAlpn),
        Outcome::Unoffered(p) => decide(true, Why::Unoffered(p)),
        Outcome::Other(e) => decide(false, Why::Inconclusive(e)),
        Outcome::NoApplicationProtocolAlert => {
            match handshake(endpoint, &[PROBE_ALPN, HTTP1]).await? {
                Outcome::NoApplicationProtocolAlert => decide(false, Why::RouterRefusesTunnel),
                Outcome::Negotiated => decide(false, Why::Negotiated),
                Outcome::Unoffered(Some(p)) => decide(true, Why::AlertConfirmed(Some(p))),
                Outcome::Unoffered(None) | Outcome::NoAlpn => {
                    decide(true, Why::AlertConfirmed(None))
                }
                // The first answer stands.
                Outcome::Other(_) => decide(true, Why::AlertConfirmed(None)),
            }
        }
    }
}

type Cache = Mutex<HashMap<String, Arc<OnceCell<bool>>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Whether connections to `endpoint` go through the upgrade: the override, else the
/// cached detection, else a detection (logged once per address and process).
pub(crate) async fn upgrade_required(
    endpoint: &Endpoint,
    over: &Override,
    mode: UpgradeMode,
    verbose: bool,
) -> Result<bool, ClientError> {
    let cell = cache()
        .lock()
        .expect("detection cache lock")
        .entry(endpoint.addr.to_ascii_lowercase())
        .or_default()
        .clone();
    let log = |d: &Decision| {
        let line = d.describe(&endpoint.addr, mode);
        if verbose {
            info!("{line}");
        } else {
            debug!("{line}");
        }
    };
    let upgrade = cell
        .get_or_try_init(|| async {
            let d = match over.decide(&endpoint.addr) {
                Some(upgrade) => Decision {
                    upgrade,
                    why: Why::Override,
                },
                None => detect(endpoint).await.map_err(NotCached::Failed)?,
            };
            if let Why::Inconclusive(_) = d.why {
                // The next dial tries again.
                return Err(NotCached::Inconclusive(d));
            }
            log(&d);
            Ok(d.upgrade)
        })
        .await;
    match upgrade {
        Ok(u) => Ok(*u),
        Err(NotCached::Failed(e)) => Err(e),
        Err(NotCached::Inconclusive(d)) => {
            debug!("{}", d.describe(&endpoint.addr, mode));
            Ok(d.upgrade)
        }
    }
}

/// A detection that is not cached.
enum NotCached {
    Failed(ClientError),
    Inconclusive(Decision),
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
