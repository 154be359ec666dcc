//! Bulk throughput through a TLS passthrough route: each stream sends a real ClientHello
//! (SNI `kube-teleport-proxy-alpn.…`, so every peer routes by SNI), then raw bytes as fast
//! as it can for the run's duration, then FIN; the sink counts what it received and answers
//! with the count, so a stream's rate is bytes that reached the upstream over the time until
//! the count came back. Single stream and `--streams` in parallel; for each run also the CPU
//! seconds per GB moved, of the peer's own processes and of the whole machine (which
//! includes the client, the sink and the kernel's softirq and worker time, where the splice
//! does its work).

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::quiet::Sample;

/// The ClientHello every stream starts with (captured from `openssl s_client`).
pub const HELLO: &[u8] =
    include_bytes!("../../../proxy-user/tests/fixtures/hello_openssl_kube.bin");
/// SNI inside [`HELLO`].
pub const SNI: &str = "kube-teleport-proxy-alpn.example.test";
/// Size of each write.
const CHUNK: usize = 256 * 1024;

/// The upstream: reads each connection to EOF and answers with the byte count (u64 LE).
pub fn sink() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = stream;
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        let _ = s.write_all(&total.to_le_bytes());
                        break;
                    }
                    total += n as u64;
                }
            });
        }
    });
    Ok(addr)
}

/// One stream for `duration`: returns the payload bytes the sink received.
fn stream(addr: SocketAddr, duration: Duration) -> Result<u64> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.write_all(HELLO)?;
    let chunk = vec![0x5au8; CHUNK];
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        s.write_all(&chunk)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.read_exact(&mut count)
        .context("reading the sink's count")?;
    Ok(u64::from_le_bytes(count).saturating_sub(HELLO.len() as u64))
}

/// One measured run.
#[derive(Clone, Copy)]
pub struct Run {
    pub gbit_per_s: f64,
    pub bytes: u64,
    pub seconds: f64,
    /// CPU seconds of the peer's processes per GB moved.
    pub peer_cpu_per_gb: f64,
    /// CPU seconds of the whole machine per GB moved.
    pub machine_cpu_per_gb: f64,
}

/// `streams` streams at once through `addr` for `duration`.
pub fn measure(addr: SocketAddr, streams: usize, duration: Duration, pids: &[u32]) -> Result<Run> {
    let before = Sample::take(pids);
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| thread::spawn(move || stream(addr, duration)))
        .collect();
    let mut bytes = 0;
    for h in handles {
        bytes += h
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let (machine, ours) = Sample::take(pids).cpu_seconds_since(&before);
    if bytes == 0 {
        bail!("no byte reached the sink through {addr}");
    }
    let gb = bytes as f64 / 1e9;
    Ok(Run {
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
        bytes,
        seconds,
        peer_cpu_per_gb: ours / gb,
        machine_cpu_per_gb: machine / gb,
    })
}
