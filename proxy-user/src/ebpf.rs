//! eBPF front end (DESIGN.md §6): owns the kernel object that `build.rs` builds from
//! `proxy-ebpf` and embeds here, and (issue 3) loading it, attaching it to the proxy's
//! cgroup and splicing socket pairs.
//!
//! [`check_object`] parses the embedded object without any privilege; it is what a
//! loader runs first and what tests use to prove the build chain.

use proxy_common::{SOCK_OPS_PROGRAM, STREAM_VERDICT_PROGRAM};

/// The object built from `proxy-ebpf`, 8-byte aligned as the ELF parser needs it.
/// Empty when the crate was built with `AYA_BUILD_SKIP=1`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Programs the object must contain.
pub const PROGRAMS: [&str; 2] = [SOCK_OPS_PROGRAM, STREAM_VERDICT_PROGRAM];

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
    fn embedded_object_has_both_programs() {
        let names = check_object().expect("embedded eBPF object parses");
        for program in PROGRAMS {
            assert!(names.iter().any(|n| n == program), "{program} in {names:?}");
        }
    }
}
