//! A successor started by its predecessor (`SIGUSR2`) is born in the predecessor's own
//! cgroup v2, `…/switchyard-<pid>`, where the predecessor's eBPF programs are attached
//! (`ebpf::cgroup`). Before its own front end starts, the successor moves back to the
//! parent, so that its sockets are seen by its own programs only and the predecessor
//! can remove its directory when it exits.

use std::fs;
use std::path::PathBuf;
use tracing::{info, warn};

/// Moves this process out of `switchyard-<predecessor>` into its parent, if it is there.
pub(super) fn leave_predecessor(predecessor: u32) {
    let Ok(own) = fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let Some(relative) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return;
    };
    let Some((parent, leaf)) = relative.rsplit_once('/') else {
        return;
    };
    if leaf != format!("switchyard-{predecessor}") {
        return;
    }
    let Some(root) = unified_mount() else {
        warn!("in the predecessor's cgroup {relative}, but no cgroup2 mount found: staying");
        return;
    };
    let procs = root
        .join(parent.trim_start_matches('/'))
        .join("cgroup.procs");
    match fs::write(&procs, "0") {
        Ok(()) => info!(from = relative, "left the predecessor's eBPF cgroup"),
        Err(e) => warn!(
            "cannot leave the predecessor's cgroup {relative} ({}): {e}",
            procs.display()
        ),
    }
}

/// The mount point of a cgroup2 file system mounted at its root.
fn unified_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let cgroup2 = right.split(' ').next() == Some("cgroup2");
        (cgroup2 && fields.get(3) == Some(&"/"))
            .then(|| fields.get(4).map(PathBuf::from))
            .flatten()
    })
}
