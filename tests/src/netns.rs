//! [`Netns`]: a network namespace made by the test (`ip netns add`) with only its own
//! loopback up, so a server started in it ([`Netns::command`], the `start_in` of the
//! service starters) cannot be reached from the host. [`Netns::run`] runs Rust code
//! (connects, readiness checks) inside it; [`Netns::forward_out`] is its only way out:
//! a socat pair joined by a Unix socket, carrying connections to one address on the
//! host's loopback. Dropping it kills every process in the namespace and deletes it.
//!
//! Names are `sy-<pid>-<n>-<label>`; the first [`Netns::new`] of a test process
//! deletes the `sy-` namespaces left by test processes that no longer run.

use std::ffi::OsStr;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::process::{Proc, Stream};
use crate::{parse_addr, require_tool, wait_until, TempDir};

const PREFIX: &str = "sy-";

/// How long socat keeps carrying one direction after the other reached EOF (its `-t`;
/// the default 0.5 s would cut off a server that answers a half-closed request slowly).
const HALF_CLOSE_SECS: &str = "3600";

/// A network namespace with only `lo` (up). Declare it before the servers started in
/// it, so they are stopped (gracefully, by their own `Drop`) before it is.
pub struct Netns {
    name: String,
    ip: PathBuf,
    /// `/var/run/netns/NAME`, for `setns` and to recognise the namespace's processes.
    file: File,
    /// Both halves of every [`Netns::forward_out`].
    forwarders: Mutex<Vec<Proc>>,
    dir: TempDir,
}

impl Netns {
    /// `ip netns add sy-<pid>-<n>-<label>` (label cut to 8 of `[a-z0-9-]`), then
    /// `ip -n NAME link set lo up`.
    pub fn new(label: &str) -> Result<Netns> {
        let ip = require_tool("ip", "iproute2", &[])?;
        static STALE: OnceLock<()> = OnceLock::new();
        STALE.get_or_init(|| remove_stale(&ip));
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(8)
            .collect();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        let dir = TempDir::new("netns")?;
        run_ip(&ip, &["netns", "add", &name])?;
        let file = match File::open(format!("/var/run/netns/{name}")) {
            Ok(file) => file,
            Err(e) => {
                let _ = run_ip(&ip, &["netns", "del", &name]);
                return Err(e).with_context(|| format!("open /var/run/netns/{name}"));
            }
        };
        let ns = Netns {
            name,
            ip,
            file,
            forwarders: Mutex::new(Vec::new()),
            dir,
        };
        run_ip(&ns.ip, &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: add arguments, env and current dir as usual (`ip`
    /// execs the program, so its pid is the child's and [`Proc::spawn`] works). Do not
    /// set `uid`/`gid` on it: `ip` needs root; switch users inside (`setpriv`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// [`Netns::command`] for the program of `cmd`, with its arguments, env changes and
    /// current dir (not its uid/gid, stdio, process group or `pre_exec`).
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut out = self.command(cmd.get_program());
        out.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => out.env(key, value),
                None => out.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            out.current_dir(dir);
        }
        out
    }

    /// Runs `f` on a fresh thread that first joined the namespace (`setns`), so its
    /// sockets live there; a panic in `f` is passed on.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.file.as_fd();
        let name = &self.name;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                move_into_link_name_space(fd, Some(LinkNameSpaceType::Network))
                    .unwrap_or_else(|e| panic!("setns into network namespace {name}: {e}"));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The namespace's way out: returns `127.0.0.1:PORT` inside it, where every
    /// connection is carried to `host_target` on the host's loopback (half-close and
    /// all). Inside, `socat TCP-LISTEN:0,bind=127.0.0.1,fork UNIX-CONNECT:SOCK`; on the
    /// host, `socat UNIX-LISTEN:SOCK,fork TCP:host_target`. Ready when both listen (by
    /// their logs: a test connect would reach `host_target`).
    pub fn forward_out(&self, host_target: SocketAddr) -> Result<SocketAddr> {
        if !host_target.ip().is_loopback() {
            bail!("forward_out only to the host's loopback, not {host_target}");
        }
        let socat = require_tool("socat", "socat", &[])?;
        let mut forwarders = self.forwarders.lock().expect("forwarders lock");
        let n = forwarders.len() / 2;
        let sock = self.dir.join(&format!("out-{n}.sock"));
        let ready = Duration::from_secs(10);

        let mut host = Command::new(&socat);
        host.args(["-d", "-d", "-t", HALF_CLOSE_SECS])
            .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
            .arg(format!("TCP:{host_target},nodelay"));
        let mut host = Proc::spawn(&format!("out{n}-host"), host, self.dir.path())?;
        host.wait_for_line(Stream::Stderr, ready, |l| {
            l.contains("listening on AF=1").then_some(())
        })?;
        forwarders.push(host);

        let mut inside = self.command(&socat);
        inside
            .args(["-d", "-d", "-t", HALF_CLOSE_SECS])
            .arg("TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr,nodelay")
            .arg(format!("UNIX-CONNECT:{}", sock.display()));
        let mut inside = Proc::spawn(&format!("out{n}-netns"), inside, self.dir.path())?;
        let addr = inside.wait_for_line(Stream::Stderr, ready, |l| {
            parse_addr(l.split_once("listening on AF=2 ")?.1).ok()
        })?;
        forwarders.push(inside);
        Ok(addr)
    }

    /// The processes (other than this one) whose network namespace this is.
    pub fn pids(&self) -> Vec<u32> {
        members(&self.file)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Both socats of each forwarder, gracefully, then whatever else runs inside.
        self.forwarders
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        kill_members(&self.file);
        if let Err(e) = run_ip(&self.ip, &["netns", "del", &self.name]) {
            eprintln!("{e:#}");
        }
    }
}

/// Pids of the processes in the namespace of `ns` (same device and inode as their
/// `/proc/PID/ns/net`), not counting this process.
fn members(ns: &File) -> Vec<u32> {
    let Ok(want) = ns.metadata() else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && in_ns(pid, &want))
        .collect()
}

fn in_ns(pid: u32, want: &std::fs::Metadata) -> bool {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
}

/// SIGTERM to every process in the namespace, up to 2 s to go, then SIGKILL until none
/// is left. A pidfd taken before re-checking the namespace keeps a reused pid safe.
fn kill_members(ns: &File) {
    let Ok(want) = ns.metadata() else { return };
    let send = |sig: Signal| -> Result<Option<()>> {
        for pid in members(ns) {
            let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
                continue;
            };
            if let Ok(pidfd) = pidfd_open(raw, PidfdFlags::empty()) {
                if in_ns(pid, &want) {
                    let _ = pidfd_send_signal(&pidfd, sig);
                }
            }
        }
        Ok(members(ns).is_empty().then_some(()))
    };
    let gone = |sig, timeout| wait_until(timeout, "processes to leave", || send(sig)).is_ok();
    if !gone(Signal::TERM, Duration::from_secs(2)) && !gone(Signal::KILL, Duration::from_secs(5)) {
        eprintln!("processes still in a network namespace: {:?}", members(ns));
    }
}

/// Deletes `sy-<pid>-…` namespaces whose test process is gone (or is this one: it has
/// made none yet), killing what still runs in them.
fn remove_stale(ip: &Path) {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(file) = File::open(entry.path()) {
            kill_members(&file);
        }
        let _ = run_ip(ip, &["netns", "del", &name]);
    }
}

fn run_ip(ip: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ns.command(program)`, or `Command::new(program)` on the host.
pub fn command_in(ns: Option<&Netns>, program: impl AsRef<OsStr>) -> Command {
    match ns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    }
}
