//! How a TLS connection is refused or ends badly: the alert record sent before any
//! handshake ([`send_alert`]), the reason label of a failed handshake
//! ([`handshake_reason`]), and the linger that lets a client read the alert rustls wrote
//! ([`linger`]).

use crate::router::route::RejectAlert;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Classifies a failed handshake for the metric and the log line.
pub(super) fn handshake_reason(e: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            "not_allowed"
        }
        Some(Error::InvalidCertificate(_)) => "bad_certificate",
        Some(Error::NoApplicationProtocol) => "no_application_protocol",
        Some(Error::AlertReceived(_)) => "client_alert",
        _ if e.kind() == io::ErrorKind::UnexpectedEof => "client_closed",
        _ => "other",
    }
}

/// After a failed handshake (whose alert rustls has written): closes the sending side and
/// reads what the client still sends for a moment before closing. Closing a socket with
/// unread bytes resets it, and the reset can destroy the alert before the client reads
/// it: with TLS 1.3 a client certificate is refused after the client has already sent its
/// first request, so without this the client sees "connection reset" instead of
/// `access_denied` or `certificate_required`.
pub(super) async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::AsyncReadExt;
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long [`linger`] waits for the client to close, and how much it reads meanwhile.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Sends a fatal TLS alert record, best effort, before closing an unroutable or refused
/// connection (before any handshake: a plaintext alert record).
pub(super) async fn send_alert<S: AsyncWrite + Unpin>(client: &mut S, alert: RejectAlert) {
    let code = match alert {
        RejectAlert::UnrecognizedName => 112,
        RejectAlert::NoApplicationProtocol => 120,
        RejectAlert::AccessDenied => 49,
    };
    let _ = client
        .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, code])
        .await;
    let _ = client.shutdown().await;
}
