//! Shared by the `ebpf_*` tests and `splice_fallback`: starting a proxy with `--ebpf
//! require` (a kernel refusal fails the test; the tests that need it carry
//! `#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]`, see
//! `tests/build.rs`), a patterned byte stream whose every byte is checked on arrival
//! (loss, duplication and reordering all show), a plain TCP upstream run by the test
//! itself, the relay's byte counters, a wait for a pair to be spliced, and the two halves
//! of the half-close checks.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use switchyard_tests::{wait_until, ProxyConfig, Switchyard, TestPki};

/// How long any wait here lasts before the test fails.
const T: Duration = Duration::from_secs(30);

/// Starts the proxy with `--ebpf require`; panics when the front end does not start (the
/// tests calling this are ignored where it cannot, never skipped in silence).
pub fn start_spliced(pki: &TestPki, config: &ProxyConfig) -> Switchyard {
    let config = ProxyConfig {
        ebpf: Some("require".into()),
        relay: Some("kernel".into()),
        ..config.clone()
    };
    let proxy = Switchyard::start(pki, &config)
        .unwrap_or_else(|e| panic!("the eBPF front end did not start: {e:#}"));
    let loaded = proxy.metric("switchyard_ebpf_loaded", &[]).unwrap();
    assert_eq!(loaded, 1.0, "ebpf_loaded gauge\n{}", proxy.log());
    proxy
}

/// Block size of the pattern.
const BLOCK: usize = 1 << 20;

/// A deterministic stream: 1 MiB blocks of pseudo-random bytes, each starting with its
/// own index and the stream's seed, so that any lost, repeated or swapped byte shows.
pub struct Pattern {
    block: Vec<u8>,
    seed: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let block = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Pattern { block, seed }
    }

    /// The `i`-th block.
    fn block(&self, i: u64) -> Vec<u8> {
        let mut b = self.block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        b[8..16].copy_from_slice(&self.seed.to_le_bytes());
        b
    }

    /// Writes the first `len` bytes of the stream.
    pub fn send(&self, w: &mut impl Write, len: u64) -> std::io::Result<()> {
        let mut sent = 0u64;
        let mut i = 0;
        while sent < len {
            let b = self.block(i);
            let n = (len - sent).min(BLOCK as u64) as usize;
            w.write_all(&b[..n])?;
            sent += n as u64;
            i += 1;
        }
        Ok(())
    }

    /// The first `len` bytes of the stream behind `prefix`, in one buffer (one write).
    pub fn render(&self, prefix: &[u8], len: u64) -> Vec<u8> {
        let mut v = prefix.to_vec();
        self.send(&mut v, len).expect("writing to a Vec");
        v
    }

    /// Reads until EOF and checks every byte; returns the length read.
    pub fn receive(&self, r: &mut impl Read) -> Result<u64, String> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = 0u64;
        let mut expected = self.block(0);
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(pos),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read error after {pos} bytes: {e}")),
            };
            let mut got = &buf[..n];
            while !got.is_empty() {
                let at = (pos % BLOCK as u64) as usize;
                let take = got.len().min(BLOCK - at);
                if got[..take] != expected[at..at + take] {
                    return Err(format!(
                        "stream differs within bytes {pos}..{}",
                        pos + take as u64
                    ));
                }
                pos += take as u64;
                got = &got[take..];
                if pos.is_multiple_of(BLOCK as u64) {
                    expected = self.block(pos / BLOCK as u64);
                }
            }
        }
    }
}

/// Reads exactly `want.len()` bytes and checks them.
pub fn expect_bytes(r: &mut impl Read, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    r.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

/// A TCP upstream run by the test: accepts `count` connections and runs `serve` on each
/// in its own thread.
pub fn upstream<F>(count: usize, serve: F) -> (SocketAddr, JoinHandle<Vec<String>>)
where
    F: Fn(TcpStream) -> Result<(), String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    let handle = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for _ in 0..count {
            let (stream, _) = listener.accept().unwrap();
            let serve = serve.clone();
            threads.push(std::thread::spawn(move || serve(stream)));
        }
        threads
            .into_iter()
            .filter_map(|t| t.join().unwrap().err())
            .collect()
    });
    (addr, handle)
}

/// What crossed the proxy for one direction, from `/metrics`.
pub fn relayed(proxy: &Switchyard, direction: &str, mode: &str) -> f64 {
    proxy
        .metric(
            "switchyard_relay_bytes_total",
            &[("direction", direction), ("mode", mode)],
        )
        .unwrap()
}

/// Waits until both sockets of the one connection through `proxy` are in the front end's
/// SPLICED map: from then on the kernel redirects what either side sends.
pub fn wait_spliced(proxy: &Switchyard) {
    wait_until(T, "both sockets of the pair spliced", || {
        let n = proxy.metric("switchyard_ebpf_spliced_sockets", &[])?;
        Ok((n == 2.0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
}

/// Everything `s` sends until EOF (30 s read timeout).
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(T)).unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

/// Reads exactly `want.len()` bytes (30 s read timeout); an error naming both when they
/// differ. For upstreams, which report errors instead of panicking.
pub fn read_exactly(s: &mut TcpStream, want: &[u8]) -> Result<(), String> {
    let want_text = String::from_utf8_lossy(want);
    s.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .map_err(|e| format!("reading {want_text:?}: {e}"))?;
    (got == want)
        .then_some(())
        .ok_or_else(|| format!("got {:?}, not {want_text:?}", String::from_utf8_lossy(&got)))
}

/// Waits for the upstream's word on `rx` that it has read `what`.
pub fn wait_upstream_read(rx: &Receiver<()>, what: &str, proxy: &Switchyard) {
    rx.recv_timeout(T)
        .unwrap_or_else(|e| panic!("the upstream never read {what} ({e})\n{}", proxy.log()));
}

// ---- half-close: client `SSH-2.0-c\r\n`, upstream `SSH-2.0-u\r\n` ---------------------

/// Upstream of the client-half-close check: reads the preface `SSH-2.0-c\r\n` and says so
/// on `preface_read`, reads `request` to EOF, then answers `answer after EOF`.
pub fn answer_after_eof(
    preface_read: Sender<()>,
) -> impl Fn(TcpStream) -> Result<(), String> + Send + Sync + 'static {
    move |mut s| {
        read_exactly(&mut s, b"SSH-2.0-c\r\n").map_err(|e| format!("upstream {e}"))?;
        let _ = preface_read.send(());
        let got = read_to_end(&mut s);
        if got != b"request" {
            return Err(format!(
                "upstream got {:?} after the preface",
                String::from_utf8_lossy(&got)
            ));
        }
        s.write_all(b"answer after EOF").map_err(|e| e.to_string())
    }
}

/// Client of the client-half-close check: the preface; once the upstream has read it
/// (`preface_read`, the relay is set up) and, when the eBPF front end is loaded, the pair
/// is spliced, `request` and a write shutdown; the answer must still arrive.
pub fn request_then_half_close(proxy: &Switchyard, preface_read: &Receiver<()>) {
    let mut c = TcpStream::connect(proxy.web).unwrap();
    c.write_all(b"SSH-2.0-c\r\n").unwrap();
    wait_upstream_read(preface_read, "the preface", proxy);
    if proxy.metric("switchyard_ebpf_loaded", &[]).unwrap() == 1.0 {
        wait_spliced(proxy);
    }
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c), b"answer after EOF", "{}", proxy.log());
}

/// Upstream of the upstream-half-close check: `SSH-2.0-u\r\nbye` and a write shutdown,
/// then reads `SSH-2.0-c\r\nlate words` to EOF.
pub fn bye_then_read_late_words(mut s: TcpStream) -> Result<(), String> {
    s.write_all(b"SSH-2.0-u\r\nbye")
        .map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let got = read_to_end(&mut s);
    (got == b"SSH-2.0-c\r\nlate words")
        .then_some(())
        .ok_or(format!("upstream got {:?}", String::from_utf8_lossy(&got)))
}

/// Client of the upstream-half-close check: the preface, reads `SSH-2.0-u\r\nbye` to EOF,
/// then still sends `late words` and shuts down its write side.
pub fn late_words_after_eof(proxy: SocketAddr) {
    let mut c = TcpStream::connect(proxy).unwrap();
    c.write_all(b"SSH-2.0-c\r\n").unwrap();
    assert_eq!(read_to_end(&mut c), b"SSH-2.0-u\r\nbye");
    c.write_all(b"late words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
}
