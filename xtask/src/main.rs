//! `cargo xtask`: the project's own tasks, so that a fresh machine, a developer and CI run
//! the same steps. `setup` installs the toolchain pieces and system packages, `run` starts
//! the proxy in dev mode, `test` runs the checks cheapest-first, `bench` measures the proxy
//! against direct connections (docs/benchmarks.md).

mod bench;
mod fuzz;
mod ktls;
mod setup;
mod soak;

use std::{
    env,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Switchyard project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (apt packages, nightly rust-src, bpf-linker), skipping
    /// whatever is already present.
    Setup,
    /// Set up, build the release binary and exec `switchyard serve --dev .dev`.
    Run {
        /// Extra arguments for `switchyard serve`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then `cargo fmt --check`, `cargo clippy -D warnings`, `cargo test` and the
    /// fuzz smoke (`cargo xtask fuzz --smoke`).
    Test,
    /// Build release, then measure new connections per second and latency on loopback,
    /// direct to the upstreams vs through Switchyard (docs/benchmarks.md).
    Bench(bench::Options),
    /// Build the fuzz targets (nightly `cargo fuzz`) and run them one at a time over their
    /// corpora; `--smoke` is the short run of `test` (docs/fuzzing.md).
    Fuzz(fuzz::Options),
    /// Build release, then run every kind of route for N minutes with SIGHUPs and one
    /// binary upgrade, sampling RSS, open fds and errors; chart in target/soak/
    /// (docs/soak.md).
    Soak(soak::Options),
    /// Boot Debian's stock kernel (it has CONFIG_TLS) under qemu and check there that a
    /// rustls session handed to kTLS carries bytes, with and without splice(2)
    /// (docs/ebpf.md, "kTLS"). Not part of `test`.
    Ktls(ktls::Options),
}

fn main() -> Result<()> {
    forget_package_env();
    let cli = Cli::parse();
    let root = workspace_root()?;
    // The kTLS check inside its guest has no checkout around it.
    if !matches!(&cli.task, Task::Ktls(opts) if opts.inside()) {
        env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    }
    match cli.task {
        Task::Setup => setup::run(),
        Task::Run { args } => run(&root, &args),
        Task::Test => test(),
        Task::Bench(opts) => bench::run(&root, &opts),
        Task::Fuzz(opts) => fuzz::run(&root, &opts),
        Task::Soak(opts) => soak::run(&root, &opts),
        Task::Ktls(opts) => ktls::run(&root, &opts),
    }
}

/// Builds the release binary and replaces this process with it, so Ctrl-C and SIGTERM
/// reach the proxy directly.
fn run(root: &Path, args: &[String]) -> Result<()> {
    setup::run()?;
    cargo(&["build", "--release", "-p", "proxy-user"])?;
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let binary = target.join("release").join("switchyard");
    let mut command = Command::new(&binary);
    command.args(["serve", "--dev", ".dev"]).args(args);
    // Only returns on failure.
    Err(command.exec()).with_context(|| format!("exec {}", binary.display()))
}

/// The checks CI runs, cheapest first; stops at the first failure.
fn test() -> Result<()> {
    setup::run()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo_test()?;
    soak::smoke(&workspace_root()?)?;
    fuzz::smoke(&workspace_root()?)
}

/// `cargo test --no-fail-fast`, passing its output through, then one closing line that
/// totals every test binary: `summary: N passed, N failed` (the last binary cargo runs is
/// often one with no tests, so its own closing line says nothing about the run).
fn cargo_test() -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: cargo test --no-fail-fast");
    let mut child = Command::new(cargo)
        .args(["test", "--no-fail-fast"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawn cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, " passed");
            failed += count(rest, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("summary: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// The number before `label` in a `test result:` line (`ok. 12 passed; 0 failed; …`).
fn count(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the cargo that runs us, with output going straight to the terminal.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .status()
        .with_context(|| format!("spawn cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// `cargo run` gives xtask its own CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …; ring's build
/// script reruns when those change, so a nested `cargo build` that inherits them would
/// rebuild what a plain `cargo build --release` already built (and the other way round).
fn forget_package_env() {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
    ];
    const KEYS: [&str; 4] = [
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if PREFIXES.iter().any(|p| k.starts_with(p)) || KEYS.contains(&k.as_ref()) {
            env::remove_var(&key);
        }
    }
}
