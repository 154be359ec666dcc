//! Raw TCP for the byte-level tests: PROXY protocol headers, a plain HTTP request, and
//! [`expect_closed`], which measures how long the peer takes to close.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The 12-byte PROXY v2 signature.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// A PROXY v1 line: `PROXY TCP4 SRC DST SPORT DPORT\r\n`.
pub fn proxy_v1(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A PROXY v2 header: version 2, command PROXY, TCP over IPv4, no TLVs.
pub fn proxy_v2(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut header = PROXY_V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&dst.ip().octets());
    header.extend_from_slice(&src.port().to_be_bytes());
    header.extend_from_slice(&dst.port().to_be_bytes());
    header
}

/// A plain HTTP/1.1 request with `Connection: close`.
pub fn http_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: proxy.example.test\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Connects to `addr` (5 s timeout).
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?)
}

/// Connects, writes `bytes`, and returns everything read until the peer closes,
/// failing after `timeout`.
pub fn exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut stream = connect(addr)?;
    stream.write_all(bytes)?;
    Ok(expect_closed(&mut stream, timeout)?.1)
}

/// Reads until the peer closes (EOF or reset) and returns how long that took and what
/// was read; fails when it is still open after `timeout`.
pub fn expect_closed(stream: &mut TcpStream, timeout: Duration) -> Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            bail!(
                "connection still open after {timeout:?}; received {:?}",
                String::from_utf8_lossy(&received)
            );
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok((start.elapsed(), received)),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Ok((start.elapsed(), received))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
