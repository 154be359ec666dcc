//! Postgres on the local side: psql opens with an SSLRequest (or GSSENCRequest) when
//! `sslmode` allows TLS. The local proxy answers `N` itself — the TLS that matters is the
//! one to the proxy, with `teleport-postgres` — and forwards the startup packet that
//! follows, so `sslmode=prefer` and `disable` both work.

use super::ClientError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
/// Largest startup packet accepted (libpq's own limit is 10000).
const MAX_STARTUP: usize = 10_000;

/// What one complete startup packet asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Startup {
    /// SSLRequest or GSSENCRequest: answer `N`, read the next packet.
    Encryption,
    /// StartupMessage or CancelRequest: forward it.
    Forward,
}

/// Classifies a startup packet from its 8-byte head (length, code).
pub(crate) fn classify(head: [u8; 8]) -> Result<(usize, Startup), ClientError> {
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let code = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(ClientError::Protocol(format!(
            "not a Postgres startup packet (length {len})"
        )));
    }
    let kind = match (len, code) {
        (8, SSL_REQUEST | GSSENC_REQUEST) => Startup::Encryption,
        _ => Startup::Forward,
    };
    Ok((len, kind))
}

/// Answers encryption requests with `N`; returns the first packet to forward.
pub(crate) async fn local_startup(client: &mut TcpStream) -> Result<Vec<u8>, ClientError> {
    loop {
        let mut head = [0u8; 8];
        client
            .read_exact(&mut head)
            .await
            .map_err(ClientError::io("reading the Postgres startup packet"))?;
        match classify(head)? {
            (_, Startup::Encryption) => client
                .write_all(b"N")
                .await
                .map_err(ClientError::io("answering SSLRequest"))?,
            (len, Startup::Forward) => {
                let mut packet = head.to_vec();
                packet.resize(len, 0);
                client
                    .read_exact(&mut packet[8..])
                    .await
                    .map_err(ClientError::io("reading the Postgres startup packet"))?;
                return Ok(packet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_and_startup_forwarded() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(classify(ssl).unwrap(), (8, Startup::Encryption));
        assert_eq!(classify(gss).unwrap(), (8, Startup::Encryption));
        let startup = [0, 0, 0, 0x29, 0, 3, 0, 0];
        assert_eq!(classify(startup).unwrap(), (0x29, Startup::Forward));
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        assert_eq!(classify(cancel).unwrap(), (16, Startup::Forward));
        assert!(classify(*b"GET / HT").is_err());
    }
}
