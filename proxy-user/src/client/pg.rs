//! Postgres on the local side: psql opens with an SSLRequest (or GSSENCRequest) when
//! `sslmode` allows TLS. The local proxy answers `N` itself — the TLS that matters is the
//! one to the proxy, with `teleport-postgres` — and forwards the startup packet that
//! follows, so `sslmode=prefer` and `disable` both work.
//!
//! [`classify`] is pure (bytes in, answer out, `Ok(None)` while the 8-byte head has not
//! arrived); [`local_startup`] reads the client's packets and answers them. When the
//! connection to the proxy fails, [`error_response`] tells psql why, so the reason is
//! printed by the client itself (`FATAL:  switchyard: proxy … denied access …`).

use super::ClientError;
use crate::protocol::{PG_GSSENC_REQUEST, PG_SSL_REQUEST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest startup packet accepted (libpq's own limit is 10000).
const MAX_STARTUP: usize = 10_000;
/// Length and code: what every startup packet begins with.
const HEAD: usize = 8;

/// What one complete startup packet asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Startup {
    /// SSLRequest or GSSENCRequest: answer `N`, read the next packet.
    Encryption,
    /// StartupMessage or CancelRequest: forward it.
    Forward,
}

/// Classifies the startup packet at the start of `buf`: `Ok(None)` while fewer than 8
/// bytes have arrived, then its length (head included) and what it asks for. Bytes past
/// the head do not change the answer.
pub(crate) fn classify(buf: &[u8]) -> Result<Option<(usize, Startup)>, ClientError> {
    match buf.first_chunk::<HEAD>() {
        None => Ok(None),
        Some(head) => classify_head(head).map(Some),
    }
}

/// Classifies a startup packet from its 8-byte head (length, code).
fn classify_head(head: &[u8; HEAD]) -> Result<(usize, Startup), ClientError> {
    let [l0, l1, l2, l3, ..] = *head;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if !(HEAD..=MAX_STARTUP).contains(&len) {
        return Err(ClientError::Protocol(format!(
            "not a Postgres startup packet (length {len})"
        )));
    }
    // Anything else is a StartupMessage or a CancelRequest (`PG_CANCEL_REQUEST` and the
    // key): the proxy's side answers those.
    let kind = if *head == PG_SSL_REQUEST || *head == PG_GSSENC_REQUEST {
        Startup::Encryption
    } else {
        Startup::Forward
    };
    Ok((len, kind))
}

/// Answers encryption requests with `N`; returns the first packet to forward.
pub(crate) async fn local_startup(client: &mut TcpStream) -> Result<Vec<u8>, ClientError> {
    let read_error = ClientError::io("reading the Postgres startup packet");
    loop {
        // Only the head is read before it is classified: nothing of the next packet.
        let mut head = [0u8; HEAD];
        let mut filled = 0;
        let (len, kind) = loop {
            if let Some(answer) = classify(&head[..filled])? {
                break answer;
            }
            match client.read(&mut head[filled..]).await {
                Ok(0) => return Err(read_error(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => filled += n,
                Err(e) => return Err(read_error(e)),
            }
        };
        match kind {
            Startup::Encryption => client
                .write_all(b"N")
                .await
                .map_err(ClientError::io("answering SSLRequest"))?,
            Startup::Forward => {
                let mut packet = head.to_vec();
                packet.resize(len, 0);
                client
                    .read_exact(&mut packet[HEAD..])
                    .await
                    .map_err(read_error)?;
                return Ok(packet);
            }
        }
    }
}

/// A Postgres `ErrorResponse` (severity FATAL, SQLSTATE 08001: the client could not
/// establish the connection) carrying `message`.
pub(crate) fn error_response(message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08001"),
        (b'M', message),
    ] {
        fields.push(code);
        // A NUL would end the field early: the message is one C string.
        fields.extend(value.bytes().filter(|&b| b != 0));
        fields.push(0);
    }
    fields.push(0);
    let mut packet = vec![b'E'];
    packet.extend(((fields.len() + 4) as u32).to_be_bytes());
    packet.extend(fields);
    packet
}

/// Tells psql why its connection cannot go on, best effort, then closes it.
pub(crate) async fn refuse(client: &mut TcpStream, error: &ClientError) {
    let _ = client
        .write_all(&error_response(&format!("switchyard: {error}")))
        .await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PG_CANCEL_REQUEST;
    use tokio::net::TcpListener;

    const PG_SSL: &[u8] = include_bytes!("../../tests/fixtures/pg_sslrequest.bin");

    /// A StartupMessage (protocol 3.0) for user `postgres`.
    fn startup_message() -> Vec<u8> {
        let body = b"\0\x03\0\0user\0postgres\0\0";
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    fn cancel_request() -> Vec<u8> {
        [PG_CANCEL_REQUEST.as_slice(), &[0, 0, 1, 2, 3, 4, 5, 6]].concat()
    }

    /// Every prefix shorter than the head needs more, every longer one (the complete
    /// packet, and the packet followed by other bytes) gives `expected`.
    fn every_prefix(packet: &[u8], expected: (usize, Startup)) {
        let longer = [packet, b"\0\0\0\x08next"].concat();
        for n in 0..=longer.len() {
            let got = classify(&longer[..n]).unwrap();
            if n < HEAD {
                assert_eq!(got, None, "prefix of {n} bytes");
            } else {
                assert_eq!(got.as_ref(), Some(&expected), "prefix of {n} bytes");
            }
        }
    }

    #[test]
    fn requests_are_answered_and_startup_forwarded() {
        assert_eq!(classify(PG_SSL).unwrap(), Some((8, Startup::Encryption)));
        assert_eq!(
            classify(&PG_GSSENC_REQUEST).unwrap(),
            Some((8, Startup::Encryption))
        );
        let startup = [0, 0, 0, 0x29, 0, 3, 0, 0];
        assert_eq!(classify(&startup).unwrap(), Some((0x29, Startup::Forward)));
        assert_eq!(
            classify(&cancel_request()).unwrap(),
            Some((16, Startup::Forward))
        );
        assert!(classify(b"GET / HT").is_err());
    }

    #[test]
    fn every_prefix_needs_more_or_answers() {
        every_prefix(PG_SSL, (8, Startup::Encryption));
        every_prefix(&PG_GSSENC_REQUEST, (8, Startup::Encryption));
        every_prefix(&cancel_request(), (16, Startup::Forward));
        let startup = startup_message();
        every_prefix(&startup, (startup.len(), Startup::Forward));
        // Garbage needs its 8 bytes too, then is refused (and stays refused).
        let garbage = b"GET / HTTP/1.1\r\n";
        for n in 0..=garbage.len() {
            let got = classify(&garbage[..n]);
            assert!(
                if n < HEAD {
                    matches!(got, Ok(None))
                } else {
                    got.is_err()
                },
                "prefix of {n} bytes: {got:?}"
            );
        }
        assert!(classify(&[0, 0, 0, 7, 0, 3, 0, 0]).is_err());
        assert!(classify(&[0, 0, 0x27, 0x11, 0, 3, 0, 0]).is_err());
    }

    #[test]
    fn error_response_is_one_fatal_message() {
        let p = error_response("no\0 route");
        assert_eq!(p[0], b'E');
        let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
        assert_eq!(len + 1, p.len());
        assert_eq!(&p[5..], b"SFATAL\0VFATAL\0C08001\0Mno route\0\0");
    }

    #[tokio::test]
    async fn local_startup_answers_n_then_returns_the_startup_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut psql = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut local, _) = listener.accept().await.unwrap();
        let startup = startup_message();
        psql.write_all(PG_SSL).await.unwrap();
        let proxy = tokio::spawn(async move { local_startup(&mut local).await });
        let mut answer = [0u8; 1];
        psql.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        psql.write_all(&startup).await.unwrap();
        assert_eq!(proxy.await.unwrap().unwrap(), startup);
    }
}
