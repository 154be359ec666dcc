//! `cargo xtask fuzz [TARGET] [--seconds N] [--runs N] [--smoke]`: builds the fuzz targets of `fuzz/`
//! with nightly `cargo fuzz` and runs them one at a time (libFuzzer, one job), each over
//! its checked-in seeds (`fuzz/corpus/<target>`) and the corpus earlier runs grew
//! (`fuzz/work/<target>`, not checked in), then prints a line per target with its
//! executions. A crash stops the run; libFuzzer leaves the input under
//! `fuzz/artifacts/<target>/` (docs/fuzzing.md).
//!
//! The targets are built without a sanitizer (`-s none`): what they drive is safe Rust,
//! where the findings are panics, and those abort libFuzzer without one; debug assertions
//! are on, so an arithmetic overflow is a crash too. The eBPF object is not built
//! (`AYA_BUILD_SKIP=1`): nothing here loads it, and the nested bpf build must not see
//! libFuzzer's `RUSTFLAGS`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

/// How long the smoke in `cargo xtask test` runs each target after its corpus.
const SMOKE_SECONDS: u64 = 10;

#[derive(clap::Args)]
pub struct Options {
    /// One target (a file name in fuzz/fuzz_targets/ without `.rs`); all of them when omitted.
    target: Option<String>,
    /// Seconds of fuzzing per target, after its corpus has run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop a target after this many executions if that comes before `--seconds`
    /// (the long run: `--seconds 3600 --runs 10000000`).
    #[arg(long)]
    runs: Option<u64>,
    /// The CI smoke: the seed check, then every target over its corpus plus 10 s.
    #[arg(long)]
    smoke: bool,
}

/// What one target's run did.
struct Run {
    target: String,
    seconds: f64,
    executions: u64,
    /// Inputs in the work corpus (`fuzz/work/<target>`) after the run.
    corpus: usize,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let all = targets(root)?;
    let chosen: Vec<String> = match &opts.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are {}", all.join(", ")),
        None => all,
    };
    let seconds = if opts.smoke {
        SMOKE_SECONDS
    } else {
        opts.seconds
    };
    if opts.smoke {
        seed_check(root)?;
    }
    let start = Instant::now();
    build(root)?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for target in &chosen {
        runs.push(fuzz_one(root, target, seconds, opts.runs)?);
    }
    println!(
        "fuzz: {:<16} {:>8} {:>12} {:>10} {:>7}",
        "target", "seconds", "executions", "exec/s", "grown"
    );
    for r in &runs {
        println!(
            "fuzz: {:<16} {:>8.0} {:>12} {:>10.0} {:>7}",
            r.target,
            r.seconds,
            r.executions,
            r.executions as f64 / r.seconds.max(0.001),
            r.corpus
        );
    }
    println!(
        "fuzz: {} targets, no crash, {:.0} s in all (build included)",
        runs.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The CI smoke: the seeds are still the generated ones, then every target over its corpus
/// plus [`SMOKE_SECONDS`].
pub fn smoke(root: &Path) -> Result<()> {
    let opts = Options {
        target: None,
        seconds: SMOKE_SECONDS,
        runs: None,
        smoke: true,
    };
    run(root, &opts)
}

/// `proxy-user`'s seed test (stable, `--features fuzzing`): the files under `fuzz/corpus/`
/// must be what `proxy-user/src/fuzzing/seeds.rs` generates, so a seed cannot drift from
/// the fixture it was made from without CI saying so.
fn seed_check(root: &Path) -> Result<()> {
    eprintln!("xtask: the fuzz seeds are the generated ones (proxy-user --features fuzzing)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "-p", "proxy-user", "--features", "fuzzing", "--lib"])
        .args([SEED_TEST, "--", "--exact"])
        .current_dir(root)
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("SWITCHYARD_WRITE_SEEDS")
        .stderr(Stdio::inherit())
        .output()
        .context("spawn cargo test (the seed check)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!(
            "the fuzz seeds under fuzz/corpus/ are not the generated ones ({}); \
             SWITCHYARD_WRITE_SEEDS=1 cargo test -p proxy-user --features fuzzing --lib \
             fuzzing rewrites them",
            out.status
        );
    }
    if !stdout.contains("test result: ok. 1 passed") {
        bail!("the seed check ran no test: is {SEED_TEST} still its name?");
    }
    Ok(())
}

/// The seed check's test, by its path in `proxy-user`'s library.
const SEED_TEST: &str = "fuzzing::seeds::checked_in_seeds_are_the_generated_ones";

/// The targets: the files of `fuzz/fuzz_targets/`, sorted.
fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(target) = name.strip_suffix(".rs") {
            names.push(target.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `cargo fuzz` under nightly, from the workspace root (it finds `fuzz/`).
fn cargo_fuzz(root: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(root)
        .env("AYA_BUILD_SKIP", "1");
    c
}

/// The flags every build and run shares: no sanitizer, debug assertions, release.
const FLAGS: [&str; 4] = ["--sanitizer", "none", "--debug-assertions", "--release"];

fn build(root: &Path) -> Result<()> {
    eprintln!("xtask: cargo +nightly fuzz build {}", FLAGS.join(" "));
    let status = cargo_fuzz(root)
        .arg("build")
        .args(FLAGS)
        .status()
        .context("spawn cargo fuzz (cargo xtask setup installs it)")?;
    if !status.success() {
        bail!("building the fuzz targets failed: {status}");
    }
    Ok(())
}

/// Runs one target's binary: its corpus, then `seconds` of fuzzing (or `runs`
/// executions, whichever comes first).
fn fuzz_one(root: &Path, target: &str, seconds: u64, runs: Option<u64>) -> Result<Run> {
    let fuzz = root.join("fuzz");
    let binary = fuzz
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let work = fuzz.join("work").join(target);
    let seeds = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    for dir in [&work, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    }
    let limit = runs.map_or(String::new(), |n| format!(" or {n} executions"));
    eprintln!("xtask: fuzz {target} for {seconds} s{limit} after its corpus");
    let start = Instant::now();
    // New inputs go to the first directory: the work corpus, never the seeds.
    let mut cmd = Command::new(&binary);
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    let out = cmd
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("spawn {}", binary.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "fuzz target {target} failed ({}): the input is in {}",
            out.status,
            artifacts.display()
        );
    }
    let executions = stat(&log, "stat::number_of_executed_units:")
        .with_context(|| format!("no execution count in the output of {target}"))?;
    let corpus = std::fs::read_dir(&work).map_or(0, |d| d.count());
    eprintln!("xtask: fuzz {target}: {executions} executions in {seconds:.0} s, no crash");
    Ok(Run {
        target: target.to_owned(),
        seconds,
        executions,
        corpus,
    })
}

/// The number after `key` in libFuzzer's final stats.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}
