//! The running process's side of an upgrade: the upgrade socket ([`bind_fresh`]), one
//! conversation at a time with a would-be successor (same user or root only; a hello,
//! the offer of every listening socket, its ready), and `SIGUSR2`, which starts this
//! binary again with `--takeover` ([`Upgrades::spawn_successor`]).

use super::wire::{self, Answer, Hello, Query, Ready, Status};
use super::{Options, UpgradeError, UPGRADE_KEY};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// This binary's path, read while it is still the file this process runs.
fn started_from() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("the path of this binary: {e}"))
}

/// How long a connection may take to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// How long a successor may take from the offer to serving (configuration, eBPF).
const READY_WITHIN: Duration = Duration::from_secs(120);

type Offer = Arc<Mutex<Option<Vec<(wire::Socket, OwnedFd)>>>>;

/// The successors `SIGUSR2` started: one may be starting; how many were started.
#[derive(Default)]
struct Successors {
    starting: AtomicBool,
    started: AtomicU64,
}

/// Binds the upgrade socket at `path` (mode 0600). A socket file nobody answers on is
/// a leftover and replaced; one a process answers on is refused.
pub(super) fn bind_fresh(path: &Path) -> Result<UnixListener, UpgradeError> {
    if UnixStream::connect(path).is_ok() {
        return Err(UpgradeError::InUse(path.to_owned()));
    }
    let at = |e| UpgradeError::Socket(path.to_owned(), e);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(at)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(at)?;
    Ok(listener)
}

/// The upgrade service of this process: the successor that took over, if one did.
pub(crate) struct Upgrades {
    handed_over: Option<mpsc::Receiver<u32>>,
    task: Option<JoinHandle<()>>,
    offer: Offer,
    socket: Option<PathBuf>,
    spawned: Arc<Successors>,
    /// The binary's path as it was when this process started: `SIGUSR2` starts what is
    /// at that path now (the new binary a package or `mv` put there). Read at start
    /// because `/proc/self/exe` reads `… (deleted)` once the file has been replaced.
    exe: Result<PathBuf, String>,
}

impl Upgrades {
    /// No `--upgrade-socket`: no upgrades.
    pub(super) fn none() -> Upgrades {
        Upgrades {
            handed_over: None,
            task: None,
            offer: Arc::new(Mutex::new(None)),
            socket: None,
            spawned: Arc::default(),
            exe: started_from(),
        }
    }

    /// Serves upgrades on `unix`, offering `sockets` (and `unix` itself).
    pub(super) fn serve(
        unix: UnixListener,
        mut sockets: Vec<(wire::Socket, OwnedFd)>,
        options: Options,
    ) -> Result<Upgrades, UpgradeError> {
        let path = options.socket.clone().unwrap_or_default();
        let upgrade = wire::Socket {
            key: UPGRADE_KEY.to_owned(),
            addr: path.display().to_string(),
        };
        sockets.push((upgrade, unix.as_fd().try_clone_to_owned()?));
        unix.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(unix)?;
        let offer: Offer = Arc::new(Mutex::new(Some(sockets)));
        let (tx, rx) = mpsc::channel(1);
        let shared = offer.clone();
        let spawned: Arc<Successors> = Arc::default();
        let starting = spawned.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    // Out of descriptors, say: wait instead of spinning.
                    Err(e) => {
                        warn!("upgrade socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (offer, starting) = (shared.clone(), starting.clone());
                let talk = move || {
                    let stream = stream.into_std()?;
                    stream.set_nonblocking(false)?;
                    converse(&stream, &offer, &starting)
                };
                match tokio::task::spawn_blocking(talk).await {
                    Ok(Ok(Some(pid))) => {
                        let _ = tx.send(pid).await;
                        return;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => warn!("upgrade aborted, still serving: {e}"),
                    Err(e) => warn!("upgrade aborted, still serving: {e}"),
                }
            }
        });
        Ok(Upgrades {
            handed_over: Some(rx),
            task: Some(task),
            offer,
            socket: options.socket,
            spawned,
            exe: started_from(),
        })
    }

    /// Resolves with the successor's pid once one serves every socket; never without
    /// an upgrade socket.
    pub(crate) async fn handed_over(&mut self) -> u32 {
        match &mut self.handed_over {
            Some(rx) => match rx.recv().await {
                Some(pid) => pid,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// `SIGUSR2`: starts this binary again, with the same arguments and `--takeover`.
    pub(crate) fn spawn_successor(&self) {
        if self.socket.is_none() {
            warn!("SIGUSR2: no --upgrade-socket, so no binary upgrade; ignored");
            return;
        }
        if self.spawned.starting.swap(true, Ordering::SeqCst) {
            warn!("SIGUSR2: a new process is already starting; ignored");
            return;
        }
        self.spawned.started.fetch_add(1, Ordering::SeqCst);
        let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
        if !args.iter().any(|a| a == "--takeover") {
            args.push("--takeover".into());
        }
        let started = self.exe.clone().and_then(|exe| {
            let child = std::process::Command::new(&exe)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", exe.display()))?;
            Ok((exe, child))
        });
        let (exe, mut child) = match started {
            Ok(x) => x,
            Err(e) => {
                warn!("SIGUSR2: cannot start the new binary: {e}");
                self.spawned.starting.store(false, Ordering::SeqCst);
                return;
            }
        };
        info!(exe = %exe.display(), successor = child.id(), "SIGUSR2: started the new binary to take the sockets over");
        let spawned = self.spawned.clone();
        std::thread::spawn(move || {
            let status = child.wait();
            spawned.starting.store(false, Ordering::SeqCst);
            match status {
                Ok(s) => warn!(successor = child.id(), "the new process exited ({s})"),
                Err(e) => warn!("waiting for the new process: {e}"),
            }
        });
    }

    /// Stops offering (at shutdown or after a handover): the duplicates are closed, so a
    /// socket nobody accepts on any more refuses clients instead of queueing them.
    pub(crate) fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.offer.lock().expect("offer lock").take();
    }
}

/// One would-be successor: checks who it is, offers the sockets, waits for its ready
/// (`Some(its pid)`). A status query is answered (`None`).
fn converse(
    stream: &UnixStream,
    offer: &Mutex<Option<Vec<(wire::Socket, OwnedFd)>>>,
    successors: &Successors,
) -> Result<Option<u32>, UpgradeError> {
    let refuse = |why: String| {
        let _ = wire::send(stream, &Answer::Refused(why.clone()), &[]);
        UpgradeError::Stranger(why)
    };
    // The first line is read before any answer, so that a refusal reaches the peer
    // after what it sent, never as a reset under its write.
    stream.set_read_timeout(Some(HELLO_WITHIN))?;
    let (line, _) = wire::recv(stream)?;
    let peer = rustix::net::sockopt::socket_peercred(stream).map_err(io::Error::from)?;
    let me = rustix::process::geteuid();
    if peer.uid != me && !peer.uid.is_root() {
        return Err(refuse(format!(
            "pid {} runs as uid {}, not as this process's uid {} (or root)",
            peer.pid.as_raw_nonzero(),
            peer.uid.as_raw(),
            me.as_raw()
        )));
    }
    if let Ok(query) = serde_json::from_slice::<Query>(&line) {
        if query.protocol != wire::PROTOCOL || query.query != "status" {
            return Err(refuse(format!("unknown query {query:?}")));
        }
        let status = Status {
            serving: std::process::id(),
            starting: successors.starting.load(Ordering::SeqCst),
            started: successors.started.load(Ordering::SeqCst),
        };
        wire::send(stream, &status, &[])?;
        return Ok(None);
    }
    let hello: Hello =
        wire::parse(&line, "a switchyard-upgrade hello").map_err(|e| refuse(e.to_string()))?;
    if hello.protocol != wire::PROTOCOL {
        return Err(refuse(format!(
            "protocol {:?}, this process speaks {:?}",
            hello.protocol,
            wire::PROTOCOL
        )));
    }
    let guard = offer.lock().expect("offer lock");
    let Some(sockets) = guard.as_ref() else {
        return Err(refuse(
            "this process is draining: nothing to take over".into(),
        ));
    };
    let listed = sockets.iter().map(|(s, _)| s.clone()).collect();
    let fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    let answer = Answer::Offer {
        pid: std::process::id(),
        sockets: listed,
    };
    wire::send(stream, &answer, &fds)?;
    drop(guard);
    info!(
        successor = hello.pid,
        "offered the listening sockets; waiting for the new process to serve"
    );
    stream.set_read_timeout(Some(READY_WITHIN))?;
    let (line, _) = wire::recv(stream)?;
    let ready: Ready = wire::parse(&line, "the new process's ready")?;
    Ok(Some(ready.ready))
}
