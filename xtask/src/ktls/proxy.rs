//! The second half of the check inside the guest: the `switchyard` binary itself with
//! `--ktls require`, on Debian's kernel. `serve --dev` gives a PKI and the demo `grafana`
//! route (terminated, mTLS for alice, `teleport-tcp`, an echo upstream). Then:
//!
//! - a rustls client per cipher suite (TLS 1.3 AES-128/256-GCM, ChaCha20; TLS 1.2
//!   ECDHE-ECDSA AES-128/256-GCM, ChaCha20) echoes [`BYTES`] byte-exact, closes with a
//!   `close_notify` and gets the proxy's back after the upstream's EOF;
//! - a blocking rustls client sends its first application data in the same write as its
//!   `Finished` (what rustls had read past the handshake must reach the upstream first);
//! - `openssl s_client`: an echo, a resumed session (`-sess_out`/`-sess_in`), a TLS 1.3
//!   `KeyUpdate` (`k`), which the proxy must refuse with its reason in the log;
//! - a forged record after the handshake (a bad MAC): closed, reason in the log;
//! - the process still serves, and `/metrics` counts every hand-over and `mode="ktls"`
//!   bytes.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream as StdStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rustls::crypto::ring::{cipher_suite as suites, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Bytes each way per suite.
const BYTES: usize = 4 << 20;
const PROXY: &str = "127.0.0.1:3080";
const DIAG: &str = "127.0.0.1:3081";
const SNI: &str = "grafana.localhost";
const ALPN: &str = "teleport-tcp";
const DEV: &str = "/tmp/dev";
const LOG: &str = "/tmp/switchyard.log";

/// The proxy, killed when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(runtime: &tokio::runtime::Runtime) -> Result<()> {
    let log = std::fs::File::create(LOG)?;
    let child = Command::new("/bin/switchyard")
        .args(["serve", "--dev", DEV, "--ebpf", "off", "--ktls", "require"])
        .args(["--listen", PROXY, "--diag", DIAG])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn switchyard")?;
    let mut proxy = Proxy(child);
    wait_for(&mut proxy).context("switchyard did not start")?;
    let pki = Path::new(DEV).join("pki");
    let suites = [
        suites::TLS13_AES_128_GCM_SHA256,
        suites::TLS13_AES_256_GCM_SHA384,
        suites::TLS13_CHACHA20_POLY1305_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let mut sessions = 0;
    for suite in suites {
        let config = client(&pki, suite)?;
        runtime
            .block_on(within(echo(config)))
            .with_context(|| format!("switchyard, {:?}", suite.suite()))?;
        sessions += 1;
        say(&format!(
            "{:?}: {BYTES} bytes each way through the proxy, byte-exact, close_notify both ways",
            suite.suite()
        ));
    }
    pipelined(client(&pki, suites::TLS13_AES_128_GCM_SHA256)?).context("pipelined client")?;
    sessions += 1;
    say("data in the client's Finished flight reached the upstream, in order");
    openssl(&pki)?;
    sessions += 3;
    forged(runtime, client(&pki, suites::TLS13_AES_128_GCM_SHA256)?)?;
    sessions += 1;
    let config = client(&pki, suites::TLS13_AES_128_GCM_SHA256)?;
    runtime
        .block_on(within(echo(config)))
        .context("after the bad clients")?;
    sessions += 1;
    say("the proxy still serves after the KeyUpdate and the forged record");
    let metrics = runtime.block_on(within(scrape()))?;
    let handed = sample(
        &metrics,
        "switchyard_ktls_sessions_total{route=\"grafana\",outcome=\"handed_over\"}",
    );
    ensure!(
        handed == sessions as f64,
        "{handed} sessions handed over, expected {sessions}:\n{metrics}"
    );
    let moved = sample(
        &metrics,
        "switchyard_relay_bytes_total{direction=\"client_to_upstream\",mode=\"ktls\"}",
    );
    ensure!(
        moved >= (7 * BYTES) as f64,
        "{moved} bytes with mode=\"ktls\""
    );
    say(&format!("/metrics: {handed} sessions handed over to the kernel, {moved} bytes client to upstream with mode=\"ktls\""));
    if let Some(status) = proxy.0.try_wait()? {
        bail!("switchyard exited: {status}");
    }
    compare(runtime, &mut proxy, &pki)
}

/// The proxy's CPU per GB with kTLS against the same binary with `--ktls off`, in this
/// guest: a hint of what the hand-over saves, not a measurement (software emulation
/// distorts every cost, and not by the same factor).
fn compare(runtime: &tokio::runtime::Runtime, ktls: &mut Proxy, pki: &Path) -> Result<()> {
    const OFF_PROXY: &str = "127.0.0.1:3082";
    let log = std::fs::File::create("/tmp/switchyard-off.log")?;
    let child = Command::new("/bin/switchyard")
        .args(["serve", "--dev", DEV, "--ebpf", "off", "--ktls", "off"])
        .args(["--listen", OFF_PROXY, "--diag", "127.0.0.1:3083"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn switchyard --ktls off")?;
    let mut off = Proxy(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    while StdStream::connect(OFF_PROXY).is_err() {
        ensure!(off.0.try_wait()?.is_none(), "switchyard --ktls off exited");
        ensure!(
            Instant::now() < deadline,
            "switchyard --ktls off did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = client(pki, suites::TLS13_AES_128_GCM_SHA256)?;
    let gb = 2.0 * BYTES as f64 / 1e9;
    let mut cells = Vec::new();
    for (proxy, addr) in [(&mut *ktls, PROXY), (&mut off, OFF_PROXY)] {
        // Once unmeasured: the emulator translates code the first time it runs, and the
        // kTLS proxy's paths are already warm from the checks above.
        runtime.block_on(within(echo_at(config.clone(), addr)))?;
        let before = user_system(proxy.0.id())?;
        runtime.block_on(within(echo_at(config.clone(), addr)))?;
        let after = user_system(proxy.0.id())?;
        let (user, system) = ((after.0 - before.0) / gb, (after.1 - before.1) / gb);
        cells.push(format!(
            "{:.1} s/GB ({user:.1} user, {system:.1} system)",
            user + system
        ));
    }
    say(&format!(
        "under emulation (a hint, not a bench): proxy CPU with kTLS {}, in userspace {}; \
         TLS 1.3 AES-128-GCM, {BYTES} bytes each way",
        cells[0], cells[1]
    ));
    Ok(())
}

fn say(line: &str) {
    println!("ktls-check: switchyard: {line}");
}

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 120 s"))?
}

/// Until the single port and the diagnostics port accept (or the process exits).
fn wait_for(proxy: &mut Proxy) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some(status) = proxy.0.try_wait()? {
            bail!("it exited ({status}): {}", std::fs::read_to_string(LOG)?);
        }
        if StdStream::connect(PROXY).is_ok() && StdStream::connect(DIAG).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "not listening after 300 s: {}",
        std::fs::read_to_string(LOG)?
    )
}

/// alice's client configuration offering only `suite`.
fn client(pki: &Path, suite: SupportedCipherSuite) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..default_provider()
    });
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(ca?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.join("alice.crt"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join("alice.key"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[suite.version()])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.as_bytes().to_vec()];
    Ok(Arc::new(config))
}

/// User and system CPU seconds of process `pid` so far (`/proc/PID/stat`, 100 ticks/s).
fn user_system(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name (which may hold spaces): utime is the 12th field, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("stat field")?.parse::<f64>()? / 100.0)
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// The demo upstream's greeting, then `BYTES` echoed; both sides close cleanly.
async fn echo(config: Arc<ClientConfig>) -> Result<()> {
    echo_at(config, PROXY).await
}

/// [`echo`] through the proxy at `addr`.
async fn echo_at(config: Arc<ClientConfig>, addr: &str) -> Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SNI)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (read, mut write) = tokio::io::split(tls);
    let mut read = tokio::io::BufReader::new(read);
    let mut greeting = String::new();
    read.read_line(&mut greeting).await?;
    ensure!(greeting == "upstream=grafana\n", "greeting {greeting:?}");
    let sent: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            write.write_all(chunk).await?;
        }
        write.shutdown().await?;
        anyhow::Ok(())
    });
    let mut back = Vec::with_capacity(BYTES);
    read.read_to_end(&mut back)
        .await
        .context("the echo and the proxy's close_notify")?;
    writer.await??;
    ensure!(back.len() == BYTES, "{} bytes back of {BYTES}", back.len());
    ensure!(back == expected, "the echo differs from what was sent");
    Ok(())
}

/// A blocking rustls client whose first application data leaves with its `Finished`.
fn pipelined(config: Arc<ClientConfig>) -> Result<()> {
    let mut sock = StdStream::connect(PROXY)?;
    sock.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut conn = rustls::ClientConnection::new(config, ServerName::try_from(SNI)?)?;
    conn.write_tls(&mut sock)?;
    while conn.is_handshaking() {
        conn.read_tls(&mut sock)?;
        conn.process_new_packets()?;
        if conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut sock)?;
            }
        }
    }
    conn.writer().write_all(b"first words\n")?;
    let mut out = Vec::new();
    while conn.wants_write() {
        let mut chunk = Vec::new();
        conn.write_tls(&mut chunk)?;
        out.extend(chunk);
    }
    sock.write_all(&out)?; // Finished and the data in one write.
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"first words\n") {
        let n = stream.read(&mut byte)?;
        ensure!(n == 1, "EOF after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    ensure!(
        got == b"upstream=grafana\nfirst words\n",
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

/// `openssl s_client` through the proxy: an echo, a resumption, a KeyUpdate.
fn openssl(pki: &Path) -> Result<()> {
    let session = "/tmp/session.pem";
    let out = s_client(pki, &["-sess_out", session], &["hello from openssl"], false)?;
    ensure!(
        out.contains("upstream=grafana") && out.contains("hello from openssl"),
        "{out}"
    );
    ensure!(out.contains("Verify return code: 0 (ok)"), "{out}");
    say("openssl s_client: echo through the proxy, certificate verified");
    let out = s_client(pki, &["-sess_in", session], &["resumed hello"], false)?;
    ensure!(
        out.contains("Reused, TLSv1.3") && out.contains("resumed hello"),
        "{out}"
    );
    say("openssl s_client: resumed session (Reused, TLSv1.3), handed over too");
    let out = s_client(pki, &[], &["before the update", "k"], true)?;
    ensure!(out.contains("before the update"), "{out}");
    let reason = log_says("KeyUpdate")?;
    say(&format!(
        "openssl s_client: a KeyUpdate is refused: {reason}"
    ));
    Ok(())
}

/// Runs `s_client` (for at most 60 s) with `lines` on its stdin, each sent once the echo
/// of the one before came back; then `Q` (unless `closed_by_proxy`: then it waits for the
/// proxy to close).
fn s_client(pki: &Path, extra: &[&str], lines: &[&str], closed_by_proxy: bool) -> Result<String> {
    let file = |n: &str| pki.join(n).to_string_lossy().into_owned();
    let mut child = Command::new("/bin/timeout")
        .args([
            "60",
            "/bin/openssl",
            "s_client",
            "-connect",
            PROXY,
            "-servername",
            SNI,
            "-alpn",
            ALPN,
        ])
        .args(["-CAfile", &file("ca.crt"), "-cert", &file("alice.crt")])
        .args(["-key", &file("alice.key")])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn openssl")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut seen = String::new();
    let mut wait_for_line = |want: &str, seen: &mut String| -> Result<()> {
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line)? == 0 {
                bail!("s_client ended before {want:?}:\n{seen}");
            }
            seen.push_str(&line);
            // Data can follow s_client's own output on the same line (a ticket's dump).
            if line.trim_end().ends_with(want) {
                return Ok(());
            }
        }
    };
    wait_for_line("upstream=grafana", &mut seen)?;
    for line in lines {
        writeln!(stdin, "{line}")?;
        if *line != "k" {
            wait_for_line(line, &mut seen)?;
        }
    }
    if !closed_by_proxy {
        writeln!(stdin, "Q")?;
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    seen.push_str(&rest);
    drop(stdin);
    child.wait()?;
    Ok(seen)
}

/// A record with a forged MAC after the handshake: the proxy closes, says why.
fn forged(runtime: &tokio::runtime::Runtime, config: Arc<ClientConfig>) -> Result<()> {
    runtime.block_on(within(async move {
        let tcp = TcpStream::connect(PROXY).await?;
        let name = ServerName::try_from(SNI)?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let mut greeting = [0u8; 17];
        tls.read_exact(&mut greeting).await?;
        // Application data, 32 bytes that no key made.
        let mut record = vec![23u8, 3, 3, 0, 32];
        record.extend([0x42; 32]);
        tls.get_mut().0.write_all(&record).await?;
        let mut rest = Vec::new();
        let _ = tls.get_mut().0.read_to_end(&mut rest).await;
        anyhow::Ok(())
    }))?;
    let reason = log_says("failed to decrypt")?;
    say(&format!(
        "a forged record after the hand-over is refused: {reason}"
    ));
    Ok(())
}

/// Waits until the proxy's log has a line with `needle` (its closing line comes after the
/// client saw the connection end).
fn log_says(needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(LOG)?;
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            // The reason, as the closing line gives it.
            let reason = line.split_once("error=").map_or(line, |(_, r)| r);
            return Ok(reason.to_owned());
        }
        if Instant::now() > deadline {
            bail!("no {needle:?} in the proxy's log after 30 s:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn scrape() -> Result<String> {
    let mut s = TcpStream::connect(DIAG).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The value of the sample `name` (with its labels, as written), 0 if absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
