//! TLS ClientHello parsing: SNI and the ALPN list, from raw bytes (`docs/architecture.md` §1).
//!
//! A ClientHello may be split over several TCP segments and over several TLS records; this
//! module reassembles the handshake message from the records' fragments and hands it to
//! `tls-parser`. It is a pure function of the bytes read so far: the caller reads more while
//! it answers `Ok(None)`, bounded by `max_len`.

use thiserror::Error;
use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, SNIType, TlsExtension,
    TlsMessage, TlsMessageHandshake,
};

/// TLS record header: type, version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Largest record payload a client may send (RFC 8446 §5.1; plus slack for TLS 1.2 peers).
const MAX_RECORD: usize = 16384 + 2048;
/// Content type of handshake records.
const HANDSHAKE: u8 = 0x16;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// The server name (SNI host_name), lower-cased, if the client sent one.
    pub(crate) sni: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub(crate) alpn: Vec<String>,
}

/// Why a ClientHello could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum HelloError {
    #[error("record type {0:#04x} where a handshake record was expected")]
    NotHandshake(u8),
    #[error("record length {0} is zero or larger than TLS allows")]
    BadRecordLength(usize),
    #[error("handshake message type {0} is not a ClientHello")]
    NotClientHello(u8),
    #[error("ClientHello of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("malformed ClientHello: {0}")]
    Malformed(String),
}

/// Parses the ClientHello at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(hello))` once the whole handshake
/// message has arrived, and an error as soon as the bytes cannot become a valid ClientHello.
pub(crate) fn parse(buf: &[u8], max_len: usize) -> Result<Option<ClientHello>, HelloError> {
    let mut message = Vec::new();
    let mut off = 0;
    loop {
        if let Some(len) = message_len(&message, max_len)? {
            if message.len() >= len {
                return decode(&message[..len]).map(Some);
            }
        }
        let Some(header) = buf.get(off..off + RECORD_HEADER) else {
            return match buf.get(off) {
                Some(&t) if t != HANDSHAKE => Err(HelloError::NotHandshake(t)),
                _ => Ok(None),
            };
        };
        if header[0] != HANDSHAKE {
            return Err(HelloError::NotHandshake(header[0]));
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || len > MAX_RECORD {
            return Err(HelloError::BadRecordLength(len));
        }
        off += RECORD_HEADER;
        let end = (off + len).min(buf.len());
        message.extend_from_slice(&buf[off..end]);
        if end < off + len {
            // The record is still arriving: fail early if it cannot become a ClientHello.
            message_len(&message, max_len)?;
            return Ok(None);
        }
        off = end;
    }
}

/// The total length of the handshake message once its 4-byte header is in, checked against
/// the type and the limit.
fn message_len(message: &[u8], max_len: usize) -> Result<Option<usize>, HelloError> {
    if message.len() < 4 {
        return Ok(None);
    }
    if message[0] != CLIENT_HELLO {
        return Err(HelloError::NotClientHello(message[0]));
    }
    let len = 4 + u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
    if len > max_len {
        return Err(HelloError::TooLarge(len, max_len));
    }
    Ok(Some(len))
}

/// Decodes one complete handshake message.
fn decode(message: &[u8]) -> Result<ClientHello, HelloError> {
    let malformed = |e: &dyn std::fmt::Debug| HelloError::Malformed(format!("{e:?}"));
    let (_, parsed) = parse_tls_message_handshake(message).map_err(|e| malformed(&e))?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(contents)) = parsed else {
        return Err(HelloError::NotClientHello(message[0]));
    };
    let mut hello = ClientHello::default();
    let Some(ext) = contents.ext else {
        return Ok(hello);
    };
    let (_, extensions) = parse_tls_client_hello_extensions(ext).map_err(|e| malformed(&e))?;
    for extension in extensions {
        match extension {
            TlsExtension::SNI(names) => {
                for (kind, name) in names {
                    if kind == SNIType::HostName {
                        let name = std::str::from_utf8(name)
                            .map_err(|_| HelloError::Malformed("SNI is not UTF-8".into()))?;
                        hello.sni = Some(name.to_ascii_lowercase());
                    }
                }
            }
            TlsExtension::ALPN(protocols) => {
                hello.alpn = protocols
                    .into_iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
            }
            _ => {}
        }
    }
    Ok(hello)
}

#[cfg(test)]
#[path = "hello_tests.rs"]
mod tests;
