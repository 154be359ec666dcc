//! [`hand_over`]: a terminated connection's session, handshake done in rustls, handed to
//! the kernel. Nothing is lost on the way: the handshake was read record by record
//! (`Prefixed::record_exact`), so what rustls read ends at a record boundary once the
//! record in progress is finished here; every record it read is processed, and the
//! plaintext it decrypted is returned to be sent on first; what rustls still owes the
//! client (session tickets) is written before the keys leave it. The kernel then takes
//! the socket from the next record on, with rustls' sequence numbers — or, where the
//! kernel does not, the proxy's own record layer does (`io::records`), the same way.

use std::io::Read as _;
use std::os::fd::AsFd;

use rustls::ProtocolVersion;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::kernel::{self, Cipher};
use super::offered;
pub(crate) use super::HandOverError;
use crate::io::records::{self, Session};
use crate::io::Prefixed;

/// [`HandOver::Userspace`]'s reason when the client sent its `close_notify` first.
pub(crate) const CLIENT_CLOSED: &str = "the client closed before the hand-over";

/// How a terminated connection goes on after [`hand_over`].
pub(crate) enum HandOver<C> {
    /// In the kernel.
    Kernel(Handed),
    /// Out of rustls, its records protected by the proxy's relay (`io::records`): the
    /// kernel has no TLS for it (or kTLS is off) and `tls_records: proxy`.
    Proxy(Handed, Session),
    /// Still in rustls, reading ahead again; `why` it was not handed over.
    Userspace {
        tls: Box<TlsStream<Prefixed<C>>>,
        why: &'static str,
    },
}

/// A socket the kernel encrypts and decrypts.
pub(crate) struct Handed {
    pub(crate) socket: TcpStream,
    /// Plaintext rustls decrypted before the hand-over: the first bytes to send on.
    pub(crate) early: Vec<u8>,
    /// The client's `close_notify` was among them: it sends no more.
    pub(crate) client_closed: bool,
    /// The kernel's name for the cipher (`None` for one it has none for, in the proxy).
    pub(crate) cipher: Option<Cipher>,
}

/// Hands `tls` to the kernel when this process does kTLS and the kernel takes the
/// negotiated cipher, else, for TLS 1.3 under `tls_records: proxy`, to the proxy's own
/// record layer; `into_tcp` gives the client's socket (the caller only reads a handshake
/// record by record for a client that is one). `Err`: the connection is lost.
pub(crate) async fn hand_over<C>(
    mut tls: Box<TlsStream<Prefixed<C>>>,
    into_tcp: impl FnOnce(C) -> Result<TcpStream, C>,
) -> Result<HandOver<C>, HandOverError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let conn = tls.get_ref().1;
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let suite = conn.negotiated_cipher_suite();
    let cipher = suite.and_then(Cipher::of);
    let why = match (offered(), cipher) {
        (None, _) => Some("kTLS is off"),
        (Some(_), None) => Some("a cipher the kernel has no TLS for"),
        (Some(o), Some(c)) if !o.takes(c) => Some("a cipher this kernel's TLS does not take"),
        _ => None,
    };
    let in_proxy = why.is_some() && tls13 && records::in_proxy();
    let suite = match (suite, why) {
        (Some(suite), None) => suite,
        (Some(suite), Some(_)) if in_proxy => suite,
        _ => return Ok(userspace(tls, why.unwrap_or_default())),
    };
    // Session tickets and anything else rustls owes the client, under its keys.
    tls.flush().await?;
    let mut early = Vec::new();
    let mut closed = false;
    let mut record = vec![0u8; 1 << 14];
    loop {
        let (io, conn) = tls.get_mut();
        let state = conn.process_new_packets().map_err(HandOverError::Tls)?;
        let ready = state.plaintext_bytes_to_read();
        closed |= state.peer_has_closed();
        if ready > 0 {
            let at = early.len();
            early.resize(at + ready, 0);
            conn.reader().read_exact(&mut early[at..])?;
        }
        if io.settled() {
            break;
        }
        // Up to the end of the record in progress, no further.
        let n = io.read(&mut record).await?;
        if n == 0 {
            return Err(HandOverError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the client closed inside a TLS record",
            )));
        }
        let mut read = &record[..n];
        while !read.is_empty() {
            conn.read_tls(&mut read)?;
        }
    }
    if closed && early.is_empty() {
        return Ok(userspace(tls, CLIENT_CLOSED));
    }
    if tls.get_ref().1.wants_write() {
        tls.flush().await?;
    }
    let (io, conn) = tls.into_inner();
    let socket = into_tcp(io.into_inner())
        .map_err(|_| HandOverError::Keys("the client is not a socket of its own"))?;
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(HandOverError::Secrets)?;
    let handed = |socket| Handed {
        socket,
        early,
        client_closed: closed,
        cipher,
    };
    if in_proxy {
        let session = Session::new(suite, secrets).ok_or(HandOverError::Keys(
            "keys the proxy's record layer has no cipher for",
        ))?;
        return Ok(HandOver::Proxy(handed(socket), session));
    }
    kernel::install(socket.as_fd(), tls13, secrets)?;
    Ok(HandOver::Kernel(handed(socket)))
}

/// Back to rustls, reading ahead as a connection that stays there does.
fn userspace<C>(mut tls: Box<TlsStream<Prefixed<C>>>, why: &'static str) -> HandOver<C> {
    tls.get_mut().0.read_ahead_from_now();
    HandOver::Userspace { tls, why }
}
