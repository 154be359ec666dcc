//! The ACME tests' set-up (`tests/tests/acme*.rs`): a [`Pebble`] validating at a port
//! chosen first, then the proxy on that port with `proxy_service.acme` pointed at it and a
//! demo HTTP upstream as `upstreams.web` ([`setup`], [`setup_with`] for what goes wrong);
//! waiting for log lines, `curl` trusting Pebble's root, a TLS connection kept open
//! ([`KeptOpen`]) and the expiry metric.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::pebble::Pebble;
use crate::switchyard::metric_sum;
use crate::{curl, free_port, wait_until, DemoUpstream, Switchyard, TestPki};

pub const NAME: &str = "acme.switchyard.test";

/// Pebble validating at a port chosen now, and the proxy on that port with `acme:`
/// pointed at Pebble and `upstreams.web` a demo HTTP server.
pub struct Setup {
    pub pebble: Pebble,
    pub proxy: Switchyard,
    pub web: DemoUpstream,
    /// Signs Pebble's HTTPS certificate (`ca_file`): kept for the test's life.
    pub pki: TestPki,
}

pub fn setup(validity: Option<u64>) -> Result<Setup> {
    setup_with(validity, Fault::None)
}

/// What goes wrong in [`setup_with`].
#[derive(Clone, Copy)]
pub enum Fault {
    None,
    /// `uri` is a path of Pebble's that is no directory.
    Directory,
    /// The CA's DNS answers SERVFAIL for the name.
    Dns,
    /// Pebble dials TLS-ALPN-01 at a port where nothing listens.
    Challenge,
}

pub fn setup_with(validity: Option<u64>, fault: Fault) -> Result<Setup> {
    let pki = TestPki::new()?;
    let web = DemoUpstream::http("web")?;
    let port = free_port();
    let tls_port = match fault {
        Fault::Challenge => free_port(),
        _ => port,
    };
    let mut pebble = Pebble::start(&pki, tls_port, validity)?;
    match fault {
        Fault::Directory => {
            pebble.directory = pebble.directory.replace("/dir", "/not-the-directory")
        }
        Fault::Dns => pebble.servfail(NAME)?,
        Fault::None | Fault::Challenge => {}
    }
    let config = config_text(port, &pebble, web.addr);
    let proxy = Switchyard::start_text(&pki, &config, None)?;
    Ok(Setup {
        pebble,
        proxy,
        web,
        pki,
    })
}

/// The configuration of these tests (printed by the first, for the record).
pub fn config_text(port: u16, pebble: &Pebble, web: std::net::SocketAddr) -> String {
    config_with(port, pebble, web, &format!("{NAME}:{port}"), "")
}

/// [`config_text`] with `public_addr` (YAML) and extra `proxy_service` lines.
pub fn config_with(
    port: u16,
    pebble: &Pebble,
    web: std::net::SocketAddr,
    public_addr: &str,
    extra: &str,
) -> String {
    format!(
        "version: v2\n\
         proxy_service:\n\
         \x20 web_listen_addr: 127.0.0.1:{port}\n\
         \x20 public_addr: {public_addr}\n\
         {extra}\
         \x20 acme:\n\
         \x20   enabled: \"yes\"\n\
         \x20   email: ops@switchyard.test\n\
         \x20   uri: {}\n\
         \x20   ca_file: {}\n\
         \x20   state_dir: acme-state\n\
         upstreams:\n  web: '{web}'\n\
         limits: {{handshake_timeout: 5s}}\n\
         diag_addr: 127.0.0.1:0\n",
        pebble.directory,
        pebble.https_ca.display()
    )
}

/// Waits for a log line of the proxy containing every part; returns it.
pub fn wait_log(proxy: &Switchyard, timeout: Duration, parts: &[&str]) -> Result<String> {
    let what = format!("a proxy log line with {parts:?}");
    wait_until(timeout, &what, || {
        let log = proxy.log();
        Ok(log
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned))
    })
    .with_context(|| proxy.log())
}

/// `curl` with Pebble's root trusted (and nothing else) to the web route by name.
pub fn curl_verified(proxy: &Switchyard, root: &Path, path: &str) -> Result<String> {
    let port = proxy.web.port();
    let out = curl([
        "--cacert".to_owned(),
        root.display().to_string(),
        "--resolve".to_owned(),
        format!("{NAME}:{port}:127.0.0.1"),
        format!("https://{NAME}:{port}{path}"),
    ])?;
    if !out.success() {
        bail!("curl failed: {}\n{}", out.stderr, proxy.log());
    }
    Ok(out.stdout)
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn expiry(proxy: &Switchyard) -> Result<f64> {
    let labels = [("name", NAME)];
    Ok(metric_sum(
        &proxy.metrics()?,
        "switchyard_acme_certificate_expiry_timestamp_seconds",
        &labels,
    ))
}

/// A TLS connection to the web route that stays open: HTTP/1.1 keep-alive requests, and
/// the certificate it was served.
pub struct KeptOpen {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl KeptOpen {
    pub fn connect(proxy: &Switchyard, root: &Path) -> Result<KeptOpen> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(root)? {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(NAME)?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let tcp = TcpStream::connect(proxy.web)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(KeptOpen { tls })
    }

    pub fn certificate(&self) -> Vec<u8> {
        let certs = self.tls.conn.peer_certificates().unwrap_or_default();
        certs.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// One request; the body of a `200`.
    pub fn get(&mut self, path: &str) -> Result<String> {
        write!(self.tls, "GET {path} HTTP/1.1\r\nHost: {NAME}\r\n\r\n")?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.tls.read(&mut buf)?;
            if n == 0 {
                bail!("connection closed: {:?}", String::from_utf8_lossy(&raw));
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .context("no content-length")?;
            if body.len() >= length {
                if !head.starts_with("HTTP/1.1 200") {
                    bail!("not 200: {head}");
                }
                return Ok(body.to_owned());
            }
        }
    }
}
