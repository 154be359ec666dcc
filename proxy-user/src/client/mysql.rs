//! MySQL on the local side: the server speaks first, and its greeting announces TLS
//! (`CLIENT_SSL`) when the database has certificates. A local client would then try TLS
//! with the local proxy, or refuse to go on without it. The local proxy relays the greeting
//! with that capability cleared, so a `mysql` client with TLS disabled (or preferred)
//! carries on in plaintext to the local proxy, inside `teleport-mysql` TLS to the proxy.

use super::ClientError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `CLIENT_SSL` in the lower capability flags.
const CLIENT_SSL: u16 = 0x0800;
/// First byte of a protocol-10 greeting (an error packet starts with `0xff`).
const PROTOCOL_10: u8 = 10;
/// Largest greeting accepted: real ones are about 100 bytes; the packet header could
/// announce 16 MiB, which is not allocated on a stranger's word.
const MAX_GREETING: usize = 64 * 1024;

/// Clears `CLIENT_SSL` in a protocol-10 greeting payload; other packets (an error packet
/// from a server refusing the connection) are left alone. Returns whether it changed.
/// A payload that ends before the capability flags is an error; bytes after them (the
/// rest of the greeting) are kept as they are.
pub(crate) fn strip_ssl(payload: &mut [u8]) -> Result<bool, ClientError> {
    let bad = || ClientError::Protocol("malformed MySQL server greeting".into());
    match payload.first() {
        None => return Err(bad()),
        Some(&PROTOCOL_10) => {}
        Some(_) => return Ok(false),
    }
    let version = payload.get(1..).unwrap_or_default();
    let nul = version.iter().position(|&b| b == 0).ok_or_else(bad)? + 1;
    // server version NUL, connection id (4), auth data part 1 (8), filler (1).
    let at = nul + 1 + 4 + 8 + 1;
    let caps: &mut [u8; 2] = payload
        .get_mut(at..at + 2)
        .and_then(|c| c.try_into().ok())
        .ok_or_else(bad)?;
    let flags = u16::from_le_bytes(*caps);
    *caps = (flags & !CLIENT_SSL).to_le_bytes();
    Ok(flags & CLIENT_SSL != 0)
}

/// Reads the greeting packet from the proxy side, clears `CLIENT_SSL`, writes it to the
/// client; returns its size. `failed` names a read error (the proxy's TLS alert, say).
pub(crate) async fn relay_greeting<R, L>(
    remote: &mut R,
    local: &mut L,
    failed: impl Fn(std::io::Error) -> ClientError,
) -> Result<u64, ClientError>
where
    R: AsyncRead + Unpin,
    L: AsyncWrite + Unpin,
{
    let mut head = [0u8; 4];
    remote.read_exact(&mut head).await.map_err(&failed)?;
    let [l0, l1, l2, _sequence] = head;
    let len = u32::from_le_bytes([l0, l1, l2, 0]) as usize;
    if len > MAX_GREETING {
        return Err(ClientError::Protocol(format!(
            "MySQL server greeting of {len} bytes (more than {MAX_GREETING}): not a MySQL server?"
        )));
    }
    let mut payload = vec![0u8; len];
    remote.read_exact(&mut payload).await.map_err(&failed)?;
    strip_ssl(&mut payload)?;
    let write = async {
        local.write_all(&head).await?;
        local.write_all(&payload).await
    };
    write
        .await
        .map_err(ClientError::io("writing the MySQL greeting to the client"))?;
    Ok((head.len() + len) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(caps: u16) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"10.11.6-MariaDB\0");
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&[0x21, 2, 0]);
        p
    }

    #[test]
    fn ssl_capability_is_cleared_and_the_rest_kept() {
        let mut p = greeting(0xf8ff);
        assert!(strip_ssl(&mut p).unwrap());
        assert_eq!(p, greeting(0xf0ff));
        let mut plain = greeting(0xf0ff);
        assert!(!strip_ssl(&mut plain).unwrap());
        let mut err = vec![0xff, 0x15, 0x04];
        assert!(!strip_ssl(&mut err).unwrap());
        let mut short = vec![10, b'x', 0, 1];
        assert!(strip_ssl(&mut short).is_err());
    }

    /// Every truncated greeting is refused (never a panic); once the capability flags are
    /// in, the answer is the complete greeting's, and later bytes are left alone.
    #[test]
    fn every_prefix_is_refused_or_answers() {
        let full = greeting(0xf8ff);
        let caps_end = 1 + b"10.11.6-MariaDB\0".len() + 4 + 8 + 1 + 2;
        let longer = [full.as_slice(), b"\x15\0\0\0mysql_native_password\0"].concat();
        for n in 0..=longer.len() {
            let mut p = longer[..n].to_vec();
            let got = strip_ssl(&mut p);
            if n < caps_end {
                assert!(got.is_err(), "prefix of {n} bytes: {got:?}");
                assert_eq!(p, longer[..n], "prefix of {n} bytes changed");
            } else {
                assert!(got.unwrap(), "prefix of {n} bytes");
                let mut expected = greeting(0xf0ff);
                expected.extend_from_slice(&longer[full.len()..]);
                assert_eq!(p, expected[..n], "prefix of {n} bytes");
            }
        }
        // A greeting without the NUL after the server version, or only a NUL.
        assert!(strip_ssl(&mut [10; 40]).is_err());
        assert!(strip_ssl(&mut [10, 0]).is_err());
    }

    fn failed(e: std::io::Error) -> ClientError {
        ClientError::io("reading the greeting")(e)
    }

    #[tokio::test]
    async fn relay_passes_the_greeting_with_ssl_cleared() {
        let payload = greeting(0xf8ff);
        let mut packet = (payload.len() as u32).to_le_bytes();
        packet[3] = 0;
        let mut remote = [packet.as_slice(), &payload].concat();
        remote.extend_from_slice(b"next packet");
        let mut local = Vec::new();
        let n = relay_greeting(&mut remote.as_slice(), &mut local, failed)
            .await
            .unwrap();
        assert_eq!(n, 4 + payload.len() as u64);
        assert_eq!(local, [packet.as_slice(), &greeting(0xf0ff)].concat());
        // A greeting cut short by the server is an error, not a panic.
        let cut = &remote[..20];
        let e = relay_greeting(&mut &cut[..], &mut Vec::new(), failed).await;
        assert!(e.is_err());
    }

    #[tokio::test]
    async fn a_huge_announced_greeting_is_refused_before_allocating_it() {
        let head = [0xff, 0xff, 0xff, 0];
        let mut local = Vec::new();
        let e = relay_greeting(&mut &head[..], &mut local, failed).await;
        let message = e.unwrap_err().to_string();
        assert!(message.contains("16777215 bytes"), "{message}");
        assert!(local.is_empty());
    }
}
