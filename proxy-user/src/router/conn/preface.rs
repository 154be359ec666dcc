//! [`Preface`]: the bytes a connection sends before it can be routed, read under the one
//! deadline of the connection (`limits.handshake_timeout`) and within its size limit.
//!
//! Every stage before the relay — first-bytes detection, PROXY headers, the ClientHello,
//! the web route's request head, and, after a connection upgrade, the inner connection's
//! detection and ClientHello — reads through [`Preface::read_until`]: "read until this
//! parser answers", the parser being a pure function of the bytes read so far. The same
//! [`Deadline`] also bounds the TLS handshakes, so a client that dribbles its bytes through
//! every stage is cut at one `handshake_timeout` from accept, not one per stage.

use super::error::ConnError;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

/// Room for PROXY headers (v2 with TLVs) in front of the protocol's own bytes.
pub(crate) const PROXY_HEADER_ALLOWANCE: usize = 4096;

/// The one deadline of everything before the relay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    /// `limits.handshake_timeout`, for messages.
    budget: Duration,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub(crate) fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// When it falls.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// Runs `fut` until the deadline; past it, a [`ConnError::Timeout`] naming `stage`.
    pub(crate) async fn run<F: Future>(
        self,
        stage: &'static str,
        fut: F,
    ) -> Result<F::Output, ConnError> {
        timeout_at(self.at, fut)
            .await
            .map_err(|_| ConnError::Timeout(stage, self.budget))
    }
}

/// Most bytes one read of the preface asks for.
const READ_CHUNK: usize = 4096;

/// Bytes read so far from one stream, where the protocol starts in them (after PROXY
/// headers), and how far they may grow.
#[derive(Debug)]
pub(crate) struct Preface {
    buf: Vec<u8>,
    start: usize,
    /// `limits.max_hello_bytes`: the limit reported when the bytes outgrow it.
    max: usize,
    /// How far `buf` may grow: `max` plus the room for PROXY headers on the accepted socket
    /// until detection is done ([`Preface::settle`]), then `max` past the headers.
    cap: usize,
    pub(crate) deadline: Deadline,
}

impl Preface {
    /// The preface of an accepted socket: `max` bytes of protocol, after PROXY headers of
    /// up to [`PROXY_HEADER_ALLOWANCE`] bytes.
    pub(crate) fn accepted(deadline: Deadline, max: usize) -> Preface {
        Preface {
            buf: Vec::with_capacity(2048),
            start: 0,
            max,
            cap: max + PROXY_HEADER_ALLOWANCE,
            deadline,
        }
    }

    /// An empty preface for a stream carried by this one (the plaintext of a terminated
    /// TLS connection, or the inner connection of an upgrade): the same deadline and
    /// limit, no room for PROXY headers.
    pub(crate) fn inner(&self) -> Preface {
        Preface {
            buf: Vec::with_capacity(2048),
            start: 0,
            max: self.max,
            cap: self.max,
            deadline: self.deadline,
        }
    }

    /// Like [`Preface::inner`], under a fresh deadline of `budget`: for the inner
    /// connection of an upgrade asked for on a kept-alive connection, long after accept.
    pub(crate) fn restarted(&self, budget: Duration) -> Preface {
        Preface {
            deadline: Deadline::after(budget),
            ..self.inner()
        }
    }

    /// The protocol's bytes read so far (after any PROXY header).
    pub(crate) fn rest(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Every byte read from the stream so far, PROXY headers included.
    pub(crate) fn consumed(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Detection is done: the PROXY headers (if any) are behind, and from now on the
    /// protocol's own bytes may grow to `max`, as inside a tunnel.
    pub(crate) fn settle(&mut self) {
        self.cap = self.start + self.max;
    }

    /// Skips `n` bytes of [`Preface::rest`] (a PROXY header that has been dealt with).
    pub(crate) fn skip(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// The protocol's bytes, for the next reader to replay.
    pub(crate) fn into_rest(mut self) -> Vec<u8> {
        self.buf.split_off(self.start)
    }

    /// Reads from `stream` until `parse`, given [`Preface::rest`], answers `Some`; a parse
    /// error, the deadline, EOF or the size limit end it with a [`ConnError`] naming
    /// `stage`.
    pub(crate) async fn read_until<S, T, E>(
        &mut self,
        stream: &mut S,
        stage: &'static str,
        mut parse: impl FnMut(&[u8]) -> Result<Option<T>, E>,
    ) -> Result<T, ConnError>
    where
        S: AsyncRead + Unpin,
        ConnError: From<E>,
    {
        loop {
            if let Some(answer) = parse(self.rest())? {
                return Ok(answer);
            }
            self.read_more(stream, stage).await?;
        }
    }

    /// Reads more bytes before the deadline, within the size limit.
    async fn read_more<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        stage: &'static str,
    ) -> Result<(), ConnError> {
        if self.buf.len() >= self.cap {
            return Err(ConnError::TooLarge(self.max));
        }
        // Read straight into the buffer: a chunk on the stack would be kept in every
        // connection's task, for its whole life.
        let len = self.buf.len();
        let room = (self.cap - len).min(READ_CHUNK);
        self.buf.resize(len + room, 0);
        let read = self
            .deadline
            .run(stage, stream.read(&mut self.buf[len..]))
            .await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
            Err(timeout) => return Err(timeout),
        };
        self.buf.truncate(len + n);
        if n == 0 {
            return Err(ConnError::ClosedEarly(stage));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "preface_tests.rs"]
mod tests;
