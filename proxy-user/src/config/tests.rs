//! Config parsing and validation: every refusal names its key.

use super::*;
use std::time::Duration;

const MINIMAL: &str = "
proxy_service:
  web_listen_addr: 127.0.0.1:3080
upstreams:
  ssh: 127.0.0.1:22
";

fn err(text: &str) -> String {
    Config::parse(text, Path::new("/nonexistent"))
        .unwrap_err()
        .to_string()
}

#[test]
fn minimal_config_defaults() {
    let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
    assert_eq!(c.version, Version::V2);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    assert!(c.legacy_listeners().is_empty());
    assert_eq!(c.upstreams.ssh.as_deref(), Some("127.0.0.1:22"));
}

#[test]
fn v1_opens_default_legacy_listeners() {
    let c = Config::parse(&format!("version: v1\n{MINIMAL}"), Path::new(".")).unwrap();
    let keys: Vec<_> = c.legacy_listeners().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["listen_addr", "tunnel_listen_addr"]);
}

#[test]
fn unknown_key_is_named() {
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\n  webb: 1\n");
    assert!(e.contains("unknown field `webb`"), "{e}");
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\nupstream: {}\n");
    assert!(e.contains("unknown field `upstream`"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let e = err("proxy_service:\n  web_listen_addr: nonsense\n");
    assert!(e.contains("proxy_service.web_listen_addr"), "{e}");
    let e = err(&format!("{MINIMAL}  postgres: 'db:99999'\n"));
    assert!(
        e.contains("upstreams.postgres") && e.contains("port"),
        "{e}"
    );
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\n  https_keypairs: [{cert_file: a.crt, key_file: a.key}]\n");
    assert!(
        e.contains("proxy_service.https_keypairs[0].cert_file"),
        "{e}"
    );
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\n  proxy_protocol: maybe\n");
    assert!(
        e.contains("proxy_protocol") || e.contains("unknown variant"),
        "{e}"
    );
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\nroutes: [{mode: terminate, upstream: 'a:1'}]\n");
    assert!(e.contains("routes[0]"), "{e}");
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\nroutes: [{sni: a, mode: passthrough, upstream: 'a:1', allow: [x]}]\n");
    assert!(e.contains("routes[0].allow"), "{e}");
    let e = err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\nupstreams: {auth: 'a:1'}\n");
    assert!(e.contains("auth_service.cluster_name"), "{e}");
    let e =
        err("proxy_service:\n  web_listen_addr: 127.0.0.1:1\nlimits: {handshake_timeout: soon}\n");
    assert!(e.contains("handshake_timeout"), "{e}");
}

#[test]
fn auth_upstreams_one_or_map() {
    let c = Config::parse(
        "auth_service: {cluster_name: root}\nproxy_service: {web_listen_addr: '127.0.0.1:1'}\nupstreams: {auth: {root: 'a:1', leaf: 'b:2'}}\n",
        Path::new("."),
    )
    .unwrap();
    assert!(matches!(c.upstreams.auth, Some(AuthUpstreams::PerCluster(m)) if m.len() == 2));
}
