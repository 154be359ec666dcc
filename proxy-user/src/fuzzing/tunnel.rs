//! The reverse tunnel's wire as the proxy and the agent read it: length-delimited JSON
//! messages, and an agent's yamux session with its control stream.

use super::stream::Chunked;
use super::{block_on, split};
use crate::io::tunnel::{frame, Control, StreamHeader, StreamReply};

/// The tunnel's messages (`io::tunnel::frame`): control messages, stream headers and
/// replies (`ctl` picks which); every prefix answers "need more" or the whole input's
/// answer; a message read re-encodes to one that reads back the same; reading from a
/// stream cut by `ctl` gives what parsing gives.
pub fn tunnel_frame(data: &[u8]) {
    use crate::io::tunnel::{MAX_CONTROL_BYTES, MAX_HEADER_BYTES};
    let (ctl, bytes) = split(data);
    match ctl % 3 {
        0 => frames::<Control>(ctl, bytes, MAX_CONTROL_BYTES),
        1 => frames::<StreamHeader>(ctl, bytes, MAX_HEADER_BYTES),
        _ => frames::<StreamReply>(ctl, bytes, MAX_HEADER_BYTES),
    }
    if let Ok(Some((Control::Hello { services, .. }, _))) =
        frame::parse::<Control>(bytes, MAX_CONTROL_BYTES)
    {
        for s in services {
            let _ = crate::config::service_name(&s.name);
            let _ = crate::config::ServePattern::parse(&s.to_string());
        }
    }
}

fn frames<T>(ctl: u8, bytes: &[u8], max: usize)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let answer = |r: Result<Option<(T, usize)>, frame::FrameError>| match r {
        Ok(Some((m, used))) => Ok(Some((format!("{m:?}"), used))),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    };
    let whole = answer(frame::parse::<T>(bytes, max));
    let end = match &whole {
        Ok(Some((_, used))) => *used,
        _ => bytes.len().min(4 + max),
    };
    for n in 0..end.min(bytes.len()) {
        let got = answer(frame::parse::<T>(&bytes[..n], max));
        assert!(
            got == Ok(None) || got == whole,
            "prefix of {n} bytes: {got:?}, whole: {whole:?}"
        );
    }
    if let Ok(Some((msg, _))) = frame::parse::<T>(bytes, max) {
        let again = frame::encode(&msg);
        match frame::parse::<T>(&again, usize::MAX) {
            Ok(Some((back, used))) => assert!(back == msg && used == again.len()),
            other => panic!("{msg:?} encodes to {again:?}, which reads as {other:?}"),
        }
    }
    let read = block_on(frame::read::<_, T>(&mut Chunked::new(bytes, ctl), max));
    match (read, frame::parse::<T>(bytes, max)) {
        (Ok(m), Ok(Some((p, _)))) => assert_eq!(m, p),
        (Ok(m), other) => panic!("read {m:?}, parse {other:?}"),
        (Err(_), Ok(Some((p, _)))) => panic!("read failed, parse gave {p:?}"),
        (Err(_), _) => {}
    }
}

/// An agent's side of a tunnel as the proxy receives it: the bytes under yamux (a server
/// session over a stream cut by `ctl`), the first stream the agent opens taken as the
/// control stream, its messages read through the control channel.
pub fn tunnel_session(data: &[u8]) {
    use crate::io::tunnel::control::ControlChannel;
    use crate::io::tunnel::mux::{self, Limits, Mode};
    let (ctl, bytes) = split(data);
    block_on(async {
        let limits = Limits {
            max_streams: 16,
            window_bytes: 0,
        };
        let mut session = mux::start(Chunked::new(bytes, ctl), Mode::Server, limits, 1);
        if let Some(control) = session.inbound.recv().await {
            session.inbound.close();
            let mut channel = ControlChannel::new(control);
            for seq in 0..64 {
                match channel.recv().await {
                    Ok(msg) => assert!(!frame::encode(&msg).is_empty()),
                    Err(_) => break,
                }
                let _ = channel.send(&Control::Pong { seq }).await;
            }
        }
        session.close();
        let _ = (&mut session.done).await;
    });
}
