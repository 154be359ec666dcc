//! Readiness for systemd (`Type=notify`, `sd_notify(3)` through the `sd-notify` crate):
//! `READY=1` once every listener accepts, `RELOADING=1` … `READY=1` around a `SIGHUP`
//! reload, `STOPPING=1` when draining, and `MAINPID=` from a successor that took the
//! sockets over (the unit needs `NotifyAccess=all` for that). Without `NOTIFY_SOCKET`
//! each call does nothing; a failure to notify is logged, never fatal.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// Every listener accepts. A successor also names itself the service's main process.
pub(crate) fn ready(successor: bool) {
    let status = format!("serving (pid {})", std::process::id());
    match successor {
        true => send(&[
            NotifyState::MainPid(std::process::id()),
            NotifyState::Ready,
            NotifyState::Status(&status),
        ]),
        false => send(&[NotifyState::Ready, NotifyState::Status(&status)]),
    }
}

/// A `SIGHUP` reload begins (`MONOTONIC_USEC` as `Type=notify-reload` wants it).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The reload is done (applied or refused: the proxy serves either way).
pub(crate) fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// No new connections; live ones drain.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}
