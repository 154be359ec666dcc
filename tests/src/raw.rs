//! Raw TCP for the byte-level tests: PROXY protocol headers, a plain HTTP request, request
//! heads of `GET /webapi/connectionupgrade` and the response head they get
//! ([`read_head`]), and [`expect_closed`], which measures how long the peer takes to close.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream};
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

/// [`proxy_v2`] with one TLV of type `kind` carrying `value` (the header's length field
/// covers it), e.g. to make the header a given size.
pub fn proxy_v2_with_tlv(src: SocketAddrV4, dst: SocketAddrV4, kind: u8, value: &[u8]) -> Vec<u8> {
    let mut header = proxy_v2(src, dst);
    let tlv_len = u16::try_from(value.len()).expect("a TLV value fits in 64 KiB");
    header.push(kind);
    header.extend_from_slice(&tlv_len.to_be_bytes());
    header.extend_from_slice(value);
    let len = u16::try_from(header.len() - 16).expect("a PROXY v2 header fits in 64 KiB");
    header[14..16].copy_from_slice(&len.to_be_bytes());
    header
}

/// A plain HTTP/1.1 request with `Connection: close`.
pub fn http_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: proxy.example.test\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// A request head for the upgrade endpoint with `headers` (each `Name: value`).
pub fn upgrade_head(headers: &[&str]) -> Vec<u8> {
    let mut head = String::from("GET /webapi/connectionupgrade HTTP/1.1\r\nHost: localhost\r\n");
    for h in headers {
        head += h;
        head += "\r\n";
    }
    head += "\r\n";
    head.into_bytes()
}

/// A response head: the status code and the header lines (names lower-cased).
pub struct Head {
    /// The status code (0 when the status line does not parse).
    pub status: u16,
    /// `(name, value)`, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The whole head as text, for messages.
    pub text: String,
}

impl Head {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head byte by byte (nothing after it is consumed).
pub fn read_head(io: &mut impl Read) -> std::io::Result<Head> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            ));
        }
        raw.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Head {
        status,
        headers,
        text,
    })
}

/// The legacy upgrade's request head: `Upgrade: PROTOCOL`, `X-Teleport-Upgrade: PROTOCOL`.
pub fn legacy_head(protocol: &str) -> Vec<u8> {
    upgrade_head(&[
        &format!("Upgrade: {protocol}"),
        &format!("X-Teleport-Upgrade: {protocol}"),
        "Connection: Upgrade",
    ])
}

/// Connects to `addr` from the local address `source` (another loopback address, such as
/// 127.0.0.2, to be a different client than 127.0.0.1).
pub fn connect_from(source: IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    use rustix::net::{bind, connect as connect_to, socket, AddressFamily, SocketType};
    let family = if source.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket(family, SocketType::STREAM, None)?;
    bind(&fd, &SocketAddr::new(source, 0))?;
    connect_to(&fd, &addr)?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
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
