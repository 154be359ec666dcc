//! [`Proc`]: one real server process with its stdout/stderr captured to files, a wait
//! for a readiness line, and a stop (leader first, then its whole process group) on drop;
//! [`signal`] for any child a test spawned.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use rustix::process::Signal;
use rustix::process::{kill_process, kill_process_group, Pid};

/// Sends `sig` to the process `pid` (`kill(2)`).
pub fn signal(pid: u32, sig: Signal) -> Result<()> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("not a process id: {pid}"))?;
    kill_process(target, sig).with_context(|| format!("kill({pid}, {sig:?})"))
}

/// Which captured stream to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
}

/// A running server process. Dropping it stops it and every process in its group.
pub struct Proc {
    name: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    stop_signal: Signal,
}

impl Proc {
    /// Spawns `cmd` in its own process group, stdin null, stdout/stderr to
    /// `dir/NAME.stdout` and `dir/NAME.stderr`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout_path,
            stderr_path,
            stop_signal: Signal::TERM,
        })
    }

    /// The signal sent to the leader first on drop (default SIGTERM).
    pub fn set_stop_signal(&mut self, sig: Signal) {
        self.stop_signal = sig;
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        signal(self.pid(), sig)
    }

    /// The process id (and process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until a line of `stream` satisfies `parse`, returning its value. Fails
    /// with both logs when the process exits first or `timeout` passes.
    pub fn wait_for_line<T>(
        &mut self,
        stream: Stream,
        timeout: Duration,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = match stream {
                Stream::Stdout => self.stdout(),
                Stream::Stderr => self.stderr(),
            };
            if let Some(value) = text.lines().find_map(&parse) {
                return Ok(value);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before ready\n{}",
                    self.name,
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                bail!("{} not ready after {timeout:?}\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both captured logs, labelled, for error messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            tail(&self.stdout()),
            tail(&self.stderr()),
            name = self.name
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let pid = Pid::from_child(&self.child);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill_process(pid, self.stop_signal);
            if self
                .wait_exit(Duration::from_secs(3))
                .ok()
                .flatten()
                .is_none()
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Leftovers in the group we created (postgres backends, sshd sessions).
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

/// The last 60 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
