//! The pipes of the `splice(2)` relay, lent to a direction only while its bytes move.
//!
//! A pipe costs two descriptors and, at the size we ask for, up to a megabyte of kernel
//! memory while it holds bytes. A pair that owned its two pipes for its whole life held six
//! descriptors, so at a 20,000-descriptor limit only about 3,300 idle pairs fitted. Here a
//! direction takes a pipe when its source turns readable, keeps it while reads keep
//! returning bytes, and gives it back once a read would block with the pipe empty: an idle
//! pair holds its two sockets and nothing else.
//!
//! Given-back pipes wait in a process-wide list of at most [`IDLE_PIPES`] for the next
//! direction that needs one (no `pipe2` + `F_SETPIPE_SZ` per burst); beyond that they are
//! closed. A pipe that still holds bytes (its direction ended in an error) is never given
//! back: it is closed with them.

use std::io;
use std::sync::Mutex;

use super::splice_pipe::{Pipe, PIPE_SIZE};

/// Pipes kept for reuse, at most: enough for every worker thread to have a few bursts in
/// flight; the rest of the process's descriptors stay for sockets.
pub(crate) const IDLE_PIPES: usize = 64;

/// The process's idle pipes.
pub(crate) static POOL: Pool = Pool::new(IDLE_PIPES);

/// Idle pipes, at most `keep` of them.
pub(crate) struct Pool {
    idle: Mutex<Vec<Pipe>>,
    keep: usize,
}

impl Pool {
    pub(crate) const fn new(keep: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// An idle pipe, or a new one (`EMFILE` and friends when none can be made).
    pub(crate) fn take(&'static self) -> io::Result<Lent> {
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let pipe = match reused {
            Some(p) => p,
            None => Pipe::new(PIPE_SIZE)?,
        };
        Ok(Lent {
            pool: self,
            pipe: Some(pipe),
            pending: 0,
        })
    }

    /// Pipes waiting for reuse now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

/// A pipe lent to one direction; back to its pool on drop when empty.
pub(crate) struct Lent {
    pool: &'static Pool,
    pipe: Option<Pipe>,
    /// Bytes spliced into the pipe and not yet out of it.
    pub(crate) pending: usize,
}

impl Lent {
    pub(crate) fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("present until drop")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        if self.pending > 0 {
            return; // closed with its bytes
        }
        if let Ok(mut idle) = self.pool.idle.lock() {
            if idle.len() < self.pool.keep {
                idle.push(pipe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(keep: usize) -> &'static Pool {
        Box::leak(Box::new(Pool::new(keep)))
    }

    #[test]
    fn empty_pipes_come_back_and_full_ones_do_not() {
        let pool = pool(4);
        let (a, mut b) = (pool.take().unwrap(), pool.take().unwrap());
        assert_eq!(pool.idle(), 0);
        drop(a);
        assert_eq!(pool.idle(), 1);
        b.pending = 10;
        drop(b);
        assert_eq!(pool.idle(), 1);
        // The idle one is lent again rather than a new one made.
        let again = pool.take().unwrap();
        assert_eq!(pool.idle(), 0);
        drop(again);
    }

    #[test]
    fn the_idle_list_is_bounded() {
        let pool = pool(3);
        let many: Vec<Lent> = (0..8).map(|_| pool.take().unwrap()).collect();
        drop(many);
        assert_eq!(pool.idle(), 3);
    }
}
