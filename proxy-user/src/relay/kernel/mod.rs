//! The kernel splice of one client/upstream pair, behind the same contract as the
//! userspace relay (`relay::relay`): same half-close, same error handling, byte counts.
//!
//! Both sockets join `SOCKETS` at the switch ([`join`](join::join)) with their counters set to what
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
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use proxy_common::{SockKey, SockStats, SEQ_UNTRIMMED};
use tokio::net::TcpStream;

mod half;
mod join;

use super::{relay, RelayStats};
use crate::ebpf::sockopt::cookie;
use crate::ebpf::Frontend;
use crate::io::both_directions;
use half::Half;
use join::join;

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
        return Box::pin(relay(client, upstream, buffer)).await;
    };
    let (ck, uk) = (SockKey { cookie: c }, SockKey { cookie: u });
    if f.stats(uk).is_none() {
        tracing::debug!("upstream socket not registered by sock_ops; relaying in userspace");
        return Box::pin(relay(client, upstream, buffer)).await;
    }
    let mut pair = Pair { f, keys: [ck, uk] };
    // Boxed, as every stage that does not last: an idle spliced pair's task holds the two
    // directions' waits and nothing sized for the switch or the fallback copy.
    let joining = Box::pin(join(f, &client, &upstream, [ck, uk], client_read));
    let (drained, joined) = match joining.await {
        Ok(j) => (j.0, Ok(j.1)),
        Err((n, e)) => (n, Err(e)),
    };
    let bases = match joined {
        Ok(bases) => bases,
        Err(e) => {
            tracing::debug!("pair not spliced, relaying in userspace: {e}");
            drop(pair);
            let mut stats = Box::pin(relay(client, upstream, buffer)).await;
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
    let [up_stats, down_stats] = pair.finish();
    let [spliced_up, spliced_down] = [up_stats.spliced, down_stats.spliced];
    // An overlapping skb the verdict could not trim was dropped (`proxy-ebpf` `overlap`):
    // the stream lost bytes, so the relay is not reported clean.
    let error = error.or_else(|| {
        [up_stats, down_stats]
            .iter()
            .any(|s| s.seq_known == SEQ_UNTRIMMED)
            .then(|| io::Error::other("the kernel dropped an overlapping skb it could not trim"))
    });
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

/// The map entries of one spliced pair; removed when the relay ends, however it ends.
struct Pair<'a> {
    f: &'a Frontend,
    keys: [SockKey; 2],
}

impl Pair<'_> {
    /// Removes the entries and returns the kernel's last counters of each socket.
    fn finish(&mut self) -> [SockStats; 2] {
        self.keys.map(|k| self.f.release(k).unwrap_or_default())
    }
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}
