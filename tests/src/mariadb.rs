//! [`MariaDb`]: a real MariaDB server (Debian's `mariadb-server`) on a free loopback port
//! with its own data directory, TLS from the test PKI (so its greeting announces
//! `CLIENT_SSL`) and `--skip-grant-tables`; [`mysql`] runs a query with the real client.
//! [`MariaDb::start_in`] runs it inside a [`Netns`].

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::netns::{command_in, Netns};
use crate::pki::CertFiles;
use crate::process::{Proc, Stream};
use crate::{free_port, require_tool, run_with_timeout, TempDir};

/// A running `mariadbd`.
pub struct MariaDb {
    /// Where it listens.
    pub addr: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl MariaDb {
    /// Creates a data directory, starts the server, waits for "ready for connections".
    pub fn start(tls: &CertFiles) -> Result<MariaDb> {
        Self::start_in(tls, None)
    }

    /// [`MariaDb::start`] with the server inside `ns` (on the host when `None`): `addr`
    /// is then on the namespace's loopback, on a port that was free on the host's too.
    pub fn start_in(tls: &CertFiles, ns: Option<&Netns>) -> Result<MariaDb> {
        let install = require_tool("mariadb-install-db", "mariadb-server", &[])?;
        let server = require_tool("mariadbd", "mariadb-server", &[])?;
        let dir = TempDir::new("mariadb")?;
        let data = dir.join("data");
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ]);
        let out = run_with_timeout(cmd, b"", Duration::from_secs(60))?;
        if !out.success() {
            bail!("mariadb-install-db failed: {}\n{}", out.stdout, out.stderr);
        }
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = command_in(ns, &server);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", dir.join("sock").display()))
                .arg(format!("--pid-file={}", dir.join("pid").display()))
                .arg(format!("--port={port}"))
                .arg(format!("--ssl-cert={}", tls.cert.display()))
                .arg(format!("--ssl-key={}", tls.key.display()))
                .args([
                    "--bind-address=127.0.0.1",
                    "--user=root",
                    "--skip-grant-tables",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=16M",
                ]);
            let mut proc = Proc::spawn("mariadbd", cmd, dir.path())?;
            let ready = proc.wait_for_line(Stream::Stderr, Duration::from_secs(30), |line| {
                line.contains("ready for connections").then_some(())
            });
            match ready {
                Ok(()) => {
                    return Ok(MariaDb {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        proc,
                        _dir: dir,
                    })
                }
                Err(e) if proc.stderr().contains("already in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("three attempts"))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }
}

/// Runs `sql` with the real `mysql` client over TCP with `extra` options; trimmed stdout,
/// or an error with its stderr.
pub fn mysql(addr: SocketAddr, extra: &[&str], sql: &str) -> Result<String> {
    let client = require_tool("mysql", "mariadb-client", &[])?;
    let mut cmd = Command::new(client);
    cmd.args(["--no-defaults", "--protocol=TCP", "-u", "root", "-N", "-B"])
        .arg(format!("--host={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .args(extra)
        .args(["-e", sql]);
    let out = run_with_timeout(cmd, b"", Duration::from_secs(15))?;
    if !out.success() {
        bail!("mysql failed ({:?}): {}", out.status, out.stderr);
    }
    Ok(out.stdout.trim().to_string())
}
