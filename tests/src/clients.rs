//! Real clients: any command with input and a timeout ([`run_with_timeout`]),
//! `openssl s_client` ([`SClient`]), `curl` ([`curl`]), and a minimal HTTP/1.0 GET over TCP ([`http_get`]).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a client printed and how it ended.
#[derive(Debug)]
pub struct SClientOutput {
    /// Exit status; `None` when the harness killed it at the timeout.
    pub status: Option<ExitStatus>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl SClientOutput {
    /// True when it exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` with `input` on stdin (then EOF); kills it after `timeout`.
pub fn run_with_timeout(cmd: Command, input: &[u8], timeout: Duration) -> Result<SClientOutput> {
    run_inner(cmd, input, CloseStdin::AtOnce, timeout)
}

/// When the harness closes a client's stdin after writing the input.
#[derive(Clone, Copy)]
enum CloseStdin<'a> {
    AtOnce,
    WhenStdoutHas(&'a str),
    Never,
}

/// Spawns `cmd`, writes `input`, closes stdin as `close` says; kills it at `timeout`.
fn run_inner(
    mut cmd: Command,
    input: &[u8],
    close: CloseStdin<'_>,
    timeout: Duration,
) -> Result<SClientOutput> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        collect(child.stdout.take().expect("piped"), stdout.clone()),
        collect(child.stderr.take().expect("piped"), stderr.clone()),
    ];
    let mut stdin = child.stdin.take();
    if let Some(pipe) = stdin.as_mut() {
        let _ = pipe.write_all(input);
        let _ = pipe.flush();
    }
    if let CloseStdin::AtOnce = close {
        drop(stdin.take());
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if let CloseStdin::WhenStdoutHas(needle) = close {
            let seen = String::from_utf8_lossy(&stdout.lock().unwrap()).contains(needle);
            if seen {
                drop(stdin.take());
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for reader in readers {
        let _ = reader.join();
    }
    let text = |buf: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&buf.lock().unwrap()).into();
    Ok(SClientOutput {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    })
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// An `openssl s_client` invocation (`-nocommands`, so input lines starting with
/// `Q`/`R`/`k` are sent as data).
pub struct SClient {
    addr: SocketAddr,
    sni: Option<String>,
    args: Vec<OsString>,
}

impl SClient {
    /// `openssl s_client -connect ADDR`, no SNI unless [`SClient::sni`] is called.
    pub fn new(addr: SocketAddr) -> SClient {
        SClient {
            addr,
            sni: None,
            args: Vec::new(),
        }
    }

    /// Sends `name` as SNI.
    pub fn sni(mut self, name: &str) -> SClient {
        self.sni = Some(name.to_string());
        self
    }

    /// Offers ALPN protocols (comma-separated list, as `-alpn` takes it).
    pub fn alpn(self, protocols: &str) -> SClient {
        self.args(["-alpn", protocols])
    }

    /// Presents a client certificate.
    pub fn cert(self, cert: &Path, key: &Path) -> SClient {
        self.args([OsStr::new("-cert"), cert.as_os_str()])
            .args([OsStr::new("-key"), key.as_os_str()])
    }

    /// Verifies the server against `ca` and fails the handshake when it does not verify.
    pub fn verify(self, ca: &Path) -> SClient {
        self.args([OsStr::new("-CAfile"), ca.as_os_str()])
            .args(["-verify_return_error"])
    }

    /// Any further `s_client` arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> SClient {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Writes `input`, keeps stdin open until stdout contains `until` (then closes it,
    /// which makes `s_client` exit), and kills it at `timeout`.
    pub fn run(self, input: &[u8], until: &str, timeout: Duration) -> Result<SClientOutput> {
        let cmd = self.command()?;
        run_inner(cmd, input, CloseStdin::WhenStdoutHas(until), timeout)
    }

    /// Writes `input` and waits for `s_client` to end by itself (a failed handshake, or
    /// the server closing); kills it at `timeout`.
    pub fn run_to_end(self, input: &[u8], timeout: Duration) -> Result<SClientOutput> {
        let cmd = self.command()?;
        run_inner(cmd, input, CloseStdin::Never, timeout)
    }

    fn command(self) -> Result<Command> {
        let mut cmd = Command::new(crate::require_tool("openssl", "openssl", &[])?);
        cmd.args([
            "s_client",
            "-nocommands",
            "-connect",
            &self.addr.to_string(),
        ]);
        match &self.sni {
            Some(name) => cmd.args(["-servername", name]),
            None => cmd.arg("-noservername"),
        };
        cmd.args(&self.args);
        Ok(cmd)
    }
}

/// Runs the real `curl -sS --max-time 10` with `args`; 15 s timeout.
pub fn curl<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<SClientOutput> {
    let mut cmd = Command::new(crate::require_tool("curl", "curl", &[])?);
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(15))
}

/// `GET path HTTP/1.0` over plain TCP; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}{path}: {text:?}");
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line: {head:?}"))?;
    Ok((code, body.to_string()))
}
