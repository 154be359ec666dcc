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

use rustls::ContentType;
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
    client: TcpStream,
    upstream: TcpStream,
    session: Session,
    buffer: usize,
    client_closed: bool,
) -> RelayStats {
    let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let Session { opener, sealer } = session;
    let up = async {
        if client_closed {
            return Ok(());
        }
        up(&client, &upstream, opener, buffer, &to_upstream).await
    };
    let down = down(&upstream, &client, sealer, buffer, &to_client);
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

/// How a direction waits for its source: `Ok(false)` when it has been idle for
/// [`IDLE_AFTER`] with nothing held, and should free its buffer.
async fn wait_readable(from: &TcpStream, holding: bool) -> io::Result<bool> {
    if holding {
        return from.readable().await.map(|()| true);
    }
    match tokio::time::timeout(IDLE_AFTER, from.readable()).await {
        Ok(ready) => ready.map(|()| true),
        Err(_idle) => Ok(false),
    }
}

/// One read into `buf[at..]`: `None` when the socket had nothing after all.
fn try_read(from: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match from.try_read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// The buffer's next size after a read that filled it: doubled, up to `cap`.
fn grown(len: usize, cap: usize) -> usize {
    (len * 2).min(cap).max(len)
}

/// Client → upstream: records in, plaintext out, from the same buffer.
async fn up(
    client: &TcpStream,
    upstream: &TcpStream,
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
            client.readable().await?;
            buf = vec![0; MAX_RECORD];
        }
        let Some(n) = try_read(client, &mut buf[held..])? else {
            if !wait_readable(client, held > 0).await? {
                buf = Vec::new();
            }
            continue;
        };
        if n == 0 {
            if held > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed inside a TLS record",
                ));
            }
            // No close_notify: an end all the same, as under kTLS.
            return shutdown_write(upstream);
        }
        let filled = held + n;
        data.clear();
        let opened = opener.open(&mut buf[..filled], &mut data)?;
        let mut slices: Vec<IoSlice<'_>> =
            data.iter().map(|r| IoSlice::new(&buf[r.clone()])).collect();
        let plain: usize = data.iter().map(|r| r.len()).sum();
        write_all_vectored(upstream, &mut slices).await?;
        count.fetch_add(plain as u64, Ordering::Relaxed);
        if opened.closed {
            return shutdown_write(upstream);
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
    upstream: &TcpStream,
    client: &TcpStream,
    mut sealer: Sealer,
    buffer: usize,
    count: &AtomicU64,
) -> io::Result<()> {
    let cap = buffer.max(MAX_PLAINTEXT);
    let mut buf: Vec<u8> = Vec::new();
    let mut records: Vec<Vec<u8>> = Vec::new();
    loop {
        if buf.is_empty() {
            upstream.readable().await?;
            buf = vec![0; MAX_PLAINTEXT];
        }
        let Some(n) = try_read(upstream, &mut buf)? else {
            if !wait_readable(upstream, false).await? {
                buf = Vec::new();
            }
            continue;
        };
        records.clear();
        if n == 0 {
            records.push(sealer.close_notify()?);
            write_all_vectored(client, &mut [IoSlice::new(&records[0])]).await?;
            return shutdown_write(client);
        }
        sealer.seal(ContentType::ApplicationData, &buf[..n], &mut records)?;
        let mut slices: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        write_all_vectored(client, &mut slices).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < cap {
            buf.resize(grown(buf.len(), cap), 0);
        }
    }
}

/// Writes every byte of `slices` to `to`, waiting for room as needed.
async fn write_all_vectored(to: &TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match to.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The write half-close of a socket both directions share.
fn shutdown_write(socket: &TcpStream) -> io::Result<()> {
    match rustix::net::shutdown(socket, rustix::net::Shutdown::Write) {
        Err(rustix::io::Errno::NOTCONN) => Ok(()),
        other => other.map_err(Into::into),
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
