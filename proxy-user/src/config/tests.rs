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

#[test]
fn http_upstreams_and_apps_are_checked_key_by_key() {
    let base =
        "proxy_service:\n  web_listen_addr: 127.0.0.1:1\n  public_addr: proxy.example.com:443\n";
    let ok = format!(
        "{base}upstreams:\n  web: {{uri: 'http://127.0.0.1:8080', protocol: h2c}}\napps:\n  - {{name: grafana, uri: 'http://10.0.0.9:3000'}}\n  - {{name: docs, public_addr: 'Docs.Example.com:8443', uri: 'https://10.0.0.8', protocol: h2, insecure_skip_verify: true}}\n"
    );
    let c = Config::parse(&ok, Path::new(".")).unwrap();
    let hosts: Vec<_> = c.apps.iter().map(|a| c.app_host(a).unwrap()).collect();
    assert_eq!(hosts, ["grafana.proxy.example.com", "docs.example.com"]);
    let target = http_target("apps[1]", &c.apps[1].upstream()).unwrap();
    assert_eq!((target.tls, target.addr.port), (true, 443));
    for (apps, key, words) in [
        (
            "[{name: 'a b', uri: 'http://x:1'}]",
            "apps[0].name",
            "DNS label",
        ),
        (
            "[{name: a, uri: 'ftp://x:1'}]",
            "apps[0].uri",
            "http or https",
        ),
        (
            "[{name: a, uri: 'http://x:1/path'}]",
            "apps[0].uri",
            "no path",
        ),
        (
            "[{name: a, uri: 'https://x:1', protocol: h2c}]",
            "apps[0].protocol",
            "h2c",
        ),
        (
            "[{name: a, uri: 'http://x:1', protocol: h2}]",
            "apps[0].protocol",
            "over TLS",
        ),
        (
            "[{name: a, uri: 'https://x:1'}]",
            "apps[0].ca_file",
            "ca_file",
        ),
        (
            "[{name: a, uri: 'http://x:1'}, {name: A, uri: 'http://y:1'}]",
            "apps[1].name",
            "two apps",
        ),
        (
            "[{name: a, public_addr: proxy.example.com, uri: 'http://x:1'}]",
            "apps[0].public_addr",
            "public_addr",
        ),
        (
            "[{name: a, uri: 'http://x:1', allow: [sre]}]",
            "proxy_service.client_ca_file",
            "client certificates",
        ),
    ] {
        let e = err(&format!("{base}apps: {apps}\n"));
        assert!(e.contains(key) && e.contains(words), "{apps}: {e}");
    }
    let e = err(
        "proxy_service: {web_listen_addr: '127.0.0.1:1'}\napps: [{name: a, uri: 'http://x:1'}]\n",
    );
    assert!(e.contains("apps[0].public_addr"), "{e}");
    let e = err(&format!(
        "{base}upstreams: {{web: {{uri: 'http://x'}}}}\nlimits: {{max_http_head_bytes: 100}}\n"
    ));
    assert!(e.contains("limits.max_http_head_bytes"), "{e}");
    let e = err(&format!("{base}limits: {{verified_chains: 100001}}\n"));
    assert!(e.contains("limits.verified_chains"), "{e}");
    let e = err(&format!("{base}limits: {{listen_backlog: 0}}\n"));
    assert!(e.contains("limits.listen_backlog"), "{e}");
}

const TLS: &str = "
proxy_service:
  web_listen_addr: 127.0.0.1:3080
";

#[test]
fn trusted_proxies_and_allow_from_are_parsed() {
    let c = Config::parse(
        &format!(
            "{TLS}  trusted_proxies: [127.0.0.3, 10.0.0.0/8, '2001:db8::/32']\n  \
             trust_x_forwarded_for: hops\n  proxy_protocol: \"on\"\n\
             upstreams: {{postgres: 127.0.0.1:5432}}\n\
             routes:\n  - {{sni: a.test, mode: passthrough, upstream: 127.0.0.1:1, allow_from: [192.0.2.0/24]}}\n\
             allow_from: {{postgres: [127.0.0.2]}}\n"
        ),
        Path::new("."),
    )
    .unwrap();
    let p = &c.proxy_service;
    assert_eq!(
        p.trusted_proxies.to_string(),
        "[127.0.0.3/32, 10.0.0.0/8, 2001:db8::/32]"
    );
    assert_eq!(p.trust_x_forwarded_for, XffMode::Hops);
    assert_eq!(
        c.routes[0].allow_from.as_ref().unwrap().to_string(),
        "[192.0.2.0/24]"
    );
    assert_eq!(
        c.allow_from.get("postgres").unwrap().to_string(),
        "[127.0.0.2/32]"
    );
    assert!(c.allow_from.get("ssh").is_none());
    for (word, mode) in [
        ("false", XffMode::Off),
        ("true", XffMode::Single),
        ("hops", XffMode::Hops),
    ] {
        let text =
            format!("{TLS}  trusted_proxies: [127.0.0.3]\n  trust_x_forwarded_for: {word}\n");
        let c = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(c.proxy_service.trust_x_forwarded_for, mode, "{word}");
    }
    let c = Config::parse(TLS, Path::new(".")).unwrap();
    assert_eq!(c.proxy_service.trust_x_forwarded_for, XffMode::Off);
    assert!(c.proxy_service.trusted_proxies.is_empty());
}

#[test]
fn trust_settings_without_trusted_proxies_and_bad_ranges_are_refused() {
    let e = err(&format!("{TLS}  proxy_protocol: \"on\"\n"));
    assert!(
        e.contains("`proxy_service.trusted_proxies`") && e.contains("proxy_protocol"),
        "{e}"
    );
    let e = err(&format!("{TLS}  trust_x_forwarded_for: true\n"));
    assert!(
        e.contains("`proxy_service.trusted_proxies`") && e.contains("X-Forwarded-For"),
        "{e}"
    );
    let e = err(&format!("{TLS}  trusted_proxies: [10.0.0.5/8]\n"));
    assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
    let e = err(&format!("{TLS}  trusted_proxies: [lb.example.com]\n"));
    assert!(
        e.contains("`lb.example.com` is not an address or a CIDR"),
        "{e}"
    );
    let e = err(&format!("{TLS}  trust_x_forwarded_for: always\n"));
    assert!(e.contains("trust_x_forwarded_for"), "{e}");
    let e = err(&format!("{TLS}allow_from: {{postgres: []}}\n"));
    assert!(
        e.contains("`allow_from.postgres`") && e.contains("empty list"),
        "{e}"
    );
    let e = err(&format!("{TLS}allow_from: {{postgress: [10.0.0.0/8]}}\n"));
    assert!(e.contains("unknown field `postgress`"), "{e}");
}

#[test]
fn an_unquoted_ipv6_address_gets_a_hint() {
    let unquoted = MINIMAL.replace("127.0.0.1:3080", "[::1]:3080");
    let e = err(&unquoted);
    assert!(e.contains("web_listen_addr"), "{e}");
    assert!(e.contains("invalid type: sequence"), "{e}");
    assert!(e.contains(r#"must be quoted in YAML: "[::1]:3080""#), "{e}");
    // Quoted, it parses; another list where a string belongs gets no such hint.
    let quoted = MINIMAL.replace("127.0.0.1:3080", "\"[::1]:3080\"");
    let c = Config::parse(&quoted, Path::new(".")).unwrap();
    assert_eq!(c.proxy_service.web_listen_addr, "[::1]:3080");
    let listed = MINIMAL.replace("127.0.0.1:22", "[a, b]");
    assert!(!err(&listed).contains("quoted"), "{}", err(&listed));
}
