//! The copy of both directions: counts, half-close, errors and their explanations, and
//! the buffer given up while a direction is idle.

use super::*;
use tokio::io::duplex;

/// `from` sends `data` and shuts down its write half; `to` reads exactly `data`, then
/// EOF. Shared with the relay tests.
pub(crate) async fn send_then_half_close<W, R>(from: &mut W, to: &mut R, data: &[u8])
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    from.write_all(data).await.unwrap();
    from.shutdown().await.unwrap();
    let mut got = Vec::new();
    to.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
}

#[tokio::test]
async fn copy_counts_and_passes_half_close() {
    let (a, mut a_peer) = duplex(1024);
    let (b, mut b_peer) = duplex(1024);
    let task = tokio::spawn(copy_both(a, b, 16, Until::BothEnd));
    // `b` sees the request then EOF, and can still answer.
    send_then_half_close(&mut a_peer, &mut b_peer, b"request").await;
    send_then_half_close(&mut b_peer, &mut a_peer, b"response after half-close").await;
    let copied = task.await.unwrap();
    assert_eq!((copied.a_to_b, copied.b_to_a), (7, 25));
    assert!(copied.error.is_none());
}

/// `a` → `b` fails (a broken pipe); `b` has already said why (an alert it wrote before
/// closing): that is the error reported.
#[tokio::test]
async fn b_explains_a_failed_write_with_its_own_error() {
    let (a, mut a_peer) = duplex(1024);
    let b = Explaining { read_error: true };
    let task = tokio::spawn(copy_both(a, b, 16, Until::BExplains));
    a_peer.write_all(b"x").await.unwrap();
    let copied = task.await.unwrap();
    let e = copied.error.expect("an error");
    assert_eq!(e.to_string(), "b's reason");
}

/// Without a reason from `b`, the write error itself is reported.
#[tokio::test(start_paused = true)]
async fn without_an_explanation_the_write_error_is_reported() {
    let (a, mut a_peer) = duplex(1024);
    let b = Explaining { read_error: false };
    let task = tokio::spawn(copy_both(a, b, 16, Until::BExplains));
    a_peer.write_all(b"x").await.unwrap();
    let copied = task.await.unwrap();
    assert_eq!(
        copied.error.expect("an error").kind(),
        io::ErrorKind::BrokenPipe
    );
}

/// A `b` whose writes fail with a broken pipe, and whose reads either fail with its
/// reason or never end.
struct Explaining {
    read_error: bool,
}

impl AsyncRead for Explaining {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.read_error {
            std::task::Poll::Ready(Err(io::Error::other("b's reason")))
        } else {
            std::task::Poll::Pending
        }
    }
}

impl AsyncWrite for Explaining {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn until_b_ends_does_not_wait_for_a() {
    let (a, _a_peer_keeps_its_side_open) = duplex(1024);
    let (b, mut b_peer) = duplex(1024);
    let task = tokio::spawn(copy_both(a, b, 16, Until::BEnds));
    b_peer.write_all(b"bye").await.unwrap();
    b_peer.shutdown().await.unwrap();
    let copied = task.await.unwrap();
    assert_eq!((copied.a_to_b, copied.b_to_a), (0, 3));
    assert!(copied.error.is_none());
}

#[tokio::test]
async fn the_first_error_ends_both_directions() {
    let (a, a_peer) = duplex(1024);
    let (b, mut b_peer) = duplex(1024);
    drop(a_peer);
    let task = tokio::spawn(copy_both(a, b, 16, Until::BothEnd));
    // Writing to `a` fails (its peer is gone): the copy ends with that error although
    // `b` stays open and never sends EOF.
    b_peer.write_all(b"x").await.unwrap();
    let deadline = std::time::Duration::from_secs(10);
    let copied = tokio::time::timeout(deadline, task)
        .await
        .expect("the copy ends at the first error")
        .unwrap();
    assert_eq!(copied.b_to_a, 0);
    assert!(copied.error.is_some());
}

/// Bytes that arrive after a direction has gone idle (its buffer given up, waiting on one
/// byte) come through whole and in order, however they are split.
#[tokio::test(start_paused = true)]
async fn bytes_after_an_idle_spell_arrive_whole_and_in_order() {
    let (a, mut a_peer) = duplex(64 * 1024);
    let (b, mut b_peer) = duplex(64 * 1024);
    let task = tokio::spawn(copy_both(a, b, 1 << 16, Until::BothEnd));
    let mut sent = Vec::new();
    for (round, len) in [1usize, 2, 4095, 4096, 4097, 20000].into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
        a_peer.write_all(&data).await.unwrap();
        let mut got = vec![0u8; len];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data, "round {round}");
        sent.extend(data);
        // Longer than IDLE_AFTER: the direction gives its buffer up before the next round.
        tokio::time::sleep(IDLE_AFTER * 2).await;
    }
    a_peer.shutdown().await.unwrap();
    b_peer.shutdown().await.unwrap();
    let copied = task.await.unwrap();
    assert_eq!(copied.a_to_b, sent.len() as u64);
    assert!(copied.error.is_none());
}
