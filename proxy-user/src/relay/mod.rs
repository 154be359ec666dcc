//! Moving bytes between a client and its upstream once a route is chosen.
//!
//! [`relay`] is the userspace copy: two directions with bounded buffers, half-close passed
//! on (EOF from one side becomes a write shutdown on the other while the reverse direction
//! keeps flowing), an error on either side ending both, and byte counts kept even when the
//! connection ends in an error. [`relay_plain`] is the seam for plaintext pairs: the relay
//! chosen at start ([`choice`]: `relay: auto|kernel|splice|copy`) — the kernel splice of
//! the eBPF front end ([`kernel`]), `splice(2)` through pooled pipes ([`splice_pipe`]), or
//! the userspace copy.

use crate::io::copy::{copy_both, Copied, Until};
use choice::Chosen;
use futures_util::future::Either;
use splice_pipe::{relay_splice, Mover, SpliceRelay};
use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

mod burst;
pub(crate) mod choice;
pub(crate) mod kernel;
pub(crate) mod pipe_pool;
pub(crate) mod records;
pub(crate) mod splice_pipe;

/// What a finished relay moved, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    /// Every byte each way, however it moved.
    pub(crate) client_to_upstream: u64,
    pub(crate) upstream_to_client: u64,
    /// Of those, the bytes the kernel redirected (zero unless `mode` is `kernel_splice`).
    pub(crate) kernel_to_upstream: u64,
    pub(crate) kernel_to_client: u64,
    /// `userspace`, `splice` (`splice(2)` through pipes) or `kernel_splice`: the `mode`
    /// label of the metrics (bytes a kernel splice still copied in userspace, such as those
    /// sent before the switch, count as `userspace`).
    pub(crate) mode: &'static str,
    /// The first I/O error, if the relay did not end with both sides closing cleanly.
    pub(crate) error: Option<io::Error>,
}

impl RelayStats {
    /// What a relay without the kernel splice moved (`mode` `userspace` or `splice`).
    pub(crate) fn copied(mode: &'static str, copied: Copied) -> RelayStats {
        RelayStats {
            client_to_upstream: copied.a_to_b,
            upstream_to_client: copied.b_to_a,
            kernel_to_upstream: 0,
            kernel_to_client: 0,
            mode,
            error: copied.error,
        }
    }
}

/// Relays two plaintext TCP sockets: the seam where the kernel splice plugs in.
/// `client_read` is how many bytes were read from the client before (detection, PROXY
/// header, ClientHello) and already dealt with; the splice needs it to switch over in order.
///
/// Not an `async fn` (that would store the sockets again beside the relay): the kernel
/// splice is boxed, the `splice(2)`/copy relay is a [`SpliceRelay`] of a few hundred bytes.
pub(crate) fn relay_plain(
    client: TcpStream,
    upstream: TcpStream,
    client_read: u64,
    buffer: usize,
) -> PlainRelayFuture {
    let chosen = choice::chosen();
    match crate::ebpf::frontend().filter(|_| chosen == Chosen::Kernel) {
        Some(f) => Either::Left(Box::pin(kernel::relay_spliced(
            f,
            client,
            upstream,
            client_read,
            buffer,
        ))),
        // A `SpliceRelay` is a few hundred bytes: no box needed. `splice(2)` is also what
        // the kernel's choice falls back to once the front end is detached (at exit).
        None => Either::Right(match chosen {
            Chosen::Copy => relay_splice(client, upstream, buffer, Mover::Copy),
            Chosen::Splice | Chosen::Kernel => {
                relay_splice(client, upstream, buffer, Mover::Splice)
            }
        }),
    }
}

/// The future of [`relay_plain`]: the boxed kernel splice, or the `splice(2)`/copy relay.
pub(crate) type PlainRelayFuture =
    Either<Pin<Box<dyn Future<Output = RelayStats> + Send>>, SpliceRelay>;

/// The userspace copy of both directions (`io::copy`), as a relay.
pub(crate) async fn relay<A, B>(client: A, upstream: B, buffer: usize) -> RelayStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copied = copy_both(client, upstream, buffer, Until::BothEnd).await;
    RelayStats::copied("userspace", copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::copy::tests::send_then_half_close;
    use tokio::io::duplex;

    /// The relay moved `(client_to_upstream, upstream_to_client)` bytes and ended without
    /// an error. Shared with the `splice_pipe` tests.
    pub(super) fn assert_clean_counts(stats: &RelayStats, counts: (u64, u64)) {
        assert_eq!((stats.client_to_upstream, stats.upstream_to_client), counts);
        assert!(stats.error.is_none());
    }

    #[tokio::test]
    async fn relay_counts_and_passes_half_close() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        let task = tokio::spawn(relay(client, upstream, 16));
        // The upstream sees the request then EOF, and can still answer.
        send_then_half_close(&mut client_peer, &mut upstream_peer, b"request").await;
        send_then_half_close(
            &mut upstream_peer,
            &mut client_peer,
            b"response after half-close",
        )
        .await;
        let stats = task.await.unwrap();
        assert_eq!(stats.mode, "userspace");
        assert_clean_counts(&stats, (7, 25));
    }
}
