//! The proxy's own cgroup v2, where `sock_ops` is attached so that it sees the proxy's
//! sockets and no one else's.
//!
//! [`Cgroup::join`] finds the unified hierarchy in `/proc/self/mountinfo` (or mounts one at
//! [`MOUNT_POINT`] when only cgroup v1 is mounted), creates `switchyard-<pid>` under the
//! process's current cgroup, and moves the whole process into it. It must run before any
//! listener is created: a socket belongs to the cgroup of the process that created it, and
//! accepted sockets inherit their listener's. Dropping the [`Cgroup`] moves the process
//! back and removes the directory; directories left by killed proxies are removed at the
//! next start.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Where the unified hierarchy is mounted when the host has none mounted.
pub(crate) const MOUNT_POINT: &str = "/run/switchyard/cgroup2";
/// Prefix of the per-process directories.
const PREFIX: &str = "switchyard-";

/// Why the proxy could not get a cgroup of its own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("mounting cgroup2 at {MOUNT_POINT}: {0}")]
    Mount(io::Error),
    #[error("reading /proc/self/{0}: {1}")]
    Proc(&'static str, io::Error),
    #[error("{0}: {1}")]
    Dir(PathBuf, io::Error),
}

/// A cgroup the whole process was moved into; leaves and removes it on drop.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
    parent: PathBuf,
    handle: File,
}

impl Cgroup {
    /// Creates `switchyard-<pid>` under the current cgroup v2 and moves the process in.
    pub(crate) fn join() -> Result<Cgroup, CgroupError> {
        let root = match find_mount()? {
            Some(root) => root,
            None => mount()?,
        };
        let own =
            fs::read_to_string("/proc/self/cgroup").map_err(|e| CgroupError::Proc("cgroup", e))?;
        let relative = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        let parent = root.join(relative);
        remove_stale(&parent);
        let dir = parent.join(format!("{PREFIX}{}", std::process::id()));
        let at = |e| CgroupError::Dir(dir.clone(), e);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(at(e)),
            _ => {}
        }
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).map_err(at)?;
        let handle = File::open(&dir).map_err(at)?;
        Ok(Cgroup {
            dir,
            parent,
            handle,
        })
    }

    /// The open directory, for attaching programs.
    pub(crate) fn handle(&self) -> &File {
        &self.handle
    }

    /// The cgroup's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(
            self.parent.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The mount point of a cgroup2 file system mounted at its root, if any.
fn find_mount() -> Result<Option<PathBuf>, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Proc("mountinfo", e))?;
    Ok(info.lines().find_map(|line| {
        // id parent major:minor root mount-point options... - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let fstype = right.split(' ').next()?;
        (fstype == "cgroup2" && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    }))
}

/// Mounts the unified hierarchy at [`MOUNT_POINT`].
fn mount() -> Result<PathBuf, CgroupError> {
    fs::create_dir_all(MOUNT_POINT).map_err(CgroupError::Mount)?;
    use rustix::mount::{mount, MountFlags};
    mount("cgroup2", MOUNT_POINT, "cgroup2", MountFlags::empty(), None)
        .map_err(|e| CgroupError::Mount(e.into()))?;
    Ok(PathBuf::from(MOUNT_POINT))
}

/// Removes `switchyard-<pid>` directories of processes that no longer exist (a proxy
/// killed with SIGKILL leaves its empty directory behind).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
}
