//! [`Sshd`]: a real OpenSSH server on a free loopback port, with a generated host key
//! and one authorized client key for `root` (`PermitRootLogin prohibit-password`),
//! [`ssh_exec`] to run a command through it with the real `ssh` client, and [`scp_10mb`]
//! to copy a patterned payload to `node1.test` with the real `scp`. [`Sshd::start_in`]
//! runs it inside a [`Netns`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{command_in, Netns};
use crate::process::{Proc, Stream};
use crate::{free_port, require_tool, run_with_timeout, SClientOutput, TempDir};

/// The user the client logs in as.
pub const SSH_USER: &str = "root";

/// A running `sshd -D -e -f <generated config>`.
pub struct Sshd {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The private key authorized to log in as [`SSH_USER`].
    pub client_key: PathBuf,
    proc: Proc,
    _dir: TempDir,
}

impl Sshd {
    /// Generates keys and config, starts sshd, waits for "Server listening".
    pub fn start() -> Result<Sshd> {
        Self::start_in(None)
    }

    /// [`Sshd::start`] inside `ns` (on the host when `None`): `addr` is then on the
    /// namespace's loopback, on a port that was free on the host's too.
    pub fn start_in(ns: Option<&Netns>) -> Result<Sshd> {
        let sshd = require_tool("sshd", "openssh-server", &[])?;
        require_tool("ssh-keygen", "openssh-client", &[])?;
        // Privilege separation directory; normally created by the service unit.
        std::fs::create_dir_all("/run/sshd").context("create /run/sshd")?;
        let dir = TempDir::new("sshd")?;
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key)?;
        keygen(&client_key)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)?;
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join("sshd_config");
            std::fs::write(&config, sshd_config(port, &host_key, &authorized))?;
            let mut cmd = command_in(ns, &sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            let mut proc = Proc::spawn("sshd", cmd, dir.path())?;
            let ready = proc.wait_for_line(Stream::Stderr, Duration::from_secs(10), |line| {
                line.contains("Server listening on 127.0.0.1").then_some(())
            });
            match ready {
                Ok(()) => {
                    return Ok(Sshd {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        client_key,
                        proc,
                        _dir: dir,
                    })
                }
                Err(e) if proc.stderr().contains("Address already in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("three attempts"))
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }
}

/// Runs `command` as [`SSH_USER`] with the real `ssh` client against `addr` (sshd itself
/// or the proxy port), key authentication only, no known_hosts, 15 s timeout.
pub fn ssh_exec(addr: SocketAddr, key: &Path, command: &str) -> Result<SClientOutput> {
    ssh_exec_with(addr, key, &[], command)
}

/// [`ssh_exec`] with extra `-o` options (e.g. `ProxyCommand=…`).
pub fn ssh_exec_with(
    addr: SocketAddr,
    key: &Path,
    options: &[&str],
    command: &str,
) -> Result<SClientOutput> {
    let ssh = require_tool("ssh", "openssh-client", &[])?;
    let mut cmd = Command::new(ssh);
    cmd.args(["-F", "/dev/null", "-T"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=5"])
        .args(["-o", "LogLevel=ERROR"]);
    for option in options {
        cmd.args(["-o", option]);
    }
    cmd.arg("-i")
        .arg(key)
        .args(["-p", &addr.port().to_string()])
        .arg(format!("{SSH_USER}@{}", addr.ip()))
        .arg(command);
    run_with_timeout(cmd, b"", Duration::from_secs(15))
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "switchyard-test",
            "-f",
        ])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn sshd_config(port: u16, host_key: &Path, authorized: &Path) -> String {
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {host}\n\
         AuthorizedKeysFile {auth}\n\
         PidFile none\n\
         StrictModes no\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         LogLevel VERBOSE\n",
        host = host_key.display(),
        auth = authorized.display(),
    )
}

/// What [`scp_10mb`] sent and where.
pub struct ScpCopy {
    /// scp's exit and output.
    pub out: SClientOutput,
    /// The 10 MiB sent.
    pub data: Vec<u8>,
    /// The local file (`DIR/payload`).
    pub local: PathBuf,
    /// Where it was copied to on the node (`DIR/copied`: the node is this machine).
    pub remote: PathBuf,
}

/// Writes 10 MiB of a fixed pattern to `dir/payload` and copies it with
/// `scp -O -q -F CONFIG` to `root@node1.test:dir/copied`, within `timeout`.
pub fn scp_10mb(config: &Path, dir: &Path, timeout: Duration) -> Result<ScpCopy> {
    let data: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let local = dir.join("payload");
    std::fs::write(&local, &data)?;
    let remote = dir.join("copied");
    let mut scp = Command::new(require_tool("scp", "openssh-client", &[])?);
    scp.args(["-O", "-q", "-F"]).arg(config).arg(&local);
    scp.arg(format!("root@node1.test:{}", remote.display()));
    let out = run_with_timeout(scp, b"", timeout)?;
    Ok(ScpCopy {
        out,
        data,
        local,
        remote,
    })
}
