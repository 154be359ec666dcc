//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`, one per function; docs/fuzzing.md),
//! built only with the `fuzzing` feature. Each feeds bytes to the real parsers that see
//! a stranger's or an agent's bytes, the way the proxy and the client feed them, and
//! asserts what is cheap to assert: a prefix answers "need more" or the whole input's
//! answer, a split input the unsplit one's, a framing delivers exactly the payloads.
//!
//! Most inputs start with one control byte (`ctl`) that picks a mode or a limit and how
//! the rest is cut into reads ([`cuts`]); the rest is what the peer sends. The async
//! targets run on a current-thread runtime with paused time, so timeouts inside the code
//! under test fire as soon as nothing else can run, and a read never waits for a peer.

#[cfg(test)]
mod seeds;
mod stream;

use crate::config::{Config, Nets, XffMode};
use crate::io::tunnel::{frame, Control, Kind, Service, StreamHeader, StreamReply};
use crate::router::detect::{detect as detect_bytes, Detected, PROXY_V1_MAX, PROXY_V2_SIGNATURE};
use crate::router::hello::{self, ClientHello};
use crate::router::route::{Decision, Table};
use crate::router::webapi::{self, Xff};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use stream::{cuts, Chunked};

/// The smallest `limits.max_ws_frame_bytes` the configuration allows: the framings send
/// the user's bytes in chunks of up to this much, so the user writes only under a limit at
/// least this large (smaller limits test the receiving side alone).
const CONFIG_MIN_FRAME: usize = 16 * 1024;

/// The first byte, and the rest.
fn split(data: &[u8]) -> (u8, &[u8]) {
    data.split_first().map_or((0, data), |(&c, rest)| (c, rest))
}

/// Runs `fut` to completion on a fresh current-thread runtime with paused time; tasks it
/// spawned and left behind end with the runtime.
fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
        .block_on(fut)
}

/// First-bytes detection: every prefix answers `NeedMore` or the whole input's answer (a
/// bad PROXY header may be named differently once more of it has arrived); then the
/// connection's loop, which strips a PROXY header and detects again after it.
pub fn detect(data: &[u8]) {
    let whole = detect_bytes(data);
    for n in 0..data.len() {
        let got = detect_bytes(&data[..n]);
        let same = match (&got, &whole) {
            (Detected::NeedMore, _) => true,
            (Detected::BadProxy(_), Detected::BadProxy(_)) => true,
            (got, whole) => got == whole,
        };
        assert!(same, "prefix of {n} bytes: {got:?}, whole input: {whole:?}");
    }
    let mut start = 0;
    for _ in 0..2 {
        let Detected::Proxy(h) = detect_bytes(&data[start..]) else {
            break;
        };
        assert!(h.len > 0 && h.len <= data.len() - start, "{h:?}");
        start += h.len;
    }
}

/// PROXY v1 (`ctl` even: `PROXY ` is prepended) or v2 (odd: the v2 signature is): the
/// detection properties, and a header's length is where its line ends (v1) or what its
/// length field says (v2).
pub fn proxy_header(data: &[u8]) {
    let (ctl, rest) = split(data);
    let prefix: &[u8] = if ctl & 1 == 0 {
        b"PROXY "
    } else {
        PROXY_V2_SIGNATURE
    };
    let bytes = [prefix, rest].concat();
    detect(&bytes);
    if let Detected::Proxy(h) = detect_bytes(&bytes) {
        match h.version {
            1 => {
                assert!(h.len <= PROXY_V1_MAX && bytes[..h.len].ends_with(b"\r\n"));
            }
            2 => assert_eq!(
                h.len,
                16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]))
            ),
            v => panic!("PROXY version {v}"),
        }
    }
}

/// The ClientHello reader as the connection drives it: parsed again after each read, the
/// reads cut by `ctl`; the first answer is the unsplit input's, and longer input keeps it.
/// The limit (`limits.max_hello_bytes`) is one of four, by `ctl`.
pub fn client_hello(data: &[u8]) {
    let (ctl, bytes) = split(data);
    let max = [512, 4096, 16 * 1024, 1 << 20][usize::from(ctl & 3)];
    let whole = hello::parse(bytes, max);
    let mut first = None;
    for end in cuts(ctl, bytes.len()) {
        let got = hello::parse(&bytes[..end], max);
        match &first {
            None if got == Ok(None) => {}
            None => first = Some(got),
            Some(answer) => assert_eq!(&got, answer, "{end} of {} bytes", bytes.len()),
        }
    }
    assert_eq!(first.unwrap_or(Ok(None)), whole);
}

/// The configurations the route target routes against (`router/route/tests.rs` and
/// `agents_tests.rs`): static routes and built-ins, and a tunnel section with agents.
const ROUTE_CONFIGS: [&str; 3] = [
    "auth_service: {cluster_name: root}\nproxy_service: {web_listen_addr: '127.0.0.1:0'}\n\
     upstreams:\n  web: web:80\n  ssh: ssh:22\n  ssh_nodes: {node1: 'node1:22', Node2: 'node2:2222'}\n\
     \x20 tunnel: tunnel:3024\n  postgres: pg:5432\n  kube: kube:443\n\
     \x20 auth: {root: auth-root:3025, leaf: auth-leaf:3025}\n\
     routes:\n\
     \x20 - {name: grafana, sni: grafana.example.com, alpn: teleport-tcp, mode: terminate, upstream: 'grafana:3000', allow: [alice]}\n\
     \x20 - {name: wild, sni: '*.apps.example.com', mode: passthrough, upstream: 'apps:443'}\n\
     \x20 - {name: exact-app, sni: 'one.apps.example.com', mode: terminate, upstream: 'one:80'}\n\
     \x20 - {name: pg-special, sni: db1.example.com, alpn: teleport-postgres, mode: terminate, upstream: 'db1:5432'}\n",
    "proxy_service: {web_listen_addr: '127.0.0.1:0', client_ca_file: ca.crt}\n\
     upstreams: {ssh: 'bastion:22', postgres: 'pg:5432', kube: 'kube:443', ssh_nodes: {node1: 'n1:22'}}\n\
     routes:\n  - {name: grafana, sni: grafana.proxy, alpn: teleport-tcp, mode: terminate, upstream: 'g:1'}\n\
     tunnel: {agents: [{identity: edge, serve: ['ssh:*', 'tcp:*', 'http:*', 'postgres:*', 'mysql:*', 'mongodb:*', 'kube:*']}]}\n",
    "proxy_service: {web_listen_addr: '127.0.0.1:0'}\nupstreams: {mysql: 'my:3306'}\n",
];

/// A directory holding an empty `ca.crt`, for configurations that name one.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchyard-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("ca.crt"), b"").expect("ca.crt");
        dir
    })
}

/// The route matcher with an arbitrary SNI and ALPN list: `ctl` picks the table and
/// which kinds of service a connected agent serves under the SNI's names; the rest is
/// the SNI and the ALPN values, NUL-separated (an empty first field: no SNI). A routed
/// decision names an entry of the table.
pub fn route(data: &[u8]) {
    static TABLES: OnceLock<Vec<Table>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        ROUTE_CONFIGS
            .iter()
            .map(|c| Table::new(&Config::parse(c, config_dir()).expect("route config")))
            .collect()
    });
    let (ctl, rest) = split(data);
    let mut fields = rest
        .split(|&b| b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let sni = fields.next().filter(|s| !s.is_empty());
    let hello = ClientHello {
        sni: sni.map(|s| s.to_ascii_lowercase()),
        alpn: fields.collect(),
    };
    let sni = hello.sni.as_deref().unwrap_or("");
    let labels: Vec<&str> = sni.split('.').collect();
    let mut agents = BTreeSet::new();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        if ctl >> 1 & (1 << i) != 0 {
            let name = if kind == Kind::Kube {
                labels.get(1)
            } else {
                labels.first()
            };
            let name = name.copied().unwrap_or_default().to_owned();
            agents.insert(Service { kind, name });
        }
    }
    let table = &tables[usize::from(ctl & 1) + usize::from(ctl >> 7)];
    let entry = match table.route(&hello, &agents) {
        Decision::Route(e) => e,
        Decision::Agent { entry, service } => {
            assert!(agents.contains(&service), "{service} is not served");
            entry
        }
        Decision::Reject { reason, .. } => return assert!(!reason.is_empty()),
    };
    assert!(table.entries().iter().any(|e| std::ptr::eq(e, entry)));
}

/// The web route's first request head (`webapi::target`, `parse`), then the upgrade
/// decision under each `trust_x_forwarded_for` setting, from a trusted sender and not.
/// A prefix of the head answers `Ok(None)`, the whole input's answer, or "too large".
pub fn upgrade_request(data: &[u8]) {
    static TRUSTED: OnceLock<Nets> = OnceLock::new();
    let trusted = TRUSTED.get_or_init(|| {
        serde_yaml_ng::from_str("[10.0.0.0/8, '2001:db8::/32', 203.0.113.7]").expect("nets")
    });
    let (ctl, bytes) = split(data);
    let _ = webapi::target(bytes);
    let max = if ctl & 1 == 0 { 16 * 1024 } else { 512 };
    let whole = webapi::parse(bytes, max);
    for n in 0..bytes.len() {
        let got = webapi::parse(&bytes[..n], max);
        let fine = matches!(got, Ok(None) | Err(webapi::HeadError::TooLarge(_))) || got == whole;
        assert!(fine, "prefix of {n} bytes: {got:?}, whole input: {whole:?}");
    }
    let Ok(Some(req)) = whole else { return };
    for mode in [XffMode::Off, XffMode::Single, XffMode::Hops] {
        for sender_trusted in [false, true] {
            let xff = Xff {
                mode,
                sender_trusted,
            };
            match webapi::decide(&req, xff, trusted) {
                Ok(accepted) => {
                    let head = accepted.response();
                    assert!(head.starts_with(b"HTTP/1.1 101 ") && head.ends_with(b"\r\n\r\n"));
                }
                Err(refused) => {
                    let _ = (refused.outcome(), refused.response());
                }
            }
        }
    }
}

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

/// The configuration loader (YAML, then `validate()`), and what is built from a valid
/// configuration: the routing table, routed once per built-in ALPN, the `/webapi/ping`
/// answer, the class budgets.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text, config_dir()) {
        Ok(c) => c,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let table = Table::new(&config);
    let agents = BTreeSet::new();
    for alpn in [
        "teleport-proxy-ssh",
        "teleport-postgres-ping",
        "h2",
        "teleport-tcp",
    ] {
        for sni in [
            None,
            Some("grafana.example.com"),
            Some("kube-teleport-proxy-alpn.x"),
        ] {
            let hello = ClientHello {
                sni: sni.map(str::to_owned),
                alpn: vec![alpn.to_owned()],
            };
            let _ = table.route(&hello, &agents);
        }
    }
    let _ = webapi::ping_body(&config);
    let metrics = std::sync::Arc::new(crate::router::metrics::Metrics::new());
    let _ = crate::router::admission::Admission::new(&config, metrics);
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
