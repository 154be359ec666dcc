//! Which relay moves a plaintext pair's bytes once it is routed: `relay:` in the
//! configuration, `serve --relay` over it (`--ebpf` only says whether the front end
//! loads). `kernel` is the eBPF sockmap splice, `splice` is `splice(2)` through pooled
//! pipes, `copy` the userspace copy; `auto` picks by measurement.
//!
//! **What `auto` picks, and why** (`docs/benchmarks.md`, `docs/ebpf.md`): on the only
//! host class measured so far (2 vCPUs), `splice(2)` moved more with eight streams than
//! the kernel splice (21.0 against 17.1 Gbit/s) for less CPU of the whole machine (0.76
//! against 0.88 s/GB), as much with one stream, and holds an idle pair in less memory
//! (1.8 against 2.7 KB); the kernel splice wins only on the proxy process's own CPU, and
//! it does not yet engage for a sender that streams from its first bytes. So `auto` is
//! `splice(2)`, on every host, until a bench on a host with spare cores shows the kernel
//! splice ahead there; `relay: kernel` asks for it.
//!
//! The choice is made once at start (a reload that changes it says it needs a restart).

use std::sync::OnceLock;

/// The `relay:` key and the `--relay` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RelayMode {
    #[default]
    Auto,
    Kernel,
    Splice,
    Copy,
}

/// The relay in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chosen {
    Kernel,
    Splice,
    Copy,
}

impl Chosen {
    /// What the start-up line calls it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Chosen::Kernel => "the kernel splice (eBPF sockmap)",
            Chosen::Splice => "splice(2) through pipes",
            Chosen::Copy => "userspace copies",
        }
    }
}

/// `relay: kernel` without an attached front end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "relay: kernel needs the eBPF front end, which is not attached ({0}); use --ebpf auto \
     or require where the kernel allows it, or relay: splice"
)]
pub(crate) struct NoFrontend(pub(crate) &'static str);

/// The relay for `mode`, given whether the front end is attached (`why_not` says why
/// not, for the error).
pub(crate) fn resolve(
    mode: RelayMode,
    frontend: bool,
    why_not: &'static str,
) -> Result<Chosen, NoFrontend> {
    Ok(match mode {
        RelayMode::Auto | RelayMode::Splice => Chosen::Splice,
        RelayMode::Copy => Chosen::Copy,
        RelayMode::Kernel if frontend => Chosen::Kernel,
        RelayMode::Kernel => return Err(NoFrontend(why_not)),
    })
}

static CHOSEN: OnceLock<Chosen> = OnceLock::new();

/// Records the process's choice (at start; the first one stays).
pub(crate) fn choose(chosen: Chosen) {
    let _ = CHOSEN.set(chosen);
}

/// The process's choice; `splice(2)` before [`choose`] (unit tests, tools).
pub(crate) fn chosen() -> Chosen {
    CHOSEN.get().copied().unwrap_or(Chosen::Splice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_splice_and_kernel_needs_the_front_end() {
        for frontend in [false, true] {
            assert_eq!(
                resolve(RelayMode::Auto, frontend, "off"),
                Ok(Chosen::Splice)
            );
            assert_eq!(
                resolve(RelayMode::Splice, frontend, "off"),
                Ok(Chosen::Splice)
            );
            assert_eq!(resolve(RelayMode::Copy, frontend, "off"), Ok(Chosen::Copy));
        }
        assert_eq!(resolve(RelayMode::Kernel, true, "-"), Ok(Chosen::Kernel));
        let e = resolve(RelayMode::Kernel, false, "--ebpf off").unwrap_err();
        assert!(e.to_string().contains("(--ebpf off)"), "{e}");
    }

    #[test]
    fn the_key_reads_lowercase_names_and_refuses_others() {
        let read = |s: &str| serde_yaml_ng::from_str::<RelayMode>(s);
        assert_eq!(read("kernel").unwrap(), RelayMode::Kernel);
        assert_eq!(read("copy").unwrap(), RelayMode::Copy);
        assert!(read("fast").is_err());
    }
}
