//! The `splice(2)` relay: the plaintext relay when the eBPF front end is not attached.
//!
//! Each direction owns a pipe; bytes go from the source socket into the pipe and from the
//! pipe into the destination socket with `splice(2)`, so the kernel moves page references
//! instead of the proxy copying through a userspace buffer. The contract is the userspace
//! relay's (`relay::relay`): EOF from one side becomes a write shutdown on the other while
//! the reverse direction keeps flowing, the first error ends both, and the byte counts
//! (bytes written to the destination) are kept even when the relay ends in an error.
//!
//! Readiness comes from tokio (`TcpStream::readable`/`writable` + `try_io`); the sockets
//! are non-blocking and every `splice` call carries `SPLICE_F_NONBLOCK`, so `EAGAIN` always
//! means "the socket is not ready" — a direction empties its pipe before it reads again,
//! so the pipe is never what blocks.
//!
//! `splice` into a socket cannot pass `MSG_NOSIGNAL`: a write to a connection the peer has
//! reset raises `SIGPIPE` as well as returning `EPIPE`. The Rust runtime ignores `SIGPIPE`
//! before `main`, so the error comes back here like any other; a binary that restored the
//! default action would be killed instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::RelayStats;
use crate::io::both_directions;
use crate::io::copy::Copied;

/// Pipe capacity asked for with `F_SETPIPE_SZ` (the unprivileged maximum by default,
/// `/proc/sys/fs/pipe-max-size`); a refusal keeps the kernel's default (64 KiB).
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// One direction's pipe: `[read end, write end]`, and its capacity.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe of up to `size` bytes.
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // A refusal (above pipe-max-size without CAP_SYS_RESOURCE) keeps the default.
        let _ = fcntl_setpipe_size(&write, size);
        let capacity = fcntl_getpipe_size(&write)?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// `splice(from → to)` of up to `len` bytes, non-blocking; `EINTR` retried.
fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        match rustix::pipe::splice(&from, None, &to, None, len, flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Relays `client` and `upstream` with `splice(2)`; falls back to the userspace copy when
/// the pipes cannot be made (descriptor limits).
pub(crate) async fn relay_splice(
    client: TcpStream,
    upstream: TcpStream,
    buffer: usize,
) -> RelayStats {
    let pipes = Pipe::new(PIPE_SIZE).and_then(|up| Ok((up, Pipe::new(PIPE_SIZE)?)));
    let (up_pipe, down_pipe) = match pipes {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("splice(2) relay unavailable, copying: {e}");
            return super::relay(client, upstream, buffer).await;
        }
    };
    let to_upstream = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let error = both_directions(
        half(&client, &upstream, &up_pipe, &to_upstream),
        half(&upstream, &client, &down_pipe, &to_client),
    )
    .await;
    let copied = Copied {
        a_to_b: to_upstream.load(Ordering::Relaxed),
        b_to_a: to_client.load(Ordering::Relaxed),
        error,
    };
    RelayStats::copied("splice", copied)
}

/// One direction: `src` → pipe → `dst` until EOF, then `dst`'s write side is shut down.
/// `count` is the bytes that reached `dst`.
async fn half(src: &TcpStream, dst: &TcpStream, pipe: &Pipe, count: &AtomicU64) -> io::Result<()> {
    loop {
        // The pipe is empty here, so EAGAIN can only be the socket's.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, &pipe.write, pipe.capacity)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return shutdown_write(dst);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(&pipe.read, dst, left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Passes the half-close on: `shutdown(SHUT_WR)`, as `AsyncWriteExt::shutdown` does on a
/// `TcpStream`.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    Ok(rustix::net::shutdown(s, rustix::net::Shutdown::Write)?)
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_clean_counts;
    use super::*;
    use crate::io::copy::tests::send_then_half_close;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected loopback pair: (the proxy's side, the peer's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(l.accept(), TcpStream::connect(addr));
        (a.unwrap().0, b.unwrap())
    }

    /// A deterministic byte stream, different per seed.
    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    /// `SO_LINGER` with a zero timeout: closing the socket sends an RST.
    fn reset_on_close(s: &TcpStream) {
        let zero = Some(std::time::Duration::ZERO);
        rustix::net::sockopt::set_socket_linger(s, zero).unwrap();
    }

    #[tokio::test]
    async fn a_reset_upstream_while_the_client_sends_ends_the_relay_with_an_error() {
        let (client, mut client_peer) = pair().await;
        let (upstream, upstream_peer) = pair().await;
        let task = tokio::spawn(relay_splice(client, upstream, 1024));
        reset_on_close(&upstream_peer);
        drop(upstream_peer);
        // Keep sending until the relay gives up; each splice into the reset socket fails.
        let chunk = vec![7u8; 64 * 1024];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !task.is_finished() && std::time::Instant::now() < deadline {
            if client_peer.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let stats = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the relay ends")
            .unwrap();
        assert!(stats.error.is_some(), "{stats:?}");
    }

    /// The capacity the relay splices by is what the pipe really holds: that many bytes
    /// fit without blocking, one more does not (a wrong `F_GETPIPE_SZ` reading would make
    /// the relay ask for more than the pipe takes, or move less than it could).
    #[test]
    fn the_pipe_holds_exactly_its_reported_capacity() {
        let p = Pipe::new(PIPE_SIZE).unwrap();
        let chunk = vec![0u8; 4096];
        let mut written = 0;
        loop {
            match rustix::io::write(&p.write, &chunk) {
                Ok(n) => written += n,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => panic!("write to the pipe: {e}"),
            }
        }
        assert_eq!(written, p.capacity);
    }

    /// Without privileges the kernel caps pipes at `pipe-max-size`; as root (CI) the full
    /// size is granted. Either way the relay gets a pipe larger than a page.
    #[test]
    fn the_pipe_gets_the_size_asked_for_up_to_the_system_maximum() {
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let p = Pipe::new(PIPE_SIZE).unwrap();
        let is_root = rustix::process::geteuid().is_root();
        if is_root || PIPE_SIZE <= max {
            assert_eq!(p.capacity, PIPE_SIZE);
        } else {
            assert!(p.capacity >= 64 * 1024, "{}", p.capacity);
        }
    }

    #[tokio::test]
    async fn relays_both_ways_byte_exact_and_passes_half_close() {
        let (client, mut client_peer) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let task = tokio::spawn(relay_splice(client, upstream, 64 * 1024));
        let up = pattern(1, 5 << 20);
        let down = pattern(2, 3 << 20);
        let (up2, down2) = (up.clone(), down.clone());
        // The client sends everything then half-closes; the upstream reads to EOF while
        // sending, then answers after the EOF.
        let client_side = tokio::spawn(async move {
            let (mut r, mut w) = client_peer.split();
            let send = async {
                w.write_all(&up2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            n.unwrap();
            got
        });
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert!(
            got == up,
            "upstream got {} of {} bytes",
            got.len(),
            up.len()
        );
        upstream_peer.write_all(&down2).await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let back = client_side.await.unwrap();
        assert!(
            back == down,
            "client got {} of {} bytes",
            back.len(),
            down.len()
        );
        let stats = task.await.unwrap();
        assert_eq!(
            (stats.client_to_upstream, stats.upstream_to_client),
            (up.len() as u64, down.len() as u64)
        );
        assert_eq!(stats.mode, "splice");
        assert!(stats.error.is_none(), "{:?}", stats.error);
    }

    #[tokio::test]
    async fn upstream_half_close_leaves_the_client_direction_open() {
        let (client, mut client_peer) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let task = tokio::spawn(relay_splice(client, upstream, 1024));
        send_then_half_close(&mut upstream_peer, &mut client_peer, b"bye").await;
        send_then_half_close(&mut client_peer, &mut upstream_peer, b"late words").await;
        assert_clean_counts(&task.await.unwrap(), (10, 3));
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions_and_keeps_the_counts() {
        let (client, mut client_peer) = pair().await;
        let (upstream, upstream_peer) = pair().await;
        let task = tokio::spawn(relay_splice(client, upstream, 1024));
        client_peer.write_all(b"hello").await.unwrap();
        let mut upstream_peer = upstream_peer;
        let mut got = [0u8; 5];
        upstream_peer.read_exact(&mut got).await.unwrap();
        // An RST from the upstream: linger 0, then close.
        reset_on_close(&upstream_peer);
        drop(upstream_peer);
        let stats = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the relay ends after the reset")
            .unwrap();
        assert_eq!(stats.client_to_upstream, 5);
        assert!(stats.error.is_some(), "a reset is an error");
        // The client side was closed by the relay ending: it reads EOF or a reset.
        let mut rest = Vec::new();
        let _ = client_peer.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}
