//! [`Prefixed`]: an I/O object whose reads first replay bytes already read (during
//! detection, or past a response head), then read the inner stream; writes go straight
//! through. The "peek, then replay" of `docs/architecture.md` (linkerd2-proxy `linkerd/io/src/prefixed.rs`).
//! Under rustls it also reads ahead ([`Prefixed::reading_ahead`]): rustls asks for 4 KiB at
//! a time, one `recv` per 4 KiB of a bulk transfer, so a small read is served from one
//! large read of the socket kept here until it is used up — and only until then, so an
//! idle connection holds no buffer. Before a hand-over to kTLS it reads the other way
//! ([`Prefixed::record_exact`]): never past the end of the TLS record in progress, so
//! the kernel finds every byte rustls has not read still in the socket.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ktls::records::RecordCursor;

/// An I/O object whose reads first return `prefix`, then the inner reads.
pub(crate) struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
    read_ahead: bool,
    /// Record-exact reads: where the stream (prefix, then inner) stands in its records.
    records: Option<RecordCursor>,
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
            records: None,
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

    /// Like [`Prefixed::new`], and no read goes past the end of the TLS record in
    /// progress (prefix included): for a handshake whose session may go to the kernel.
    pub(crate) fn record_exact(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            records: Some(RecordCursor::default()),
            ..Prefixed::new(prefix, inner)
        }
    }

    /// Whether the prefix is used up and what was read ends at a record boundary (always
    /// true when not reading record by record).
    pub(crate) fn settled(&self) -> bool {
        let at_boundary = self.records.as_ref().is_none_or(RecordCursor::at_boundary);
        self.pos >= self.prefix.len() && at_boundary
    }

    /// Reads ahead from now on ([`Prefixed::reading_ahead`]), record by record no more.
    pub(crate) fn read_ahead_from_now(&mut self) {
        self.records = None;
        self.read_ahead = true;
    }

    /// The inner stream; what is left of the prefix is dropped (see [`Prefixed::settled`]).
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> Prefixed<T> {
    /// A record-exact read: at most up to the current record's end, from the prefix or
    /// the inner stream, accounted in `cursor`.
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(cursor) = self.records.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let limit = cursor.allowance().min(buf.remaining());
        if self.pos < self.prefix.len() {
            let n = limit.min(self.prefix.len() - self.pos);
            let bytes = &self.prefix[self.pos..self.pos + n];
            cursor.advance(bytes);
            buf.put_slice(bytes);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        let room = buf.initialize_unfilled_to(limit);
        let mut part = ReadBuf::new(room);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        cursor.advance(&room[..n]);
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.records.is_some() {
            return this.poll_read_records(cx, buf);
        }
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

    /// TLS records: type 22, version 3.3, length, body.
    fn records(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &len in lens {
            out.extend_from_slice(&[22, 3, 3]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend(std::iter::repeat_n(0x5a, len));
        }
        out
    }

    #[tokio::test]
    async fn record_exact_reads_stop_at_record_ends_across_the_prefix() {
        // Two records, the first partly in the prefix; then more the reader must not touch.
        let stream = records(&[10, 3000]);
        let (prefix, rest) = stream.split_at(7);
        let (a, mut b) = duplex(1 << 16);
        b.write_all(rest).await.unwrap();
        b.write_all(b"not yet").await.unwrap();
        let mut p = Prefixed::record_exact(prefix.to_vec(), a);
        let (mut got, mut ends) = (Vec::new(), Vec::new());
        let mut big = [0u8; 8192];
        while got.len() < stream.len() {
            let n = p.read(&mut big).await.unwrap();
            got.extend_from_slice(&big[..n]);
            ends.push((got.len(), p.settled()));
        }
        // Settled exactly at the record ends (15 and the whole stream), no read across.
        let settled: Vec<usize> = ends.iter().filter(|e| e.1).map(|e| e.0).collect();
        assert_eq!(settled, vec![15, stream.len()], "{ends:?}");
        assert_eq!(got, stream);
        assert!(p.settled());
        // What follows is still in the inner stream, for whoever reads next.
        p.read_ahead_from_now();
        let n = p.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"not yet");
    }
}
