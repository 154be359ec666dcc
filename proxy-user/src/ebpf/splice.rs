//! The kernel splice of one client/upstream pair, behind the same contract as the
//! userspace relay (`relay::relay`): same half-close, same error handling, byte counts.
//!
//! Both sockets are in `SOCKETS` from the moment they were established (`sock_ops`), so
//! every byte they receive went through the verdict program, which counts what it passes
//! up (`SockStats::passed`). Marking a socket spliced records how many of those bytes
//! userspace has read and written to the peer (`Splice::forwarded`); the verdict redirects
//! only while the two are equal. So whatever arrived before or during the switch is still
//! read and forwarded here, in order, and the kernel takes over at the first skb that
//! arrives with nothing pending — nothing lost, nothing reordered.
//!
//! The kernel does not forward FIN through a sockmap: each direction waits here for EOF,
//! then for every byte bound for the other socket (forwarded here or redirected) to be in
//! that socket's send queue, and only then shuts its write side, as the userspace relay does.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proxy_common::{SockKey, Splice};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::sockopt::{cookie, written};
use super::Frontend;
use crate::relay::{relay, RelayStats};

/// Relays `client` and `upstream` through the kernel; `client_read` is how many bytes
/// were read from the client before (detection, ClientHello) and have been dealt with.
/// Falls back to the userspace relay when the kernel does not take the pair.
pub async fn relay_spliced(
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
    let (drained, joined) =
        match join(f, &client, &mut upstream, [ck, uk], client_read, buffer).await {
            Ok(j) => (j.0, Ok(j.1)),
            Err((n, e)) => (n, Err(e)),
        };
    let bases = match joined {
        Ok(bases) => bases,
        Err(e) => {
            tracing::debug!("pair not spliced, relaying in userspace: {e}");
            drop(pair);
            let mut stats = relay(client, upstream, buffer).await;
            stats.client_to_upstream += drained;
            return stats;
        }
    };
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let (client_r, client_w) = client.split();
    let (upstream_r, upstream_w) = upstream.split();
    let copied = [AtomicU64::new(drained), AtomicU64::new(0)];
    // Bytes read from the client and from the upstream (before the relay, then here).
    let consumed = [AtomicU64::new(client_read + drained), AtomicU64::new(0)];
    let up = Half {
        f,
        keys: [ck, uk],
        fds,
        dst_base: bases[1],
        consumed: [&consumed[0], &consumed[1]],
        copied: &copied[0],
    };
    let down = Half {
        f,
        keys: [uk, ck],
        fds: [fds[1], fds[0]],
        dst_base: bases[0],
        consumed: [&consumed[1], &consumed[0]],
        copied: &copied[1],
    };
    let mut error = None;
    {
        let up = up.run(client_r, upstream_w, buffer);
        let down = down.run(upstream_r, client_w, buffer);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            let result = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r }
                r = &mut down, if !down_done => { down_done = true; r }
            };
            if let Err(e) = result {
                error = Some(e);
                break;
            }
        }
    }
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

/// Hands the pair to the kernel. The client socket joins `SOCKETS` only now (an accepted
/// socket's psock cannot take the large coalesced skbs that pile up before `accept`): first
/// its receive queue is read dry and forwarded here, then it is marked with everything read
/// so far counted as passed and forwarded, then inserted. Whatever arrives in between waits
/// in the receive queue and goes through the verdict, first in line, when the next skb
/// arrives or the relay next reads. Returns the bytes forwarded here and the bytes written
/// into each socket before it started, or what was forwarded and why not.
async fn join(
    f: &Frontend,
    client: &TcpStream,
    upstream: &mut TcpStream,
    [ck, uk]: [SockKey; 2],
    client_read: u64,
    buffer: usize,
) -> Result<(u64, [u64; 2]), (u64, io::Error)> {
    // Before anything moves: no redirect can happen until both sockets are marked.
    let base = |s: &TcpStream| written(s.as_raw_fd()).map(|w| w.bytes);
    let bases = base(client)
        .and_then(|c| Ok([c, base(upstream)?]))
        .map_err(|e| (0, e))?;
    let mut drained = 0u64;
    let mut buf = vec![0u8; buffer];
    loop {
        match client.try_read(&mut buf) {
            Ok(0) => return Err((drained, io::Error::other("client closed before the splice"))),
            Ok(n) => {
                upstream
                    .write_all(&buf[..n])
                    .await
                    .map_err(|e| (drained, e))?;
                drained += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err((drained, e)),
        }
    }
    let fail = |e: io::Error| (drained, e);
    let read = client_read + drained;
    // Client first, so that the upstream's first redirect already finds it in SOCKETS.
    let to = |peer, forwarded| Splice { peer, forwarded };
    f.mark(ck, to(uk, read))
        .and_then(|()| f.register(ck, client, read))
        .and_then(|()| f.mark(uk, to(ck, 0)))
        .map_err(|e| fail(io::Error::other(e)))?;
    Ok((drained, bases))
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

/// One direction: `src` → `dst` (index 0 → 1 of the arrays).
struct Half<'a> {
    f: &'a Frontend,
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

/// Pause between looks at the kernel's counters while waiting for it.
const POLL: Duration = Duration::from_millis(1);

impl Half<'_> {
    /// Forwards what the kernel passes up (before the switch, or a failed redirect) until
    /// EOF, then passes the half-close on once the kernel's share has left too.
    async fn run(self, src: ReadHalf<'_>, mut dst: WriteHalf<'_>, buffer: usize) -> io::Result<()> {
        let mut buf = vec![0u8; buffer];
        loop {
            src.readable().await?;
            let n = match src.try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
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
                self.drained().await?;
                return dst.shutdown().await;
            }
            dst.write_all(&buf[..n]).await?;
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
