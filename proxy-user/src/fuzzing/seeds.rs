//! The seed corpora of the fuzz targets (`fuzz/corpus/<target>/`), made from the fixtures
//! and messages the unit tests use. The test checks that the checked-in files are these;
//! `SWITCHYARD_WRITE_SEEDS=1 cargo test -p proxy-user --features fuzzing --lib fuzzing`
//! writes them.

mod messages;
mod session;
mod texts;

use self::messages::{mysql_greeting, pg_startup, proxy_v2, two_records, ws_frame};
use self::session::agent_session;
use self::texts::{COMPLETE_CONFIG, UPGRADE_ANSWERS, UPGRADE_HEADS};
use super::router::ROUTE_CONFIGS;
use crate::io::tunnel::{frame, Control, Kind, Refusal, Service, StreamHeader, StreamReply};
use crate::protocol::{PG_CANCEL_REQUEST, PG_GSSENC_REQUEST};
use std::path::Path;

const HELLOS: [&[u8]; 5] = [
    include_bytes!("../../tests/fixtures/hello_auth.bin"),
    include_bytes!("../../tests/fixtures/hello_curl_h2.bin"),
    include_bytes!("../../tests/fixtures/hello_openssl_kube.bin"),
    include_bytes!("../../tests/fixtures/hello_openssl_noext.bin"),
    include_bytes!("../../tests/fixtures/hello_openssl_ssh.bin"),
];
const PG_SSL: &[u8] = include_bytes!("../../tests/fixtures/pg_sslrequest.bin");
const SSH: &[u8] = include_bytes!("../../tests/fixtures/ssh_banner.bin");

/// One seed: target, file name, bytes.
type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub(super) fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_owned(), bytes));
    };
    let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n".to_vec();
    let v2 = proxy_v2();
    let startup = pg_startup();
    for (name, bytes) in [
        ("pg_ssl", PG_SSL.to_vec()),
        ("pg_gssenc", PG_GSSENC_REQUEST.to_vec()),
        (
            "pg_cancel",
            [&PG_CANCEL_REQUEST[..], &[0, 0, 1, 2, 3, 4, 5, 6]].concat(),
        ),
        ("ssh", SSH.to_vec()),
        ("tls", HELLOS[4].to_vec()),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("h2c", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("v1_ssh", [&v1[..], SSH].concat()),
        ("v2_tls", [&v2[..], HELLOS[1]].concat()),
    ] {
        add("detect", name, bytes);
    }
    let tlv = [
        &v2[..12],
        &[0x21, 0x11, 0, 19],
        &v2[16..],
        &[0x04, 0, 3, 1, 2, 3],
    ]
    .concat();
    for (name, bytes) in [
        ("v1_tcp4", [&[0], &v1[6..]].concat()),
        (
            "v1_tcp6",
            b"\0TCP6 2001:db8::1 2001:db8::2 51000 443\r\nSSH-2.0-x\r\n".to_vec(),
        ),
        ("v1_unknown", b"\0UNKNOWN\r\n".to_vec()),
        ("v2_tcp4", [&[1], &v2[12..]].concat()),
        ("v2_tlv", [&[1], &tlv[12..]].concat()),
        ("v2_local", vec![1, 0x20, 0, 0, 0]),
    ] {
        add("proxy_header", name, bytes);
    }
    for (i, hello) in HELLOS.iter().enumerate() {
        add(
            "client_hello",
            &format!("whole_{i}"),
            [&[0x61], *hello].concat(),
        );
        add(
            "client_hello",
            &format!("split_{i}"),
            [&[0x42], &two_records(hello)[..]].concat(),
        );
    }
    for (name, bytes) in [
        ("ssh_node", "\x05node1.ssh.proxy\0teleport-proxy-ssh"),
        ("kube", "\x01kube-teleport-proxy-alpn.edge.proxy\0h2"),
        ("wildcard", "\x00x.apps.example.com\0http/1.1\0h2"),
        ("tcp_route", "\x00grafana.example.com\0teleport-tcp-ping"),
        (
            "postgres",
            "\x0borders.db.proxy\0teleport-postgres-ping\0teleport-postgres",
        ),
        (
            "auth",
            "\x00\0teleport-auth@726f6f74.teleport.cluster.local",
        ),
        ("no_sni", "\x00"),
    ] {
        add("route", name, bytes.as_bytes().to_vec());
    }
    for (name, head) in UPGRADE_HEADS {
        add("upgrade_request", name, [&[0], head.as_bytes()].concat());
    }
    let masked = |op: u8, payload: &[u8]| ws_frame(op, payload, Some([1, 2, 3, 4]));
    let plain = |op: u8, payload: &[u8]| ws_frame(op, payload, None);
    for (name, bytes) in [
        (
            "server_binary",
            [&[0x04], &masked(0x82, b"hello")[..], &masked(0x89, b"")].concat(),
        ),
        (
            "server_fragments",
            [&[0x24][..], &masked(0x02, b"he"), &masked(0x80, b"llo")].concat(),
        ),
        (
            "server_close",
            [&[0x04][..], &masked(0x82, b"x"), &masked(0x88, &[3, 0xe8])].concat(),
        ),
        (
            "server_text",
            [&[0x04], &masked(0x81, b"text")[..]].concat(),
        ),
        (
            "client_binary",
            [&[0x0d][..], &plain(0x82, &[7; 300]), &plain(0x8a, b"")].concat(),
        ),
    ] {
        add("websocket", name, bytes);
    }
    let ping = |payload: &[u8]| [&(payload.len() as u32).to_be_bytes()[..], payload].concat();
    add(
        "ping_frame",
        "frames",
        [&[0x63][..], &ping(b""), &ping(b"hello"), &ping(&[9; 40])].concat(),
    );
    add(
        "ping_frame",
        "oversize",
        [&[0x02][..], &ping(b"abc"), &ping(&[1; 17])].concat(),
    );
    for (i, text) in ROUTE_CONFIGS.iter().enumerate() {
        add("config", &format!("routes_{i}"), text.as_bytes().to_vec());
    }
    add("config", "complete", COMPLETE_CONFIG.as_bytes().to_vec());
    for (name, answer) in UPGRADE_ANSWERS {
        add("client_upgrade", name, answer.to_vec());
    }
    add(
        "db_first_packet",
        "pg_ssl_startup",
        [&[0], PG_SSL, &startup].concat(),
    );
    add(
        "db_first_packet",
        "mysql_greeting",
        [&[1][..], &mysql_greeting()].concat(),
    );
    for (i, msg) in controls().iter().enumerate() {
        add(
            "tunnel_frame",
            &format!("control_{i}"),
            [&[0][..], &frame::encode(msg)].concat(),
        );
    }
    let header = StreamHeader {
        service: svc(Kind::Ssh, "node1"),
        client: "203.0.113.7:5000".into(),
        identity: Some("CN=alice, O=devs".into()),
    };
    add(
        "tunnel_frame",
        "header",
        [&[1][..], &frame::encode(&header), b"SSH-2.0-x"].concat(),
    );
    let reply = StreamReply {
        error: Some("no such service".into()),
    };
    add(
        "tunnel_frame",
        "reply",
        [&[2][..], &frame::encode(&reply)].concat(),
    );
    add(
        "tunnel_session",
        "hello_ping",
        [&[0x61][..], &agent_session()].concat(),
    );
    // The long run's finding in yamux (docs/fuzzing.md): WindowUpdate + SYN, credit near
    // u32::MAX.
    let overflow = b"\x61\0\x01\0\x61\0\x02\x7d\xff\xff\xff\x37\x7d".to_vec();
    add("tunnel_session", "yamux_syn_credit_overflow", overflow);
    out
}

fn svc(kind: Kind, name: &str) -> Service {
    Service {
        kind,
        name: name.into(),
    }
}

/// The control messages of a tunnel's life.
pub(super) fn controls() -> Vec<Control> {
    vec![
        Control::Hello {
            version: 1,
            agent_id: "edge-1234".into(),
            tunnels: 2,
            services: vec![svc(Kind::Ssh, "node1"), svc(Kind::Tcp, "echo")],
        },
        Control::Welcome {
            proxy_id: "p1".into(),
            peers: vec!["p2.example.com:443".into()],
            heartbeat_ms: 5000,
            accepted: vec![svc(Kind::Ssh, "node1")],
            refused: vec![Refusal {
                service: svc(Kind::Tcp, "echo"),
                reason: "not allowed".into(),
            }],
        },
        Control::Full {
            proxy_id: "p1".into(),
            peers: vec![],
        },
        Control::Ping { seq: 7 },
        Control::Drain,
    ]
}

/// The checked-in seeds are the generator's (rewritten with `SWITCHYARD_WRITE_SEEDS=1`),
/// each target has some, and all of them stay small.
#[test]
fn checked_in_seeds_are_the_generated_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = std::env::var_os("SWITCHYARD_WRITE_SEEDS").is_some();
    let seeds = seeds();
    let total: usize = seeds.iter().map(|(_, _, b)| b.len()).sum();
    assert!(total < 1 << 20, "{total} bytes of seeds");
    for (target, name, bytes) in &seeds {
        let path = root.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("corpus dir");
            std::fs::write(&path, bytes).expect("seed");
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            &on_disk == bytes,
            "{} differs from the generator",
            path.display()
        );
    }
    for target in
        std::fs::read_dir(root.parent().expect("fuzz").join("fuzz_targets")).expect("targets")
    {
        let file = target.expect("entry").file_name();
        let target = file.to_string_lossy().trim_end_matches(".rs").to_owned();
        assert!(
            seeds.iter().any(|(t, _, _)| *t == target),
            "no seed for {target}"
        );
    }
}
