//! The client side of `switchyard` under test: [`LocalProxy`] runs one of the local
//! proxies (`proxy db|kube|app|tcp`) until dropped, [`client_args`] names the proxy and
//! a test identity, [`echo_tcp_args`] is `proxy tcp` for the echo app,
//! [`switchyard_cmd`] runs a one-shot client command, [`write_ssh_config`] writes what
//! `config ssh` prints for OpenSSH, and [`connect_lines`] is a line client for what a local
//! proxy relays.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Proc, Signal, Stream};
use crate::{parse_addr, run_with_timeout, switchyard_bin, Sshd, Switchyard, TempDir, TestPki};

/// `--proxy localhost:PORT --identity PKI/STEM`: the proxy by the name on its certificate,
/// and the identity `STEM.crt`/`STEM.key` with the cluster CA (`client` or `wrong-client`).
pub fn client_args(pki: &TestPki, proxy: &Switchyard, stem: &str) -> Vec<String> {
    vec![
        format!("--proxy=localhost:{}", proxy.web.port()),
        format!("--identity={}", pki.dir().join(stem).display()),
    ]
}

/// `proxy tcp --alpn=teleport-tcp --sni=echo.localhost`: a local proxy for the TCP app
/// that [`ProxyConfig::echo_app`](crate::ProxyConfig::echo_app) routes.
pub fn echo_tcp_args() -> Vec<String> {
    [
        "proxy",
        "tcp",
        "--alpn=teleport-tcp",
        "--sni=echo.localhost",
    ]
    .map(String::from)
    .to_vec()
}

/// A TCP connection to `addr` with `read_timeout`, and a line reader over a clone of it.
pub fn connect_lines(
    addr: SocketAddr,
    read_timeout: Duration,
) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(read_timeout))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// Runs `switchyard config ssh --cluster=test CLIENT --known-hosts=DIR/known_hosts` (CLIENT:
/// [`client_args`] or the like), which must succeed, and writes the block it prints plus
/// `sshd`'s client key and non-interactive options to `DIR/ssh_config`. Returns that path
/// and the printed block.
pub fn write_ssh_config(client: Vec<String>, sshd: &Sshd, dir: &Path) -> (PathBuf, String) {
    let mut args = vec!["config".to_owned(), "ssh".into(), "--cluster=test".into()];
    args.extend(client);
    args.push(format!(
        "--known-hosts={}",
        dir.join("known_hosts").display()
    ));
    let out =
        run_with_timeout(switchyard_cmd(&args).unwrap(), b"", Duration::from_secs(10)).unwrap();
    assert!(out.success(), "config ssh: {out:?}");
    let text = format!(
        "{}    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n    \
         StrictHostKeyChecking accept-new\n    LogLevel ERROR\n",
        out.stdout,
        sshd.client_key.display()
    );
    let path = dir.join("ssh_config");
    std::fs::write(&path, text).unwrap();
    (path, out.stdout)
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
        LocalProxy::start_with(args, |_| {})
    }

    /// [`LocalProxy::start`], with `setup` adjusting the command (its environment) first.
    pub fn start_with(args: &[String], setup: impl FnOnce(&mut Command)) -> Result<LocalProxy> {
        let dir = TempDir::new("local-proxy")?;
        let mut cmd = switchyard_cmd(args)?;
        cmd.arg("-v");
        setup(&mut cmd);
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

    /// Sends SIGTERM and waits for the exit status (its logs stay readable).
    pub fn stop(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.proc.signal(Signal::TERM)?;
        self.proc.wait_exit(Duration::from_secs(10))
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.proc.wait_exit(Duration::ZERO), Ok(None))
    }
}
