//! Certificates from a real ACME CA (Debian's `pebble`, loopback only; `docs/acme.md`):
//! the proxy starts with no certificate and obtains one for its `public_addr` through
//! TLS-ALPN-01 on its own port, and `curl` trusting Pebble's root verifies it; a
//! short-lived certificate is renewed while a TLS connection stays open, and new
//! connections see the new one; with the CA stopped the renewal fails with one clear line
//! and the current certificate keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use switchyard_tests::pebble::Pebble;
use switchyard_tests::switchyard::metric_sum;
use switchyard_tests::{curl, free_port, wait_until, DemoUpstream, SClient, Switchyard, TestPki};

const NAME: &str = "acme.switchyard.test";

/// Pebble validating at a port chosen now, and the proxy on that port with `acme:`
/// pointed at Pebble and `upstreams.web` a demo HTTP server.
struct Setup {
    pebble: Pebble,
    proxy: Switchyard,
    web: DemoUpstream,
    /// Signs Pebble's HTTPS certificate (`ca_file`): kept for the test's life.
    _pki: TestPki,
}

fn setup(validity: Option<u64>) -> Result<Setup> {
    setup_with(validity, Fault::None)
}

/// What goes wrong in [`setup_with`].
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// `uri` is a path of Pebble's that is no directory.
    Directory,
    /// The CA's DNS answers SERVFAIL for the name.
    Dns,
    /// Pebble dials TLS-ALPN-01 at a port where nothing listens.
    Challenge,
}

fn setup_with(validity: Option<u64>, fault: Fault) -> Result<Setup> {
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
        _pki: pki,
    })
}

/// The configuration of these tests (printed by the first, for the record).
fn config_text(port: u16, pebble: &Pebble, web: std::net::SocketAddr) -> String {
    config_with(port, pebble, web, &format!("{NAME}:{port}"), "")
}

/// [`config_text`] with `public_addr` (YAML) and extra `proxy_service` lines.
fn config_with(
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
fn wait_log(proxy: &Switchyard, timeout: Duration, parts: &[&str]) -> Result<String> {
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
fn curl_verified(proxy: &Switchyard, root: &Path, path: &str) -> Result<String> {
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

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn expiry(proxy: &Switchyard) -> Result<f64> {
    let labels = [("name", NAME)];
    Ok(metric_sum(
        &proxy.metrics()?,
        "switchyard_acme_certificate_expiry_timestamp_seconds",
        &labels,
    ))
}

/// A TLS connection to the web route that stays open: HTTP/1.1 keep-alive requests, and
/// the certificate it was served.
struct KeptOpen {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl KeptOpen {
    fn connect(proxy: &Switchyard, root: &Path) -> Result<KeptOpen> {
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

    fn certificate(&self) -> Vec<u8> {
        let certs = self.tls.conn.peer_certificates().unwrap_or_default();
        certs.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// One request; the body of a `200`.
    fn get(&mut self, path: &str) -> Result<String> {
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

#[test]
fn starts_without_a_certificate_obtains_one_and_curl_verifies_it() -> Result<()> {
    let s = setup(None)?;
    println!(
        "config used:\n{}",
        config_text(s.proxy.web.port(), &s.pebble, s.web.addr)
    );
    let placeholder = wait_log(
        &s.proxy,
        Duration::from_secs(5),
        &["self-signed placeholder"],
    )?;
    let issued = wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    let answered = wait_log(
        &s.proxy,
        Duration::from_secs(5),
        &["answered an ACME TLS-ALPN-01 challenge", NAME],
    )?;
    println!("{placeholder}\n{answered}\n{issued}");
    let root = s.pebble.root()?;
    let body = curl_verified(&s.proxy, &root, "/verified")?;
    assert_eq!(body, "upstream=web path=/verified\n");
    let expires = expiry(&s.proxy)?;
    assert!(expires > now(), "expiry {expires} is not in the future");
    for line in s
        .proxy
        .metrics()?
        .lines()
        .filter(|l| l.starts_with("switchyard_acme"))
    {
        println!("{line}");
    }

    // The state directory: the account key, the chain and its key, 0600.
    use std::os::unix::fs::PermissionsExt;
    let state = s.proxy.dir().join("acme-state");
    for file in ["account.key", "cert.pem", "key.pem"] {
        let mode = std::fs::metadata(state.join(file))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }

    // acme-tls/1 with no pending challenge: refused like an unknown protocol (alert 120).
    let out = SClient::new(s.proxy.web)
        .sni(NAME)
        .alpn("acme-tls/1")
        .run_to_end(b"", Duration::from_secs(10))?;
    assert!(
        out.stderr.contains("no application protocol"),
        "{}",
        out.stderr
    );
    wait_log(
        &s.proxy,
        Duration::from_secs(5),
        &["no ACME challenge is pending for that name"],
    )?;
    Ok(())
}

#[test]
fn a_short_lived_certificate_is_renewed_under_an_open_connection() -> Result<()> {
    // 30 s certificates: renewed 20 s after issuance.
    let s = setup(Some(30))?;
    wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    let root = s.pebble.root()?;
    let mut open = KeptOpen::connect(&s.proxy, &root)?;
    assert_eq!(open.get("/before")?, "upstream=web path=/before\n");
    let first = open.certificate();
    let first_expiry = expiry(&s.proxy)?;

    let renewed = wait_log(
        &s.proxy,
        Duration::from_secs(90),
        &["ACME: certificate renewed"],
    )?;
    println!("{renewed}");
    // The connection opened before the renewal goes on.
    assert_eq!(open.get("/after")?, "upstream=web path=/after\n");
    // A new one gets the new certificate, and it verifies.
    let fresh = KeptOpen::connect(&s.proxy, &root)?;
    assert_ne!(
        fresh.certificate(),
        first,
        "a new connection still got the old certificate"
    );
    assert_eq!(
        curl_verified(&s.proxy, &root, "/new")?,
        "upstream=web path=/new\n"
    );
    let second_expiry = expiry(&s.proxy)?;
    assert!(
        second_expiry > first_expiry,
        "{second_expiry} <= {first_expiry}"
    );
    let metrics = s.proxy.metrics()?;
    let issued = [("name", NAME), ("result", "issued")];
    assert_eq!(
        metric_sum(&metrics, "switchyard_acme_renewals_total", &issued),
        2.0
    );
    Ok(())
}

#[test]
fn with_the_ca_stopped_renewal_fails_loudly_and_the_certificate_keeps_serving() -> Result<()> {
    // 45 s certificates: the renewal falls due after 30 s, with 15 s of validity left.
    let mut s = setup(Some(45))?;
    wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    let root = s.pebble.root()?;
    let served = KeptOpen::connect(&s.proxy, &root)?.certificate();
    s.pebble.stop();

    let failed = wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &[
            "ACME CA unreachable",
            "keeping the current certificate",
            "next attempt in",
        ],
    )?;
    println!("{failed}");
    assert!(failed.contains("ERROR"), "{failed}");
    // Still served, still verified.
    assert_eq!(KeptOpen::connect(&s.proxy, &root)?.certificate(), served);
    assert_eq!(
        curl_verified(&s.proxy, &root, "/still")?,
        "upstream=web path=/still\n"
    );
    let metrics = s.proxy.metrics()?;
    let name = [("name", NAME)];
    assert_eq!(
        metric_sum(&metrics, "switchyard_acme_renewal_last_success", &name),
        0.0
    );
    let unreachable = [("name", NAME), ("result", "ca_unreachable")];
    assert_eq!(
        metric_sum(&metrics, "switchyard_acme_renewals_total", &unreachable),
        1.0
    );
    Ok(())
}

#[test]
fn bad_answers_are_one_line_each_and_the_placeholder_keeps_serving() -> Result<()> {
    let cases = [
        (
            Fault::Directory,
            "directory",
            "ACME directory misconfigured",
        ),
        (Fault::Dns, "name_unresolvable", "ACME name not resolvable"),
        (
            Fault::Challenge,
            "challenge_failed",
            "ACME challenge failed for",
        ),
    ];
    for (fault, result, line) in cases {
        let s = setup_with(None, fault)?;
        let failed = wait_log(
            &s.proxy,
            Duration::from_secs(60),
            &[
                line,
                "still serving the self-signed placeholder",
                "next attempt in",
            ],
        )?;
        println!("{failed}");
        assert!(failed.contains("ERROR"), "{failed}");
        let errors = s
            .proxy
            .log()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .count();
        assert_eq!(errors, 1, "{}", s.proxy.log());
        let labels = [("name", NAME), ("result", result)];
        let metrics = s.proxy.metrics()?;
        assert_eq!(
            metric_sum(&metrics, "switchyard_acme_renewals_total", &labels),
            1.0,
            "{result}"
        );
        // The proxy goes on serving, with the placeholder.
        let port = s.proxy.web.port();
        let out = curl([
            "-k".to_owned(),
            "--resolve".to_owned(),
            format!("{NAME}:{port}:127.0.0.1"),
            format!("https://{NAME}:{port}/placeholder"),
        ])?;
        assert_eq!(
            out.stdout, "upstream=web path=/placeholder\n",
            "{}",
            out.stderr
        );
    }
    Ok(())
}

#[test]
fn an_explicit_keypair_wins_for_its_names_and_acme_serves_the_rest() -> Result<()> {
    let pki = TestPki::new()?;
    let web = DemoUpstream::http("web")?;
    let port = free_port();
    let pebble = Pebble::start(&pki, port, None)?;
    // The test PKI's certificate (proxy.crt) covers proxy.example.test and *.example.test.
    let public = format!("[proxy.example.test:{port}, {NAME}:{port}]");
    let keypairs = "  https_keypairs: [{cert_file: proxy.crt, key_file: proxy.key}]\n";
    let config = config_with(port, &pebble, web.addr, &public, keypairs);
    let proxy = Switchyard::start_text(&pki, &config, None)?;
    wait_log(
        &proxy,
        Duration::from_secs(5),
        &["served from https_keypairs", "proxy.example.test"],
    )?;
    let issued = wait_log(
        &proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    assert!(issued.contains(&format!("names=[\"{NAME}\"]")), "{issued}");
    // Each name gets its own certificate, verified by its own CA.
    let root = pebble.root()?;
    assert_eq!(
        curl_verified(&proxy, &root, "/acme")?,
        "upstream=web path=/acme\n"
    );
    let out = curl([
        "--cacert".to_owned(),
        pki.ca_cert().display().to_string(),
        "--resolve".to_owned(),
        format!("proxy.example.test:{port}:127.0.0.1"),
        format!("https://proxy.example.test:{port}/file"),
    ])?;
    assert_eq!(out.stdout, "upstream=web path=/file\n", "{}", out.stderr);
    Ok(())
}
