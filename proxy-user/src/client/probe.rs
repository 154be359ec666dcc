//! `switchyard probe https://HOST:PORT`: the `curl … /webapi/connectionupgrade` check of a
//! proxy behind a load balancer, in plain words. One line per check, each with its
//! round-trip time (the median of `--count` attempts):
//!
//! - reachable: TCP connect (through `HTTPS_PROXY` when set);
//! - TLS routing (ALPN): the detection handshake of [`super::detect`] — works directly, or
//!   an upgrade is required, and why;
//! - websocket upgrade, legacy upgrade: TLS with ALPN `http/1.1`, the request, `101`, and a
//!   TLS ClientHello through the tunnel that the proxy answers;
//! - with an identity: a full TLS connection with the user's certificate directly and
//!   through the upgrade, and the latency the upgrade adds;
//! - a conclusion: how clients will connect.
//!
//! Exit status 0 when clients can use the proxy one way or another, 1 otherwise.

use super::balancer::{self, Outcome, PROBE_ALPN};
use super::dial::{Connector, Dialer, Verify};
use super::http_proxy::ProxyEnv;
use super::identity::{load_roots, Identity, IdentityFiles};
use super::transport::Transport;
use super::upgrade::{tls_error, Endpoint, UpgradeMode};
use super::ClientError;
use crate::io::tls::provider;
use crate::protocol::HTTP1_ALPN;
use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Prints one line on stdout; a closed stdout (`| head`) is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `switchyard probe`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ProbeArgs {
    /// The proxy, or the load balancer in front of it: https://HOST:PORT (HOST is checked
    /// against the certificate and sent as SNI).
    pub(crate) url: String,
    /// Cluster CA certificate(s) (PEM) the server certificate must chain to (default: the
    /// identity's ca.crt).
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// An identity (as for the local proxies): adds a full TLS connection with the user's
    /// certificate, directly and through the upgrade.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub(crate) identity: Option<PathBuf>,
    /// User certificate (PEM), with --key and --ca.
    #[arg(long, requires_all = ["key", "ca"])]
    pub(crate) cert: Option<PathBuf>,
    /// User private key (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Do not check the server certificate (reachability only; clients will check it).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// The upgrade clients are going to use (both are probed).
    #[arg(long, value_enum, default_value_t = UpgradeMode::Websocket)]
    pub(crate) upgrade_mode: UpgradeMode,
    /// ALPN of the connection made with the identity.
    #[arg(long, default_value = PROBE_ALPN)]
    pub(crate) alpn: String,
    /// SNI of the connection made with the identity (default: HOST).
    #[arg(long)]
    pub(crate) sni: Option<String>,
    /// Attempts per check; times are their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) count: u32,
}

/// `https://HOST:PORT[/…]` (or `HOST:PORT`; port 443 when omitted) → (`host:port`, host).
pub(crate) fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => rest,
        Some((s, _)) => {
            return Err(format!(
                "`{url}`: the proxy speaks TLS, use https:// (not {s}://)"
            ))
        }
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    let has_port = match authority.rsplit_once(':') {
        Some((h, p)) => p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')),
        None => false,
    };
    let addr = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    crate::config::host_port("url", &addr).map_err(|e| e.to_string())?;
    let (host, _) = addr.rsplit_once(':').expect("checked host:port");
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((addr, host))
}

/// Runs the probe, printing as it goes.
pub(crate) async fn run(args: &ProbeArgs) -> Result<ExitCode, ClientError> {
    let (addr, host) = parse_url(&args.url).map_err(ClientError::Usage)?;
    let identity = match (&args.identity, &args.cert, &args.key) {
        (Some(dir), ..) => {
            let mut files = IdentityFiles::from_identity(dir)?;
            if let Some(ca) = &args.ca {
                files.ca = ca.clone();
            }
            Some(Identity::load(&files)?)
        }
        (None, Some(cert), Some(key)) => Some(Identity::load(&IdentityFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: args.ca.clone().expect("clap requires --ca with --cert"),
        })?),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if args.insecure {
        Arc::new(NoVerify)
    } else {
        let roots =
            match (&identity, &args.ca) {
                (Some(id), _) => id.roots.clone(),
                (None, Some(ca)) => Arc::new(load_roots(ca)?),
                (None, None) => return Err(ClientError::Usage(
                    "pass --ca FILE (the cluster CA), an identity (--identity DIR), or --insecure"
                        .into(),
                )),
            };
        WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| ClientError::Usage(format!("CA unusable: {e}")))?
    };
    let endpoint = Endpoint::new(&addr, &host, verifier.clone())?;
    let connector = match identity {
        Some(identity) => {
            let dialer = Dialer::new(&addr, identity)?;
            Some(dialer.connector(args.sni.as_deref(), &[&args.alpn], Verify::Proxy)?)
        }
        None => None,
    };
    let probe = Probe {
        endpoint,
        connector,
        count: args.count as usize,
    };
    Ok(if probe.run(args.upgrade_mode).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct Probe {
    endpoint: Endpoint,
    connector: Option<Connector>,
    count: usize,
}

/// What a direct TLS handshake showed.
enum Direct {
    Works(String),
    UpgradeRequired(String),
    Broken(String),
}

impl Probe {
    fn addr(&self) -> &str {
        &self.endpoint.addr
    }

    /// All checks; true when clients can use the proxy.
    async fn run(&self, mode: UpgradeMode) -> bool {
        let addr = self.addr().to_owned();
        let mut via_proxy = false;
        match ProxyEnv::get().for_addr(&self.endpoint.addr) {
            Ok(Some(p)) => {
                via_proxy = true;
                say!("via HTTP proxy {} ({}, CONNECT)", p.addr, p.var)
            }
            Ok(None) => {}
            Err(e) => {
                say!("reachable: no — {e}");
                return false;
            }
        }
        if self.count > 1 {
            say!("times: median of {} attempts", self.count);
        }

        // Reachable?
        let tcp = self
            .repeat(|| async {
                let t = Instant::now();
                self.endpoint.tcp().await.map(|_| t.elapsed())
            })
            .await;
        match tcp {
            Ok(t) if via_proxy => say!(
                "reachable: yes (TCP connect and CONNECT through the HTTP proxy {})",
                ms(t)
            ),
            Ok(t) => say!("reachable: yes (TCP connect {})", ms(t)),
            Err(e) => {
                say!("reachable: no — TCP connect to {addr} failed: {e}");
                say!("conclusion: clients cannot reach {addr}");
                return false;
            }
        }

        // TLS routing directly?
        let direct = self.direct().await;
        let direct_ok = match &direct {
            Ok((Direct::Works(why), t)) => {
                say!(
                    "TLS routing (ALPN): works directly (TLS handshake {}; {why})",
                    ms(*t)
                );
                true
            }
            Ok((Direct::UpgradeRequired(why), t)) => {
                say!(
                    "TLS routing (ALPN): upgrade required — the server at {addr} {why} (answer in {})",
                    ms(*t)
                );
                false
            }
            Ok((Direct::Broken(why), _)) => {
                say!("TLS routing (ALPN): unclear — {why}");
                false
            }
            Err(e) => {
                say!("TLS: fails — {e}");
                false
            }
        };

        // The two upgrades.
        let mut works = [false, false];
        let mut connect = [None, None];
        for (i, m) in [UpgradeMode::Websocket, UpgradeMode::Legacy]
            .into_iter()
            .enumerate()
        {
            match self.upgrade(m).await {
                Ok(u) => {
                    works[i] = true;
                    connect[i] = Some(u.total);
                    say!(
                        "{m} upgrade: works (101 in {}, {}; outer TLS {}; the proxy answered TLS through the tunnel in {})",
                        ms(u.upgrade),
                        u.protocol,
                        ms(u.tls),
                        ms(u.inner)
                    );
                }
                Err(e) => say!("{m} upgrade: fails — {e}"),
            }
        }

        // With the identity: a full connection each way.
        if let Some(c) = &self.connector {
            self.with_identity(c, direct_ok, &works).await;
        } else if let (true, Some(ws)) = (direct_ok, connect[0]) {
            if let Ok((_, d)) = &direct {
                let tcp = tcp.unwrap_or_default();
                let direct_total = tcp + *d;
                say!(
                    "connect latency (TCP + TLS handshake, no client certificate): direct {}, through the websocket upgrade {} ({})",
                    ms(direct_total),
                    ms(ws),
                    added(ws, direct_total)
                );
            }
        }

        let chosen = match mode {
            UpgradeMode::Websocket => works[0],
            UpgradeMode::Legacy => works[1],
        };
        let (usable, conclusion) = match (direct_ok, chosen, works) {
            (true, _, _) => (true, "clients will connect directly (TLS routing by ALPN)".to_owned()),
            (false, true, _) => (true, format!("clients will tunnel through the {mode} upgrade")),
            (false, false, [true, _]) => (
                true,
                "clients will tunnel through the websocket upgrade (drop --upgrade-mode legacy)".into(),
            ),
            (false, false, [_, true]) => (
                true,
                "clients need --upgrade-mode legacy: the balancer passes only the legacy upgrade"
                    .into(),
            ),
            (false, false, _) => (
                false,
                match &direct {
                    Err(_) | Ok((Direct::Broken(_), _)) => {
                        format!("clients cannot use {addr}: fix the TLS problem above")
                    }
                    Ok(_) => format!(
                        "clients cannot use {addr}: TLS routing needs an upgrade and the balancer passes neither upgrade to /webapi/connectionupgrade"
                    ),
                },
            ),
        };
        say!("conclusion: {conclusion}");
        usable
    }

    /// Runs `f` `count` times (stopping at the first failure) and returns the median.
    async fn repeat<F, Fut, E>(&self, mut f: F) -> Result<Duration, E>
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

    /// One handshake offering `tls`'s ALPNs, timed from TCP connected.
    async fn handshake(
        &self,
        tls: &tokio_rustls::TlsConnector,
    ) -> Result<(Outcome, Duration), ClientError> {
        let tcp = self
            .endpoint
            .tcp()
            .await
            .map_err(|error| ClientError::Unreachable {
                proxy: self.addr().to_owned(),
                error,
            })?;
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
    async fn direct(&self) -> Result<(Direct, Duration), ClientError> {
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
    async fn upgrade(&self, mode: UpgradeMode) -> Result<Upgraded, String> {
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
            let tunnel = super::upgrade::upgrade(tls, mode, self.addr()).await?;
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
            protocol: samples[0].protocol.clone(),
        })
    }

    /// A full connection with the user's certificate: directly and through each working
    /// upgrade, from TCP connect to the end of the TLS handshake.
    async fn with_identity(&self, c: &Connector, direct_ok: bool, works: &[bool; 2]) {
        let what = format!(
            "connect with the identity (SNI {}, ALPN {})",
            c.sni,
            c.alpn.join(",")
        );
        let direct =
            if direct_ok {
                let r = self
                    .repeat(|| async {
                        let t = Instant::now();
                        let tcp = self.endpoint.tcp().await.map_err(|error| {
                            ClientError::Unreachable {
                                proxy: self.addr().to_owned(),
                                error,
                            }
                        })?;
                        let mut s = c.handshake(Transport::Tcp(tcp)).await?;
                        let took = t.elapsed();
                        let _ = s.shutdown().await;
                        Ok::<_, ClientError>(took)
                    })
                    .await;
                match r {
                    Ok(t) => Some(t),
                    Err(e) => {
                        say!("{what}, direct: fails — {e}");
                        None
                    }
                }
            } else {
                None
            };
        let mut parts = Vec::new();
        if let Some(d) = direct {
            parts.push(format!("direct {}", ms(d)));
        }
        for (i, m) in [UpgradeMode::Websocket, UpgradeMode::Legacy]
            .into_iter()
            .enumerate()
        {
            if !works[i] {
                continue;
            }
            let r = self
                .repeat(|| async {
                    let t = Instant::now();
                    let tunnel = self.endpoint.tunnel(m).await?;
                    let mut s = c.handshake(tunnel.transport()).await?;
                    let took = t.elapsed();
                    let _ = s.shutdown().await;
                    Ok::<_, ClientError>(took)
                })
                .await;
            match (r, direct) {
                (Ok(t), Some(d)) => parts.push(format!(
                    "through the {m} upgrade {} ({})",
                    ms(t),
                    added(t, d)
                )),
                (Ok(t), None) => parts.push(format!("through the {m} upgrade {}", ms(t))),
                (Err(e), _) => parts.push(format!("through the {m} upgrade: fails — {e}")),
            }
        }
        if !parts.is_empty() {
            say!("{what}: {}", parts.join(", "));
        }
    }
}

/// One upgrade's times.
struct Upgraded {
    tls: Duration,
    upgrade: Duration,
    inner: Duration,
    total: Duration,
    protocol: String,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// `1.23 ms`.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `+2.10 ms over direct`.
fn added(upgraded: Duration, direct: Duration) -> String {
    let diff = upgraded.as_secs_f64() - direct.as_secs_f64();
    format!("{:+.2} ms over direct", diff * 1000.0)
}

/// `--insecure`: any certificate (the probe then says nothing about trust).
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = |u| parse_url(u).unwrap();
        assert_eq!(
            p("https://proxy.example.com:8443"),
            ("proxy.example.com:8443".into(), "proxy.example.com".into())
        );
        assert_eq!(
            p("https://proxy.example.com/webapi/ping"),
            ("proxy.example.com:443".into(), "proxy.example.com".into())
        );
        assert_eq!(
            p("localhost:3080"),
            ("localhost:3080".into(), "localhost".into())
        );
        assert_eq!(p("https://[::1]:3080"), ("[::1]:3080".into(), "::1".into()));
        assert_eq!(p("https://[::1]"), ("[::1]:443".into(), "::1".into()));
        assert!(parse_url("http://proxy:80").is_err());
        assert!(parse_url("https://").is_err());
    }

    #[test]
    fn times_read_in_milliseconds() {
        assert_eq!(ms(Duration::from_micros(1420)), "1.42 ms");
        assert_eq!(
            added(Duration::from_micros(3500), Duration::from_micros(1500)),
            "+2.00 ms over direct"
        );
        let mut v = vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ];
        assert_eq!(median(&mut v), Duration::from_millis(2));
    }
}
