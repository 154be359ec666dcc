//! Living with the open-file limit: at start the proxy raises its soft `RLIMIT_NOFILE` to
//! the hard limit ([`raise`]) and says so; at the limit, a listener refuses new clients
//! cleanly instead of leaving them in the backlog ([`Reserve`]): it keeps one spare
//! descriptor, and when `accept` fails with `EMFILE`/`ENFILE` it gives the spare up,
//! accepts the waiting client, closes it at once (the client reads an end of stream, not
//! silence), and takes the spare back — so the accept loop neither spins nor stalls, and
//! the connections already open are untouched.

use rustix::fs::{open, Mode, OFlags};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::io;
use std::os::fd::OwnedFd;

/// Raises the soft open-file limit to the hard one: `(before, after)`.
pub(crate) fn raise() -> io::Result<(Option<u64>, Option<u64>)> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok((limit.current, limit.current));
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised)?;
    Ok((limit.current, limit.maximum))
}

/// Whether an `accept` error means the process (or system) is out of descriptors.
pub(crate) fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One spare descriptor, given up for a moment to refuse a client at the limit.
pub(crate) struct Reserve(Option<OwnedFd>);

impl Reserve {
    /// Takes the spare (`/dev/null`); none when even that fails.
    pub(crate) fn new() -> Reserve {
        Reserve(Self::spare())
    }

    fn spare() -> Option<OwnedFd> {
        open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
    }

    /// Gives the spare up so one `accept` can succeed; false when there was none.
    pub(crate) fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes the spare back (after the refused client's socket is closed).
    pub(crate) fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = Self::spare();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_is_given_up_and_taken_back() {
        let mut r = Reserve::new();
        assert!(r.release());
        assert!(!r.release(), "only one spare");
        r.restore();
        assert!(r.release());
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_fds(&emfile));
        assert!(!out_of_fds(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
