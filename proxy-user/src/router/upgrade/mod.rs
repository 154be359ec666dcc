//! Zero-downtime binary upgrade (`docs/deploy.md`): a new `switchyard serve --takeover`
//! takes the listening sockets over from the running one through a Unix socket
//! (`--upgrade-socket`), as HAProxy's `-x` does; the old one stops accepting and drains.
//!
//! [`Sockets`] is where `serve` gets every listener: the one the predecessor passed for
//! that configuration key ([`takeover`]), or a new one; it keeps a duplicate of each so
//! that this process can offer them in turn ([`server`], which also starts the successor
//! on `SIGUSR2`). Both processes accept on the same kernel sockets while they overlap,
//! so a client is never refused: connections in a listen queue are accepted by
//! whichever process is still accepting. `switchyard upgrade` ([`trigger`]) sends the
//! signal and waits for the outcome.

mod cgroup;
pub(crate) mod server;
mod takeover;
pub(crate) mod trigger;
pub(crate) mod wire;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub(crate) use server::Upgrades;

/// The offer's key of the upgrade socket itself.
pub(crate) const UPGRADE_KEY: &str = "upgrade_socket";

/// Why an upgrade (or the upgrade socket) failed; each names what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("--takeover: no switchyard serves upgrades at {0}: {1} (start without --takeover)")]
    NoPredecessor(PathBuf, io::Error),
    #[error(
        "--upgrade-socket {0}: a running switchyard answers there: stop it, or start with \
         --takeover to take its sockets over"
    )]
    InUse(PathBuf),
    #[error("--upgrade-socket {0}: {1}")]
    Socket(PathBuf, io::Error),
    #[error("--takeover: --upgrade-socket is required (the running process's socket)")]
    NoSocket,
    #[error("the running process refused the upgrade: {0}")]
    Refused(String),
    #[error("no switchyard serves upgrades at {0}: {1}")]
    NotServing(PathBuf, io::Error),
    #[error(
        "the new process exited before taking over: pid {0} still serves (its log says why: \
         `upgrade aborted` or the new process's own error)"
    )]
    Aborted(u32),
    #[error("pid {0} still serves after {1:?}: see its log (`upgrade aborted …`)")]
    Stuck(u32, std::time::Duration),
    #[error("pid {0} gave up waiting for this process to serve ({1}) and serves on: exiting")]
    GaveUp(u32, String),
    #[error("refused a would-be successor: {0}")]
    Stranger(String),
    #[error("the other side closed the upgrade connection")]
    Closed,
    #[error("upgrade protocol: {0}")]
    Protocol(String),
    #[error("upgrade socket: {0}")]
    Io(io::Error),
}

// By hand, not `#[from]`: the message carries the error already, so it is no `source`
// (an error chain would print it twice).
impl From<io::Error> for UpgradeError {
    fn from(e: io::Error) -> Self {
        UpgradeError::Io(e)
    }
}

/// `serve`'s upgrade flags.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// `--upgrade-socket`: where this process offers its sockets to a successor (and,
    /// with `takeover`, where the predecessor offers its own).
    pub(crate) socket: Option<PathBuf>,
    /// `--takeover`: take the listening sockets over from the process at `socket`.
    pub(crate) takeover: bool,
}

/// The listening sockets of this process: inherited ones not yet claimed, and a
/// duplicate of every one in use, to offer to a successor.
pub(crate) struct Sockets {
    options: Options,
    inherited: VecDeque<(wire::Socket, OwnedFd)>,
    offer: Vec<(wire::Socket, OwnedFd)>,
    unix: Option<UnixListener>,
    predecessor: Option<(u32, UnixStream)>,
}

impl Sockets {
    /// Takes the predecessor's sockets over (`--takeover`), or prepares a fresh upgrade
    /// socket, or neither without `--upgrade-socket`.
    pub(crate) async fn open(options: &Options) -> Result<Sockets, UpgradeError> {
        let mut sockets = Sockets {
            options: options.clone(),
            inherited: VecDeque::new(),
            offer: Vec::new(),
            unix: None,
            predecessor: None,
        };
        let Some(path) = options.socket.clone() else {
            return match options.takeover {
                true => Err(UpgradeError::NoSocket),
                false => Ok(sockets),
            };
        };
        if options.takeover {
            let handed = tokio::task::spawn_blocking(move || takeover::connect(&path))
                .await
                .expect("the takeover does not panic")?;
            info!(
                predecessor = handed.pid,
                sockets = handed.sockets.len(),
                "received the listening sockets of the running process"
            );
            let mut inherited: VecDeque<_> = handed.sockets.into();
            if let Some(i) = inherited.iter().position(|(s, _)| s.key == UPGRADE_KEY) {
                let (_, fd) = inherited.remove(i).expect("position is in range");
                sockets.unix = Some(UnixListener::from(fd));
            }
            sockets.inherited = inherited;
            sockets.predecessor = Some((handed.pid, handed.stream));
        }
        if sockets.unix.is_none() {
            let path = options.socket.as_ref().expect("checked above");
            sockets.unix = Some(server::bind_fresh(path)?);
        }
        Ok(sockets)
    }

    /// The pid of the process whose sockets were taken over, if any.
    pub(crate) fn predecessor(&self) -> Option<u32> {
        self.predecessor.as_ref().map(|(pid, _)| *pid)
    }

    /// The listener for configuration `key` at `addr`: the inherited one when the
    /// predecessor passed one for the same key and address (a port of 0 matches any),
    /// else a new one.
    pub(crate) fn tcp(
        &mut self,
        key: &str,
        addr: SocketAddr,
        backlog: u32,
    ) -> io::Result<TcpListener> {
        let listener = match self.take(key, addr)? {
            Some(std) => {
                // The configured backlog applies to an inherited socket too.
                rustix::net::listen(&std, i32::try_from(backlog).unwrap_or(i32::MAX))?;
                std.set_nonblocking(true)?;
                TcpListener::from_std(std)?
            }
            None => crate::io::listen_with(addr, backlog)?,
        };
        let socket = wire::Socket {
            key: key.to_owned(),
            addr: listener.local_addr()?.to_string(),
        };
        self.offer
            .push((socket, listener.as_fd().try_clone_to_owned()?));
        Ok(listener)
    }

    fn take(&mut self, key: &str, addr: SocketAddr) -> io::Result<Option<std::net::TcpListener>> {
        let Some(i) = self.inherited.iter().position(|(s, _)| s.key == key) else {
            return Ok(None);
        };
        let (socket, fd) = self.inherited.remove(i).expect("position is in range");
        let listener = std::net::TcpListener::from(fd);
        let had = listener.local_addr()?;
        let same = had.ip() == addr.ip() && (addr.port() == 0 || addr.port() == had.port());
        if !same || !rustix::net::sockopt::socket_acceptconn(&listener)? {
            info!(key, inherited = %socket.addr, configured = %addr, "the configured address changed: a new listener, the inherited one is closed");
            return Ok(None);
        }
        Ok(Some(listener))
    }

    /// Once this process accepts on every socket: closes inherited sockets no key asked
    /// for, tells the predecessor (which then stops accepting and drains), and serves
    /// upgrades to a successor.
    pub(crate) async fn commit(mut self) -> Result<Upgrades, UpgradeError> {
        for (socket, _) in self.inherited.drain(..) {
            info!(
                key = socket.key,
                addr = socket.addr,
                "an inherited listener no longer configured: closed"
            );
        }
        if let Some((pid, stream)) = self.predecessor.take() {
            let told = tokio::task::spawn_blocking(move || takeover::ready(&stream))
                .await
                .expect("the takeover does not panic");
            match told {
                Ok(()) => info!(
                    predecessor = pid,
                    "took over the listening sockets; the old process drains"
                ),
                // It died meanwhile: its sockets are ours all the same.
                Err(e) if !alive(pid) => warn!(
                    predecessor = pid,
                    "the old process is gone before hearing the ready ({e}); serving"
                ),
                // It gave up waiting and serves on: two would never drain.
                Err(e) => return Err(UpgradeError::GaveUp(pid, e.to_string())),
            }
        }
        Ok(match self.unix.take() {
            Some(unix) => Upgrades::serve(unix, self.offer, self.options)?,
            None => Upgrades::none(),
        })
    }
}

/// Whether process `pid` runs (exists and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn alive_is_this_process_not_a_pid_that_cannot_exist() {
        assert!(super::alive(std::process::id()));
        assert!(!super::alive(u32::MAX));
    }
}
