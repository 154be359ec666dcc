//! The client side of `switchyard` under test: [`LocalProxy`] runs one of the local
//! proxies (`proxy db|kube|app|tcp`) until dropped, [`client_args`] names the proxy and
//! a test identity, and [`switchyard_cmd`] runs a one-shot client command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Proc, Stream};
use crate::{parse_addr, switchyard_bin, Switchyard, TempDir, TestPki};

/// `--proxy localhost:PORT --identity PKI/STEM`: the proxy by the name on its certificate,
/// and the identity `STEM.crt`/`STEM.key` with the cluster CA (`client` or `wrong-client`).
pub fn client_args(pki: &TestPki, proxy: &Switchyard, stem: &str) -> Vec<String> {
    vec![
        format!("--proxy=localhost:{}", proxy.web.port()),
        format!("--identity={}", pki.dir().join(stem).display()),
    ]
}

/// A `switchyard` command with `args`.
pub fn switchyard_cmd<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> Result<Command> {
    let mut cmd = Command::new(switchyard_bin()?);
    cmd.args(args);
    Ok(cmd)
}

/// A running local proxy; dropping it sends SIGTERM.
pub struct LocalProxy {
    /// Where clients connect (127.0.0.1).
    pub addr: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl LocalProxy {
    /// Runs `switchyard ARGS -v` and waits for `switchyard ready addr=…`.
    pub fn start(args: &[String]) -> Result<LocalProxy> {
        let dir = TempDir::new("local-proxy")?;
        let mut cmd = switchyard_cmd(args)?;
        cmd.arg("-v");
        let mut proc = Proc::spawn("local-proxy", cmd, dir.path())?;
        let addr = proc.wait_for_line(Stream::Stdout, Duration::from_secs(15), |l| {
            parse_addr(l.strip_prefix("switchyard ready addr=")?).ok()
        })?;
        Ok(LocalProxy {
            addr,
            proc,
            _dir: dir,
        })
    }

    /// A `KEY=VALUE` line it printed (e.g. `kubeconfig`).
    pub fn printed(&self, key: &str) -> Option<PathBuf> {
        let prefix = format!("{key}=");
        self.proc
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(PathBuf::from))
    }

    /// Everything it printed and logged.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> Result<Option<std::process::ExitStatus>> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGTERM) };
        self.proc.wait_exit(Duration::from_secs(10))
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.proc.wait_exit(Duration::ZERO), Ok(None))
    }
}
