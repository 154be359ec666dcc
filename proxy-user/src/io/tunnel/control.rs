//! The control stream as a channel of [`Control`] messages: the same length-delimited
//! JSON as [`super::frame`], read through tokio-util's codec so that receiving is
//! cancel-safe (a heartbeat tick racing a half-arrived message loses nothing).

use super::frame::FrameError;
use super::mux::MuxStream;
use super::{Control, MAX_CONTROL_BYTES};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Both directions of a control stream.
pub(crate) struct ControlChannel {
    framed: Framed<MuxStream, LengthDelimitedCodec>,
}

impl ControlChannel {
    pub(crate) fn new(stream: MuxStream) -> ControlChannel {
        let codec = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(4)
            .max_frame_length(MAX_CONTROL_BYTES)
            .new_codec();
        ControlChannel {
            framed: Framed::new(stream, codec),
        }
    }

    /// The next message; `Closed` when the peer ended the stream.
    pub(crate) async fn recv(&mut self) -> Result<Control, FrameError> {
        match self.framed.next().await {
            None => Err(FrameError::Closed),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(FrameError::Malformed(e.to_string()))
            }
            Some(Err(e)) => Err(FrameError::Io(e)),
            Some(Ok(body)) => {
                serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
            }
        }
    }

    /// Sends one message.
    pub(crate) async fn send(&mut self, msg: &Control) -> std::io::Result<()> {
        let body = serde_json::to_vec(msg).expect("control messages always serialize");
        self.framed.send(Bytes::from(body)).await
    }

    /// Ends this side of the stream.
    pub(crate) async fn close(&mut self) {
        let _ = SinkExt::<Bytes>::close(&mut self.framed).await;
    }
}
