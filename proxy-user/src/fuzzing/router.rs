//! The proxy's side: first bytes (PROXY headers included), the ClientHello, the route
//! matcher, the web route's upgrade request, and the configuration the routes come from.

use super::split;
use super::stream::cuts;
use crate::config::{Config, Nets, XffMode};
use crate::io::tunnel::{Kind, Service};
pub(super) use crate::router::detect::detect as detect_bytes;
use crate::router::detect::{Detected, PROXY_V1_MAX, PROXY_V2_SIGNATURE};
use crate::router::hello::{self, ClientHello};
use crate::router::route::{Decision, Table};
use crate::router::webapi::{self, Xff};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
pub(super) const ROUTE_CONFIGS: [&str; 3] = [
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
pub(super) fn config_dir() -> &'static Path {
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
