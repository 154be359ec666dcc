//! What a control record read off a kTLS socket means for the relay. The kernel decrypts
//! every record but passes only application data through `splice(2)` and `read(2)`; an
//! alert or a handshake message stops them (`EINVAL` from `splice`, `EIO` from `read`)
//! until it is read with `recvmsg` ([`super::kernel::read_control`]). Pure: the record
//! type and content in, the relay's next step out.

use super::kernel::{ALERT, HANDSHAKE};

/// The TLS 1.3 handshake message type of a `KeyUpdate` (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;

/// A control record that ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ControlError {
    #[error("the client sent the TLS alert {0}")]
    Alert(String),
    #[error(
        "the client asked for new TLS keys (a TLS 1.3 KeyUpdate), which the kernel's TLS \
         cannot follow on this connection; closed (ktls: off keeps such clients in userspace)"
    )]
    KeyUpdate,
    #[error(
        "the client sent a post-handshake message (type {0}) the kernel's TLS does not follow"
    )]
    Handshake(u8),
    #[error("the client sent a TLS record of type {0} after the handshake")]
    Unexpected(u8),
}

/// `Ok(())` for a `close_notify` (the client is done sending: a half-close), an error for
/// everything else.
pub(crate) fn classify(kind: u8, content: &[u8]) -> Result<(), ControlError> {
    match (kind, content) {
        (ALERT, [_, 0]) => Ok(()),
        (ALERT, [level, description]) => {
            let level = if *level == 2 { "fatal" } else { "warning" };
            let description = rustls::AlertDescription::from(*description);
            Err(ControlError::Alert(format!("{description:?} ({level})")))
        }
        (ALERT, _) => Err(ControlError::Alert(format!(
            "of {} bytes (an alert is 2)",
            content.len()
        ))),
        (HANDSHAKE, [KEY_UPDATE, ..]) => Err(ControlError::KeyUpdate),
        (HANDSHAKE, [t, ..]) => Err(ControlError::Handshake(*t)),
        _ => Err(ControlError::Unexpected(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ktls::kernel::CHANGE_CIPHER_SPEC;

    #[test]
    fn close_notify_is_a_half_close_and_other_records_end_the_connection() {
        assert_eq!(classify(ALERT, &[1, 0]), Ok(()));
        // close_notify sent at fatal level still means "done".
        assert_eq!(classify(ALERT, &[2, 0]), Ok(()));
        let e = classify(ALERT, &[2, 20]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the client sent the TLS alert BadRecordMac (fatal)"
        );
        assert!(matches!(classify(ALERT, &[1]), Err(ControlError::Alert(_))));
        assert_eq!(
            classify(HANDSHAKE, &[24, 0, 0, 1, 0]),
            Err(ControlError::KeyUpdate)
        );
        assert_eq!(classify(HANDSHAKE, &[4]), Err(ControlError::Handshake(4)));
        assert_eq!(classify(HANDSHAKE, &[]), Err(ControlError::Unexpected(22)));
        assert_eq!(
            classify(CHANGE_CIPHER_SPEC, &[1]),
            Err(ControlError::Unexpected(20))
        );
        assert_eq!(classify(99, b"x"), Err(ControlError::Unexpected(99)));
    }
}
