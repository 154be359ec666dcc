//! `switchyard upgrade`: asks the process serving the upgrade socket who it is, sends it
//! `SIGUSR2`, and waits until another process answers there (the handover is done) or
//! the successor is gone without taking over (its log says why).

use super::wire::{self, Query, Status};
use super::UpgradeError;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Upgrades the process at `path`; `(old pid, new pid)` once the new one serves.
pub(crate) fn upgrade(path: &Path, within: Duration) -> Result<(u32, u32), UpgradeError> {
    let before = status(path)?;
    let old = before.serving;
    let pid = i32::try_from(old)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| UpgradeError::Protocol(format!("pid {old}")))?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR2)
        .map_err(|e| UpgradeError::Io(e.into()))?;
    let deadline = Instant::now() + within;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = status(path)?;
        if now.serving != old {
            return Ok((old, now.serving));
        }
        // A successor was started since, and is gone.
        if now.started > before.started && !now.starting {
            return Err(UpgradeError::Aborted(old));
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::Stuck(old, within));
        }
    }
}

/// Who serves the upgrade socket at `path`, and whether a successor is starting.
fn status(path: &Path) -> Result<Status, UpgradeError> {
    let stream =
        UnixStream::connect(path).map_err(|e| UpgradeError::NotServing(path.to_owned(), e))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let query = Query {
        protocol: wire::PROTOCOL.to_owned(),
        query: "status".to_owned(),
    };
    wire::send(&stream, &query, &[])?;
    let (line, _) = wire::recv(&stream)?;
    if let Ok(wire::Answer::Refused(why)) = serde_json::from_slice(&line) {
        return Err(UpgradeError::Refused(why));
    }
    wire::parse(&line, "a status")
}
