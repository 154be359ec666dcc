//! Test harness shared by the integration tests.
//!
//! Everything here starts REAL processes bound to 127.0.0.1 only and stops them on `Drop`:
//! the `switchyard` binary ([`switchyard`]), an OpenSSH `sshd` ([`sshd`]), a PostgreSQL
//! server ([`postgres`]), real clients (`openssl s_client`, `curl`, `ssh`, `psql`,
//! [`clients`]), a headless Chromium ([`browser`]) and an ACME test CA ([`pebble`]). Certificates come from
//! [`pki::TestPki`], built on rcgen. [`netns::Netns`] is a network namespace of the
//! test's own, for servers the proxy must not reach except through a forwarder out.
//!
//! Missing tools are a hard failure naming the Debian package to install (the xtask
//! installs them); there are no silent skips, with or without `CI=true`. The tests that
//! load the eBPF front end (root and CAP_BPF) are `#[ignore]`d unless `CI=true`
//! (`tests/build.rs`), so elsewhere they show as ignored, not as passed.

pub mod acme;
pub mod agent;
pub mod balancer;
pub mod browser;
pub mod clients;
pub mod kube;
pub mod local_proxy;
pub mod mariadb;
pub mod netns;
pub mod pebble;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod raw;
pub mod sshd;
pub mod switchyard;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use browser::Chromium;
pub use clients::{curl, http_get, run_with_timeout, SClient, SClientOutput};
pub use netns::Netns;
pub use pki::TestPki;
pub use postgres::Postgres;
pub use process::Proc;
pub use sshd::Sshd;
pub use switchyard::{switchyard_bin, DemoUpstream, ProxyConfig, Switchyard};

/// The values of the field `name` in a log line of the proxy (`name=value` after `{` or a
/// space, so `client` does not match `claimed_client`; quotes of string values removed),
/// outermost span first, the event's own fields last.
pub fn log_fields<'a>(line: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!("{name}=");
    let mut out = Vec::new();
    for (i, _) in line.match_indices(&key) {
        let before = line[..i].chars().next_back();
        if !matches!(before, Some('{' | ' ')) {
            continue;
        }
        let rest = &line[i + key.len()..];
        let end = rest.find([' ', '}']).unwrap_or(rest.len());
        out.push(rest[..end].trim_matches('"'));
    }
    out
}

/// The client address a log line says decisions were made on, and how it was obtained:
/// the innermost `client=` and `client_from=` (an upgrade's inner connection carries its
/// own when `X-Forwarded-For` was believed).
pub fn decided_client(line: &str) -> Option<(&str, &str)> {
    let client = *log_fields(line, "client").last()?;
    let from = *log_fields(line, "client_from").last()?;
    Some((client, from))
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read it, close).
///
/// Only for servers that cannot bind `:0` and report the port themselves (sshd,
/// postgres); fixtures using it retry on "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Parses `127.0.0.1:PORT`-style text into an address.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    text.trim()
        .parse()
        .with_context(|| format!("not a socket address: {text:?}"))
}

/// Finds `tool` on `PATH` or in `extra_dirs`; a missing tool is an error naming `package`.
pub fn require_tool(tool: &str, package: &str, extra_dirs: &[&str]) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path_var)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .chain(extra_dirs.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    bail!(
        "required tool `{tool}` not found (CI={ci}): install the Debian package `{package}` \
         (`cargo xtask` installs the test dependencies)"
    )
}

/// Polls `check` every 20 ms until it yields a value or `timeout` passes.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory under the system temp dir ([`tempfile`]), removed on drop (kept
/// when `SWITCHYARD_TEST_KEEP=1`, for debugging). Mode 0755 so unprivileged servers
/// can traverse it.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Creates a uniquely named directory; `label` goes into its name.
    pub fn new(label: &str) -> Result<TempDir> {
        let keep = std::env::var("SWITCHYARD_TEST_KEEP").is_ok_and(|v| v == "1");
        let dir = tempfile::Builder::new()
            .prefix(&format!("switchyard-test-{label}-"))
            .disable_cleanup(keep)
            .tempdir()
            .with_context(|| format!("create a temp dir for {label}"))?;
        set_mode(dir.path(), 0o755)?;
        if keep {
            eprintln!("keeping {}", dir.path().display());
        }
        Ok(TempDir(dir))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// `chmod mode path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The uid and gid of a local user, from `/etc/passwd`.
pub fn user_ids(user: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == user {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    bail!("no local user `{user}` in /etc/passwd")
}
