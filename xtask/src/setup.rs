//! `cargo xtask setup`: installs what building and testing Switchyard needs, skipping
//! whatever is already there, and prints one line per thing it actually installs.
//!
//! The eBPF chain (`docs/ebpf.md`): nightly with `rust-src` for `proxy-ebpf` only, and
//! `bpf-linker` 0.13 built against Debian's LLVM 22. The rest are the real clients and
//! servers the integration tests drive.

use std::process::{Command, Output};

use anyhow::{bail, Context as _, Result};

/// Debian packages: bpf-linker's build inputs, then the tests' clients and servers, then
/// the HTTP load clients of `cargo xtask bench` (`wrk`; `h2load` from `nghttp2-client`).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "openssl",
    "curl",
    "openssh-server",
    "openssh-client",
    "postgresql",
    "postgresql-client",
    "mariadb-server",
    "mariadb-client",
    "bpftool",
    "iproute2",
    "nginx",
    "haproxy",
    "tinyproxy",
    // Headless browser of tests/tests/web_browser.rs (tests/src/browser.rs).
    "chromium",
    "wrk",
    "nghttp2-client",
    // The ACME test CA and its DNS responder (tests/tests/acme.rs, tests/src/pebble.rs).
    "pebble",
];

/// Tools the tests need and the Debian package that provides them when they are not on
/// `PATH` already (a newer kubectl from another source is fine).
const TOOL_PACKAGES: &[(&str, &str)] = &[("kubectl", "kubernetes-client")];

/// Major.minor of bpf-linker that works with LLVM 22 and our aya versions.
const BPF_LINKER_VERSION: &str = "0.13";

pub fn run() -> Result<()> {
    apt()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    kubernetes_validate()
}

/// PyPI's `kubernetes-validate` (with PyYAML): the offline schema check of
/// `deploy/kubernetes/` in `tests/tests/deploy.rs`.
fn kubernetes_validate() -> Result<()> {
    let installed = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if installed(Command::new("kubernetes-validate").arg("--version")) {
        return Ok(());
    }
    let pip = |extra: &[&str]| {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "--quiet", "kubernetes-validate"])
            .args(extra);
        c
    };
    // Debian's own python3 refuses pip installs (PEP 668) unless told.
    if !installed(&mut pip(&[])) {
        quiet(&mut pip(&["--break-system-packages"]))?;
    }
    println!("installed kubernetes-validate (pip)");
    Ok(())
}

/// `cargo fuzz` (libFuzzer's driver) for `cargo xtask fuzz` and its smoke in `test`.
fn cargo_fuzz() -> Result<()> {
    if Command::new("cargo-fuzz")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    quiet(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    println!("installed cargo-fuzz (cargo install)");
    Ok(())
}

/// Installs those of `packages` that are missing (for tasks outside `setup`'s list, such
/// as `cargo xtask ktls`).
pub fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    install(missing)
}

fn apt() -> Result<()> {
    let on_path = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .chain(
            TOOL_PACKAGES
                .iter()
                .filter(|(tool, _)| !on_path(tool))
                .map(|(_, package)| *package),
        )
        .collect();
    install(missing)
}

/// `apt-get install` of `missing` (nothing when empty), one line per package.
fn install(missing: Vec<&str>) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let sudo = !is_root()?;
    quiet(&mut apt_get(sudo, &["update", "-qq"]))?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    quiet(&mut apt_get(sudo, &install))?;
    for package in missing {
        println!("installed {package} (apt)");
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b" installed"))
}

fn is_root() -> Result<bool> {
    let out = quiet(Command::new("id").arg("-u"))?;
    Ok(out.stdout.trim_ascii() == b"0")
}

fn apt_get(sudo: bool, args: &[&str]) -> Command {
    let mut command = if sudo {
        let mut sudo = Command::new("sudo");
        sudo.arg("apt-get");
        sudo
    } else {
        Command::new("apt-get")
    };
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn nightly() -> Result<()> {
    let toolchains = quiet(Command::new("rustup").args(["toolchain", "list"]))?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|line| line.starts_with("nightly"))
    {
        quiet(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        println!("installed nightly toolchain (rustup)");
    }
    let components = quiet(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|line| line.trim() == "rust-src")
    {
        quiet(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        println!("installed rust-src for nightly (rustup)");
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = installed {
        let prefix = format!("bpf-linker {BPF_LINKER_VERSION}.");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(&prefix) {
            return Ok(());
        }
    }
    // Say so first: building LLVM bindings takes minutes on two cores.
    println!("installing bpf-linker {BPF_LINKER_VERSION} (cargo install, several minutes)");
    quiet(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    Ok(())
}

/// Runs `command` with its output captured; on failure prints that output and errors.
pub fn quiet(command: &mut Command) -> Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("spawn {command:?}"))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("{command:?} failed: {}", out.status);
    }
    Ok(out)
}
