//! MySQL on the local side: the server speaks first, and its greeting announces TLS
//! (`CLIENT_SSL`) when the database has certificates. A local client would then try TLS
//! with the local proxy, or refuse to go on without it. The local proxy relays the greeting
//! with that capability cleared, so a `mysql` client with TLS disabled (or preferred)
//! carries on in plaintext to the local proxy, inside `teleport-mysql` TLS to the proxy.

use super::dial::Connector;
use super::ClientError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `CLIENT_SSL` in the lower capability flags.
const CLIENT_SSL: u16 = 0x0800;

/// Clears `CLIENT_SSL` in a protocol-10 greeting payload; other packets (an error packet
/// from a server refusing the connection) are left alone. Returns whether it changed.
pub(crate) fn strip_ssl(payload: &mut [u8]) -> Result<bool, ClientError> {
    if payload.first() != Some(&10) {
        return Ok(false);
    }
    let bad = || ClientError::Protocol("malformed MySQL server greeting".into());
    let nul = payload[1..].iter().position(|&b| b == 0).ok_or_else(bad)? + 1;
    // server version NUL, connection id (4), auth data part 1 (8), filler (1).
    let at = nul + 1 + 4 + 8 + 1;
    let caps = payload.get_mut(at..at + 2).ok_or_else(bad)?;
    let flags = u16::from_le_bytes([caps[0], caps[1]]);
    caps.copy_from_slice(&(flags & !CLIENT_SSL).to_le_bytes());
    Ok(flags & CLIENT_SSL != 0)
}

/// Reads the greeting packet from the proxy side, clears `CLIENT_SSL`, writes it to the
/// client; returns its size.
pub(crate) async fn relay_greeting<R, L>(
    remote: &mut R,
    local: &mut L,
    connector: &Connector,
) -> Result<u64, ClientError>
where
    R: AsyncRead + Unpin,
    L: AsyncWrite + Unpin,
{
    let mut head = [0u8; 4];
    remote
        .read_exact(&mut head)
        .await
        .map_err(|e| connector.classify(e))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    remote
        .read_exact(&mut payload)
        .await
        .map_err(|e| connector.classify(e))?;
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
}
