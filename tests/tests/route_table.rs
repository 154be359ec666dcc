//! Every route of the routing table (`docs/config.md`) with a real `openssl s_client`, against one proxy
//! whose upstreams identify themselves (`upstream=NAME`):
//! - each terminated `teleport-*` ALPN (and `-ping` variant) with a cluster client
//!   certificate reaches its upstream and echoes; with no certificate or one from another
//!   CA it is refused with a TLS alert; a `-ping` ALPN carries the u32 length framing
//!   both ways (`docs/balancers.md`), so the client frames what it sends and sees framed replies;
//! - kube SNI and `teleport-auth@<hex(cluster)>` pass through: the client sees the
//!   upstream's own certificate;
//! - a ClientHello split over many TLS records and TCP segments (a real client behind a
//!   chopping forwarder) is routed and completes, terminated and passed through.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use switchyard_tests::pki::CertFiles;
use switchyard_tests::{DemoUpstream, ProxyConfig, SClient, Switchyard, TestPki};

const T: Duration = Duration::from_secs(10);

/// (ALPN offered, upstream that must answer)
const TERMINATED: &[(&str, &str)] = &[
    ("teleport-proxy-ssh", "ssh"),
    ("teleport-reversetunnel", "tunnel"),
    ("teleport-reversetunnelv2", "tunnel"),
    ("teleport-postgres", "postgres"),
    ("teleport-postgres-ping", "postgres"),
    ("teleport-mysql", "mysql"),
    ("teleport-mysql-ping", "mysql"),
    ("teleport-mongodb", "mongodb"),
    ("teleport-mongodb-ping", "mongodb"),
    ("teleport-tcp", "app"),
    ("teleport-tcp-ping", "app"),
];

/// `payload` in the ping framing: big-endian u32 length, then the bytes.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

struct Env {
    pki: TestPki,
    kube_cert: CertFiles,
    auth_cert: CertFiles,
    proxy: Switchyard,
    _upstreams: Vec<DemoUpstream>,
}

fn env() -> Env {
    let pki = TestPki::new().unwrap();
    let kube_cert = pki
        .issue_server("kube", "kube.internal", &["kube.internal"])
        .unwrap();
    let auth_cert = pki
        .issue_server("auth", "auth.internal", &["auth.internal"])
        .unwrap();
    let mut config = ProxyConfig::default();
    let mut upstreams = Vec::new();
    for name in ["ssh", "tunnel", "postgres", "mysql", "mongodb"] {
        let u = DemoUpstream::echo(name).unwrap();
        config = config.upstream(name, u.addr);
        upstreams.push(u);
    }
    let app = DemoUpstream::echo("app").unwrap();
    config.routes.push(format!(
        "{{sni: app.example.test, alpn: teleport-tcp, mode: terminate, upstream: \"{}\"}}",
        app.addr
    ));
    upstreams.push(app);
    let kube = DemoUpstream::tls_echo("kube", &kube_cert).unwrap();
    config = config.upstream("kube", kube.addr);
    upstreams.push(kube);
    let auth = DemoUpstream::tls_echo("auth", &auth_cert).unwrap();
    config
        .upstreams
        .push(("auth".into(), format!("{{example: \"{}\"}}", auth.addr)));
    upstreams.push(auth);
    let proxy = Switchyard::start(&pki, &config).unwrap();
    Env {
        pki,
        kube_cert,
        auth_cert,
        proxy,
        _upstreams: upstreams,
    }
}

fn client(env: &Env, addr: SocketAddr, alpn: &str) -> SClient {
    SClient::new(addr)
        .sni("app.example.test")
        .alpn(alpn)
        .verify(&env.pki.ca_cert())
}

#[test]
fn every_terminated_alpn_reaches_its_upstream_with_a_client_cert() {
    let env = env();
    for (alpn, upstream) in TERMINATED {
        let ping = alpn.ends_with("-ping");
        let input = if ping {
            framed(b"echo-check\n")
        } else {
            b"echo-check\n".to_vec()
        };
        let out = client(&env, env.proxy.web, alpn)
            .cert(&env.pki.client.cert, &env.pki.client.key)
            .run(&input, "echo-check", T)
            .unwrap();
        let greeting = format!("upstream={upstream}\n");
        let at = out.stdout.find(&greeting);
        assert!(at.is_some(), "{alpn}: {out:?}\n{}", env.proxy.log());
        if ping {
            // The greeting starts a frame (it may share it with the echo that followed).
            let at = at.unwrap();
            let len = &out.stdout.as_bytes()[at.saturating_sub(4)..at];
            assert!(
                len.len() == 4 && len[..3] == [0, 0, 0] && len[3] as usize >= greeting.len(),
                "{alpn}: the greeting is not framed: {out:?}"
            );
        }
        assert!(out.stdout.contains("echo-check"), "{alpn}: {out:?}");
        assert!(
            out.stdout.contains(&format!("ALPN protocol: {alpn}")),
            "{alpn}: {out:?}"
        );
    }
    let m = env.proxy.metrics().unwrap();
    assert!(m.contains("route=\"ssh\",action=\"terminate\""), "{m}");
    assert!(m.contains("switchyard_tls_handshake_seconds_count"), "{m}");
}

#[test]
fn every_terminated_alpn_refuses_no_cert_and_wrong_ca() {
    let env = env();
    for (alpn, upstream) in TERMINATED {
        for cert in [None, Some(&env.pki.wrong_client)] {
            let mut c = client(&env, env.proxy.web, alpn);
            if let Some(cert) = cert {
                c = c.cert(&cert.cert, &cert.key);
            }
            let out = c.run_to_end(b"echo-check\n", T).unwrap();
            let which = if cert.is_some() {
                "wrong CA"
            } else {
                "no cert"
            };
            assert!(out.status.is_some(), "{alpn} {which}: left open {out:?}");
            assert!(
                !out.stdout.contains(&format!("upstream={upstream}")),
                "{alpn} {which}: reached the upstream: {out:?}"
            );
            assert!(
                out.stderr.contains("alert"),
                "{alpn} {which}: no TLS alert: {out:?}"
            );
        }
    }
    let log = env.proxy.log();
    assert!(log.contains("no_certificate"), "{log}");
    assert!(log.contains("bad_certificate"), "{log}");
}

#[test]
fn kube_sni_passes_through_to_the_kube_certificate() {
    let env = env();
    let out = SClient::new(env.proxy.web)
        .sni("kube-teleport-proxy-alpn.proxy.example.test")
        .alpn("h2,http/1.1")
        .args(["-CAfile", &env.pki.ca_cert().display().to_string()])
        .run(b"kube-check\n", "kube-check", T)
        .unwrap();
    assert!(out.stdout.contains("CN = kube.internal"), "{out:?}");
    assert!(out.stdout.contains("upstream=kube\n"), "{out:?}");
    assert!(!out.stdout.contains("CN = proxy.example.test"), "{out:?}");
    assert!(env.kube_cert.cert.exists());
}

#[test]
fn teleport_auth_alpn_passes_through_to_that_clusters_auth() {
    let env = env();
    let alpn = format!(
        "teleport-auth@{}.teleport.cluster.local",
        hex_encode("example")
    );
    let out = SClient::new(env.proxy.web)
        .alpn(&alpn)
        .run(b"auth-check\n", "auth-check", T)
        .unwrap();
    assert!(out.stdout.contains("CN = auth.internal"), "{out:?}");
    assert!(out.stdout.contains("upstream=auth\n"), "{out:?}");
    assert!(env.auth_cert.cert.exists());
    // An unknown cluster is refused with an alert, not passed anywhere.
    let other = format!(
        "teleport-auth@{}.teleport.cluster.local",
        hex_encode("other")
    );
    let out = SClient::new(env.proxy.web)
        .alpn(&other)
        .run_to_end(b"x\n", T)
        .unwrap();
    assert!(!out.stdout.contains("upstream="), "{out:?}");
    assert!(out.stderr.contains("alert"), "{out:?}");
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A forwarder that re-frames the client's first TLS record into records of at most
/// `record` payload bytes and sends each in two TCP segments with a pause, then copies
/// both ways unchanged. Returns its listening address.
fn chopper(target: SocketAddr, record: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut upstream = TcpStream::connect(target).unwrap();
        upstream.set_nodelay(true).unwrap();
        let mut header = [0u8; 5];
        client.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).unwrap();
        for piece in payload.chunks(record) {
            let mut rec = header[..3].to_vec();
            rec.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            rec.extend_from_slice(piece);
            let (a, b) = rec.split_at(rec.len() / 2);
            for part in [a, b] {
                upstream.write_all(part).unwrap();
                // Pacing, not a wait for a condition: with nodelay, a pause between writes
                // is what makes each half its own TCP segment (and, most often, its own
                // read on the proxy's side), the input this test is about.
                thread::sleep(Duration::from_millis(15));
            }
        }
        let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let up = thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut u2);
            let _ = u2.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut upstream, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
    });
    addr
}

#[test]
fn client_hello_split_over_records_and_segments_is_routed() {
    let env = env();
    // Terminated at the proxy (rustls reassembles the records too).
    let out = client(&env, chopper(env.proxy.web, 40), "teleport-proxy-ssh")
        .cert(&env.pki.client.cert, &env.pki.client.key)
        .run(b"split-check\n", "split-check", T)
        .unwrap();
    assert!(
        out.stdout.contains("upstream=ssh\n"),
        "{out:?}\n{}",
        env.proxy.log()
    );
    // Passed through byte-exact to the kube upstream, which reassembles them itself.
    let out = SClient::new(chopper(env.proxy.web, 25))
        .sni("kube-teleport-proxy-alpn.proxy.example.test")
        .run(b"split-check\n", "split-check", T)
        .unwrap();
    assert!(out.stdout.contains("upstream=kube\n"), "{out:?}");
    assert!(out.stdout.contains("CN = kube.internal"), "{out:?}");
}
