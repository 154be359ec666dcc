//! Byte streams through the framings (WebSocket, the `u32` ping framing), the local
//! proxy's reading of the upgrade's answer, and the databases' first packets.

use super::router::detect_bytes;
use super::stream::{self, Chunked};
use super::{block_on, split, CONFIG_MIN_FRAME};

/// WebSocket frames from the peer through the real pump (`io::wire::websocket`): `ctl`
/// picks the role (server: the proxy's side of the upgrade, masked frames expected;
/// client: the local proxy's), the frame limit and the cuts; the user's side may send
/// too (under a limit the configuration allows). What reaches the user is never more
/// than arrived.
pub fn websocket(data: &[u8]) {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let (ctl, bytes) = split(data);
    let role = if ctl & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = [16, 1024, 16 * 1024, 1 << 20][usize::from(ctl >> 1 & 3)];
    let got = block_on(async {
        let io = Chunked::new(bytes, ctl);
        let config = crate::io::wire::ws_config(max);
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, role, Some(config)).await;
        let user = crate::io::wire::websocket(ws, None);
        stream::drain(user, ctl & 8 != 0 && max >= CONFIG_MIN_FRAME).await
    });
    assert!(got.len() <= bytes.len());
}

/// The `u32` ping framing (`io::wire::ping_framed`) from the peer: exactly the payloads of
/// the leading complete frames within the limit (chosen by `ctl`) reach the user.
pub fn ping_frame(data: &[u8]) {
    let (ctl, bytes) = split(data);
    let max = [0, 1, 16, 1024, 16 * 1024, 1 << 20, 1 << 20, 1 << 20][usize::from(ctl & 7)];
    let got = block_on(async {
        let user = crate::io::wire::ping_framed(Chunked::new(bytes, ctl), None, max);
        stream::drain(user, ctl & 8 != 0 && max >= CONFIG_MIN_FRAME).await
    });
    let mut expected = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if len > max || tail.len() < len {
            break;
        }
        expected.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    assert!(
        got == expected,
        "{} bytes delivered, {} expected",
        got.len(),
        expected.len()
    );
}

/// The local proxy's connection upgrade (`client::upgrade::upgrade`) reading the server's
/// answer: the `101` head and the checks of each mode (`ctl` bit 0: legacy, else
/// WebSocket, whose accept key is random so the fuzzer meets its check), refusals, then
/// the tunnel's framing carrying the rest.
pub fn client_upgrade(data: &[u8]) {
    use crate::client::upgrade::{upgrade, UpgradeMode};
    let (ctl, bytes) = split(data);
    let mode = if ctl & 1 == 0 {
        UpgradeMode::Legacy
    } else {
        UpgradeMode::Websocket
    };
    block_on(async {
        let io = Chunked::new(bytes, ctl);
        match upgrade(io, mode, "lb.example.com:443").await {
            Ok(tunnel) => {
                let got = stream::drain(tunnel.stream, ctl & 8 != 0).await;
                assert!(got.len() <= bytes.len());
            }
            Err(e) => assert!(!e.is_empty()),
        }
    });
}

/// Database first packets: the proxy's first-bytes detection of the Postgres requests,
/// the local proxy's Postgres startup classification (every prefix shorter than the head
/// needs more, every longer one answers as the head does) run over the packets as
/// `local_startup` reads them, and the MySQL greeting relay (`ctl` bit 0: the same bytes
/// as one packet behind a header) with its `CLIENT_SSL` strip, which changes at most two
/// bytes.
pub fn db_first_packet(data: &[u8]) {
    use crate::client::{mysql, pg};
    let (ctl, bytes) = split(data);
    let _ = detect_bytes(bytes);
    let head = pg::classify(bytes).ok().flatten();
    for n in 0..bytes.len() {
        let got = pg::classify(&bytes[..n]);
        match (n < 8, got) {
            (true, Ok(None)) => {}
            (false, got) => assert_eq!(got.ok().flatten(), head, "prefix of {n} bytes"),
            (true, got) => panic!("prefix of {n} bytes: {got:?}"),
        }
    }
    // `local_startup`: answer encryption requests, forward the first other packet.
    let mut rest = bytes;
    while let Ok(Some((len, pg::Startup::Encryption))) = pg::classify(rest) {
        assert_eq!(len, 8);
        rest = &rest[8..];
    }

    let mut payload = bytes.to_vec();
    if mysql::strip_ssl(&mut payload).is_ok() {
        assert!(payload.iter().zip(bytes).filter(|(a, b)| a != b).count() <= 1);
    }
    let packet = if ctl & 1 == 0 {
        bytes.to_vec()
    } else {
        let mut p = (bytes.len() as u32).to_le_bytes();
        p[3] = 0;
        [&p[..], bytes].concat()
    };
    let mut local = Vec::new();
    let relayed = block_on(mysql::relay_greeting(
        &mut Chunked::new(&packet, ctl),
        &mut local,
        |e| crate::client::ClientError::io("reading the greeting")(e),
    ));
    if let Ok(n) = relayed {
        assert!(n as usize == local.len() && local.len() <= packet.len());
    }
}
