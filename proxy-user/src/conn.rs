//! One client connection, from accept to close: detect (stripping a PROXY header), read the
//! ClientHello, route, terminate or pass TLS through, connect the upstream, relay.
//!
//! Everything before the relay runs under one deadline (`limits.handshake_timeout`), so a
//! slow or silent client costs a timer, not a thread. Each failure is a [`ConnError`] with
//! the metric outcome it counts as; the caller logs it once in the connection's span.
//!
//! The web route (HTTP/1.1 over TLS, or plaintext HTTP) first looks at the request line:
//! the proxy's own endpoints (`upgrade`) are answered here, anything else goes to the web
//! upstream byte for byte. A connection upgrade turns the rest of the connection into a
//! [`Tunnel`] whose bytes re-enter detection and routing as a connection of their own
//! (one level deep: a tunnel's web route does not upgrade again). `-ping` ALPNs get the
//! ping framing of `wire` between the TLS layer and the relay.

use crate::config::ProxyProtocol;
use crate::detect::{detect, Detected, PgRequest, ProxyHeader};
use crate::hello::{self, HelloError};
use crate::relay::{relay, relay_plain, Prefixed, RelayStats};
use crate::route::{Decision, Mode, RejectAlert, RouteEntry, PING_SUFFIX};
use crate::server::Proxy;
use crate::tls::Identity;
use crate::upgrade::{self, Kind, Refused, Target};
use crate::wire;
use std::io;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, field, info_span, Instrument, Span};

/// Room for a PROXY v2 header with TLVs in front of the preface.
const PROXY_HEADER_ALLOWANCE: usize = 4096;

/// Why a connection ended before (or instead of) relaying.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("no complete {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("client closed the connection during {0}")]
    ClosedEarly(&'static str),
    #[error("unrecognised first bytes: {0}")]
    Unknown(String),
    #[error("bad PROXY header: {0}")]
    BadProxy(String),
    #[error("PROXY header required (proxy_service.proxy_protocol: on) but the connection started without one")]
    ProxyRequired,
    #[error("PROXY header refused (proxy_service.proxy_protocol: off)")]
    ProxyForbidden,
    #[error("a second PROXY header is not allowed")]
    SecondProxy,
    #[error("preface larger than {0} bytes (limits.max_hello_bytes)")]
    TooLarge(usize),
    #[error("bad ClientHello: {0}")]
    BadHello(#[from] HelloError),
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("TLS handshake failed on route {route}: {error}")]
    Handshake {
        route: String,
        reason: &'static str,
        error: io::Error,
    },
    #[error("upstream {upstream} of route {route} unreachable: {error}")]
    Upstream {
        route: String,
        upstream: String,
        error: io::Error,
    },
    #[error("connection upgrade refused: {0}")]
    Upgrade(Refused),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A byte stream the proxy can hold behind a pointer.
pub trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}

/// The inner stream of a connection upgrade, whatever framing carries it.
pub type Tunnel = Box<dyn AsyncIo>;

/// A client-side stream: the accepted socket, or what a connection upgrade carries.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The socket itself, when the relay can splice it; `Err(self)` otherwise.
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

impl ClientIo for TcpStream {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}
impl ClientIo for Tunnel {}
impl<S: ClientIo> ClientIo for tokio_rustls::server::TlsStream<Prefixed<S>> {}

/// Whether a connection arrived on a socket or inside a connection upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Outer,
    Inner,
}

impl ConnError {
    /// The `switchyard_detect_outcomes_total{outcome}` label for failures before routing.
    pub fn detect_outcome(&self) -> Option<&'static str> {
        Some(match self {
            ConnError::Timeout(..) => "timeout",
            ConnError::ClosedEarly(_) => "eof",
            ConnError::Unknown(_) => "unknown",
            ConnError::BadProxy(_) => "bad_proxy_header",
            ConnError::ProxyRequired => "proxy_required",
            ConnError::ProxyForbidden => "proxy_forbidden",
            ConnError::SecondProxy => "second_proxy_header",
            ConnError::TooLarge(_) => "too_large",
            ConnError::BadHello(_) => "bad_client_hello",
            _ => return None,
        })
    }
}

/// A finished connection, for the closing log line.
pub struct Finished {
    pub route: String,
    pub stats: RelayStats,
    /// The span of the connection carried by an upgrade (its SNI, ALPN, route and
    /// identity), for the closing line; `None` for a direct connection.
    pub inner: Option<Span>,
}

/// The bytes read so far and where the protocol starts (after any PROXY header).
struct Preface {
    buf: Vec<u8>,
    start: usize,
    deadline: Instant,
    limit: usize,
    timeout: Duration,
}

impl Preface {
    fn rest(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads more bytes before the deadline, within the size limit.
    async fn read_more<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        stage: &'static str,
    ) -> Result<(), ConnError> {
        if self.buf.len() >= self.limit {
            return Err(ConnError::TooLarge(self.limit - PROXY_HEADER_ALLOWANCE));
        }
        let mut chunk = [0u8; 4096];
        let room = (self.limit - self.buf.len()).min(chunk.len());
        let n = timeout_at(self.deadline, stream.read(&mut chunk[..room]))
            .await
            .map_err(|_| ConnError::Timeout(stage, self.timeout))??;
        if n == 0 {
            return Err(ConnError::ClosedEarly(stage));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Handles one accepted connection.
pub async fn handle(proxy: &Proxy, mut stream: TcpStream) -> Result<Finished, ConnError> {
    let limits = &proxy.config.limits;
    let mut pre = Preface {
        buf: Vec::with_capacity(2048),
        start: 0,
        deadline: Instant::now() + limits.handshake_timeout,
        limit: limits.max_hello_bytes + PROXY_HEADER_ALLOWANCE,
        timeout: limits.handshake_timeout,
    };
    let policy = proxy.config.proxy_service.proxy_protocol;
    let mut header: Option<ProxyHeader> = None;
    let detected = loop {
        match detect(pre.rest()) {
            Detected::NeedMore => pre.read_more(&mut stream, "protocol preface").await?,
            Detected::Proxy(h) => {
                if policy == Some(ProxyProtocol::Off) {
                    return Err(ConnError::ProxyForbidden);
                }
                if header.is_some() {
                    return Err(ConnError::SecondProxy);
                }
                proxy.metrics.detect(if h.version == 1 {
                    "proxy_v1"
                } else {
                    "proxy_v2"
                });
                if let Some(src) = h.source {
                    Span::current().record("real_client", tracing::field::display(src));
                }
                pre.start += h.len;
                header = Some(h);
            }
            Detected::BadProxy(m) => return Err(ConnError::BadProxy(m)),
            Detected::Unknown => return Err(ConnError::Unknown(hex_preview(pre.rest()))),
            other => break other,
        }
    };
    if policy == Some(ProxyProtocol::On) && header.is_none() {
        return Err(ConnError::ProxyRequired);
    }
    let ingress = if header.is_some() {
        "proxy_protocol"
    } else {
        "direct"
    };
    let protocol = protocol_label(&detected);
    proxy.metrics.detect(detected.outcome());
    proxy
        .metrics
        .accepted
        .get_or_create(&crate::metrics::Accepted {
            ingress_path: ingress,
            protocol,
        })
        .inc();
    let _active = proxy.metrics.active_guard(protocol);

    match detected {
        Detected::Tls => tls(proxy, stream, pre, Layer::Outer).await,
        Detected::Ssh => plaintext(proxy, stream, &pre, "ssh").await,
        Detected::Http => plaintext(proxy, stream, &pre, "web").await,
        Detected::Postgres(_) => plaintext(proxy, stream, &pre, "postgres").await,
        _ => unreachable!("detection loop only breaks on routable protocols"),
    }
}

fn protocol_label(d: &Detected) -> &'static str {
    match d {
        Detected::Tls => "tls",
        Detected::Ssh => "ssh",
        Detected::Http => "http",
        Detected::Postgres(PgRequest::Ssl | PgRequest::GssEnc | PgRequest::Cancel) => "postgres",
        _ => "unknown",
    }
}

/// Legacy plaintext protocols: relay to the named built-in upstream, bytes already read first.
async fn plaintext(
    proxy: &Proxy,
    client: TcpStream,
    pre: &Preface,
    route: &str,
) -> Result<Finished, ConnError> {
    let read = pre.rest();
    let Some(entry) = proxy
        .table
        .plaintext(route)
        .map(|i| &proxy.table.entries[i])
    else {
        proxy.metrics.route(route, "reject");
        return Err(ConnError::NoRoute(format!(
            "plaintext {route} but no upstreams.{route} is configured"
        )));
    };
    Span::current().record("route", route);
    proxy.metrics.route(route, "relay");
    let consumed = pre.buf.len() as u64;
    if route == "web" {
        return web(proxy, client, read.to_vec(), consumed, entry).await;
    }
    let mut upstream = connect(proxy, entry).await?;
    upstream.write_all(read).await?;
    let buffer = proxy.config.limits.relay_buffer_bytes;
    let mut stats = relay_plain(client, upstream, consumed, buffer).await;
    stats.client_to_upstream += read.len() as u64;
    Ok(Finished {
        inner: None,
        route: route.to_owned(),
        stats,
    })
}

/// TLS: read the whole ClientHello, route it, then pass through or terminate.
async fn tls<C: ClientIo>(
    proxy: &Proxy,
    mut client: C,
    mut pre: Preface,
    layer: Layer,
) -> Result<Finished, ConnError> {
    let max = proxy.config.limits.max_hello_bytes;
    let hello = loop {
        match hello::parse(pre.rest(), max)? {
            Some(h) => break h,
            None => pre.read_more(&mut client, "ClientHello").await?,
        }
    };
    let span = Span::current();
    if let Some(sni) = &hello.sni {
        span.record("sni", sni.as_str());
    }
    span.record("alpn", tracing::field::debug(&hello.alpn));
    let entry = match proxy.table.route(&hello) {
        Decision::Route(i) => i,
        Decision::Reject { reason, alert } => {
            proxy.metrics.route("none", "reject");
            send_alert(&mut client, alert).await;
            return Err(ConnError::NoRoute(reason));
        }
    };
    let route = &proxy.table.entries[entry];
    span.record("route", route.name.as_str());
    let buffer = proxy.config.limits.relay_buffer_bytes;
    match route.mode {
        Mode::Passthrough => {
            proxy.metrics.route(&route.name, "passthrough");
            let mut upstream = connect(proxy, route).await?;
            upstream.write_all(pre.rest()).await?;
            let consumed = pre.buf.len() as u64;
            let mut stats = relay_client(client, upstream, consumed, buffer).await;
            stats.client_to_upstream += pre.rest().len() as u64;
            Ok(Finished {
                inner: None,
                route: route.name.clone(),
                stats,
            })
        }
        Mode::Terminate { .. } => {
            proxy.metrics.route(&route.name, "terminate");
            let config = proxy.tls[entry]
                .clone()
                .expect("terminated routes have a TLS config");
            let started = Instant::now();
            let replay = Prefixed::new(pre.rest().to_vec(), client);
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(replay);
            let tls = match timeout_at(pre.deadline, accept).await {
                Err(_) => {
                    proxy.metrics.handshake_failed(&route.name, "timeout");
                    return Err(ConnError::Timeout("TLS handshake", pre.timeout));
                }
                Ok(Err(error)) => {
                    let reason = handshake_reason(&error);
                    if reason == "no_certificate" && is_detection_probe(&hello.alpn) {
                        // A client checking for a layer-7 balancer: it learnt what it
                        // wanted from the ALPN; not a refusal worth a warning.
                        debug!("answered a TLS routing probe (no client certificate)");
                        return Ok(Finished {
                            inner: None,
                            route: crate::route::TUNNEL_PROBE.to_owned(),
                            stats: RelayStats {
                                mode: "none",
                                ..RelayStats::default()
                            },
                        });
                    }
                    proxy.metrics.handshake_failed(&route.name, reason);
                    return Err(ConnError::Handshake {
                        route: route.name.clone(),
                        reason,
                        error,
                    });
                }
                Ok(Ok(tls)) => tls,
            };
            proxy
                .metrics
                .handshake_seconds
                .observe(started.elapsed().as_secs_f64());
            let (_, session) = tls.get_ref();
            if let Some(id) = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| Identity::from_der(c))
            {
                span.record("identity", tracing::field::display(&id));
            }
            let negotiated = session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            if let Some(p) = &negotiated {
                span.record("negotiated", p.as_str());
            }
            if route.upstream.is_empty() && route.name == crate::route::TUNNEL_PROBE {
                debug!("answered a TLS routing probe (no upstreams.tunnel configured)");
                return Ok(Finished {
                    inner: None,
                    route: route.name.clone(),
                    stats: RelayStats {
                        mode: "none",
                        ..RelayStats::default()
                    },
                });
            }
            let is_web = proxy.table.web() == Some(entry);
            if is_web && layer == Layer::Outer && negotiated.as_deref() != Some("h2") {
                return web(proxy, tls, Vec::new(), 0, route).await;
            }
            let upstream = connect(proxy, route).await?;
            let stats = if negotiated.is_some_and(|p| p.ends_with(PING_SUFFIX)) {
                let limits = &proxy.config.limits;
                let framed =
                    wire::ping_framed(tls, Some(limits.ping_interval), limits.max_ws_frame_bytes);
                relay(framed, upstream, buffer).await
            } else {
                relay(tls, upstream, buffer).await
            };
            Ok(Finished {
                inner: None,
                route: route.name.clone(),
                stats,
            })
        }
    }
}

/// The clients' layer-7 detection handshake offers exactly `teleport-reversetunnel`
/// (agents also offer `teleport-reversetunnelv2`, and always present a certificate).
fn is_detection_probe(alpn: &[String]) -> bool {
    matches!(alpn, [only] if only == "teleport-reversetunnel")
}

/// Relays a client stream and an upstream: spliced when the client is the socket itself.
async fn relay_client<C: ClientIo>(
    client: C,
    upstream: TcpStream,
    consumed: u64,
    buffer: usize,
) -> RelayStats {
    match client.into_tcp() {
        Ok(tcp) => relay_plain(tcp, upstream, consumed, buffer).await,
        Err(client) => relay(client, upstream, buffer).await,
    }
}

/// The web route after TLS (or plaintext HTTP): the proxy's own endpoints, else the web
/// upstream. `read` holds request bytes already read; `consumed` counts every byte read
/// from the socket so far (for the splice).
async fn web<C: ClientIo>(
    proxy: &Proxy,
    mut client: C,
    mut read: Vec<u8>,
    consumed: u64,
    route: &RouteEntry,
) -> Result<Finished, ConnError> {
    let limits = &proxy.config.limits;
    let deadline = Instant::now() + limits.handshake_timeout;
    let max = limits.max_hello_bytes;
    let already = read.len() as u64;
    let target = loop {
        if let Some(t) = upgrade::target(&read) {
            break t;
        }
        if read.len() >= max {
            break Target::Other;
        }
        if !read_until(&mut client, &mut read, deadline, limits.handshake_timeout).await? {
            if read.is_empty() {
                return Err(ConnError::ClosedEarly("HTTP request"));
            }
            break Target::Other;
        }
    };
    if target == Target::Other {
        if route.upstream.is_empty() {
            let refused = upgrade::no_web_upstream(request_path(&read));
            respond(&mut client, &refused.response()).await;
            return Err(ConnError::NoRoute(refused.reason));
        }
        let mut upstream = connect(proxy, route).await?;
        upstream.write_all(&read).await?;
        let buffer = limits.relay_buffer_bytes;
        // Every byte read from the socket so far, including the request line read here.
        let consumed = consumed + (read.len() as u64 - already);
        let mut stats = relay_client(client, upstream, consumed, buffer).await;
        stats.client_to_upstream += read.len() as u64;
        return Ok(Finished {
            inner: None,
            route: route.name.clone(),
            stats,
        });
    }
    let request = loop {
        match upgrade::parse(&read, max) {
            Ok(Some(r)) => break r,
            Ok(None) => {
                let more = read_until(&mut client, &mut read, deadline, limits.handshake_timeout);
                match more.await {
                    Ok(true) => {}
                    Ok(false) => return Err(ConnError::ClosedEarly("HTTP request head")),
                    Err(ConnError::Timeout(..)) => {
                        return Err(refuse(proxy, &mut client, upgrade::timed_out()).await)
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(refuse(proxy, &mut client, e.into()).await),
        }
    };
    if target == Target::Ping {
        let answer = upgrade::ping_response(&proxy.config);
        respond(&mut client, &answer).await;
        return Ok(Finished {
            inner: None,
            route: route.name.clone(),
            stats: RelayStats {
                client_to_upstream: read.len() as u64,
                upstream_to_client: answer.len() as u64,
                mode: "answered",
                ..RelayStats::default()
            },
        });
    }
    let accepted = match upgrade::decide(&request, proxy.config.proxy_service.trust_x_forwarded_for)
    {
        Ok(a) => a,
        Err(refused) => return Err(refuse(proxy, &mut client, refused).await),
    };
    client.write_all(&accepted.response).await?;
    client.flush().await?;
    let kind = accepted.kind;
    let span = Span::current();
    span.record("upgrade", kind.label());
    if let Some(addr) = accepted.forwarded_for {
        // On the outer span: every line of the connection, the closing one included.
        span.record("real_client", tracing::field::display(addr));
    }
    proxy.metrics.upgrade(kind.label(), "accepted");
    debug!(upgrade = kind.label(), "connection upgraded");
    let leftover = read.split_off(request.len);
    let io = Prefixed::new(leftover, client);
    let ping = kind.pings().then_some(limits.ping_interval);
    let max_frame = limits.max_ws_frame_bytes;
    let tunnel: Tunnel = match kind {
        Kind::WebSocket | Kind::WebSocketPing => {
            let config = wire::ws_config(max_frame);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            Box::new(wire::websocket(ws, ping))
        }
        Kind::AlpnPing => Box::new(wire::ping_framed(io, ping, max_frame)),
        Kind::Alpn => Box::new(io),
    };
    let tunnel_span = info_span!(
        "tunnel",
        sni = field::Empty,
        alpn = field::Empty,
        negotiated = field::Empty,
        route = field::Empty,
        identity = field::Empty,
    );
    let done = Box::pin(inner(proxy, tunnel, kind).instrument(tunnel_span.clone())).await?;
    Ok(Finished {
        inner: Some(tunnel_span),
        ..done
    })
}

/// The connection carried by an upgrade: detection again (it must be TLS), then routing
/// exactly like a direct connection.
async fn inner(proxy: &Proxy, mut tunnel: Tunnel, kind: Kind) -> Result<Finished, ConnError> {
    let limits = &proxy.config.limits;
    let mut pre = Preface {
        buf: Vec::with_capacity(2048),
        start: 0,
        deadline: Instant::now() + limits.handshake_timeout,
        limit: limits.max_hello_bytes,
        timeout: limits.handshake_timeout,
    };
    loop {
        match detect(pre.rest()) {
            Detected::NeedMore => pre.read_more(&mut tunnel, "TLS inside the upgrade").await?,
            Detected::Tls => break,
            _ => return Err(ConnError::Unknown(hex_preview(pre.rest()))),
        }
    }
    proxy
        .metrics
        .accepted
        .get_or_create(&crate::metrics::Accepted {
            ingress_path: kind.label(),
            protocol: "tls",
        })
        .inc();
    tls(proxy, tunnel, pre, Layer::Inner).await
}

/// Reads more of a request into `buf` before `deadline`: `Ok(false)` at EOF.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
    limit: Duration,
) -> Result<bool, ConnError> {
    let mut chunk = [0u8; 4096];
    let n = timeout_at(deadline, stream.read(&mut chunk))
        .await
        .map_err(|_| ConnError::Timeout("HTTP request head", limit))??;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// Answers a refused request, counts it, and returns the error to log.
async fn refuse<S: AsyncWrite + Unpin>(proxy: &Proxy, client: &mut S, r: Refused) -> ConnError {
    proxy.metrics.upgrade("none", r.outcome());
    respond(client, &r.response()).await;
    ConnError::Upgrade(r)
}

/// Writes a whole response and closes the sending side, best effort.
async fn respond<S: AsyncWrite + Unpin>(client: &mut S, response: &[u8]) {
    let _ = client.write_all(response).await;
    let _ = client.shutdown().await;
}

/// The path of a request line, for messages.
fn request_path(read: &[u8]) -> &str {
    let line = read
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
}

/// Connects to a route's upstream within `limits.connect_timeout`.
pub async fn connect(proxy: &Proxy, route: &RouteEntry) -> Result<TcpStream, ConnError> {
    let fail = |error| {
        proxy
            .metrics
            .upstream_errors
            .get_or_create(&crate::metrics::UpstreamLabel {
                route: route.name.clone(),
            })
            .inc();
        ConnError::Upstream {
            route: route.name.clone(),
            upstream: route.upstream.clone(),
            error,
        }
    };
    let t = proxy.config.limits.connect_timeout;
    let stream = match timeout(t, TcpStream::connect(&route.upstream)).await {
        Err(_) => {
            return Err(fail(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {t:?}"),
            )))
        }
        Ok(Err(e)) => return Err(fail(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    debug!(upstream = %route.upstream, "upstream connected");
    Ok(stream)
}

/// Classifies a failed handshake for the metric and the log line.
fn handshake_reason(e: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            "not_allowed"
        }
        Some(Error::InvalidCertificate(_)) => "bad_certificate",
        Some(Error::NoApplicationProtocol) => "no_application_protocol",
        Some(Error::AlertReceived(_)) => "client_alert",
        _ if e.kind() == io::ErrorKind::UnexpectedEof => "client_closed",
        _ => "other",
    }
}

/// Sends a fatal TLS alert record, best effort, before closing an unroutable connection.
async fn send_alert<S: AsyncWrite + Unpin>(client: &mut S, alert: RejectAlert) {
    let code = match alert {
        RejectAlert::UnrecognizedName => 112,
        RejectAlert::NoApplicationProtocol => 120,
    };
    let _ = client
        .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, code])
        .await;
    let _ = client.shutdown().await;
}

/// The first bytes in hex, for the log line of unknown protocols.
pub fn hex_preview(bytes: &[u8]) -> String {
    let n = bytes.len().min(32);
    let mut s = hex::encode(&bytes[..n]);
    if bytes.len() > n {
        s.push('…');
    }
    s
}
