//! The check `cargo xtask ktls` runs inside the guest: for each cipher suite a terminated
//! route would hand over (TLS 1.3 AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; TLS 1.2
//! ECDHE-ECDSA AES-128-GCM), a rustls server on loopback finishes the handshake in
//! userspace, hands the session to the kernel with the `ktls` crate (secret extraction,
//! `TCP_ULP tls`, `TLS_TX`/`TLS_RX`), and echoes what a rustls client in userspace sends:
//! once through `ktls::KtlsStream` (plain reads and writes on the socket), once with
//! `splice(2)` through a pipe (the kernel decrypts into the pipe and encrypts out of it,
//! which is what a terminated route's relay would do towards its upstream). The client
//! checks every byte and that each side ends with a `close_notify`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Context as _, Result};
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use rustls::crypto::ring::{cipher_suite as suites, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{TcpListener, TcpStream};

/// Bytes each way per check.
const BYTES: usize = 8 << 20;

/// How the kTLS server moves the bytes back.
#[derive(Clone, Copy, Debug)]
enum Echo {
    Stream,
    Splice,
}

pub fn run(pki: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.join("cert.pem"))?.collect::<Result<_, _>>()?;
    let all = [
        suites::TLS13_AES_128_GCM_SHA256,
        suites::TLS13_AES_256_GCM_SHA384,
        suites::TLS13_CHACHA20_POLY1305_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    for suite in all {
        for echo in [Echo::Stream, Echo::Splice] {
            let key = PrivateKeyDer::from_pem_file(pki.join("key.pem"))?;
            let limit = std::time::Duration::from_secs(120);
            runtime
                .block_on(async {
                    tokio::time::timeout(limit, check(suite, echo, &certs, key)).await
                })
                .map_err(|_| anyhow::anyhow!("no answer within 120 s"))
                .and_then(|r| r)
                .with_context(|| format!("{:?} with {echo:?}", suite.suite()))?;
            println!(
                "ktls-check: {:?} {echo:?}: {BYTES} bytes each way, byte-exact, close_notify both ways",
                suite.suite()
            );
        }
    }
    super::proxy::run(&runtime)?;
    println!("{}", super::PASSED);
    Ok(())
}

/// One handshake in userspace, the server handed to kTLS, `BYTES` echoed and checked.
async fn check(
    suite: SupportedCipherSuite,
    echo: Echo,
    certs: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
) -> Result<()> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..default_provider()
    });
    let version = [suite.version()];
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&version)?
        .with_no_client_auth()
        .with_single_cert(certs.to_vec(), key)?;
    server.enable_secret_extraction = true;
    // The session handed to the kernel must not hold records rustls still owes: tickets
    // are sent within the handshake's flight, before the hand-over.
    let mut roots = RootCertStore::empty();
    roots.add(certs[0].clone())?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&version)?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = acceptor.accept(ktls::CorkStream::new(tcp)).await?;
        let stream = ktls::config_ktls_server(tls).await?;
        serve(stream, echo).await
    });

    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await?;
    let (mut read, mut write) = tokio::io::split(tls);
    let sent: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            write.write_all(chunk).await?;
        }
        anyhow::Ok(write)
    });
    let mut back = vec![0u8; BYTES];
    if let Err(e) = read.read_exact(&mut back).await {
        // The server's failure is the one to report.
        let server = served.await?;
        return Err(server.err().unwrap_or_else(|| e.into())).context("reading the echo");
    }
    ensure!(back == expected, "the echo differs from what was sent");
    let mut write = writer.await??;
    write.shutdown().await.context("client close_notify")?;
    let mut rest = Vec::new();
    read.read_to_end(&mut rest)
        .await
        .context("the server's close_notify")?;
    ensure!(rest.is_empty(), "{} bytes after the echo", rest.len());
    served.await??;
    Ok(())
}

/// Echoes `BYTES` on the kTLS socket, then closes with a `close_notify`.
async fn serve(mut stream: ktls::KtlsStream<TcpStream>, echo: Echo) -> Result<()> {
    match echo {
        Echo::Stream => {
            let mut buf = vec![0u8; 64 << 10];
            let mut moved = 0;
            while moved < BYTES {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("EOF after {moved} bytes");
                }
                stream.write_all(&buf[..n]).await?;
                moved += n;
            }
        }
        Echo::Splice => {
            let socket = stream.get_ref();
            let fd = socket.as_fd();
            let pipe = Pipe::new()?;
            let mut moved = 0;
            while moved < BYTES {
                socket.readable().await?;
                let n = match socket.try_io(Interest::READABLE, || pipe.splice_from(fd)) {
                    Ok(0) => bail!("EOF after {moved} bytes"),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e).context(format!("splice from kTLS after {moved}")),
                };
                let mut left = n;
                while left > 0 {
                    socket.writable().await?;
                    match socket.try_io(Interest::WRITABLE, || pipe.splice_to(fd, left)) {
                        Ok(m) => left -= m,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e).context("splice to kTLS"),
                    }
                }
                moved += n;
            }
        }
    }
    // The client's close_notify: a clean EOF through the crate's alert handling.
    let mut tail = [0u8; 1];
    let n = stream
        .read(&mut tail)
        .await
        .context("the client's close_notify")?;
    ensure!(n == 0, "bytes after the echo");
    stream.shutdown().await.context("server close_notify")?;
    Ok(())
}

/// A pipe for `splice(2)`, both ends non-blocking.
struct Pipe(OwnedFd, OwnedFd);

impl Pipe {
    fn new() -> std::io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        Ok(Pipe(read, write))
    }

    /// What the kernel decrypted from `socket`, into the pipe.
    fn splice_from(&self, socket: BorrowedFd<'_>) -> std::io::Result<usize> {
        Ok(splice(socket, None, &self.1, None, 1 << 20, FLAGS)?)
    }

    /// `len` bytes of the pipe to `socket`, for the kernel to encrypt.
    fn splice_to(&self, socket: BorrowedFd<'_>, len: usize) -> std::io::Result<usize> {
        Ok(splice(&self.0, None, socket, None, len, FLAGS)?)
    }
}

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);
