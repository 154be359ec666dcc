//! Bad input at a low rate, whose refusals are expected: a malformed ClientHello, a
//! truncated PROXY header, garbage first bytes, a slow client dribbling a ClientHello (cut
//! at `limits.handshake_timeout`), and a `teleport-proxy-ssh` client without a certificate.
//! A probe is *refused* (the expected outcome) when the proxy closes or resets the
//! connection, or fails the handshake, within the handshake deadline plus a margin, without
//! handing it to an upstream; anything else — the connection not accepted, still open
//! after the margin, or an upstream's greeting — is an unexpected error.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{timeout, Instant},
};
use tokio_rustls::TlsConnector;

use super::servers::HANDSHAKE_TIMEOUT;
use crate::bench::load::client_config;

/// How long after the handshake deadline the proxy may take to close a bad connection.
const MARGIN: Duration = Duration::from_secs(3);
/// The slow client's pause between bytes.
const DRIBBLE: Duration = Duration::from_millis(700);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bad {
    MalformedHello,
    TruncatedProxy,
    Garbage,
    Slow,
    NoClientCert,
}

pub const BAD: [Bad; 5] = [
    Bad::MalformedHello,
    Bad::TruncatedProxy,
    Bad::Garbage,
    Bad::Slow,
    Bad::NoClientCert,
];

impl Bad {
    pub fn name(self) -> &'static str {
        match self {
            Bad::MalformedHello => "malformed ClientHello",
            Bad::TruncatedProxy => "truncated PROXY header",
            Bad::Garbage => "garbage",
            Bad::Slow => "slow client",
            Bad::NoClientCert => "mTLS without a certificate",
        }
    }
}

pub struct Probes {
    proxy: SocketAddr,
    no_cert: TlsConnector,
}

impl Probes {
    pub fn new(pki: &Path, proxy: SocketAddr) -> Result<Probes> {
        let no_cert = client_config(pki, None, Some("teleport-proxy-ssh"))?;
        Ok(Probes {
            proxy,
            no_cert: TlsConnector::from(no_cert),
        })
    }

    /// Sends `bad`; `Ok` when the proxy refused it as it should.
    pub async fn probe(&self, bad: Bad, seed: u64) -> Result<()> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT + MARGIN;
        let mut tcp = timeout(MARGIN, TcpStream::connect(self.proxy))
            .await
            .context("connect: timed out")?
            .context("connect")?;
        tcp.set_nodelay(true)?;
        // A write the proxy answers by closing may fail: that is a refusal too.
        let sent = match bad {
            Bad::MalformedHello => tcp.write_all(&malformed_hello(seed)).await,
            Bad::TruncatedProxy => {
                let r = tcp.write_all(b"PROXY TCP4 192.0.2.1 192.0.2").await;
                r.and(tcp.shutdown().await)
            }
            Bad::Garbage => tcp.write_all(&garbage(seed)).await,
            Bad::Slow => return dribble(tcp, deadline).await,
            Bad::NoClientCert => return self.no_cert(tcp, deadline).await,
        };
        if sent.is_err() {
            return Ok(());
        }
        closed(&mut tcp, deadline).await
    }

    /// A TLS 1.3 client may finish its side before the proxy checks the certificate: the
    /// refusal then arrives as an alert on the first read.
    async fn no_cert(&self, tcp: TcpStream, deadline: Instant) -> Result<()> {
        let name = ServerName::try_from("ssh.bench.test")?;
        let mut tls = match timeout(MARGIN, self.no_cert.connect(name, tcp)).await {
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(tls)) => tls,
            Err(_) => bail!("no certificate: the handshake hung"),
        };
        closed(&mut tls, deadline).await
    }
}

/// Reads until EOF or an error (a refusal) before `deadline`; bytes before it are allowed
/// (a TLS alert), an upstream's greeting is not.
async fn closed<S: AsyncRead + Unpin>(s: &mut S, deadline: Instant) -> Result<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(9).any(|w| w == b"upstream=") {
                    bail!("reached an upstream: {:?}", String::from_utf8_lossy(&seen));
                }
            }
            Err(_) => bail!("still open after {:?}", HANDSHAKE_TIMEOUT + MARGIN),
        }
    }
}

/// A TLS record header and the first bytes of a ClientHello, one byte every `DRIBBLE`,
/// until the proxy closes the connection (at its handshake deadline).
async fn dribble(mut tcp: TcpStream, deadline: Instant) -> Result<()> {
    let hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    for byte in hello.iter().cycle() {
        if Instant::now() >= deadline {
            bail!(
                "slow client still open after {:?}",
                HANDSHAKE_TIMEOUT + MARGIN
            );
        }
        if tcp.write_all(&[*byte]).await.is_err() {
            return Ok(());
        }
        let mut one = [0u8; 1];
        match timeout(DRIBBLE, tcp.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    unreachable!("cycle() never ends")
}

/// A TLS handshake record whose lengths agree but whose ClientHello is nonsense.
fn malformed_hello(seed: u64) -> Vec<u8> {
    let body: Vec<u8> = (0..60u64).map(|i| (i * 37 + seed) as u8).collect();
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

/// 64 bytes that no detection stage recognises (the first is no protocol's first byte).
fn garbage(seed: u64) -> Vec<u8> {
    let mut g: Vec<u8> = (0..64u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect();
    g[0] = 0xff;
    g
}
