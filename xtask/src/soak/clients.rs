//! The soak's well-behaved clients, one per kind of connection the proxy serves: legacy SSH
//! (plaintext `SSH-` first bytes), TLS passthrough (the kube SNI), terminated mTLS
//! (`teleport-proxy-ssh`), the web route (HTTP/1.1 over TLS: `/webapi/ping` answered by the
//! proxy, other paths by the web upstream), an agent's TCP app through its reverse tunnel,
//! and the two connection upgrades through local `proxy tcp` listeners. Every answer is
//! checked: the upstream's greeting line, then the bytes written must come back unchanged.

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    time::{sleep, timeout, Instant},
};
use tokio_rustls::TlsConnector;

use super::servers::Addrs;
use crate::bench::load::client_config;

/// A read, write or handshake that takes longer than this is an error.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// What a legacy SSH client sends first; the echo upstream returns it after its greeting.
const SSH_BANNER: &[u8] = b"SSH-2.0-soak\r\n";
/// Bytes per chunk of a stream, and the pause between chunks.
const CHUNK: usize = 8192;
const PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Legacy,
    Passthrough,
    Terminated,
    Web,
    Tunnel,
    UpgradeWs,
    UpgradeLegacy,
}

pub const KINDS: [Kind; 7] = [
    Kind::Legacy,
    Kind::Passthrough,
    Kind::Terminated,
    Kind::Web,
    Kind::Tunnel,
    Kind::UpgradeWs,
    Kind::UpgradeLegacy,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Legacy => "legacy ssh",
            Kind::Passthrough => "passthrough",
            Kind::Terminated => "terminated mTLS",
            Kind::Web => "web http/1.1",
            Kind::Tunnel => "agent tunnel",
            Kind::UpgradeWs => "upgrade websocket",
            Kind::UpgradeLegacy => "upgrade alpn-ping",
        }
    }

    fn greeting(self) -> &'static [u8] {
        match self {
            Kind::Legacy | Kind::Terminated => b"upstream=ssh\n",
            Kind::Passthrough => b"upstream=kube\n",
            Kind::Web => b"",
            Kind::Tunnel => b"upstream=tunnelled\n",
            Kind::UpgradeWs | Kind::UpgradeLegacy => b"upstream=upgraded\n",
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Clients {
    addrs: Addrs,
    passthrough: TlsConnector,
    ssh: TlsConnector,
    tcp: TlsConnector,
    web: TlsConnector,
}

impl Clients {
    pub fn new(pki: &Path, addrs: Addrs) -> Result<Clients> {
        let connector = |client, alpn| client_config(pki, client, alpn).map(TlsConnector::from);
        Ok(Clients {
            addrs,
            passthrough: connector(None, None)?,
            ssh: connector(Some("alice"), Some("teleport-proxy-ssh"))?,
            tcp: connector(Some("alice"), Some("teleport-tcp"))?,
            web: connector(None, Some("http/1.1"))?,
        })
    }

    /// One short connection: the greeting, one payload echoed and compared, a clean close
    /// (for the web route: one request and its answer).
    pub async fn short(&self, kind: Kind, seed: u64) -> Result<()> {
        if kind == Kind::Web {
            return self.web(seed).await;
        }
        let mut io = self.open(kind).await?;
        let len = 256 + (seed % 4096) as usize;
        round_trip(&mut io, &payload(seed, 0, len)).await?;
        let _ = timeout(IO_TIMEOUT, io.shutdown()).await;
        Ok(())
    }

    /// A long-lived connection: a checked chunk echoed every 100 ms until `until` or
    /// `stop`; every byte echoed is added to `bytes`.
    pub async fn stream(
        &self,
        kind: Kind,
        seed: u64,
        until: Instant,
        stop: &AtomicBool,
        bytes: &AtomicU64,
    ) -> Result<()> {
        let mut io = self.open(kind).await?;
        let mut n = 0;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            round_trip(&mut io, &payload(seed, n, CHUNK))
                .await
                .with_context(|| format!("after {n} chunks"))?;
            bytes.fetch_add(CHUNK as u64, Ordering::Relaxed);
            n += 1;
            sleep(PAUSE).await;
        }
        let _ = timeout(IO_TIMEOUT, io.shutdown()).await;
        Ok(())
    }

    /// Connects a client of `kind` and reads the upstream's greeting (and, for legacy SSH,
    /// the banner coming back).
    async fn open(&self, kind: Kind) -> Result<Box<dyn Io>> {
        let proxy = self.addrs.proxy;
        let mut io: Box<dyn Io> = match kind {
            Kind::Legacy => {
                let mut tcp = connect(proxy).await?;
                tcp.write_all(SSH_BANNER).await?;
                Box::new(tcp)
            }
            Kind::Passthrough => {
                let sni = "kube-teleport-proxy-alpn.bench.test";
                Box::new(handshake(&self.passthrough, proxy, sni).await?)
            }
            Kind::Terminated => Box::new(handshake(&self.ssh, proxy, "ssh.bench.test").await?),
            Kind::Tunnel => Box::new(handshake(&self.tcp, proxy, "tunnelled.bench.test").await?),
            Kind::UpgradeWs => Box::new(connect(self.addrs.upgrade_ws).await?),
            Kind::UpgradeLegacy => Box::new(connect(self.addrs.upgrade_legacy).await?),
            Kind::Web => bail!("the web route has no greeting"),
        };
        let mut expected = kind.greeting().to_vec();
        if kind == Kind::Legacy {
            expected.extend_from_slice(SSH_BANNER);
        }
        let mut got = vec![0u8; expected.len()];
        timeout(IO_TIMEOUT, io.read_exact(&mut got))
            .await
            .context("timed out waiting for the greeting")?
            .context("reading the greeting")?;
        if got != expected {
            bail!(
                "greeting {:?}, expected {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected)
            );
        }
        Ok(io)
    }

    /// `GET /webapi/ping` (even seeds: the proxy answers) or `GET /soak/SEED` (the web
    /// upstream answers) with `Connection: close`; the status and body are checked.
    async fn web(&self, seed: u64) -> Result<()> {
        let mut tls = handshake(&self.web, self.addrs.proxy, "localhost").await?;
        let (path, want) = match seed % 2 {
            0 => (
                "/webapi/ping".to_owned(),
                "\"tls_routing_enabled\"".to_owned(),
            ),
            _ => (
                format!("/soak/{seed}"),
                format!("upstream=web path=/soak/{seed}"),
            ),
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        // No close_notify before the FIN is the server's choice: the bytes are what count.
        let read = timeout(IO_TIMEOUT, tls.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        if !text.starts_with("HTTP/1.1 200") || !text.contains(&want) {
            bail!("GET {path}: {text:?} (read: {read:?})");
        }
        Ok(())
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let tcp = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect {addr}: timed out"))?
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned())?;
    timeout(IO_TIMEOUT, connector.connect(name, tcp))
        .await
        .with_context(|| format!("TLS handshake for {sni}: timed out"))?
        .with_context(|| format!("TLS handshake for {sni}"))
}

/// Writes `chunk` and reads it back; an error if anything differs.
async fn round_trip(io: &mut Box<dyn Io>, chunk: &[u8]) -> Result<()> {
    // 8 KiB at most: it fits the socket buffers, so writing all before reading is safe.
    timeout(IO_TIMEOUT, async {
        io.write_all(chunk).await?;
        io.flush().await
    })
    .await
    .context("timed out writing")?
    .context("writing")?;
    let mut back = vec![0u8; chunk.len()];
    timeout(IO_TIMEOUT, io.read_exact(&mut back))
        .await
        .context("timed out reading the echo")?
        .context("reading the echo")?;
    if back != chunk {
        let at = back
            .iter()
            .zip(chunk)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        bail!("echoed bytes differ at byte {at} of {}", chunk.len());
    }
    Ok(())
}

/// The `n`th chunk of stream `seed`: bytes that differ between streams and chunks.
fn payload(seed: u64, n: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i + n * 7919).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40503)) as u8)
        .collect()
}
