//! The new process's side of an upgrade: connect to the running process's upgrade
//! socket, say hello, receive its listening sockets, leave its eBPF cgroup, and later
//! say ready.

use super::wire::{self, Answer, Hello, Ready};
use super::{cgroup, UpgradeError};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the running process may take to answer the hello.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What the predecessor handed over.
pub(super) struct Handed {
    pub(super) pid: u32,
    pub(super) sockets: Vec<(wire::Socket, OwnedFd)>,
    pub(super) stream: UnixStream,
}

/// Asks the process serving upgrades at `path` for its listening sockets.
pub(super) fn connect(path: &Path) -> Result<Handed, UpgradeError> {
    let stream =
        UnixStream::connect(path).map_err(|e| UpgradeError::NoPredecessor(path.to_owned(), e))?;
    stream.set_read_timeout(Some(ANSWER_WITHIN))?;
    let hello = Hello {
        protocol: wire::PROTOCOL.to_owned(),
        pid: std::process::id(),
    };
    wire::send(&stream, &hello, &[])?;
    let (line, fds) = wire::recv(&stream)?;
    let (pid, sockets) = match wire::parse::<Answer>(&line, "an offer of sockets")? {
        Answer::Offer { pid, sockets } => (pid, sockets),
        Answer::Refused(why) => return Err(UpgradeError::Refused(why)),
    };
    if fds.len() != sockets.len() {
        return Err(UpgradeError::Protocol(format!(
            "the offer lists {} sockets and carries {} descriptors",
            sockets.len(),
            fds.len()
        )));
    }
    // Sockets this process creates from now on must not be in the predecessor's cgroup,
    // where its eBPF programs are attached (they stay there until it exits).
    cgroup::leave_predecessor(pid);
    stream.set_read_timeout(None)?;
    Ok(Handed {
        pid,
        sockets: sockets.into_iter().zip(fds).collect(),
        stream,
    })
}

/// Tells the predecessor that this process accepts on every socket it was given.
pub(super) fn ready(stream: &UnixStream) -> Result<(), UpgradeError> {
    let ready = Ready {
        ready: std::process::id(),
    };
    wire::send(stream, &ready, &[])
}
