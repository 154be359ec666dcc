//! Moving bytes between a client and its upstream once a route is chosen.
//!
//! [`relay`] is the userspace copy: two directions with bounded buffers, half-close passed
//! on (EOF from one side becomes a write shutdown on the other while the reverse direction
//! keeps flowing), an error on either side ending both, and byte counts kept even when the
//! connection ends in an error. [`relay_plain`] is the seam for plaintext pairs: the kernel
//! splice of the eBPF front end ([`kernel`]) when it is attached, otherwise `splice(2)`
//! through a pipe per direction ([`splice_pipe`]), or this copy when `SWITCHYARD_RELAY=copy`
//! asks for it ([`PlainRelay`]).

use crate::io::copy::{copy_both, Copied, Until};
use futures_util::future::Either;
use splice_pipe::{relay_splice, Mover, SpliceRelay};
use std::future::Future;
use std::io;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

mod burst;
pub(crate) mod kernel;
pub(crate) mod pipe_pool;
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
    match crate::ebpf::frontend() {
        Some(f) => Either::Left(Box::pin(kernel::relay_spliced(
            f,
            client,
            upstream,
            client_read,
            buffer,
        ))),
        None => Either::Right(match PlainRelay::chosen() {
            PlainRelay::Splice => relay_splice(client, upstream, buffer, Mover::Splice),
            PlainRelay::Copy => relay_splice(client, upstream, buffer, Mover::Copy),
        }),
    }
}

/// The future of [`relay_plain`]: the boxed kernel splice, or the `splice(2)`/copy relay.
pub(crate) type PlainRelayFuture =
    Either<Pin<Box<dyn Future<Output = RelayStats> + Send>>, SpliceRelay>;

/// How plaintext pairs are relayed when the eBPF front end is not attached:
/// `SWITCHYARD_RELAY=copy` forces the userspace copy (for measurements and as an escape
/// hatch); anything else, or nothing, means `splice(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlainRelay {
    Splice,
    Copy,
}

impl PlainRelay {
    /// The environment variable read once per process.
    pub(crate) const ENV: &'static str = "SWITCHYARD_RELAY";

    /// Parses the variable's value (`None` when unset).
    pub(crate) fn parse(value: Option<&str>) -> PlainRelay {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("copy") => PlainRelay::Copy,
            _ => PlainRelay::Splice,
        }
    }

    /// The process's choice, from [`PlainRelay::ENV`] at first use.
    pub(crate) fn chosen() -> PlainRelay {
        static CHOSEN: std::sync::OnceLock<PlainRelay> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| PlainRelay::parse(std::env::var(Self::ENV).ok().as_deref()))
    }

    /// What the start-up log line calls it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            PlainRelay::Splice => "splice(2) through pipes",
            PlainRelay::Copy => "userspace copies (SWITCHYARD_RELAY=copy)",
        }
    }
}

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

    #[test]
    fn plain_relay_is_splice_unless_copy_is_asked_for() {
        assert_eq!(PlainRelay::parse(None), PlainRelay::Splice);
        assert_eq!(PlainRelay::parse(Some("splice")), PlainRelay::Splice);
        assert_eq!(PlainRelay::parse(Some("")), PlainRelay::Splice);
        assert_eq!(PlainRelay::parse(Some("copy")), PlainRelay::Copy);
        assert_eq!(PlainRelay::parse(Some(" COPY ")), PlainRelay::Copy);
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
