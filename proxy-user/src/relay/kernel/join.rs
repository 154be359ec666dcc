//! The switch from userspace to the kernel: both sockets' receive queues read to an skb
//! boundary and forwarded, each socket marked with what userspace has read, then both
//! inserted in the sockhash, so that the verdict takes over in order.

use aya::maps::MapError;
use proxy_common::{SockKey, Splice, ROLE_ACCEPTED, ROLE_UPSTREAM};
use std::io;
use std::os::fd::AsRawFd;
use tokio::net::TcpStream;

use crate::ebpf::sockopt::{at_urgent_mark, unread, written};
use crate::ebpf::Frontend;

/// Most bytes the splice forwards in userspace before giving the pair to the kernel.
const DRAIN_LIMIT: u64 = 16 << 20;
/// Room past the queued bytes in each read of the drain, for what arrives meanwhile.
const SLACK: usize = 256 << 10;
/// Largest read of the drain (a receive queue holds at most `tcp_rmem`'s maximum, 6 MiB by
/// default): a buffer this size is held only while the pair switches.
const MAX_READ: usize = 8 << 20;

/// Hands the pair to the kernel. Both sockets join `SOCKETS` only now: their receive queues
/// are first read to an skb boundary and forwarded here (data passed up to a psock's own
/// socket stalled on 6.18, while redirects work), then each is marked with everything read
/// so far counted as passed and forwarded, then inserted — client first, so that the
/// upstream's first redirect finds it. Whatever arrives in between waits in the receive
/// queue and goes through the verdict, first in line, at the next skb or the relay's next
/// read. Returns the bytes forwarded here each way and the bytes written into each socket
/// before, or what was forwarded and why the pair stays in userspace.
pub(super) async fn join(
    f: &Frontend,
    client: &TcpStream,
    upstream: &TcpStream,
    [ck, uk]: [SockKey; 2],
    client_read: u64,
) -> Result<([u64; 2], [u64; 2]), ([u64; 2], io::Error)> {
    // Before anything moves: no redirect can happen until both sockets are marked.
    let base = |s: &TcpStream| written(s.as_raw_fd()).map(|w| w.bytes);
    let bases = base(client)
        .and_then(|c| Ok([c, base(upstream)?]))
        .map_err(|e| ([0, 0], e))?;
    let mut drained = [0u64; 2];
    let mut buf = Vec::new();
    let up = drain(client, upstream, &mut drained[0], &mut buf).await;
    up.map_err(|e| (drained, e))?;
    let down = drain(upstream, client, &mut drained[1], &mut buf).await;
    down.map_err(|e| (drained, e))?;
    let read = [client_read + drained[0], drained[1]];
    let to = |peer, forwarded| Splice { peer, forwarded };
    // Both targets first: from the moment either socket joins `SOCKETS`, the verdict's
    // redirect finds the other one (a redirect refused there would pass bytes up, and a
    // sender that never pauses would keep the pair in userspace catching up).
    let step = |what: &str, r: Result<(), MapError>| r.map_err(|e| (drained, refused(what, &e)));
    step("marking the client", f.mark(ck, to(uk, read[0])))?;
    step(
        "adding the client",
        f.register(ck, client, read[0], ROLE_ACCEPTED),
    )?;
    step("marking the upstream", f.mark(uk, to(ck, read[1])))?;
    step(
        "adding the upstream",
        f.register(uk, upstream, read[1], ROLE_UPSTREAM),
    )?;
    Ok((drained, bases))
}

/// A map update the kernel refused, with its errno (aya's message names only the call).
fn refused(what: &str, e: &MapError) -> io::Error {
    match std::error::Error::source(e) {
        Some(cause) => io::Error::other(format!("{what}: {e}: {cause}")),
        None => io::Error::other(format!("{what}: {e}")),
    }
}

/// Reads `src` until one read ends at an skb boundary, writing everything to `dst`: a
/// partly read skb would later reach the verdict whole (bytes twice). The queue need not
/// stay empty — a sender streaming at full speed refills it while we write — only our last
/// read must not stop inside an skb. A read sized past everything queued that returns short
/// has taken every skb whole (TCP stops inside one only when the buffer is full or at the
/// urgent mark, which [`at_urgent_mark`] rules out); what arrives after it waits
/// in the receive queue, whole, for the verdict. A peer that keeps the queue fuller than
/// the largest read past `DRAIN_LIMIT` keeps the pair in userspace.
async fn drain(
    src: &TcpStream,
    dst: &TcpStream,
    drained: &mut u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        if *drained >= DRAIN_LIMIT {
            return Err(io::Error::other("the peer kept the receive queue full"));
        }
        let queued = unread(src)?;
        if queued == 0 {
            return Ok(());
        }
        // Room for what is queued and for what may arrive meanwhile, so that the read ends
        // short; bounded, so a huge queue takes several rounds rather than one allocation.
        let want = (queued as usize).saturating_add(SLACK).min(MAX_READ);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let n = match src.try_read(&mut buf[..want]) {
            Ok(0) => return Err(io::Error::other("closed before the splice")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        write_all(dst, &buf[..n]).await?;
        *drained += n as u64;
        if n < want && !at_urgent_mark(src.as_raw_fd())? {
            return Ok(());
        }
    }
}

/// `write_all` on a shared `TcpStream`.
async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
