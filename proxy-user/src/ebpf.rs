//! eBPF front end (DESIGN.md §6): owns everything between the proxy and its kernel
//! programs — the object `build.rs` builds from `proxy-ebpf` and embeds here, loading and
//! attaching it ([`loader`], in a cgroup of the proxy's own: [`cgroup`]), splicing plaintext
//! pairs in the kernel ([`splice`]), and the metrics read from its maps ([`metrics`]).
//!
//! [`start`] applies the `--ebpf` mode once at start-up, before any listener exists;
//! afterwards [`frontend`] is what the relay asks. [`check_object`] parses the embedded
//! object without any privilege.

pub mod cgroup;
pub mod loader;
pub mod metrics;
pub mod sockopt;
pub mod splice;

use std::sync::OnceLock;

use proxy_common::{FIRST_BYTES_PROGRAM, SOCK_OPS_PROGRAM, STREAM_VERDICT_PROGRAM};

pub use loader::Frontend;

/// The object built from `proxy-ebpf`, 8-byte aligned as the ELF parser needs it.
/// Empty when the crate was built with `AYA_BUILD_SKIP=1`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Programs the object must contain.
pub const PROGRAMS: [&str; 3] = [
    SOCK_OPS_PROGRAM,
    STREAM_VERDICT_PROGRAM,
    FIRST_BYTES_PROGRAM,
];

/// Why the eBPF front end cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The binary was built with `AYA_BUILD_SKIP=1`.
    #[error("no eBPF object embedded (built with AYA_BUILD_SKIP)")]
    NotEmbedded,
    /// The embedded bytes are not a valid eBPF object.
    #[error("embedded eBPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
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
pub enum Mode {
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
/// proxy relays in userspace. Only `Mode::Require` turns a failure into an error. Call
/// once, before creating listeners.
pub fn start(mode: Mode) -> Result<Option<&'static Frontend>, EbpfError> {
    if mode == Mode::Off {
        let how = crate::relay::PlainRelay::chosen().describe();
        tracing::info!("eBPF front end off (--ebpf off): relaying in userspace with {how}");
        return Ok(None);
    }
    match Frontend::load() {
        Ok(f) => {
            let f = FRONTEND.get_or_init(|| f);
            tracing::info!("eBPF front end attached: plaintext pairs are spliced in the kernel");
            Ok(Some(f))
        }
        Err(e) if mode == Mode::Auto => {
            let how = crate::relay::PlainRelay::chosen().describe();
            tracing::warn!("eBPF front end unavailable, relaying in userspace with {how}: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The attached front end, if [`start`] attached one and it has not been detached.
pub fn frontend() -> Option<&'static Frontend> {
    FRONTEND.get().filter(|f| f.is_live())
}

/// Detaches the programs and leaves the cgroup (at exit, after the drain).
pub fn stop() {
    if let Some(f) = FRONTEND.get() {
        f.detach();
    }
}

/// Parses the embedded object (no privilege needed) and returns its program names, sorted.
pub fn check_object() -> Result<Vec<String>, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NotEmbedded);
    }
    let object = aya_obj::Object::parse(OBJECT)?;
    if let Some(missing) = PROGRAMS
        .into_iter()
        .find(|name| !object.programs.contains_key(*name))
    {
        return Err(EbpfError::MissingProgram(missing));
    }
    let mut names: Vec<String> = object.programs.into_keys().collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_has_every_program() {
        let names = check_object().expect("embedded eBPF object parses");
        for program in PROGRAMS {
            assert!(names.iter().any(|n| n == program), "{program} in {names:?}");
        }
    }
}
