//! First-bytes protocol detection: a pure function from the bytes read so far to what the
//! connection is (`docs/architecture.md` §2).
//!
//! [`detect`] never blocks and never allocates per call; the server calls it again after each
//! read until the answer is not [`Detected::NeedMore`]. A PROXY header is parsed here too (with
//! the `ppp` crate), so the caller can strip it and detect again on the bytes after it.

use crate::protocol::{PG_CANCEL_REQUEST, PG_GSSENC_REQUEST, PG_SSL_REQUEST};
use std::net::SocketAddr;

/// The 12-byte PROXY protocol v2 signature.
pub(crate) const PROXY_V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest legal PROXY v1 line, CRLF included.
pub(crate) const PROXY_V1_MAX: usize = 107;

/// HTTP request prefixes recognised as plaintext HTTP (HTTP/1.x methods and the h2c preface).
const HTTP_PREFIXES: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detected {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// A TLS handshake record (`0x16 0x03`): parse the ClientHello next.
    Tls,
    /// Legacy plaintext SSH (`SSH-`).
    Ssh,
    /// Plaintext HTTP (a request method or the h2c preface).
    Http,
    /// One of the Postgres pre-startup requests.
    Postgres(PgRequest),
    /// A complete PROXY protocol header of `len` bytes; detection continues after it.
    Proxy(ProxyHeader),
    /// Something that starts like a PROXY header but is not a valid one.
    BadProxy(String),
    /// None of the above.
    Unknown,
}

/// Which Postgres request opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgRequest {
    Ssl,
    GssEnc,
    Cancel,
}

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    /// 1 or 2.
    pub(crate) version: u8,
    /// Length of the header on the wire, to strip it.
    pub(crate) len: usize,
    /// The real client address, when the header carries one (not for `UNKNOWN` / `LOCAL`).
    pub(crate) source: Option<SocketAddr>,
}

/// How `buf` relates to a fixed pattern.
#[derive(PartialEq)]
enum Prefix {
    /// `buf` starts with the whole pattern.
    Full,
    /// `buf` is a proper prefix of the pattern: more bytes could still match.
    Partial,
    No,
}

fn prefix(buf: &[u8], pattern: &[u8]) -> Prefix {
    let n = buf.len().min(pattern.len());
    if buf[..n] != pattern[..n] {
        Prefix::No
    } else if n == pattern.len() {
        Prefix::Full
    } else {
        Prefix::Partial
    }
}

/// Classifies the first bytes of a connection.
pub(crate) fn detect(buf: &[u8]) -> Detected {
    if buf.is_empty() {
        return Detected::NeedMore;
    }
    let mut partial = false;
    let mut check = |pattern: &[u8]| match prefix(buf, pattern) {
        Prefix::Full => true,
        Prefix::Partial => {
            partial = true;
            false
        }
        Prefix::No => false,
    };

    if check(b"PROXY ") {
        return proxy_v1(buf);
    }
    if check(PROXY_V2_SIGNATURE) {
        return proxy_v2(buf);
    }
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => Detected::NeedMore,
            Some(3) => Detected::Tls,
            Some(_) => Detected::Unknown,
        };
    }
    if check(b"SSH-") {
        return Detected::Ssh;
    }
    for method in HTTP_PREFIXES {
        if check(method) {
            return Detected::Http;
        }
    }
    for (pattern, kind) in [
        (PG_SSL_REQUEST, PgRequest::Ssl),
        (PG_GSSENC_REQUEST, PgRequest::GssEnc),
        (PG_CANCEL_REQUEST, PgRequest::Cancel),
    ] {
        if check(&pattern) {
            return Detected::Postgres(kind);
        }
    }
    if partial {
        Detected::NeedMore
    } else {
        Detected::Unknown
    }
}

fn proxy_v1(buf: &[u8]) -> Detected {
    let window = &buf[..buf.len().min(PROXY_V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= PROXY_V1_MAX {
            Detected::BadProxy(format!("PROXY v1 line longer than {PROXY_V1_MAX} bytes"))
        } else {
            Detected::NeedMore
        };
    };
    let line = &buf[..cr + 2];
    match ppp::v1::Header::try_from(line) {
        Ok(header) => {
            let source = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Detected::Proxy(ProxyHeader {
                version: 1,
                len: line.len(),
                source,
            })
        }
        Err(e) => Detected::BadProxy(format!("PROXY v1: {e}")),
    }
}

fn proxy_v2(buf: &[u8]) -> Detected {
    use ppp::PartialResult;
    // The fixed part is 16 bytes; bytes 14..16 give the length of what follows.
    if buf.len() < 16 {
        return Detected::NeedMore;
    }
    let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if buf.len() < len {
        // Check the fixed fields now, so a bad peer is not waited for.
        let head = ppp::v2::Header::try_from(&buf[..16]);
        return match head {
            Err(e) if !e.is_incomplete() => Detected::BadProxy(format!("PROXY v2: {e}")),
            _ => Detected::NeedMore,
        };
    }
    match ppp::v2::Header::try_from(&buf[..len]) {
        Ok(header) => {
            let source = match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Detected::Proxy(ProxyHeader {
                version: 2,
                len,
                source,
            })
        }
        Err(e) => Detected::BadProxy(format!("PROXY v2: {e}")),
    }
}

#[cfg(test)]
#[path = "detect_tests.rs"]
mod tests;
