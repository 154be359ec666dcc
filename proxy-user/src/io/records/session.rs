//! [`Session`]: a TLS 1.3 session's record protection after the handshake, with the keys
//! and sequence numbers rustls handed over. Pure: bytes in, bytes out, no I/O.
//!
//! [`Session::open`] takes the client's bytes as read (any number of whole records, then
//! perhaps part of one) and decrypts the whole records in place, reporting where their
//! plaintext is; [`Session::seal`] makes records of plaintext to send. The record
//! protection itself is rustls' (the provider's `MessageDecrypter`/`MessageEncrypter`):
//! nonces, additional data and the inner content type are its code, not ours.

use std::ops::Range;

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundPlainMessage,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ExtractedSecrets, ProtocolVersion};
use rustls::{SupportedCipherSuite, Tls13CipherSuite};

use crate::io::ktls::control::{classify, ControlError};

/// A record header: type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// The most plaintext a record carries (RFC 8446 §5.1).
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// The longest protected record body: plaintext, its content type, padding and tag
/// (RFC 8446 §5.2: 2^14 + 256).
const MAX_BODY: usize = MAX_PLAINTEXT + 256;
/// The longest record on the wire.
pub(crate) const MAX_RECORD: usize = HEADER + MAX_BODY;

/// The TLS 1.3 handshake message type of a `KeyUpdate` (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;

/// Why the client's records, or ours, cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("the client sent a TLS record that does not decrypt (bad_record_mac)")]
    Decrypt,
    #[error("the client sent a TLS record of {0} bytes (at most {MAX_BODY})")]
    Oversized(usize),
    #[error("the client sent a TLS record of outer type {0} after the handshake (only 23)")]
    Outer(u8),
    #[error("the client's TLS record: {0}")]
    Tls(rustls::Error),
    #[error(
        "the client asked for new TLS keys (a TLS 1.3 KeyUpdate), which the proxy's record \
         layer cannot follow; closed (tls_records: rustls keeps such clients in rustls)"
    )]
    KeyUpdate,
    #[error(transparent)]
    Control(ControlError),
    #[error(
        "this session's keys have protected {0} records, the cipher's limit, and the \
         proxy's record layer cannot renew them; closed"
    )]
    WornOut(u64),
}

impl From<RecordError> for std::io::Error {
    fn from(e: RecordError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// What [`Session::open`] found at the start of a buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// Bytes of whole records processed; the rest is part of the next record.
    pub(crate) consumed: usize,
    /// The client's `close_notify` was among them (what follows it is ignored).
    pub(crate) closed: bool,
}

/// One direction's protection and its sequence number.
struct Way<T: ?Sized> {
    crypter: Box<T>,
    seq: u64,
}

/// The record protection of a terminated TLS 1.3 session: one half each way, so each
/// direction of a relay owns its own.
pub(crate) struct Session {
    pub(crate) opener: Opener,
    pub(crate) sealer: Sealer,
}

/// The client's records: decrypted in place.
pub(crate) struct Opener {
    rx: Way<dyn MessageDecrypter>,
    /// Records one key may protect ([`RecordError::WornOut`] past it).
    limit: u64,
}

/// Our records to the client.
pub(crate) struct Sealer {
    tx: Way<dyn MessageEncrypter>,
    limit: u64,
}

impl Session {
    /// The session of `suite` with the secrets rustls extracted; `None` for a TLS 1.2
    /// suite (which stays in rustls) or keys of an unexpected kind.
    pub(crate) fn new(suite: SupportedCipherSuite, secrets: ExtractedSecrets) -> Option<Session> {
        let suite: &Tls13CipherSuite = suite.tls13()?;
        let (rx_seq, rx) = secrets.rx;
        let (tx_seq, tx) = secrets.tx;
        let (rx_key, rx_iv) = key_and_iv(rx)?;
        let (tx_key, tx_iv) = key_and_iv(tx)?;
        let limit = suite.common.confidentiality_limit;
        Some(Session {
            opener: Opener {
                rx: Way {
                    crypter: suite.aead_alg.decrypter(rx_key, rx_iv),
                    seq: rx_seq,
                },
                limit,
            },
            sealer: Sealer {
                tx: Way {
                    crypter: suite.aead_alg.encrypter(tx_key, tx_iv),
                    seq: tx_seq,
                },
                limit,
            },
        })
    }
}

impl Opener {
    /// Decrypts, in place, the whole records at the start of `buf`, appending the ranges
    /// of their application data to `data` (in order; empty records leave none). Stops
    /// at a partial record, or after a `close_notify`.
    pub(crate) fn open(
        &mut self,
        buf: &mut [u8],
        data: &mut Vec<Range<usize>>,
    ) -> Result<Opened, RecordError> {
        let mut at = 0;
        while let Some(head) = buf.get(at..at + HEADER) {
            let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
            if head[0] != u8::from(ContentType::ApplicationData) {
                return Err(RecordError::Outer(head[0]));
            }
            if len > MAX_BODY {
                return Err(RecordError::Oversized(len));
            }
            let Some(body) = buf.get_mut(at + HEADER..at + HEADER + len) else {
                break;
            };
            if self.rx.seq >= self.limit {
                return Err(RecordError::WornOut(self.rx.seq));
            }
            let sealed = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                body,
            );
            let plain = self
                .rx
                .crypter
                .decrypt(sealed, self.rx.seq)
                .map_err(|e| match e {
                    rustls::Error::DecryptError => RecordError::Decrypt,
                    e => RecordError::Tls(e),
                })?;
            self.rx.seq += 1;
            let start = at + HEADER;
            at += HEADER + len;
            match (plain.typ, plain.payload) {
                (ContentType::ApplicationData, []) => {}
                (ContentType::ApplicationData, payload) => {
                    data.push(start..start + payload.len());
                }
                (ContentType::Alert, alert) => {
                    classify(u8::from(ContentType::Alert), alert).map_err(RecordError::Control)?;
                    return Ok(Opened {
                        consumed: at,
                        closed: true,
                    });
                }
                (ContentType::Handshake, [KEY_UPDATE, ..]) => return Err(RecordError::KeyUpdate),
                (kind, content) => {
                    let e = classify(u8::from(kind), content).err();
                    return Err(RecordError::Control(
                        e.unwrap_or(ControlError::Unexpected(u8::from(kind))),
                    ));
                }
            }
        }
        Ok(Opened {
            consumed: at,
            closed: false,
        })
    }
}

impl Sealer {
    /// Appends to `out` the records of `plain` (application data, or the one alert a
    /// relay sends: `close_notify`), at most [`MAX_PLAINTEXT`] bytes each.
    pub(crate) fn seal(
        &mut self,
        kind: ContentType,
        plain: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), RecordError> {
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            if self.tx.seq >= self.limit {
                return Err(RecordError::WornOut(self.tx.seq));
            }
            let message = OutboundPlainMessage {
                typ: kind,
                version: ProtocolVersion::TLSv1_2,
                payload: chunk.into(),
            };
            let sealed = self
                .tx
                .crypter
                .encrypt(message, self.tx.seq)
                .map_err(RecordError::Tls)?;
            self.tx.seq += 1;
            out.push(sealed.encode());
        }
        Ok(())
    }

    /// The `close_notify` alert, as one record.
    pub(crate) fn close_notify(&mut self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(1);
        self.seal(ContentType::Alert, &[1, 0], &mut out)?;
        Ok(out.pop().unwrap_or_default())
    }
}

/// The key and IV of one direction.
fn key_and_iv(
    secrets: ConnectionTrafficSecrets,
) -> Option<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv)> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Some((key, iv)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
pub(crate) mod tests;
