//! [`Prefixed`]: an I/O object whose reads first replay bytes already read (during
//! detection, or past a response head), then read the inner stream; writes go straight
//! through. The "peek, then replay" of `docs/architecture.md` (linkerd2-proxy `linkerd/io/src/prefixed.rs`).
//! Under rustls it also reads ahead ([`Prefixed::reading_ahead`]): rustls asks for 4 KiB at
//! a time, one `recv` per 4 KiB of a bulk transfer, so a small read is served from one
//! large read of the socket kept here until it is used up — and only until then, so an
//! idle connection holds no buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An I/O object whose reads first return `prefix`, then the inner reads.
pub(crate) struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
    read_ahead: bool,
}

/// What a read ahead asks the inner stream for; reads asking for this much or more go
/// straight to the inner stream.
const READ_AHEAD: usize = 64 * 1024;

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
            read_ahead: false,
        }
    }

    /// Like [`Prefixed::new`], and a read smaller than 64 KiB past the prefix reads 64 KiB
    /// from the inner stream, keeping what it did not return for the next reads.
    pub(crate) fn reading_ahead(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            read_ahead: true,
            ..Prefixed::new(prefix, inner)
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if !this.read_ahead || buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Allocated for this read, not zeroed (the read fills what it returns); dropped if
        // nothing comes (an idle connection keeps nothing), kept as the prefix while some
        // of it is still to be returned.
        let mut ahead = Vec::with_capacity(READ_AHEAD);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut ahead) {
            Poll::Ready(Ok(n)) => {
                let given = n.min(buf.remaining());
                buf.put_slice(&ahead[..given]);
                if given < n {
                    this.prefix = ahead;
                    this.pos = given;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
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
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixed_replays_then_reads_inner() {
        let (a, mut b) = duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(b"hello".to_vec(), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn a_small_reader_gets_the_prefix_in_pieces_in_order() {
        let (a, mut b) = duplex(64);
        b.write_all(b"cd").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(b"ab".to_vec(), a);
        let mut one = [0u8; 1];
        let mut got = Vec::new();
        while p.read(&mut one).await.unwrap() == 1 {
            got.push(one[0]);
        }
        assert_eq!(got, b"abcd");
    }

    /// Counts the reads that reach it and their sizes.
    struct Counting<R> {
        inner: R,
        reads: Vec<usize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let asked = buf.remaining();
            let before = buf.filled().len();
            let r = Pin::new(&mut self.inner).poll_read(cx, buf);
            if r.is_ready() && buf.filled().len() > before {
                self.reads.push(asked);
            }
            r
        }
    }

    #[tokio::test]
    async fn reading_ahead_serves_small_reads_from_one_large_read_in_order() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let inner = Counting {
            inner: &data[..],
            reads: Vec::new(),
        };
        let mut p = Prefixed::reading_ahead(b"head".to_vec(), inner);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = p.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &data[..]);
        // 200,000 bytes in 4 KiB reads: 49 reads of the caller, 4 of the inner stream.
        assert_eq!(p.inner.reads, vec![READ_AHEAD; 4]);
        // Used up: nothing kept.
        assert_eq!(p.prefix.capacity(), 0);
    }

    #[tokio::test]
    async fn reading_ahead_keeps_no_buffer_while_the_inner_stream_has_nothing() {
        let (a, mut b) = duplex(1 << 20);
        let mut p = Prefixed::reading_ahead(Vec::new(), a);
        b.write_all(&[7u8; 100]).await.unwrap();
        let mut small = [0u8; 4096];
        assert_eq!(p.read(&mut small).await.unwrap(), 100);
        // Nothing to read: the read ahead's buffer is not kept while it waits.
        let waiting = futures_util::FutureExt::now_or_never(p.read(&mut small));
        assert!(waiting.is_none());
        assert_eq!(p.prefix.capacity(), 0);
        b.write_all(&[8u8; 10]).await.unwrap();
        assert_eq!(p.read(&mut small).await.unwrap(), 10);
        assert_eq!(small[..10], [8u8; 10]);
    }
}
