//! The relay of a terminated TLS 1.3 session whose records the proxy protects itself
//! (`io::records`, `tls_records: proxy`): the client's TLS socket and the plaintext
//! upstream, both TCP.
//!
//! Client → upstream: a read of up to the relay buffer, the whole records in it decrypted
//! in place, their plaintext written upstream from that buffer in one `writev`, the part
//! of a record that ends the read kept for the next. Upstream → client: a read of
//! plaintext, sealed as records of up to 16 KiB, written in one `writev`. No userspace
//! copy of the client's plaintext at all; one of the upstream's (into the record).
//!
//! The contract is the userspace relay's (`relay::relay`): the client's `close_notify`
//! (or its EOF) becomes a write shutdown upstream while the other way keeps flowing; the
//! upstream's EOF becomes our `close_notify` and a write shutdown to the client; the
//! first error ends both (a record that does not decrypt, a `KeyUpdate`, an alert:
//! `io::records::RecordError`, as the connection's error); byte counts (plaintext
//! written) are kept however it ends. A direction that has waited [`IDLE_AFTER`] with
//! nothing held frees its buffer: an idle connection holds none.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt as _;
use rustls::ContentType;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::RelayStats;
use crate::io::both_directions;
use crate::io::copy::IDLE_AFTER;
use crate::io::records::session::{MAX_PLAINTEXT, MAX_RECORD};
use crate::io::records::{Opener, Sealer, Session};

/// Relays `client` (TLS, its records protected by `session`) and `upstream` (plaintext)
/// with buffers of up to `buffer` bytes each way. `client_closed`: the client's
/// `close_notify` came before the hand-over (the upstream has been shut down already).
pub(crate) async fn relay_records(
    mut client: TcpStream,
    mut upstream: TcpStream,
    session: Session,
    buffer: usize,
    client_closed: bool,
) -> RelayStats {
    let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let Session { opener, sealer } = session;
    let (client_r, client_w) = client.split();
    let (upstream_r, upstream_w) = upstream.split();
    let up = async {
        if client_closed {
            return Ok(());
        }
        up(client_r, upstream_w, opener, buffer, &to_upstream).await
    };
    let down = down(upstream_r, client_w, sealer, buffer, &to_client);
    let error = both_directions(up, down).await;
    RelayStats {
        client_to_upstream: to_upstream.load(Ordering::Relaxed),
        upstream_to_client: to_client.load(Ordering::Relaxed),
        kernel_to_upstream: 0,
        kernel_to_client: 0,
        mode: "userspace",
        error,
    }
}

/// What a direction's next read gave.
enum Read {
    Bytes(usize),
    /// Idle for [`IDLE_AFTER`] with nothing held: the buffer should go.
    Idle,
}

/// Reads into `buf`: what is there now, else waits (up to [`IDLE_AFTER`] when nothing is
/// `holding` in the buffer). A read that does not fill `buf` tells tokio the socket is
/// drained, so the next one waits without a system call.
async fn read(from: &mut ReadHalf<'_>, buf: &mut [u8], holding: bool) -> io::Result<Read> {
    if let Some(read) = from.read(buf).now_or_never() {
        return read.map(Read::Bytes);
    }
    if holding {
        return from.read(buf).await.map(Read::Bytes);
    }
    match tokio::time::timeout(IDLE_AFTER, from.read(buf)).await {
        Ok(read) => read.map(Read::Bytes),
        Err(_idle) => Ok(Read::Idle),
    }
}

/// The buffer's next size after a read that filled it: doubled, up to `cap`.
fn grown(len: usize, cap: usize) -> usize {
    (len * 2).min(cap).max(len)
}

/// Client → upstream: records in, plaintext out, from the same buffer.
async fn up(
    mut client: ReadHalf<'_>,
    mut upstream: WriteHalf<'_>,
    mut opener: Opener,
    buffer: usize,
    count: &AtomicU64,
) -> io::Result<()> {
    // Always room for one whole record.
    let cap = buffer.max(MAX_RECORD);
    let mut buf: Vec<u8> = Vec::new();
    let mut held = 0;
    let mut data: Vec<Range<usize>> = Vec::new();
    loop {
        if buf.is_empty() {
            // Idle: wait for the next bytes without a buffer.
            client.peek(&mut [0u8; 1]).await?;
            buf = vec![0; MAX_RECORD];
        }
        let n = match read(&mut client, &mut buf[held..], held > 0).await? {
            Read::Bytes(n) => n,
            Read::Idle => {
                buf = Vec::new();
                continue;
            }
        };
        if n == 0 {
            if held > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed inside a TLS record",
                ));
            }
            // No close_notify: an end all the same, as under kTLS.
            return upstream.shutdown().await;
        }
        let filled = held + n;
        data.clear();
        let opened = opener.open(&mut buf[..filled], &mut data)?;
        let mut slices: Vec<IoSlice<'_>> =
            data.iter().map(|r| IoSlice::new(&buf[r.clone()])).collect();
        let plain: usize = data.iter().map(|r| r.len()).sum();
        write_all_vectored(&mut upstream, &mut slices).await?;
        count.fetch_add(plain as u64, Ordering::Relaxed);
        if opened.closed {
            return upstream.shutdown().await;
        }
        buf.copy_within(opened.consumed..filled, 0);
        held = filled - opened.consumed;
        if filled == buf.len() && buf.len() < cap {
            buf.resize(grown(buf.len(), cap), 0);
        }
    }
}

/// Upstream → client: plaintext in, records out.
async fn down(
    mut upstream: ReadHalf<'_>,
    mut client: WriteHalf<'_>,
    mut sealer: Sealer,
    buffer: usize,
    count: &AtomicU64,
) -> io::Result<()> {
    let cap = buffer.max(MAX_PLAINTEXT);
    let mut buf: Vec<u8> = Vec::new();
    let mut records: Vec<Vec<u8>> = Vec::new();
    loop {
        if buf.is_empty() {
            upstream.peek(&mut [0u8; 1]).await?;
            buf = vec![0; MAX_PLAINTEXT];
        }
        let n = match read(&mut upstream, &mut buf, false).await? {
            Read::Bytes(n) => n,
            Read::Idle => {
                buf = Vec::new();
                continue;
            }
        };
        records.clear();
        if n == 0 {
            records.push(sealer.close_notify()?);
            client.write_all(&records[0]).await?;
            return client.shutdown().await;
        }
        sealer.seal(ContentType::ApplicationData, &buf[..n], &mut records)?;
        let mut slices: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        write_all_vectored(&mut client, &mut slices).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < cap {
            buf.resize(grown(buf.len(), cap), 0);
        }
    }
}

/// Writes every byte of `slices` to `to` (one `writev` while the socket takes it all).
async fn write_all_vectored(
    to: &mut WriteHalf<'_>,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match to.write_vectored(slices).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut slices, n),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
