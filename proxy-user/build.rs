//! Builds `proxy-ebpf` for the bpf target and leaves the object at `$OUT_DIR/proxy-ebpf`,
//! which `src/ebpf.rs` embeds.
//!
//! aya-build runs `rustup run nightly cargo build -Z build-std=core --target bpfel-unknown-none`
//! with its own target dir under `OUT_DIR`, linking with `bpf-linker`; `cargo xtask setup`
//! installs both. `AYA_BUILD_SKIP=1` skips that build and embeds an empty object, so the
//! proxy only has its userspace path.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};
use aya_build::{Package, Toolchain};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("proxy-user has no parent dir")?;
    let ebpf_dir = workspace.join("proxy-ebpf");
    // aya-build watches the eBPF crate itself; its shared types live next door.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("proxy-common").display()
    );

    let object = PathBuf::from(env::var("OUT_DIR")?).join("proxy-ebpf");
    if skipped() {
        fs::write(&object, []).context("writing the empty eBPF object")?;
    }

    // aya-build turns the nested cargo's stderr into `cargo:warning`s; keep only real ones.
    env::set_var("CARGO_TERM_QUIET", "true");
    let package = Package {
        name: "proxy-ebpf",
        root_dir: ebpf_dir.to_str().context("non-UTF-8 path to proxy-ebpf")?,
        ..Package::default()
    };
    aya_build::build_ebpf([package], Toolchain::Nightly).context(
        "building proxy-ebpf for the bpf target needs the nightly toolchain with rust-src and \
         bpf-linker: run `cargo xtask setup`, or set AYA_BUILD_SKIP=1 to build without eBPF",
    )
}

/// Whether aya-build will skip the eBPF build (its own `AYA_BUILD_SKIP` switch).
fn skipped() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
