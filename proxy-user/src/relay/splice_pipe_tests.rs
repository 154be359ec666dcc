//! The `splice(2)` relay over loopback sockets: byte-exact both ways, half-close, errors,
//! and the pipes it relays through.

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
    let task = tokio::spawn(relay_splice(client, upstream, 1024, Mover::Splice));
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
    byte_exact_both_ways(Mover::Splice, "splice").await;
}

#[tokio::test]
async fn the_copy_relays_both_ways_byte_exact_and_passes_half_close() {
    byte_exact_both_ways(Mover::Copy, "userspace").await;
}

/// An idle pair holds no pipe: once a burst is through, its pipe is back in the pool.
#[tokio::test]
async fn a_burst_gives_its_pipe_back_when_the_pair_goes_idle() {
    let pool: &'static Pool = Box::leak(Box::new(Pool::new(4)));
    let (client, mut client_peer) = pair().await;
    let (upstream, mut upstream_peer) = pair().await;
    let task = tokio::spawn(relay_with(client, upstream, 1024, Mover::Splice, pool));
    for round in 0..3u8 {
        client_peer.write_all(&[round; 100]).await.unwrap();
        let mut got = [0u8; 100];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 100]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.idle() != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pipe never came back"
            );
            tokio::task::yield_now().await;
        }
    }
    drop((client_peer, upstream_peer));
    let _ = task.await;
}

/// `mover` relays 5 MiB up and 3 MiB down, the upstream answering after the client's EOF;
/// the stats carry `mode`.
async fn byte_exact_both_ways(mover: Mover, mode: &str) {
    let (client, mut client_peer) = pair().await;
    let (upstream, mut upstream_peer) = pair().await;
    let task = tokio::spawn(relay_splice(client, upstream, 64 * 1024, mover));
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
    assert_eq!(stats.mode, mode);
    assert!(stats.error.is_none(), "{:?}", stats.error);
}

#[tokio::test]
async fn upstream_half_close_leaves_the_client_direction_open() {
    let (client, mut client_peer) = pair().await;
    let (upstream, mut upstream_peer) = pair().await;
    let task = tokio::spawn(relay_splice(client, upstream, 1024, Mover::Splice));
    send_then_half_close(&mut upstream_peer, &mut client_peer, b"bye").await;
    send_then_half_close(&mut client_peer, &mut upstream_peer, b"late words").await;
    assert_clean_counts(&task.await.unwrap(), (10, 3));
}

#[tokio::test]
async fn a_reset_ends_both_directions_and_keeps_the_counts() {
    let (client, mut client_peer) = pair().await;
    let (upstream, upstream_peer) = pair().await;
    let task = tokio::spawn(relay_splice(client, upstream, 1024, Mover::Splice));
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

/// Between bursts a direction holds nothing: after bytes have passed and a read would
/// block, neither direction of a copy relay keeps a buffer (nor a splice relay a pipe),
/// and the whole pair is a few hundred bytes.
#[tokio::test]
async fn an_idle_pair_holds_no_buffer_and_stays_small() {
    assert!(
        std::mem::size_of::<SpliceRelay>() <= 256,
        "SpliceRelay is {} bytes",
        std::mem::size_of::<SpliceRelay>()
    );
    for mover in [Mover::Copy, Mover::Splice] {
        let (client, mut client_peer) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let mut relay = std::pin::pin!(relay_splice(client, upstream, 64 * 1024, mover));
        client_peer.write_all(&[9u8; 10_000]).await.unwrap();
        let mut got = vec![0u8; 10_000];
        let read = upstream_peer.read_exact(&mut got);
        tokio::pin!(read);
        // Drive the relay by hand until the bytes are through.
        tokio::select! {
            r = &mut read => assert_eq!(r.unwrap(), 10_000),
            _ = &mut relay => panic!("the relay ended"),
        }
        assert_eq!(got, vec![9u8; 10_000]);
        // One more poll: the read that would block ends the burst.
        assert!(futures_util::poll!(&mut relay).is_pending());
        assert!(relay.idle(), "{mover:?}: a direction still holds its burst");
    }
}
