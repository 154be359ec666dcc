//! Is the proxy behind a layer-7 load balancer (docs/client.md, "Behind a layer-7 load
//! balancer")? Before the first real dial to an address, one TLS handshake offers only
//! ALPN `teleport-reversetunnel` (no client certificate): a proxy doing TLS routing
//! negotiates it; a balancer that terminates TLS answers with no ALPN, an ALPN that was
//! not offered, or a `no_application_protocol` alert. Then every connection tunnels
//! through the connection upgrade.
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
//!
//! This file runs the handshakes and keeps the cache; [`decision`] names what a
//! handshake showed and the path chosen (pure).

mod decision;

pub(crate) use decision::{classify, Decision, Outcome, Why};

use super::upgrade::{Endpoint, Override, UpgradeMode};
use super::ClientError;
use crate::protocol::HTTP1_ALPN as HTTP1;
use std::collections::HashMap;
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
