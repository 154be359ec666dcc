//! A check on the yamux frames a peer sends, before yamux reads them: [`Guard`] follows
//! the frame headers in the incoming bytes and ends the session with a clear error on a
//! frame yamux 0.13 would mishandle.
//!
//! The one such frame known (found by the `tunnel_session` fuzz target,
//! docs/fuzzing.md): a WindowUpdate with the SYN flag opens a stream whose send window is
//! the frame's credit plus yamux's 256 KiB, added unchecked
//! (`yamux-0.13.10/src/connection.rs:730`). A credit within 256 KiB of `u32::MAX`
//! overflows: a panic of the session's task where overflow checks are on (debug builds),
//! a wrapped window elsewhere. yamux checks the same sum for streams already open, so only
//! the opening frame needs this check, and a peer that sends one is broken or hostile.
//!
//! The core ([`Headers`]) is pure: it is fed bytes in the order they arrive, in any cuts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// yamux's frame header: version, type, flags (u16), stream id (u32), length (u32).
const HEADER: usize = 12;
/// Frame types and the flag that opens a stream.
const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const SYN: u16 = 1;
/// The window yamux adds to an opening frame's credit.
const DEFAULT_CREDIT: u32 = 256 * 1024;

/// A frame yamux would mishandle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the peer opened yamux stream {stream} with a window credit of {credit} bytes, which \
     overflows yamux's window (at most {} allowed)",
    u32::MAX - DEFAULT_CREDIT
)]
pub(crate) struct Overflow {
    pub(crate) stream: u32,
    pub(crate) credit: u32,
}

/// Where the incoming bytes are in the frame sequence.
#[derive(Default)]
pub(crate) struct Headers {
    header: [u8; HEADER],
    have: usize,
    /// Body bytes of the current data frame still to pass.
    body: u64,
}

impl Headers {
    /// Follows `bytes`, the next the peer sent; the first bad frame is an error (and
    /// every later call repeats it: the session ends there).
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Overflow> {
        while !bytes.is_empty() {
            if self.body > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.body).unwrap_or(usize::MAX));
                self.body -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(HEADER - self.have);
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER {
                break;
            }
            let h = &self.header;
            let flags = u16::from_be_bytes([h[2], h[3]]);
            let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            if h[1] == WINDOW_UPDATE && flags & SYN != 0 && length > u32::MAX - DEFAULT_CREDIT {
                // Stay on this header: every later call gives the same answer.
                return Err(Overflow {
                    stream,
                    credit: length,
                });
            }
            self.have = 0;
            if h[1] == DATA {
                self.body = u64::from(length);
            }
        }
        Ok(())
    }
}

/// The peer's byte stream, read through [`Headers`]; writes pass untouched.
pub(crate) struct Guard<T> {
    inner: T,
    headers: Headers,
}

impl<T> Guard<T> {
    pub(crate) fn new(inner: T) -> Guard<T> {
        Guard {
            inner,
            headers: Headers::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        match this.headers.feed(read) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                buf.set_filled(before);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u16, stream: u32, length: u32, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0, kind];
        f.extend(flags.to_be_bytes());
        f.extend(stream.to_be_bytes());
        f.extend(length.to_be_bytes());
        f.extend(body);
        f
    }

    /// Every way of cutting `bytes` in two gives the answer of feeding it whole.
    fn every_cut(bytes: &[u8]) -> Result<(), Overflow> {
        let mut whole = Headers::default();
        let answer = whole.feed(bytes);
        for cut in 0..=bytes.len() {
            let mut h = Headers::default();
            let split = h.feed(&bytes[..cut]).and_then(|()| h.feed(&bytes[cut..]));
            assert_eq!(split, answer, "cut at {cut}");
        }
        answer
    }

    #[test]
    fn ordinary_frames_pass_in_any_cuts() {
        let mut s = frame(WINDOW_UPDATE, SYN, 1, 0, b"");
        // A data frame whose body looks like a bad header: it is skipped as body.
        let bad = frame(WINDOW_UPDATE, SYN, 3, u32::MAX, b"");
        s.extend(frame(DATA, 0, 1, bad.len() as u32, &bad));
        s.extend(frame(WINDOW_UPDATE, 0, 1, u32::MAX, b"")); // open stream: yamux checks
        s.extend(frame(2, SYN, 0, 7, b"")); // ping
        s.extend(frame(WINDOW_UPDATE, SYN, 5, u32::MAX - DEFAULT_CREDIT, b""));
        assert_eq!(every_cut(&s), Ok(()));
    }

    #[test]
    fn an_opening_credit_that_overflows_is_refused_in_any_cuts() {
        let mut s = frame(DATA, SYN, 1, 3, b"abc");
        s.extend(frame(
            WINDOW_UPDATE,
            SYN,
            3,
            u32::MAX - DEFAULT_CREDIT + 1,
            b"",
        ));
        let overflow = Overflow {
            stream: 3,
            credit: u32::MAX - DEFAULT_CREDIT + 1,
        };
        let want = Err(overflow);
        assert_eq!(every_cut(&s), want);
        // Longer input gives the same answer, and so does every later call.
        let mut h = Headers::default();
        s.extend(frame(2, 0, 0, 0, b""));
        assert_eq!(h.feed(&s), want);
        assert_eq!(h.feed(b"more"), want);
        let text = overflow.to_string();
        assert!(
            text.contains("stream 3") && text.contains("overflows"),
            "{text}"
        );
    }

    /// The fuzz target's input (`fuzz/corpus/tunnel_session/yamux_syn_credit_overflow`):
    /// through the guard, yamux ends the session with the guard's error, not a panic.
    #[tokio::test]
    async fn the_fuzzers_input_ends_the_session_with_a_clear_error() {
        use crate::io::tunnel::mux::{start, Limits, Mode};
        use tokio::io::AsyncWriteExt;
        let seed = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/tunnel_session/yamux_syn_credit_overflow"),
        )
        .expect("the regression seed");
        // Its first byte says how the fuzz target cuts the reads; yamux's bytes follow.
        let yamux = &seed[1..];
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let limits = Limits {
            max_streams: 4,
            window_bytes: 0,
        };
        let session = start(ours, Mode::Server, limits, 4);
        theirs.write_all(yamux).await.unwrap();
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), session.done)
            .await
            .expect("the session ends")
            .expect("the session's task does not panic");
        let e = end.expect_err("the session ends with an error");
        assert!(e.to_string().contains("overflows yamux's window"), "{e}");
    }
}
