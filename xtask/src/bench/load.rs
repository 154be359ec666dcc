//! The load client: N tasks that each open connections one after the other until a deadline,
//! timing every connection from `connect()` to the upstream's greeting line. TLS session
//! resumption is off, so every connection pays a full handshake.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustls::{
    client::Resumption,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
    time::timeout,
};
use tokio_rustls::TlsConnector;

/// A connection that takes longer than this counts as an error.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The ring provider, as in the proxy.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn roots(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| ca.display().to_string())? {
        roots.add(cert.with_context(|| ca.display().to_string())?)?;
    }
    Ok(roots)
}

/// `pki/NAME.crt` and `pki/NAME.key`.
pub fn cert_and_key(
    pki: &Path,
    name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (crt, key) = (
        pki.join(format!("{name}.crt")),
        pki.join(format!("{name}.key")),
    );
    let certs = CertificateDer::pem_file_iter(&crt)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| crt.display().to_string())?;
    let key = PrivateKeyDer::from_pem_file(&key).with_context(|| key.display().to_string())?;
    Ok((certs, key))
}

/// A client trusting `pki/ca.crt`, presenting `pki/CLIENT.crt` when given, offering `alpn`.
pub fn client_config(
    pki: &Path,
    client: Option<&str>,
    alpn: Option<&str>,
) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&pki.join("ca.crt"))?);
    let mut config = match client {
        Some(name) => {
            let (certs, key) = cert_and_key(pki, name)?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Where one scenario's client connects, and what the upstream must answer.
pub struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    greeting: &'static str,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        sni: &str,
        greeting: &'static str,
    ) -> Result<Target> {
        Ok(Target {
            addr,
            connector: TlsConnector::from(tls),
            server_name: ServerName::try_from(sni.to_owned())?,
            greeting,
        })
    }

    /// Connect, handshake, write one byte, read the greeting line; returns the time that
    /// took. The close afterwards (close_notify + FIN) is not in the latency but is in the
    /// connection rate.
    async fn once(&self) -> Result<Duration> {
        let start = Instant::now();
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut line = Vec::with_capacity(32);
        let mut buf = [0u8; 64];
        while !line.contains(&b'\n') {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                bail!(
                    "closed after {:?} before the greeting",
                    String::from_utf8_lossy(&line)
                );
            }
            line.extend_from_slice(&buf[..n]);
        }
        let elapsed = start.elapsed();
        if !line.starts_with(self.greeting.as_bytes()) {
            bail!(
                "expected {:?}, got {:?}",
                self.greeting,
                String::from_utf8_lossy(&line)
            );
        }
        let _ = tls.shutdown().await;
        Ok(elapsed)
    }
}

/// One measured run.
pub struct RunStats {
    pub connections: usize,
    pub errors: usize,
    pub seconds: f64,
    pub conn_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Share of all CPUs that processes other than the bench's used during the run.
    pub foreign_cpu: f64,
    /// CPU µs the peer's own processes spent per completed connection.
    pub peer_cpu_us: f64,
}

/// Runs `clients` tasks against `target` until `duration` has passed (connections already
/// started finish) and summarises them. Fails when no connection succeeded.
pub async fn measure(target: Arc<Target>, clients: usize, duration: Duration) -> Result<RunStats> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0, None);
            while Instant::now() < deadline {
                match timeout(CONNECTION_TIMEOUT, target.once()).await {
                    Ok(Ok(latency)) => latencies.push(latency),
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| "timed out".to_owned());
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0, None);
    while let Some(joined) = tasks.join_next().await {
        let (l, e, f) = joined.context("load task panicked")?;
        latencies.extend(l);
        errors += e;
        first_error = first_error.or(f);
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!(
            "xtask: {errors} failed connections to {}, first: {e}",
            target.addr
        );
    }
    if latencies.is_empty() {
        bail!("no connection to {} succeeded", target.addr);
    }
    let mut us: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    Ok(RunStats {
        connections: us.len(),
        errors,
        seconds,
        conn_per_sec: us.len() as f64 / seconds,
        p50_us: percentile(&us, 0.50),
        p99_us: percentile(&us, 0.99),
        mean_us: us.iter().sum::<f64>() / us.len() as f64,
        foreign_cpu: 0.0,
        peer_cpu_us: 0.0,
    })
}

/// Nearest-rank percentile of sorted, non-empty values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
