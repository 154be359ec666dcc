//! eBPF front end (`docs/ebpf.md`): owns everything between the proxy and its kernel
//! programs — the object `build.rs` builds from `proxy-ebpf` and embeds here, loading and
//! attaching it ([`loader`], in a cgroup of the proxy's own: [`cgroup`]), the socket
//! options the splice reads ([`sockopt`]), and the metrics read from its maps
//! ([`metrics`]). The kernel splice of a pair, which uses these maps, is the relay's
//! (`relay::kernel`); nothing here knows about relays.
//!
//! [`start`] applies the `--ebpf` mode once at start-up, before any listener exists;
//! afterwards [`frontend`] is what the relay asks.

pub(crate) mod cgroup;
mod kernel_log;
pub(crate) mod loader;
pub(crate) mod metrics;
pub(crate) mod sockopt;

use std::sync::OnceLock;

pub(crate) use loader::Frontend;

/// The object built from `proxy-ebpf`, 8-byte aligned as the ELF parser needs it.
/// Empty when the crate was built with `AYA_BUILD_SKIP=1`.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Why the eBPF front end cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EbpfError {
    /// The binary was built with `AYA_BUILD_SKIP=1`.
    #[error("no eBPF object embedded (built with AYA_BUILD_SKIP)")]
    NotEmbedded,
    /// The object lacks a program the proxy attaches.
    #[error("embedded eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    /// The object lacks a map the proxy uses.
    #[error("embedded eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("no cgroup v2 of our own: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}`: {1}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    #[error("map `{0}`: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// `--ebpf`: whether the kernel front end is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Use it when the kernel and privileges allow; otherwise say why once and relay in
    /// userspace.
    #[default]
    Auto,
    /// Refuse to start without it.
    Require,
    /// Never load it.
    Off,
}

static FRONTEND: OnceLock<Frontend> = OnceLock::new();

/// Applies `mode`: loads and attaches the front end, or explains in one log line why the
/// proxy relays in userspace with `fallback` (how the relay moves plaintext pairs without
/// the front end). Only `Mode::Require` turns a failure into an error. Call once, before
/// creating listeners.
pub(crate) fn start(mode: Mode) -> Result<Option<&'static Frontend>, EbpfError> {
    if mode == Mode::Off {
        tracing::info!("eBPF front end off (--ebpf off)");
        return Ok(None);
    }
    match Frontend::load() {
        Ok(f) => {
            let f = FRONTEND.get_or_init(|| f);
            tracing::info!("eBPF front end attached");
            Ok(Some(f))
        }
        Err(e) if mode == Mode::Auto => {
            tracing::warn!("eBPF front end unavailable (first-bytes classification and the kernel's SYN rate are off; relay: kernel is refused): {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The attached front end, if [`start`] attached one and it has not been detached.
pub(crate) fn frontend() -> Option<&'static Frontend> {
    FRONTEND.get().filter(|f| f.is_live())
}

/// Detaches the programs and leaves the cgroup (at exit, after the drain).
pub(crate) fn stop() {
    if let Some(f) = FRONTEND.get() {
        f.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::{FIRST_BYTES_PROGRAM, SOCK_OPS_PROGRAM, STREAM_VERDICT_PROGRAM};

    /// The embedded object parses (no privilege needed) and has every program `loader`
    /// attaches.
    #[test]
    fn embedded_object_has_every_program() {
        assert!(
            !OBJECT.is_empty(),
            "built with AYA_BUILD_SKIP: no eBPF object embedded"
        );
        let object = aya_obj::Object::parse(OBJECT).expect("embedded eBPF object parses");
        for program in [
            SOCK_OPS_PROGRAM,
            STREAM_VERDICT_PROGRAM,
            FIRST_BYTES_PROGRAM,
        ] {
            assert!(
                object.programs.contains_key(program),
                "no program {program}"
            );
        }
    }
}
