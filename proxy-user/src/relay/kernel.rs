//! The kernel splice of one client/upstream pair, behind the same contract as the
//! userspace relay (`relay::relay`): same half-close, same error handling, byte counts.
//!
//! Both sockets join `SOCKETS` at the switch ([`join`]) with their counters set to what
//! userspace has read; from then on the verdict counts what it passes up
//! (`SockStats::passed`), and the mark records how much userspace has read and written to
//! the peer (`Splice::forwarded`). The verdict redirects only while the two are equal, so
//! whatever is still pending is read and forwarded here first, in order, and the kernel
//! takes over at the first skb that arrives with nothing pending — nothing lost, nothing
//! reordered.
//!
//! The kernel does not forward FIN through a sockmap: each direction waits here for EOF,
//! then for every byte bound for the other socket (forwarded here or redirected) to be in
//! that socket's send queue, and only then shuts its write side, as the userspace relay does.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proxy_common::{SockKey, Splice, ROLE_ACCEPTED, ROLE_UPSTREAM};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::{relay, RelayStats};
use crate::ebpf::sockopt::{cookie, written};
use crate::ebpf::Frontend;
use crate::io::both_directions;

/// Relays `client` and `upstream` through the kernel; `client_read` is how many bytes
/// were read from the client before (detection, ClientHello) and have been dealt with.
/// Falls back to the userspace relay when the kernel does not take the pair.
pub(crate) async fn relay_spliced(
    f: &Frontend,
    mut client: TcpStream,
    mut upstream: TcpStream,
    client_read: u64,
    buffer: usize,
) -> RelayStats {
    let keys = cookie(&client).and_then(|c| Ok((c, cookie(&upstream)?)));
    let Ok((c, u)) = keys else {
        return relay(client, upstream, buffer).await;
    };
    let (ck, uk) = (SockKey { cookie: c }, SockKey { cookie: u });
    if f.stats(uk).is_none() {
        tracing::debug!("upstream socket not registered by sock_ops; relaying in userspace");
        return relay(client, upstream, buffer).await;
    }
    let mut pair = Pair { f, keys: [ck, uk] };
    let (drained, joined) = match join(f, &client, &upstream, [ck, uk], client_read, buffer).await {
        Ok(j) => (j.0, Ok(j.1)),
        Err((n, e)) => (n, Err(e)),
    };
    let bases = match joined {
        Ok(bases) => bases,
        Err(e) => {
            tracing::debug!("pair not spliced, relaying in userspace: {e}");
            drop(pair);
            let mut stats = relay(client, upstream, buffer).await;
            stats.client_to_upstream += drained[0];
            stats.upstream_to_client += drained[1];
            return stats;
        }
    };
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let (client_r, client_w) = client.split();
    let (upstream_r, upstream_w) = upstream.split();
    let copied = drained.map(AtomicU64::new);
    // Bytes read from the client and from the upstream (before the relay, then here).
    let consumed = [
        AtomicU64::new(client_read + drained[0]),
        AtomicU64::new(drained[1]),
    ];
    let up = Half {
        f,
        names: ["client", "upstream"],
        keys: [ck, uk],
        fds,
        dst_base: bases[1],
        consumed: [&consumed[0], &consumed[1]],
        copied: &copied[0],
    };
    let down = Half {
        f,
        names: ["upstream", "client"],
        keys: [uk, ck],
        fds: [fds[1], fds[0]],
        dst_base: bases[0],
        consumed: [&consumed[1], &consumed[0]],
        copied: &copied[1],
    };
    let error = both_directions(
        up.run(client_r, upstream_w, buffer),
        down.run(upstream_r, client_w, buffer),
    )
    .await;
    let [spliced_up, spliced_down] = pair.finish();
    let [copied_up, copied_down] = copied.map(|c| c.load(Ordering::Relaxed));
    RelayStats {
        client_to_upstream: copied_up + spliced_up,
        upstream_to_client: copied_down + spliced_down,
        kernel_to_upstream: spliced_up,
        kernel_to_client: spliced_down,
        mode: "kernel_splice",
        error,
    }
}

/// Hands the pair to the kernel. Both sockets join `SOCKETS` only now: their receive
/// queues are first read empty and forwarded here (data passed up to a psock's own socket
/// stalled on 6.18, while redirects work), then each is marked with everything read so far
/// counted as passed and forwarded, then inserted — client first, so that the upstream's
/// first redirect finds it. Whatever arrives in between waits in the receive queue and goes
/// through the verdict, first in line, at the next skb or the relay's next read. Returns
/// the bytes forwarded here each way and the bytes written into each socket before, or what
/// was forwarded and why the pair stays in userspace.
async fn join(
    f: &Frontend,
    client: &TcpStream,
    upstream: &TcpStream,
    [ck, uk]: [SockKey; 2],
    client_read: u64,
    buffer: usize,
) -> Result<([u64; 2], [u64; 2]), ([u64; 2], io::Error)> {
    // Before anything moves: no redirect can happen until both sockets are marked.
    let base = |s: &TcpStream| written(s.as_raw_fd()).map(|w| w.bytes);
    let bases = base(client)
        .and_then(|c| Ok([c, base(upstream)?]))
        .map_err(|e| ([0, 0], e))?;
    let mut drained = [0u64; 2];
    let mut buf = vec![0u8; buffer];
    let up = drain(client, upstream, &mut drained[0], &mut buf).await;
    up.map_err(|e| (drained, e))?;
    let down = drain(upstream, client, &mut drained[1], &mut buf).await;
    down.map_err(|e| (drained, e))?;
    let read = [client_read + drained[0], drained[1]];
    let to = |peer, forwarded| Splice { peer, forwarded };
    f.mark(ck, to(uk, read[0]))
        .and_then(|()| f.register(ck, client, read[0], ROLE_ACCEPTED))
        .and_then(|()| f.mark(uk, to(ck, read[1])))
        .and_then(|()| f.register(uk, upstream, read[1], ROLE_UPSTREAM))
        .map_err(|e| (drained, io::Error::other(e)))?;
    Ok((drained, bases))
}

/// Reads `src` until its receive queue is empty, writing everything to `dst`: not merely
/// what it held, as a partly read skb would later reach the verdict whole (bytes twice).
/// A peer that keeps the queue full past `DRAIN_LIMIT` keeps the pair in userspace.
async fn drain(
    src: &TcpStream,
    dst: &TcpStream,
    drained: &mut u64,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        if *drained >= DRAIN_LIMIT {
            return Err(io::Error::other("the peer kept the receive queue full"));
        }
        match src.try_read(buf) {
            Ok(0) => return Err(io::Error::other("closed before the splice")),
            Ok(n) => {
                write_all(dst, &buf[..n]).await?;
                *drained += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
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

/// The map entries of one spliced pair; removed when the relay ends, however it ends.
struct Pair<'a> {
    f: &'a Frontend,
    keys: [SockKey; 2],
}

impl Pair<'_> {
    /// Removes the entries and returns the bytes the kernel redirected from each socket.
    fn finish(&mut self) -> [u64; 2] {
        self.keys
            .map(|k| self.f.release(k).map_or(0, |s| s.spliced))
    }
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `e` with where it happened ("reading the client: Broken pipe"), same kind.
fn at(e: io::Error, stage: &str, side: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{stage} the {side}: {e}"))
}

/// One direction: `src` → `dst` (index 0 → 1 of the arrays).
struct Half<'a> {
    f: &'a Frontend,
    /// `client`/`upstream`, for error messages.
    names: [&'static str; 2],
    keys: [SockKey; 2],
    fds: [RawFd; 2],
    /// Bytes written into `dst` before the relay started.
    dst_base: u64,
    /// Bytes read from each socket and dealt with (forwarded, or consumed by detection);
    /// `dst`'s is the other direction's.
    consumed: [&'a AtomicU64; 2],
    /// Bytes this direction copied in userspace.
    copied: &'a AtomicU64,
}

/// Most bytes the splice forwards in userspace before giving the pair to the kernel.
const DRAIN_LIMIT: u64 = 16 << 20;

/// Pause between looks at the kernel's counters while waiting for it.
const POLL: Duration = Duration::from_millis(1);

impl Half<'_> {
    /// Forwards what the kernel passes up (before the switch, or a failed redirect) until
    /// EOF, then passes the half-close on once the kernel's share has left too.
    async fn run(self, src: ReadHalf<'_>, mut dst: WriteHalf<'_>, buffer: usize) -> io::Result<()> {
        let mut buf = vec![0u8; buffer];
        let [from, to] = self.names;
        loop {
            src.readable().await.map_err(|e| at(e, "reading", from))?;
            let n = match src.try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(at(e, "reading", from)),
            };
            if n == 0 {
                // EOF is reported while passed skbs still wait in the psock backlog (the
                // receive buffer was full): they come first, then the real EOF.
                if let Some(lost) = self.pending(0) {
                    if written(self.fds[0])?.closed {
                        return Err(io::Error::other(format!(
                            "the kernel dropped {lost} bytes queued on a closed socket"
                        )));
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                self.drained()
                    .await
                    .map_err(|e| at(e, "waiting for the send queue of", to))?;
                return dst.shutdown().await.map_err(|e| at(e, "shutting down", to));
            }
            dst.write_all(&buf[..n])
                .await
                .map_err(|e| at(e, "writing", to))?;
            self.copied.fetch_add(n as u64, Ordering::Relaxed);
            let forwarded = self.consumed[0].fetch_add(n as u64, Ordering::AcqRel) + n as u64;
            let splice = Splice {
                peer: self.keys[1],
                forwarded,
            };
            self.f
                .mark(self.keys[0], splice)
                .map_err(io::Error::other)?;
        }
    }

    /// Bytes the kernel passed up from socket `i` that userspace has not read yet.
    fn pending(&self, i: usize) -> Option<u64> {
        let passed = self.f.stats(self.keys[i])?.passed;
        let read = self.consumed[i].load(Ordering::Acquire);
        (passed > read).then(|| passed - read)
    }

    /// Waits before shutting `dst` down until (1) everything bound for it, copied here or
    /// redirected by the kernel, is in its send queue, and (2) everything it received has
    /// been read by the other direction: our FIN may complete its close, and a socket that
    /// reaches TCP_CLOSE loses its psock and whatever still waits in it. Stops waiting when
    /// `dst` can no longer send.
    async fn drained(&self) -> io::Result<()> {
        let mut pause = Duration::from_micros(200);
        loop {
            let spliced = self.f.stats(self.keys[0]).map_or(0, |s| s.spliced);
            let expected = self.dst_base + self.copied.load(Ordering::Relaxed) + spliced;
            let now = written(self.fds[1])?;
            if !now.sending || (now.bytes >= expected && self.pending(1).is_none()) {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
