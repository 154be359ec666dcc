//! Framings that carry one byte stream inside another (`docs/balancers.md`), each turned back into
//! a plain byte stream by a pump task, so the rest of the proxy (and the client's local
//! proxies) never see frames: [`websocket`] (binary WebSocket messages) and [`ping`] (the
//! `u32` length framing of `alpn-ping` and the `-ping` ALPNs); [`raw`] puts an unframed
//! stream (the legacy `alpn` upgrade) behind the same type.
//!
//! Each returns a [`WireStream`]: what is written to it goes out framed, what arrives
//! unframed comes out of it; the peer's end shows up as EOF. Ending it: the ping framing
//! has a half-close, so a write shutdown on the stream shuts down the framed stream's
//! sending side. WebSocket has none (a close frame ends both directions), so a write
//! shutdown sends nothing (the inner TLS `close_notify` already says it), and the close
//! frame goes out when the [`WireStream`] is dropped.
//!
//! Each pump runs its receiving and its sending half concurrently: a send blocked by a
//! slow peer must never stop the receiving half, or two pumps facing each other through a
//! balancer's buffers could each wait for the other to read (a deadlock under bulk load).

pub(crate) mod ping;
pub(crate) mod websocket;

pub(crate) use ping::ping_framed;
pub(crate) use websocket::{websocket, ws_config};

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite;
use tracing::{debug, Instrument, Span};

/// Capacity of the in-process pipe between a pump and its user.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest chunk read from the user and sent as one frame.
const CHUNK_BYTES: usize = 16 * 1024;

/// How a framed stream ended abnormally (logged at debug by the pump; the user of the
/// stream sees EOF or a broken pipe).
#[derive(Debug, Error)]
pub(crate) enum WireError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("frame of {size} bytes is larger than the limit of {max} bytes")]
    Oversize { size: usize, max: usize },
    #[error("websocket text message refused: the tunnel carries binary frames only")]
    Text,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// The user's end of a pump: a byte stream; dropping it tells the pump the user is gone.
#[derive(Debug)]
pub(crate) struct WireStream {
    io: DuplexStream,
    /// Dropped with the stream: the pump's `gone` receiver then resolves.
    _alive: oneshot::Sender<()>,
}

/// The pump's end: the pipe, and a signal that resolves when the user dropped its end.
struct PumpEnd {
    pipe: DuplexStream,
    gone: oneshot::Receiver<()>,
}

fn pipe() -> (WireStream, PumpEnd) {
    let (user, pipe) = tokio::io::duplex(PIPE_BYTES);
    let (alive, gone) = oneshot::channel();
    (
        WireStream {
            io: user,
            _alive: alive,
        },
        PumpEnd { pipe, gone },
    )
}

impl AsyncRead for WireStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WireStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A stream without framing (the legacy `alpn` upgrade) behind the same type.
pub(crate) fn raw<S>(io: S) -> WireStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (user, pump) = pipe();
    tokio::spawn(
        async move {
            let (mut pipe, mut io) = (pump.pipe, io);
            if let Err(e) = tokio::io::copy_bidirectional(&mut pipe, &mut io).await {
                debug!("tunnel ended: {e}");
            }
        }
        .instrument(Span::current()),
    );
    user
}

fn ticker(every: Option<Duration>) -> Option<Interval> {
    every.filter(|d| !d.is_zero()).map(|d| {
        let mut t = interval_at(Instant::now() + d, d);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    })
}

async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
