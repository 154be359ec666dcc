//! Demo upstreams and the dev mode behind `cargo xtask run`.
//!
//! `switchyard demo-upstream` runs one small server that identifies itself (echo, TLS echo
//! with its own certificate, HTTP/1.1 + h2c, or the browser-facing web application of
//! [`webapp`]); tests start them as real processes. `serve --dev DIR` generates a dev PKI,
//! starts one of each in-process, and writes the embedded default configuration
//! (`dev.yaml`) with their addresses.

mod webapp;

use super::ca::{self, IssueRequest};
use crate::client::agent::AgentConfig;
use crate::client::args::ClientArgs;
use crate::io::tls::provider;
use crate::io::tunnel::{Kind as TunnelKind, Service};
use crate::router::certs::{load_certified_key, SniResolver};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a demo upstream speaks.
#[derive(Clone)]
pub(crate) enum Kind {
    /// Writes `upstream=NAME\n`, then echoes.
    Echo,
    /// The same inside TLS terminated with this configuration.
    TlsEcho(Arc<ServerConfig>),
    /// HTTP/1.1 and h2 prior knowledge: `200 upstream=NAME path=PATH\n`.
    Http,
    /// An HTTP/1.1-only web application for browsers: page, API, WebSocket ([`webapp`]).
    WebApp,
}

/// A TLS server configuration from PEM files, for a TLS demo upstream.
pub(crate) fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let ck = load_certified_key(cert, key, "--tls")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(vec![ck], None)));
    Ok(Arc::new(config))
}

/// Serves `kind` on `listener` forever.
pub(crate) async fn run(listener: TcpListener, name: String, kind: Kind) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // The greeting is a small write after the handshake: without NODELAY it waits for
        // the client's delayed ACK (~40 ms) and hides everything else in measurements.
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let kind = kind.clone();
        tokio::spawn(async move {
            match kind {
                Kind::Echo => echo(stream, &name).await,
                Kind::TlsEcho(config) => {
                    if let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                        echo(s, &name).await;
                    }
                }
                Kind::Http => http(stream, name).await,
                Kind::WebApp => webapp::serve(stream, name).await,
            }
        });
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S, name: &str) {
    let (mut r, mut w) = tokio::io::split(stream);
    if w.write_all(format!("upstream={name}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

async fn http(stream: tokio::net::TcpStream, name: String) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let body = format!("upstream={name} path={}\n", req.uri().path());
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The host names of the dev config's HTTP apps (and the TCP app), in the proxy's
/// certificate.
const DEV_APPS: [&str; 5] = [
    "dashboard.localhost",
    "admin.localhost",
    "grafana.localhost",
    "tunnelled.localhost",
    "agent-echo.localhost",
];

/// Whether the certificate in PEM file `path` names `host`.
fn covers(path: &Path, host: &str) -> bool {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let Ok(cert) = CertificateDer::from_pem_file(path) else {
        return false;
    };
    crate::router::certs::dns_names(Some(&cert))
        .iter()
        .any(|n| n == host)
}

/// The dev environment: where its files are and what to print.
pub(crate) struct Dev {
    pub(crate) config_path: PathBuf,
    pub(crate) pki: PathBuf,
    /// The agent that serves the reverse-tunnel demo services.
    agent: AgentConfig,
}

/// Creates the dev PKI (once), starts the demo upstreams, writes `DIR/switchyard.yaml`.
pub(crate) async fn setup(dir: &Path, listen: SocketAddr, diag: SocketAddr) -> anyhow::Result<Dev> {
    let pki = dir.join("pki");
    if !pki.join("ca.crt").exists() {
        ca::init(&pki, "dev").context("creating the dev CA")?;
        let day = Duration::from_secs(30 * 86400);
        let server = |name: &str, dns: &[&str]| IssueRequest {
            name: name.into(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ips: vec!["127.0.0.1".parse().expect("literal")],
            ttl: day,
            ..Default::default()
        };
        ca::issue(&pki, &server("kube", &["kube.internal"]))?;
        ca::issue(&pki, &server("auth", &["auth.internal"]))?;
        for (user, org) in [("alice", "dev"), ("bob", "guests")] {
            ca::issue(
                &pki,
                &IssueRequest {
                    name: user.into(),
                    orgs: vec![org.into()],
                    ttl: day,
                    ..Default::default()
                },
            )?;
        }
    }
    // Browsers and curl do not take `*.localhost` for a name one label under a top-level
    // domain: the apps' names are in the certificate too (reissued for an older dev PKI).
    let proxy_cert = pki.join("proxy.crt");
    if !DEV_APPS.iter().all(|h| covers(&proxy_cert, h)) {
        let mut names = vec!["localhost", "*.localhost"];
        names.extend(DEV_APPS);
        let request = IssueRequest {
            name: "proxy".into(),
            dns: names.iter().map(|s| s.to_string()).collect(),
            ips: vec!["127.0.0.1".parse().expect("literal")],
            ttl: Duration::from_secs(30 * 86400),
            ..Default::default()
        };
        ca::issue(&pki, &request)?;
    }
    if !pki.join("edge.crt").exists() {
        let agent = IssueRequest {
            name: "edge".into(),
            orgs: vec![ca::AGENT_ORG.into()],
            ttl: Duration::from_secs(30 * 86400),
            ..Default::default()
        };
        ca::issue(&pki, &agent)?;
    }
    let mut text = include_str!("dev.yaml")
        .replace("{listen}", &listen.to_string())
        .replace("{port}", &listen.port().to_string())
        .replace("{diag}", &diag.to_string());
    let kube_tls = tls_config(&pki.join("kube.crt"), &pki.join("kube.key"))?;
    let auth_tls = tls_config(&pki.join("auth.crt"), &pki.join("auth.key"))?;
    for (name, kind) in [
        ("web", Kind::WebApp),
        ("dashboard", Kind::WebApp),
        ("admin", Kind::WebApp),
        ("ssh", Kind::Echo),
        ("postgres", Kind::Echo),
        ("mysql", Kind::Echo),
        ("mongodb", Kind::Echo),
        ("kube", Kind::TlsEcho(kube_tls)),
        ("auth", Kind::TlsEcho(auth_tls)),
        ("grafana", Kind::Echo),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        text = text.replace(&format!("{{{name}}}"), &listener.local_addr()?.to_string());
        tokio::spawn(run(listener, name.to_owned(), kind));
    }
    let mut agent_services = std::collections::BTreeMap::new();
    for (kind, name, demo) in [
        (TunnelKind::Http, "tunnelled", Kind::WebApp),
        (TunnelKind::Tcp, "agent-echo", Kind::Echo),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let service = Service {
            kind,
            name: name.to_owned(),
        };
        agent_services.insert(service, listener.local_addr()?.to_string());
        tokio::spawn(run(listener, name.to_owned(), demo));
    }
    let config_path = dir.join("switchyard.yaml");
    std::fs::write(&config_path, text).with_context(|| config_path.display().to_string())?;
    let agent = agent_config(&pki, listen, agent_services);
    Ok(Dev {
        config_path,
        pki,
        agent,
    })
}

/// The dev agent: dials the dev proxy as `pki/edge` and serves the demo services.
fn agent_config(
    pki: &Path,
    listen: SocketAddr,
    services: std::collections::BTreeMap<Service, String>,
) -> AgentConfig {
    let client = ClientArgs {
        proxy: Some(format!("localhost:{}", listen.port())),
        identity: Some(pki.join("edge")),
        cert: None,
        key: None,
        ca: None,
        upgrade_mode: Default::default(),
        verbose: false,
    };
    AgentConfig {
        client,
        tunnels: 2,
        services,
    }
}

/// Starts the dev agent (it retries until the proxy listens).
pub(crate) fn start_agent(dev: &Dev) {
    let config = dev.agent.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::client::agent::run_settled(config).await {
            tracing::error!("the dev agent stopped: {e}");
        }
    });
}

/// Copy-paste commands that show each route working.
pub(crate) fn instructions(dev: &Dev, web: SocketAddr, diag: SocketAddr) -> String {
    let p = dev.pki.display();
    let port = web.port();
    let tls = format!("openssl s_client -quiet -connect 127.0.0.1:{port} -CAfile {p}/ca.crt");
    let user = format!("-cert {p}/alice.crt -key {p}/alice.key");
    let auth_alpn = crate::protocol::auth_alpn("dev");
    format!(
        "\nSwitchyard dev proxy on {web} (config {cfg}); metrics on http://{diag}/metrics\n\
         Try (each demo upstream greets with upstream=NAME, then echoes what you type):\n\
         \n  # in a browser (trust {p}/ca.crt, or accept the warning): HTTP/1.1 apps by name,\n\
         \x20 # served over h2 or HTTP/1.1; each page fetches JSON and echoes over a WebSocket\n\
         \x20 https://localhost:{port}/            the web route (upstreams.web)\n\
         \x20 https://dashboard.localhost:{port}/  the app `dashboard`\n\
         \n  # web route and apps with curl (h2 by default; --http1.1 too)\n\
         \x20 curl --cacert {p}/ca.crt https://localhost:{port}/api/hello\n\
         \x20 curl --cacert {p}/ca.crt https://dashboard.localhost:{port}/api/hello\n\
         \x20 curl -k https://nope.localhost:{port}/     # 404 page: no app of that name\n\
         \x20 curl --cacert {p}/ca.crt --cert {p}/alice.crt --key {p}/alice.key https://admin.localhost:{port}/api/hello\n\
         \x20 curl --cacert {p}/ca.crt --cert {p}/bob.crt --key {p}/bob.key https://admin.localhost:{port}/  # bob: refused\n\
         \n  # SSH, Postgres: TLS terminated, client certificate required\n\
         \x20 {tls} -servername localhost -alpn teleport-proxy-ssh {user}\n\
         \x20 {tls} -servername localhost -alpn teleport-postgres {user}\n\
         \x20 {tls} -servername localhost -alpn teleport-reversetunnel {user}\n\
         \x20 {tls} -servername localhost -alpn teleport-proxy-ssh     # no certificate: refused\n\
         \n  # TCP app by SNI, only alice may use it (bob is refused)\n\
         \x20 {tls} -servername grafana.localhost -alpn teleport-tcp {user}\n\
         \x20 {tls} -servername grafana.localhost -alpn teleport-tcp -cert {p}/bob.crt -key {p}/bob.key\n\
         \n  # passthrough: the upstream's own certificate (CN=kube / CN=auth) answers\n\
         \x20 openssl s_client -connect 127.0.0.1:{port} -servername kube-teleport-proxy-alpn.localhost </dev/null | grep subject\n\
         \x20 openssl s_client -connect 127.0.0.1:{port} -alpn {auth_alpn} </dev/null | grep subject\n\
         \n  # reverse tunnel: an agent in this process dialed in; these are served through it\n\
         \x20 curl --cacert {p}/ca.crt https://tunnelled.localhost:{port}/api/hello\n\
         \x20 {tls} -servername agent-echo.localhost -alpn teleport-tcp {user}\n\
         \x20 curl -s http://{diag}/agents                  # the agents and their services\n\
         \n  # legacy plaintext\n\
         \x20 curl http://127.0.0.1:{port}/api/hello        # plaintext HTTP: the web route\n\
         \x20 printf 'SSH-2.0-demo\\r\\n' | curl -s --max-time 1 telnet://127.0.0.1:{port}\n",
        cfg = dev.config_path.display(),
    )
}
