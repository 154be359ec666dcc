//! The ping framing as a byte stream: a big-endian `u32` length then the payload, where a
//! zero length is a ping. Used by the legacy `alpn-ping` upgrade and inside TLS by the
//! `-ping` ALPNs. The length-delimited codec is tokio-util's.

use super::{pipe, tick, ticker, WireError, WireStream, CHUNK_BYTES};
use crate::io::both_directions;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::{debug, Instrument, Span};

/// Bridges a ping-framed stream to a byte stream; `ping` is the keep-alive interval of the
/// side that sends pings (the server), `max_frame` bounds incoming frames.
pub(crate) fn ping_framed<S>(io: S, ping: Option<Duration>, max_frame: usize) -> WireStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = pipe();
    let codec = ping_codec(max_frame);
    tokio::spawn(
        async move {
            if let Err(e) = pump_ping(Framed::new(io, codec), pump.pipe, ping).await {
                debug!("ping-framed stream ended: {e}");
            }
        }
        .instrument(Span::current()),
    );
    user
}

/// The ping framing's codec: u32 big-endian length, payload, at most `max_frame` bytes.
fn ping_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

async fn pump_ping<S>(
    framed: Framed<S, LengthDelimitedCodec>,
    pipe: DuplexStream,
    ping: Option<Duration>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_user, mut to_user) = tokio::io::split(pipe);
    let (mut sink, mut stream) = framed.split::<Bytes>();
    let receive = async {
        while let Some(frame) = stream.next().await {
            let payload = frame?;
            // A zero-length frame is a ping.
            if !payload.is_empty() {
                to_user.write_all(&payload).await?;
            }
        }
        to_user.shutdown().await?;
        Ok(())
    };
    let send = async {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut ticker = ticker(ping);
        loop {
            tokio::select! {
                n = from_user.read(&mut buf) => match n? {
                    // Flushes and shuts down the framed stream's write side (half-close).
                    0 => break sink.close().await.map_err(WireError::from),
                    n => sink.send(Bytes::copy_from_slice(&buf[..n])).await?,
                },
                _ = tick(&mut ticker) => sink.send(Bytes::new()).await?,
            }
        }
    };
    match both_directions(receive, send).await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn ping_framing_round_trip_skips_pings_and_half_closes() {
        let (a, mut raw) = duplex(1 << 16);
        let mut user = ping_framed(a, Some(Duration::from_millis(20)), 1024);
        user.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 9];
        raw.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\0\0\0\x05hello");
        // A ping arrives within the interval: four zero bytes.
        let mut ping = [1u8; 4];
        raw.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping, [0, 0, 0, 0]);
        // Incoming: a ping, then a frame; the user sees only the payload.
        raw.write_all(b"\0\0\0\0\0\0\0\x03abc").await.unwrap();
        let mut three = [0u8; 3];
        user.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"abc");
        // The peer's EOF is the user's EOF, and the user can still send.
        raw.shutdown().await.unwrap();
        let mut rest = Vec::new();
        user.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        user.write_all(b"z").await.unwrap();
        user.shutdown().await.unwrap();
        let mut tail = Vec::new();
        raw.read_to_end(&mut tail).await.unwrap();
        // Possibly pings before the frame; the last frame is ours.
        assert!(tail.ends_with(b"\0\0\0\x01z"), "{tail:?}");
        assert!(tail[..tail.len() - 5].chunks(4).all(|c| c == [0, 0, 0, 0]));
    }

    #[tokio::test]
    async fn ping_framing_refuses_oversize_frames() {
        let (a, mut raw) = duplex(1 << 16);
        let mut user = ping_framed(a, None, 8);
        raw.write_all(b"\0\0\0\x09123456789").await.unwrap();
        let mut rest = Vec::new();
        // The pump ends: the user's stream closes without delivering the frame.
        let _ = user.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}
