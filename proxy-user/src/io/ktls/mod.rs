//! kTLS: handing a terminated connection's TLS session to the kernel once rustls has
//! finished the handshake, so the kernel encrypts and decrypts and the relay moves the
//! plaintext with `splice(2)` without a userspace copy or userspace crypto
//! (`docs/ebpf.md`, "kTLS").
//!
//! - `ktls:` in the configuration, `serve --ktls` over it ([`KtlsMode`]): `off` (the
//!   default), `auto` (hand over where the kernel takes the session's cipher), `require`
//!   (refuse to start without kernel TLS). [`choose`] probes the kernel once at start.
//! - [`records`]: reading the handshake exactly to a record boundary, so nothing past it
//!   is read into userspace before the hand-over.
//! - [`handover`]: flush what rustls owes, finish a partly read record, take the
//!   plaintext rustls already decrypted, extract the secrets, install them
//!   ([`kernel::install`]).
//! - [`control`]: what a control record read off a kTLS socket means for the relay
//!   (`close_notify` is a half-close; any other alert, a `KeyUpdate` or another
//!   post-handshake message ends the connection with a clear error).

pub(crate) mod control;
pub(crate) mod handover;
pub(crate) mod kernel;
pub(crate) mod records;

use std::io;
use std::sync::OnceLock;

pub(crate) use handover::{hand_over, HandOver};
use kernel::Offered;

/// The `ktls:` key and the `--ktls` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KtlsMode {
    /// Sessions stay in userspace (rustls).
    #[default]
    Off,
    /// Hand over where the kernel offers TLS and the negotiated cipher.
    Auto,
    /// As `auto`, and refuse to start on a kernel without TLS.
    Require,
}

/// `ktls: require` on a kernel without TLS.
#[derive(Debug, thiserror::Error)]
#[error(
    "ktls: require, but this kernel has no TLS to hand sessions to ({0}); use ktls: auto or off"
)]
pub(crate) struct NoKernelTls(pub(crate) io::Error);

/// Why a session could not be handed to the kernel after its handshake. The connection
/// is lost with it (its secrets have left rustls, or its bytes did not come).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandOverError {
    #[error("the client's socket before the hand-over: {0}")]
    Io(#[from] io::Error),
    #[error("the client's TLS before the hand-over: {0}")]
    Tls(rustls::Error),
    #[error("rustls gave no secrets: {0}")]
    Secrets(rustls::Error),
    #[error("the session's keys: {0}")]
    Keys(&'static str),
    #[error("the kernel refused {0}: {1}")]
    Kernel(&'static str, io::Error),
}

static OFFERED: OnceLock<Option<Offered>> = OnceLock::new();

/// Records the process's choice at start (the first one stays): for `auto` and
/// `require`, probes the kernel. `Ok(Err(why))`: sessions stay in userspace (`off`, or
/// `auto` on a kernel without TLS); `Err` for `require` on such a kernel.
pub(crate) fn choose(mode: KtlsMode) -> Result<Result<Offered, String>, NoKernelTls> {
    let probed = match mode {
        KtlsMode::Off => Err("ktls: off".to_owned()),
        KtlsMode::Auto => kernel::probe().map_err(|e| e.to_string()),
        KtlsMode::Require => Ok(kernel::probe().map_err(NoKernelTls)?),
    };
    let probed = probed.and_then(|o| match o.names().is_empty() {
        true => Err("the kernel's TLS took none of its ciphers".to_owned()),
        false => Ok(o),
    });
    let _ = OFFERED.set(probed.as_ref().ok().copied());
    Ok(probed)
}

/// The ciphers sessions are handed over with; `None` when they stay in userspace.
pub(crate) fn offered() -> Option<Offered> {
    OFFERED.get().copied().flatten()
}
