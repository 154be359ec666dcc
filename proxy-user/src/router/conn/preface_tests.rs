//! The preface reader: answers, limits, EOF and the one deadline, fed through in-memory
//! pipes; time is tokio's paused clock, so deadlines are exact, not slept for.

use super::*;
use tokio::io::{duplex, AsyncWriteExt};

/// A parser that answers with the line's length once a `\n` has arrived.
fn line(b: &[u8]) -> Result<Option<usize>, ConnError> {
    Ok(b.iter().position(|&c| c == b'\n'))
}

/// A parser that never answers.
fn never(_: &[u8]) -> Result<Option<()>, ConnError> {
    Ok(None)
}

#[tokio::test]
async fn answers_once_the_parser_does_even_one_byte_at_a_time() {
    let (mut client, mut server) = duplex(64);
    let mut pre = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    let writer = tokio::spawn(async move {
        for b in b"hello\nrest" {
            client.write_all(&[*b]).await.unwrap();
        }
        client
    });
    assert_eq!(pre.read_until(&mut server, "line", line).await.unwrap(), 5);
    assert!(pre.rest().starts_with(b"hello\n"));
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn skipped_bytes_are_consumed_but_not_replayed() {
    let (mut client, mut server) = duplex(64);
    client.write_all(b"HDR|payload\n").await.unwrap();
    let mut pre = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    pre.read_until(&mut server, "line", line).await.unwrap();
    pre.skip(4);
    assert_eq!(pre.rest(), b"payload\n");
    assert_eq!(pre.consumed(), 12);
    assert_eq!(pre.into_rest(), b"payload\n");
}

#[tokio::test]
async fn the_socket_allows_proxy_headers_on_top_of_the_limit_and_reports_the_limit() {
    let (mut client, mut server) = duplex(1 << 16);
    client.write_all(&[b'x'; 8192]).await.unwrap();
    let mut pre = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    match pre.read_until(&mut server, "preface", never).await {
        Err(ConnError::TooLarge(limit)) => assert_eq!(limit, 512),
        other => panic!("expected TooLarge(512), got {other:?}"),
    }
    assert_eq!(pre.consumed() as usize, 512 + PROXY_HEADER_ALLOWANCE);
}

/// Once detection is done, the room for PROXY headers is gone: the protocol's own bytes
/// may grow to the limit past the headers, the same on the socket as in a tunnel.
#[tokio::test]
async fn after_detection_the_protocol_bytes_are_limited_past_the_headers() {
    for header in [0, 100] {
        let (mut client, mut server) = duplex(1 << 16);
        client.write_all(&[b'h'; 100][..header]).await.unwrap();
        client.write_all(&[b'x'; 8192]).await.unwrap();
        let mut pre = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
        let header_in = |b: &[u8]| Ok::<_, ConnError>((b.len() >= header).then_some(()));
        pre.read_until(&mut server, "PROXY header", header_in)
            .await
            .unwrap();
        pre.skip(header);
        pre.settle();
        match pre.read_until(&mut server, "ClientHello", never).await {
            Err(ConnError::TooLarge(limit)) => assert_eq!(limit, 512),
            other => panic!("expected TooLarge(512), got {other:?}"),
        }
        // Nothing more is read once the limit is reached. With a header, the one 4 KiB
        // read that brought it already held more than the limit.
        let expected = if header == 0 { 512 } else { 4096 };
        assert_eq!(pre.consumed(), expected, "after a {header}-byte header");
    }
}

/// The regression of issue 9: inside a tunnel the limit is `max_hello_bytes` alone, and
/// below the PROXY header allowance the old arithmetic underflowed (a panic in debug).
#[tokio::test]
async fn inside_a_tunnel_the_limit_is_max_hello_bytes_alone_even_below_the_allowance() {
    let (mut client, mut server) = duplex(1 << 16);
    client.write_all(&[b'x'; 8192]).await.unwrap();
    let outer = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    let mut pre = outer.inner();
    match pre.read_until(&mut server, "ClientHello", never).await {
        Err(ConnError::TooLarge(limit)) => assert_eq!(limit, 512),
        other => panic!("expected TooLarge(512), got {other:?}"),
    }
    assert_eq!(pre.consumed(), 512);
}

#[tokio::test]
async fn eof_before_an_answer_names_the_stage() {
    let (mut client, mut server) = duplex(64);
    client.write_all(b"no newline").await.unwrap();
    drop(client);
    let mut pre = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    match pre.read_until(&mut server, "request line", line).await {
        Err(ConnError::ClosedEarly(stage)) => assert_eq!(stage, "request line"),
        other => panic!("expected ClosedEarly, got {other:?}"),
    }
    assert_eq!(pre.rest(), b"no newline");
}

#[tokio::test]
async fn a_parse_error_ends_the_read() {
    let (mut client, mut server) = duplex(64);
    client.write_all(b"?").await.unwrap();
    let mut pre = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    let refuse =
        |b: &[u8]| -> Result<Option<()>, ConnError> { Err(ConnError::Unknown(hex::encode(b))) };
    match pre.read_until(&mut server, "preface", refuse).await {
        // The parser sees the empty buffer first, and refuses that.
        Err(ConnError::Unknown(hex)) => assert_eq!(hex, ""),
        other => panic!("expected Unknown, got {other:?}"),
    }
}

/// One deadline from accept: a stream read after an earlier stage took most of the time
/// (a dribbled request head, say) gets only what is left of it, not a fresh timeout.
#[tokio::test(start_paused = true)]
async fn an_inner_stage_gets_what_is_left_of_the_one_deadline() {
    let start = Instant::now();
    let outer = Preface::accepted(Deadline::after(Duration::from_secs(10)), 512);
    tokio::time::advance(Duration::from_secs(6)).await;
    let (_client, mut server) = duplex(64);
    let mut pre = outer.inner();
    match pre
        .read_until(&mut server, "TLS inside the upgrade", never)
        .await
    {
        Err(ConnError::Timeout(stage, budget)) => {
            assert_eq!(stage, "TLS inside the upgrade");
            assert_eq!(budget, Duration::from_secs(10));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_any_future_with_the_same_message() {
    let deadline = Deadline::after(Duration::from_secs(3));
    let never = std::future::pending::<()>();
    match deadline.run("TLS handshake", never).await {
        Err(ConnError::Timeout(stage, budget)) => {
            assert_eq!((stage, budget), ("TLS handshake", Duration::from_secs(3)));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}
