//! The probe's connections, timed; nothing here prints. Each check runs `count` times and
//! answers with the median: TCP connect, the detection handshake (only
//! `teleport-reversetunnel`, as [`crate::client::balancer`] does it), each upgrade with a
//! ClientHello through its tunnel, and with an identity a full TLS connection with the
//! user's certificate, directly and through an upgrade.

use crate::client::balancer::{self, Outcome, PROBE_ALPN};
use crate::client::dial::Connector;
use crate::client::transport::Transport;
use crate::client::upgrade::{self, tls_error, Endpoint, UpgradeMode};
use crate::client::ClientError;
use crate::protocol::HTTP1_ALPN;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// What to probe, and how often.
pub(super) struct Probe {
    pub(super) endpoint: Endpoint,
    /// A connector with the user's certificate (`--identity`, `--cert`).
    pub(super) connector: Option<Connector>,
    /// Attempts per check (at least 1).
    pub(super) count: usize,
}

/// What a direct TLS handshake showed.
pub(super) enum Direct {
    Works(String),
    UpgradeRequired(String),
    Broken(String),
}

/// One upgrade's times.
pub(super) struct Upgraded {
    /// The outer TLS handshake (ALPN `http/1.1`).
    pub(super) tls: Duration,
    /// From the request to the `101` head.
    pub(super) upgrade: Duration,
    /// The ClientHello through the tunnel until the proxy answered.
    pub(super) inner: Duration,
    /// From TCP connect to the proxy's answer.
    pub(super) total: Duration,
    /// What the server chose: `alpn-ping` or `alpn`.
    pub(super) protocol: String,
}

impl Probe {
    /// TCP to the endpoint (through `HTTPS_PROXY` when it applies), its failure named.
    async fn connect(&self) -> Result<tokio::net::TcpStream, ClientError> {
        self.endpoint
            .tcp()
            .await
            .map_err(|error| ClientError::Unreachable {
                proxy: self.addr().to_owned(),
                error,
            })
    }

    pub(super) fn addr(&self) -> &str {
        &self.endpoint.addr
    }

    /// Runs `f` `count` times (stopping at the first failure) and returns the median.
    pub(super) async fn repeat<F, Fut, E>(&self, mut f: F) -> Result<Duration, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Duration, E>>,
    {
        let mut times = Vec::with_capacity(self.count);
        for _ in 0..self.count {
            times.push(f().await?);
        }
        Ok(median(&mut times))
    }

    /// TCP connect (through `HTTPS_PROXY` when it applies).
    pub(super) async fn tcp(&self) -> std::io::Result<Duration> {
        self.repeat(|| async {
            let t = Instant::now();
            self.endpoint.tcp().await.map(|_| t.elapsed())
        })
        .await
    }

    /// One handshake offering `tls`'s ALPNs, timed from TCP connected.
    async fn handshake(
        &self,
        tls: &tokio_rustls::TlsConnector,
    ) -> Result<(Outcome, Duration), ClientError> {
        let tcp = self.connect().await?;
        let t = Instant::now();
        let r = self.endpoint.tls(tls, tcp).await;
        let took = t.elapsed();
        match r {
            Ok(mut s) => {
                let o = balancer::classify(Ok(s.get_ref().1.alpn_protocol()));
                let _ = s.shutdown().await;
                Ok((o, took))
            }
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(c)) => Err(ClientError::ServerCert {
                    proxy: self.addr().to_owned(),
                    name: self.endpoint.host.clone(),
                    error: format!("{c:?}"),
                }),
                _ => Ok((balancer::classify(Err(&e)), took)),
            },
        }
    }

    /// The detection handshake (only `teleport-reversetunnel`), timed from TCP connected.
    pub(super) async fn direct(&self) -> Result<(Direct, Duration), ClientError> {
        let tls = self.endpoint.tls_connector(&[PROBE_ALPN])?;
        let (first, t0) = self.handshake(&tls).await?;
        let mut times = vec![t0];
        for _ in 1..self.count {
            match self.handshake(&tls).await {
                Ok((o, t)) if o == first => times.push(t),
                _ => break,
            }
        }
        let took = median(&mut times);
        let direct = match first {
            Outcome::Negotiated => Direct::Works(format!("{PROBE_ALPN} negotiated")),
            Outcome::NoAlpn => Direct::UpgradeRequired(
                "answered with no ALPN (a load balancer terminates TLS)".into(),
            ),
            Outcome::Unoffered(p) => Direct::UpgradeRequired(format!(
                "negotiated ALPN {} that was never offered (a load balancer terminates TLS)",
                p.map_or("?".into(), |p| format!("{p:?}"))
            )),
            Outcome::Other(e) => Direct::Broken(format!("the TLS handshake failed: {e}")),
            Outcome::NoApplicationProtocolAlert => {
                let both = self.endpoint.tls_connector(&[PROBE_ALPN, HTTP1_ALPN])?;
                match self.handshake(&both).await?.0 {
                    Outcome::NoApplicationProtocolAlert | Outcome::Negotiated => Direct::Works(
                        format!("the proxy routes by ALPN, though it has no route for {PROBE_ALPN}"),
                    ),
                    Outcome::Unoffered(Some(p)) => Direct::UpgradeRequired(format!(
                        "refused {PROBE_ALPN} (no_application_protocol) and accepted {p} (a load balancer terminates TLS)"
                    )),
                    _ => Direct::UpgradeRequired(format!(
                        "refused {PROBE_ALPN} with no_application_protocol (a load balancer terminates TLS)"
                    )),
                }
            }
        };
        Ok((direct, took))
    }

    /// One upgrade, `count` times: TCP, outer TLS, request → 101, and a ClientHello through
    /// the tunnel that the proxy answers (negotiated or refused: either is the proxy's TLS).
    pub(super) async fn upgrade(&self, mode: UpgradeMode) -> Result<Upgraded, String> {
        let inner = self
            .endpoint
            .tls_connector(&[PROBE_ALPN])
            .map_err(|e| e.to_string())?;
        let outer = self
            .endpoint
            .tls_connector(&[HTTP1_ALPN])
            .map_err(|e| e.to_string())?;
        let mut samples = Vec::new();
        for _ in 0..self.count {
            let start = Instant::now();
            let tcp = self
                .endpoint
                .tcp()
                .await
                .map_err(|e| format!("TCP connect: {e}"))?;
            let t = Instant::now();
            let tls = self
                .endpoint
                .tls(&outer, tcp)
                .await
                .map_err(|e| format!("TLS with ALPN http/1.1: {}", tls_error(&e)))?;
            let tls_took = t.elapsed();
            let tunnel = upgrade::upgrade(tls, mode, self.addr()).await?;
            let (upgrade_took, protocol) = (tunnel.took, tunnel.protocol.clone());
            let t = Instant::now();
            let answered = self.endpoint.tls(&inner, tunnel.transport()).await;
            let inner_took = t.elapsed();
            match answered {
                Ok(mut s) => {
                    let _ = s.shutdown().await;
                }
                Err(e) => match balancer::classify(Err(&e)) {
                    // The proxy's own refusal came back through the tunnel.
                    Outcome::NoApplicationProtocolAlert => {}
                    _ if matches!(
                        e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
                        Some(rustls::Error::AlertReceived(_))
                    ) => {}
                    _ => {
                        return Err(format!(
                            "101 ({protocol}), but no TLS answer through the tunnel: {}",
                            tls_error(&e)
                        ))
                    }
                },
            }
            samples.push(Upgraded {
                tls: tls_took,
                upgrade: upgrade_took,
                inner: inner_took,
                total: start.elapsed(),
                protocol,
            });
        }
        let pick = |f: fn(&Upgraded) -> Duration| {
            let mut v: Vec<Duration> = samples.iter().map(f).collect();
            median(&mut v)
        };
        Ok(Upgraded {
            tls: pick(|u| u.tls),
            upgrade: pick(|u| u.upgrade),
            inner: pick(|u| u.inner),
            total: pick(|u| u.total),
            protocol: samples
                .first()
                .map(|u| u.protocol.clone())
                .unwrap_or_default(),
        })
    }

    /// A full connection with the user's certificate straight to the proxy, from TCP
    /// connect to the end of the TLS handshake.
    pub(super) async fn with_identity_direct(
        &self,
        c: &Connector,
    ) -> Result<Duration, ClientError> {
        self.repeat(|| async {
            let t = Instant::now();
            let tcp = self.connect().await?;
            let mut s = c.handshake(Transport::Tcp(tcp)).await?;
            let took = t.elapsed();
            let _ = s.shutdown().await;
            Ok(took)
        })
        .await
    }

    /// The same through the `mode` upgrade, from TCP connect to the end of the inner TLS
    /// handshake.
    pub(super) async fn with_identity_through(
        &self,
        c: &Connector,
        mode: UpgradeMode,
    ) -> Result<Duration, ClientError> {
        self.repeat(|| async {
            let t = Instant::now();
            let tunnel = self.endpoint.tunnel(mode).await?;
            let mut s = c.handshake(tunnel.transport()).await?;
            let took = t.elapsed();
            let _ = s.shutdown().await;
            Ok(took)
        })
        .await
    }
}

/// The median of `v` (zero when empty).
pub(super) fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
