//! The proxy's own TLS record layer for a terminated session once rustls has finished the
//! handshake (`tls_records: proxy`, the default; `docs/ebpf.md`, "Terminated routes").
//!
//! rustls' buffered connection copies every byte of plaintext twice on the way in (out of
//! its record buffer into its plaintext queue, then into the reader's buffer) and reads
//! the socket 4 KiB at a time. After the handshake nothing of that is needed for a relay:
//! the session is taken out of rustls the way it is handed to the kernel's TLS
//! (`io::ktls::hand_over`: read to a record boundary, what rustls decrypted sent on
//! first, its secrets extracted), and [`Session`] goes on with rustls' own record
//! protection (the provider's `MessageDecrypter`/`MessageEncrypter`, the ring AEADs):
//! records are decrypted in place in the relay's read buffer and the plaintext is written
//! upstream from there, so the only copies left are the kernel's.
//!
//! TLS 1.3 only (a TLS 1.2 session stays in rustls). What a relay cannot do without
//! rustls' key schedule is renew keys: a client's `KeyUpdate` ends the connection with a
//! clear error, as under kTLS, and so does reaching the cipher's confidentiality limit
//! (2^24.5 full records for AES-GCM, about 380 GB one way).

pub(crate) mod session;

pub(crate) use session::{Opener, Sealer, Session};

use std::sync::OnceLock;

/// The `tls_records:` key and the `--tls-records` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RecordsMode {
    /// After the handshake, records are protected by the proxy's relay (in place).
    #[default]
    Proxy,
    /// The whole session stays in rustls' buffered connection.
    Rustls,
}

static MODE: OnceLock<RecordsMode> = OnceLock::new();

/// Records the process's choice at start (the first one stays).
pub(crate) fn choose(mode: RecordsMode) {
    let _ = MODE.set(mode);
}

/// Whether terminated TLS 1.3 sessions leave rustls after the handshake (the default
/// when [`choose`] was never called, as in a router built by a test).
pub(crate) fn in_proxy() -> bool {
    MODE.get().copied().unwrap_or_default() == RecordsMode::Proxy
}
