//! The HTTP servers behind the front door: one [`Upstream`] per server (the web route's and
//! each app's), each with its own pool of kept-alive connections (hyper-util's client).
//! An upstream speaks what its configuration says — HTTP/1.1, h2c (HTTP/2 prior knowledge)
//! or h2 over TLS — whatever the client of the proxy speaks. An HTTP app that an agent
//! serves is an upstream too, reached through a tunnel stream per request.

use super::h1pool::H1Pool;
use crate::config::{
    http_target, Config, ConfigError, HostPort, HttpProtocol, HttpTarget, HttpUpstream,
};
use crate::io::tunnel::{Kind, Service};
use crate::io::{insecure::NoVerify, tls::provider};
use crate::router::state::Proxy;
use crate::router::tunnel::dial;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;
use std::time::Duration;

/// Errors carried by bodies in either direction.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body, whatever produced it.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// How long an idle pooled connection to an upstream is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle pooled connections kept per upstream.
const POOL_MAX_IDLE: usize = 256;

enum Pool {
    /// Plaintext HTTP/1.1: the proxy's own lean pool.
    H1(H1Pool),
    /// An HTTP app an agent serves: HTTP/1.1 on one tunnel stream per request.
    Agent(Service),
    /// h2c.
    Plain(Client<HttpConnector, Body>),
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
}

/// One HTTP server behind the proxy, with its connection pool.
pub(crate) struct Upstream {
    /// `web` or `app:<name>`: the route name in logs and metrics.
    pub(crate) route: String,
    /// What the configuration said, as checked.
    pub(crate) target: HttpTarget,
    /// The scheme and authority of every request URI.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    pool: Pool,
}

impl Upstream {
    /// Builds the upstream configured at `key` (`upstreams.web`, `apps[2]`).
    pub(crate) fn new(
        config: &Config,
        key: &str,
        route: &str,
        u: &HttpUpstream,
    ) -> Result<Upstream, ConfigError> {
        let target = http_target(key, u)?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.limits.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .http2_only(target.protocol != HttpProtocol::Http11);
        let pool = if target.tls {
            let tls = client_tls(config, key, u)?;
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only();
            let connector = match target.protocol {
                HttpProtocol::H2 => connector.enable_http2().wrap_connector(http),
                _ => connector.enable_http1().wrap_connector(http),
            };
            Pool::Tls(builder.build(connector))
        } else if target.protocol == HttpProtocol::Http11 {
            let t = config.limits.connect_timeout;
            Pool::H1(H1Pool::new(
                target.addr.to_string(),
                t,
                POOL_IDLE,
                POOL_MAX_IDLE,
            ))
        } else {
            Pool::Plain(builder.build(http))
        };
        let scheme = if target.tls {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let authority = target
            .addr
            .to_string()
            .parse()
            .map_err(|e| ConfigError::invalid(format!("{key}.uri"), format!("{e}")))?;
        Ok(Upstream {
            route: route.to_owned(),
            scheme,
            authority,
            target,
            pool,
        })
    }

    /// The HTTP app `name` that a connected agent serves (route `agent:http:<name>`).
    pub(crate) fn agent(name: &str) -> Upstream {
        Upstream {
            route: format!("agent:http:{name}"),
            target: HttpTarget {
                tls: false,
                addr: HostPort {
                    host: name.to_owned(),
                    port: 80,
                },
                protocol: HttpProtocol::Http11,
            },
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_maybe_shared(name.to_owned().into_bytes())
                .unwrap_or_else(|_| http::uri::Authority::from_static("agent")),
            pool: Pool::Agent(Service {
                kind: Kind::Http,
                name: name.to_owned(),
            }),
        }
    }

    /// The `host:port` the upstream is dialled at, for messages.
    pub(crate) fn addr(&self) -> String {
        match &self.pool {
            Pool::Agent(s) => format!("agent tunnel for {s}"),
            _ => self.target.addr.to_string(),
        }
    }

    /// Whether the upstream speaks HTTP/1.1 (so it can take an `Upgrade`).
    pub(crate) fn is_http1(&self) -> bool {
        self.target.protocol == HttpProtocol::Http11
    }

    /// The upstream URI of a request for `path_and_query` (`/` when the request had none).
    pub(crate) fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = path_and_query
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The HTTP version requests to this upstream are sent with.
    pub(crate) fn version(&self) -> Version {
        match self.target.protocol {
            HttpProtocol::Http11 => Version::HTTP_11,
            HttpProtocol::H2c | HttpProtocol::H2 => Version::HTTP_2,
        }
    }

    /// Sends one request (its URI absolute, from [`Upstream::uri`]) on a pooled or new
    /// connection; `conn` is the client's, for an agent's allow list.
    pub(crate) async fn send(
        &self,
        proxy: &Proxy,
        conn: &super::Conn,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, BoxError> {
        match &self.pool {
            Pool::H1(_) | Pool::Agent(_) => {
                // HTTP/1.1 on the wire: origin form, and a Host (HTTP/1.0 clients may omit it).
                let pq = req.uri().path_and_query().cloned();
                *req.uri_mut() = pq.map(Uri::from).unwrap_or_else(|| Uri::from_static("/"));
                if !req.headers().contains_key(http::header::HOST) {
                    if let Ok(v) = http::HeaderValue::from_str(self.authority.as_str()) {
                        req.headers_mut().insert(http::header::HOST, v);
                    }
                }
                match &self.pool {
                    Pool::H1(pool) => Ok(pool.send(req).await?),
                    Pool::Agent(s) => agent_send(proxy, conn, s, req).await,
                    _ => unreachable!("matched above"),
                }
            }
            Pool::Plain(c) => Ok(boxed(c.request(req).await?)),
            Pool::Tls(c) => Ok(boxed(c.request(req).await?)),
        }
    }
}

/// One request to an agent's HTTP app: a tunnel stream of its own (the agent dials the
/// app for it), HTTP/1.1 on it, upgrades passed through.
async fn agent_send(
    proxy: &Proxy,
    conn: &super::Conn,
    service: &Service,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let client = conn.client.to_string();
    let stream = dial::open(proxy, service, client, conn.cert.as_ref()).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection.with_upgrades());
    Ok(boxed(sender.send_request(req).await?))
}

fn boxed(resp: Response<Incoming>) -> Response<Body> {
    resp.map(|b| b.map_err(Into::into).boxed())
}

/// The TLS client configuration of an `https://` upstream: its CA bundle, or no check.
fn client_tls(config: &Config, key: &str, u: &HttpUpstream) -> Result<ClientConfig, ConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    let tls = match &u.ca_file {
        _ if u.insecure_skip_verify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify)),
        Some(ca) => {
            let path = config.path(ca);
            let bad = |m: String| ConfigError::invalid(format!("{key}.ca_file"), m);
            let mut roots = RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect())
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(format!("{}: no CA certificate found", path.display())));
            }
            builder.with_root_certificates(roots)
        }
        None => {
            return Err(ConfigError::invalid(
                format!("{key}.ca_file"),
                "an https:// upstream needs `ca_file` or `insecure_skip_verify: true`",
            ))
        }
    };
    Ok(tls.with_no_client_auth())
}
