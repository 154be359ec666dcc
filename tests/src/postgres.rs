//! [`Postgres`]: a real PostgreSQL server on a free loopback port, run as the
//! unprivileged `postgres` user (it refuses root), `trust` auth, and SSL on with a
//! certificate from the test PKI; [`psql`] runs a query with the real client.
//! [`Postgres::start_in`] runs the server inside a [`Netns`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::pki::CertFiles;
use crate::process::{Proc, Signal, Stream};
use crate::{free_port, require_tool, run_with_timeout, set_mode, user_ids, TempDir};

/// The OS user the server runs as, and the database superuser.
pub const PG_USER: &str = "postgres";

const PG_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];

/// A running `postgres` postmaster with its own data directory.
pub struct Postgres {
    /// Where it listens.
    pub addr: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Postgres {
    /// Runs `initdb`, installs `tls` as `server.crt`/`server.key`, starts the server
    /// with `ssl=on`, waits for "ready to accept connections".
    pub fn start(tls: &CertFiles) -> Result<Postgres> {
        Self::start_in(tls, None)
    }

    /// [`Postgres::start`] with the server inside `ns` (on the host when `None`):
    /// `addr` is then on the namespace's loopback, on a port that was free on the host's
    /// too. `initdb` runs on the host (it opens no sockets).
    pub fn start_in(tls: &CertFiles, ns: Option<&Netns>) -> Result<Postgres> {
        let initdb = require_tool("initdb", "postgresql", PG_DIRS)?;
        let postgres = require_tool("postgres", "postgresql", PG_DIRS)?;
        let (uid, gid) = user_ids(PG_USER)
            .context("the `postgres` user comes with the Debian package `postgresql`")?;
        let dir = TempDir::new("postgres")?;
        let data = dir.join("data");
        let sockets = dir.join("sockets");
        for path in [&data, &sockets] {
            std::fs::create_dir(path)?;
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            set_mode(path, 0o700)?;
        }
        let mut cmd = as_postgres(&initdb, None, uid, gid)?;
        cmd.arg("-D").arg(&data);
        cmd.args([
            "-U",
            PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        let out = run_with_timeout(cmd, b"", Duration::from_secs(60))?;
        if !out.success() {
            bail!("initdb failed: {}\n{}", out.stdout, out.stderr);
        }
        for (from, to) in [(&tls.cert, "server.crt"), (&tls.key, "server.key")] {
            let to = data.join(to);
            std::fs::copy(from, &to)?;
            std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
            set_mode(&to, 0o600)?;
        }
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = as_postgres(&postgres, ns, uid, gid)?;
            cmd.arg("-D").arg(&data).arg("-k").arg(&sockets);
            cmd.args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
            cmd.args([
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=20",
            ]);
            let mut proc = Proc::spawn("postgres", cmd, dir.path())?;
            // Fast shutdown: do not wait for clients to disconnect.
            proc.set_stop_signal(Signal::INT);
            let ready = proc.wait_for_line(Stream::Stderr, Duration::from_secs(20), |line| {
                line.contains("ready to accept connections").then_some(())
            });
            match ready {
                Ok(()) => {
                    return Ok(Postgres {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        proc,
                        _dir: dir,
                    })
                }
                Err(e) if proc.stderr().contains("could not bind") => last_error = Some(e),
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

/// `program` as the `postgres` user, in `ns` when given: `ip netns exec` needs root, so
/// there the user is switched inside the namespace, by `setpriv`.
fn as_postgres(program: &Path, ns: Option<&Netns>, uid: u32, gid: u32) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let mut cmd = match ns {
        None => {
            let mut cmd = Command::new(program);
            cmd.uid(uid).gid(gid);
            cmd
        }
        Some(ns) => {
            let mut cmd = ns.command(require_tool("setpriv", "util-linux", &[])?);
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--"])
                .arg(program);
            cmd
        }
    };
    cmd.env("LC_ALL", "C").env_remove("PGDATA").current_dir("/");
    Ok(cmd)
}

/// Runs `sql` with the real `psql` (`-X -A -t`, `ON_ERROR_STOP`) against `addr` as
/// [`PG_USER`] with the given `sslmode`; returns its trimmed stdout, or an error with
/// its stderr.
pub fn psql(addr: SocketAddr, sslmode: &str, sql: &str) -> Result<String> {
    let psql = require_tool("psql", "postgresql-client", PG_DIRS)?;
    let conninfo = format!(
        "host={} port={} user={PG_USER} dbname=postgres sslmode={sslmode} connect_timeout=5",
        addr.ip(),
        addr.port()
    );
    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .args(["-c", sql])
        .env("PGSSLROOTCERT", no_file())
        .env("PGSSLCERT", no_file())
        .env_remove("PGPASSWORD");
    let out = run_with_timeout(cmd, b"", Duration::from_secs(15))?;
    if !out.success() {
        bail!("psql {sslmode} failed ({:?}): {}", out.status, out.stderr);
    }
    Ok(out.stdout.trim().to_string())
}

/// A path that never exists, so libpq does not pick up files from `~/.postgresql`.
fn no_file() -> PathBuf {
    Path::new("/nonexistent/switchyard-test").to_path_buf()
}
