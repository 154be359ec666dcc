//! The seed of `tunnel_session`: the bytes a real agent sends on a tunnel, recorded from
//! the tunnel code itself (a yamux client session and its control stream) so that the seed
//! follows the framing whenever it changes.

use super::super::block_on;
use super::controls;
use crate::io::tunnel::control::ControlChannel;
use crate::io::tunnel::mux::{self, Limits, Mode};
use crate::io::tunnel::Control;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an agent sends on a tunnel (under TLS): a yamux session whose first stream is the
/// control stream carrying Hello and a heartbeat, then the session's close.
pub(super) fn agent_session() -> Vec<u8> {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let io = Recorder(sent.clone());
    block_on(async {
        let limits = Limits {
            max_streams: 4,
            window_bytes: 0,
        };
        let mut session = mux::start(io, Mode::Client, limits, 1);
        let mut control = ControlChannel::new(session.opener.open().await.expect("open"));
        for msg in &controls()[..] {
            if matches!(msg, Control::Hello { .. } | Control::Ping { .. }) {
                control.send(msg).await.expect("send");
            }
        }
        control.close().await;
        session.close();
        let _ = (&mut session.done).await;
    });
    let mut bytes = sent.lock().expect("recorder").clone();
    // yamux opens with a ping (its round-trip measure) of a random nonce: fix it, so the
    // seed is the same every time. Frames: a 12-byte header (version, type, flags,
    // stream, length), and `length` bytes of body for data frames (type 0) only.
    let mut at = 0;
    while let Some(header) = bytes.get_mut(at..at + 12) {
        let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        at += 12;
        match header[1] {
            0 => at += len as usize,
            2 => header[8..12].copy_from_slice(&[1, 2, 3, 4]),
            _ => {}
        }
    }
    bytes
}

/// A peer that never answers and records what it is sent.
struct Recorder(Arc<Mutex<Vec<u8>>>);

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.0.lock().expect("recorder").extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
