//! The peer of a fuzzed stream: [`Chunked`] hands out the input in the reads [`cuts`]
//! chooses, then EOF, and swallows what is written to it; [`drain`] is the user of a
//! framed stream, reading it to its end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Where the reads of `len` bytes end, increasing, the last at `len`: chunks of 1 to
/// `4^(ctl >> 5)` bytes (1 byte at a time up to 16 KiB), their sizes drawn from `ctl`.
pub(crate) fn cuts(ctl: u8, len: usize) -> Vec<usize> {
    let most = 1usize << (2 * (ctl >> 5));
    let mut state = u32::from(ctl) | 0x5a00;
    let mut ends = Vec::new();
    let mut at = 0;
    while at < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        at = (at + 1 + state as usize % most).min(len);
        ends.push(at);
    }
    ends
}

/// A byte stream that reads the input in the chunks of [`cuts`], then EOF; writes are
/// accepted and dropped.
pub(crate) struct Chunked {
    data: Vec<u8>,
    ends: Vec<usize>,
    next: usize,
    pos: usize,
}

impl Chunked {
    pub(crate) fn new(data: &[u8], ctl: u8) -> Chunked {
        Chunked {
            data: data.to_vec(),
            ends: cuts(ctl, data.len()),
            next: 0,
            pos: 0,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(&end) = this.ends.get(this.next) {
            let n = (end - this.pos).min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == end {
                this.next += 1;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The user of a framed stream: writes a few bytes first when `write`, then reads to the
/// end (an error ends it too); returns what was read. The stream is dropped, which ends
/// its pump.
pub(crate) async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, write: bool) -> Vec<u8> {
    if write {
        let _ = s.write_all(b"bytes from the user").await;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    got
}
