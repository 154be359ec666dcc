//! Length-delimited JSON messages: a big-endian `u32` length, then that many bytes of
//! JSON. [`parse`] is the pure core (every prefix answers "need more", longer input gives
//! the same message); [`read`] and [`write`] apply it to a stream, one message at a time
//! and without reading past it, so the bytes after a stream header stay in the stream.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a message could not be read.
#[derive(Debug, Error)]
pub(crate) enum FrameError {
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("stream closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The message at the start of `bytes`, with the bytes it used; `Ok(None)` while more
/// are needed.
pub(crate) fn parse<T: DeserializeOwned>(
    bytes: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let Some(body) = bytes.get(4..4 + len) else {
        return Ok(None);
    };
    let msg = serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((msg, 4 + len)))
}

/// Encodes one message.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("wire messages always serialize");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads exactly one message (`Closed` on a clean EOF before its first byte).
pub(crate) async fn read<R, T>(r: &mut R, max: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLarge { len: n, max });
    }
    let mut buf = vec![0u8; 4 + n];
    buf[..4].copy_from_slice(&len);
    r.read_exact(&mut buf[4..]).await?;
    parse(&buf, max).map(|m| m.expect("whole message read").0)
}

/// Writes one message and flushes it.
pub(crate) async fn write<W, T>(w: &mut W, msg: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&encode(msg)).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::super::{Control, Kind, Service, StreamHeader, MAX_HEADER_BYTES};
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            service: Service {
                kind: Kind::Ssh,
                name: "node1".into(),
            },
            client: "127.0.0.1:5000".into(),
            identity: Some("CN=alice".into()),
        }
    }

    #[test]
    fn every_prefix_needs_more_and_longer_input_gives_the_same_message() {
        let bytes = encode(&header());
        for i in 0..bytes.len() {
            let r = parse::<StreamHeader>(&bytes[..i], MAX_HEADER_BYTES).unwrap();
            assert!(r.is_none(), "prefix {i}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"SSH-2.0-after the header");
        let (msg, used) = parse::<StreamHeader>(&longer, MAX_HEADER_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!((msg, used), (header(), bytes.len()));
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        let r = parse::<StreamHeader>(&[0, 1, 0, 0], MAX_HEADER_BYTES);
        assert!(matches!(r, Err(FrameError::TooLarge { len: 65536, .. })));
    }

    #[test]
    fn unknown_fields_and_types_are_malformed() {
        let bad = [
            br#"{"type":"hello","version":1}"#.as_slice(),
            br#"{"type":"launch_missiles"}"#,
            br#"{"type":"ping","seq":1,"extra":2}"#,
            b"\xff\xfe",
        ];
        for body in bad {
            let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(body);
            let r = parse::<Control>(&bytes, 1024);
            assert!(matches!(r, Err(FrameError::Malformed(_))), "{body:?}");
        }
    }

    #[test]
    fn control_messages_round_trip() {
        let msgs = [
            Control::Ping { seq: 7 },
            Control::Drain,
            Control::Refused {
                reason: "no".into(),
            },
        ];
        for m in msgs {
            let bytes = encode(&m);
            let (back, _) = parse::<Control>(&bytes, 1024).unwrap().unwrap();
            assert_eq!(back, m);
        }
    }

    #[tokio::test]
    async fn read_leaves_the_bytes_after_the_message_in_the_stream() {
        let mut bytes = encode(&header());
        bytes.extend_from_slice(b"rest");
        let mut r = &bytes[..];
        let h: StreamHeader = read(&mut r, MAX_HEADER_BYTES).await.unwrap();
        assert_eq!(h, header());
        assert_eq!(r, b"rest");
        let mut empty: &[u8] = &[];
        let e = read::<_, StreamHeader>(&mut empty, MAX_HEADER_BYTES).await;
        assert!(matches!(e, Err(FrameError::Closed)));
    }
}
