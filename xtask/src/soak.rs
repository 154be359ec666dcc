//! `cargo xtask soak --minutes N` (docs/soak.md): a bench, not a test. One `switchyard
//! serve --upgrade-socket` with every kind of route (`soak/servers.rs`) takes a mix of
//! clients for N minutes (`soak/mix.rs`: short connections of every kind at `--rate`,
//! `--streams` long-lived checked streams, bad input at a low rate), a SIGHUP every
//! minute and one binary upgrade in the middle, after which the new process is the one
//! measured and the old one must exit when its drain is done. Every 5 s a sample
//! (`soak/samples.rs`) of RSS, open fds and the counters is printed; at the end a summary,
//! `target/soak/soak.csv` and the chart `target/soak/soak.png` (`soak/chart.rs`). Any
//! unexpected error makes the run fail. `--seconds 45 --debug-build` is the smoke of
//! `cargo xtask test` ([`smoke`]): one SIGHUP and the upgrade, on the debug binary that
//! `cargo test` has just built.

mod bad;
mod chart;
mod clients;
mod mix;
mod operate;
mod samples;
mod servers;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use self::{
    bad::Probes,
    clients::Clients,
    mix::{Load, Tally},
    operate::{finish, operate, Plan, Run},
    servers::Servers,
};

/// Options of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Options {
    /// Minutes to run (30 is the goal to meet: flat memory and fds, no unexpected error).
    #[arg(long, conflicts_with = "seconds")]
    minutes: Option<f64>,
    /// Seconds to run instead (at least 30): the short form, one SIGHUP and the upgrade.
    #[arg(long)]
    seconds: Option<f64>,
    /// New short connections per second, every kind together.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Long-lived streaming connections kept open.
    #[arg(long, default_value_t = 24)]
    streams: usize,
    /// `switchyard serve --ebpf auto|require|off`.
    #[arg(long, default_value = "auto")]
    ebpf: String,
    /// Run the debug binary in this process instead of building release.
    #[arg(long)]
    debug_build: bool,
}

/// The smoke of `cargo xtask test`: 45 s, one SIGHUP, the upgrade; fails on any
/// unexpected error.
pub fn smoke(root: &Path) -> Result<()> {
    let opts = Options {
        minutes: None,
        seconds: Some(45.0),
        rate: 60,
        streams: 12,
        ebpf: "auto".to_owned(),
        debug_build: true,
    };
    run(root, &opts)
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let seconds = match (opts.minutes, opts.seconds) {
        (_, Some(s)) => s,
        (Some(m), None) => m * 60.0,
        (None, None) => 30.0 * 60.0,
    };
    if seconds < 30.0 || opts.rate == 0 {
        bail!("a soak runs at least 30 s, at a positive --rate");
    }
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let profile = if opts.debug_build {
        crate::cargo(&["build", "-p", "proxy-user"])?;
        "debug"
    } else if cfg!(debug_assertions) {
        // The clients share two cores with the proxy: run them optimised, as the bench does.
        crate::setup::run()?;
        crate::cargo(&["build", "--release", "-p", "proxy-user", "-p", "xtask"])?;
        let exe = target_dir.join("release").join("xtask");
        eprintln!("xtask: running the soak from {}", exe.display());
        let status = Command::new(&exe)
            .args(env::args_os().skip(1))
            .status()
            .with_context(|| format!("spawn {}", exe.display()))?;
        if !status.success() {
            bail!("the soak failed: {status}");
        }
        return Ok(());
    } else {
        "release"
    };
    let binary = target_dir.join(profile).join("switchyard");
    let out = target_dir.join("soak");
    soak(&binary, &out, opts, seconds, profile)
}

fn soak(binary: &Path, out: &Path, opts: &Options, seconds: f64, profile: &str) -> Result<()> {
    let plan = Plan::new(seconds);
    let mut servers = Servers::start(binary, out, &opts.ebpf)?;
    let pki = out.join("pki");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak-client")
        .enable_all()
        .build()
        .context("starting the soak clients' runtime")?;
    let _guard = runtime.enter();
    let clients = Arc::new(Clients::new(&pki, servers.addrs)?);
    let probes = Arc::new(Probes::new(&pki, servers.addrs.proxy)?);
    let tally = Arc::new(Tally::started());
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        rate: opts.rate,
        streams: opts.streams,
        life: plan.life,
        bad_every: Duration::from_millis(500),
    };
    let ebpf = servers.ebpf_loaded();
    eprintln!(
        "xtask: soak: {seconds:.0} s, {} conn/s, {} streams living {:.0}-{:.0} s, SIGHUP at {:?} s, \
         upgrade at {:.0} s, {profile} switchyard pid {}, eBPF {ebpf}",
        opts.rate,
        opts.streams,
        plan.life.0.as_secs_f64(),
        plan.life.1.as_secs_f64(),
        plan.hups,
        plan.upgrade,
        servers.serving
    );
    let task = runtime.spawn(mix::run(clients, probes, tally.clone(), load, stop.clone()));
    println!("{}", samples::header());
    let run = operate(&mut servers, &plan, &tally);
    stop.store(true, Ordering::SeqCst);
    if runtime
        .block_on(tokio::time::timeout(Duration::from_secs(60), task))
        .is_err()
    {
        tally.error("the clients did not finish within 60 s of the stop".to_owned());
    }
    let mut run = run?;
    finish(&mut servers, &plan, &tally, &mut run);
    let log = std::fs::read_to_string(&servers.log).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("reload refused"))
    {
        tally.error(format!("proxy log: {line}"));
    }
    drop(servers);
    let subtitle = format!(
        "{:.0} s, {} short conn/s, {} streams, {}, binary upgrade at {:.0} s; \
         {profile} build, eBPF {ebpf}; {}",
        seconds,
        opts.rate,
        opts.streams,
        if plan.hups.len() > 1 {
            "SIGHUP every 60 s"
        } else {
            "one SIGHUP"
        },
        plan.upgrade,
        now()
    );
    let (png, csv) = (out.join("soak.png"), out.join("soak.csv"));
    samples::write_csv(&csv, &run.samples)?;
    chart::draw(&run.samples, &run.events, &subtitle, &png)?;
    let text = summary(&run, &tally, &plan, &subtitle);
    println!("{text}");
    std::fs::write(out.join("summary.txt"), &text).context("write summary.txt")?;
    eprintln!("xtask: wrote {}, {}", png.display(), csv.display());
    if tally.unexpected() > 0 {
        bail!("the soak saw {} unexpected errors", tally.unexpected());
    }
    Ok(())
}

/// The closing report: what ran, what each process's memory and fds did, the errors.
fn summary(run: &Run, tally: &Tally, plan: &Plan, subtitle: &str) -> String {
    let (kinds, refusals) = tally.breakdown();
    let relaxed = Ordering::Relaxed;
    let mut text = format!(
        "soak summary ({subtitle})\n\
         connections done: {} ({kinds}); {:.1} MB streamed and checked\n\
         expected refusals: {} ({refusals})\n\
         short connections not started (client behind, not errors): {}\n\
         SIGHUPs: {}\n",
        tally.done(),
        tally.bytes.load(relaxed) as f64 / 1e6,
        tally.refused(),
        tally.lagged.load(relaxed),
        plan.hups.len(),
    );
    match (run.upgraded, run.old_exit) {
        (Some((old, new, at)), exit) if old != new => {
            let exit = exit.map_or("did not exit".to_owned(), |e| {
                format!("exited {:.0} s after the upgrade", e - at)
            });
            text +=
                &format!("binary upgrade at {at:.0} s: pid {old} -> {new}; the old one {exit}\n");
        }
        _ => text += "binary upgrade: failed or not reached\n",
    }
    text += &format!(
        "steady state (from {:.0} s after each process began serving):\n",
        plan.warmup
    );
    for trend in samples::trends(&run.samples, plan.warmup) {
        text += &format!("  {}\n", trend.line());
    }
    let idle = |s: &samples::Sample| {
        format!(
            "pid {} {:.1} MiB, {} fds",
            s.pid,
            s.rss_kb as f64 / 1024.0,
            s.fds
        )
    };
    if let (Some(first), Some(last)) = (run.samples.first(), run.samples.last()) {
        text += &format!(
            "idle: before the load {}; after the clients stopped {}\n",
            idle(first),
            idle(last)
        );
    }
    text += &format!("unexpected errors: {}\n", tally.unexpected());
    for e in tally.first_errors() {
        text += &format!("  {e}\n");
    }
    text
}

/// `date -u`, for the chart's subtitle.
fn now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
