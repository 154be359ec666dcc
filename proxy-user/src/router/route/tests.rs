//! Precedence tests for the router.

use super::*;
use crate::config::Config;
use crate::protocol::ping_variant;
use std::path::Path;

/// A terminated route that asks for a client certificate, and one that does not.
const CLIENT_AUTH: Mode = Mode::Terminate {
    client_auth: true,
    tls: (),
};
const NO_CLIENT_AUTH: Mode = Mode::Terminate {
    client_auth: false,
    tls: (),
};

const CONFIG: &str = "
auth_service: {cluster_name: root}
proxy_service: {web_listen_addr: '127.0.0.1:0'}
upstreams:
  web: web:80
  ssh: ssh:22
  ssh_nodes: {node1: 'node1:22', Node2: 'node2:2222'}
  tunnel: tunnel:3024
  postgres: pg:5432
  kube: kube:443
  auth: {root: auth-root:3025, leaf: auth-leaf:3025}
routes:
  - {name: grafana, sni: grafana.example.com, alpn: teleport-tcp, mode: terminate, upstream: 'grafana:3000', allow: [alice]}
  - {name: wild, sni: '*.apps.example.com', mode: passthrough, upstream: 'apps:443'}
  - {name: exact-app, sni: 'one.apps.example.com', mode: terminate, upstream: 'one:80'}
  - {name: first, sni: dup.example.com, mode: terminate, upstream: 'first:1'}
  - {name: second, sni: dup.example.com, mode: terminate, upstream: 'second:1'}
  - {name: pg-special, sni: db1.example.com, alpn: teleport-postgres, mode: terminate, upstream: 'db1:5432'}
";

fn table() -> Table {
    Table::new(&Config::parse(CONFIG, Path::new(".")).unwrap())
}

fn name(t: &Table, sni: Option<&str>, alpn: &[&str]) -> String {
    let hello = ClientHello {
        sni: sni.map(str::to_owned),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
    };
    match t.route(&hello, &NoAgents) {
        Decision::Route(e) => e.name.clone(),
        Decision::Agent { entry, service } => format!("{} {service}", entry.name),
        Decision::Reject { reason, .. } => format!("reject: {reason}"),
    }
}

#[test]
fn builtin_alpn_table() {
    let t = table();
    assert_eq!(name(&t, Some("proxy"), &["teleport-proxy-ssh"]), "ssh");
    assert_eq!(name(&t, None, &["teleport-reversetunnel"]), "tunnel");
    assert_eq!(name(&t, None, &["teleport-reversetunnelv2"]), "tunnel");
    assert_eq!(
        name(&t, None, &["teleport-postgres-ping", "teleport-postgres"]),
        "postgres"
    );
    assert_eq!(name(&t, None, &["h2", "http/1.1"]), "web");
    assert_eq!(name(&t, None, &[]), "web");
    assert_eq!(name(&t, Some("proxy"), &["http/1.1"]), "web");
}

#[test]
fn unconfigured_and_unknown_protocols_are_rejected_with_reason() {
    let t = table();
    assert!(name(&t, None, &["teleport-mysql"]).contains("upstreams.mysql"));
    assert!(name(&t, None, &["spdy/3"]).starts_with("reject: no route for ALPN"));
    assert!(name(&t, Some("nope.example.com"), &["teleport-tcp"]).contains("no TCP app route"));
}

#[test]
fn kube_sni_wins_before_alpn() {
    let t = table();
    assert_eq!(
        name(&t, Some("kube-teleport-proxy-alpn.example.com"), &["h2"]),
        "kube"
    );
    assert_eq!(
        name(
            &t,
            Some("kube-teleport-proxy-alpn.x"),
            &["teleport-proxy-ssh"]
        ),
        "kube"
    );
    assert_eq!(
        t.entries.iter().find(|e| e.name == "kube").unwrap().mode,
        Mode::Passthrough
    );
}

#[test]
fn auth_by_cluster_passthrough() {
    let t = table();
    let alpn = |c: &str| format!("teleport-auth@{}.teleport.cluster.local", hex::encode(c));
    assert_eq!(name(&t, None, &[&alpn("root")]), "auth:root");
    assert_eq!(name(&t, None, &[&alpn("leaf")]), "auth:leaf");
    assert!(name(&t, None, &[&alpn("other")]).starts_with("reject"));
    assert!(name(&t, None, &["teleport-auth@zz.teleport.cluster.local"]).starts_with("reject"));
    let hello = ClientHello {
        sni: None,
        alpn: vec![alpn("root")],
    };
    let e = match t.route(&hello, &NoAgents) {
        Decision::Route(e) => e,
        d => panic!("{d:?}"),
    };
    assert_eq!(e.mode, Mode::Passthrough);
    assert_eq!(e.upstream.as_deref(), Some("auth-root:3025"));
}

#[test]
fn routes_precedence() {
    let t = table();
    assert_eq!(
        name(&t, Some("grafana.example.com"), &["teleport-tcp"]),
        "grafana"
    );
    // Without the route's ALPN the SNI route does not match: falls to web.
    assert_eq!(name(&t, Some("grafana.example.com"), &["h2"]), "web");
    // Exact beats wildcard, whatever the order in the file.
    assert_eq!(name(&t, Some("one.apps.example.com"), &["h2"]), "exact-app");
    assert_eq!(name(&t, Some("two.apps.example.com"), &["h2"]), "wild");
    // Wildcards match exactly one label.
    assert_eq!(name(&t, Some("a.b.apps.example.com"), &[]), "web");
    assert_eq!(name(&t, Some("apps.example.com"), &[]), "web");
    // First identical match wins.
    assert_eq!(name(&t, Some("dup.example.com"), &[]), "first");
    // A route naming SNI and ALPN beats the built-in table.
    assert_eq!(
        name(&t, Some("db1.example.com"), &["teleport-postgres"]),
        "pg-special"
    );
    assert_eq!(
        name(&t, Some("db2.example.com"), &["teleport-postgres"]),
        "postgres"
    );
}

#[test]
fn route_entries_carry_mode_and_auth() {
    let t = table();
    let get = |n: &str| t.entries.iter().find(|e| e.name == n).unwrap().clone();
    assert_eq!(get("grafana").mode, CLIENT_AUTH);
    // The -ping variant comes first: the server's preference (`docs/architecture.md` §2).
    assert_eq!(get("grafana").alpn, ["teleport-tcp-ping", "teleport-tcp"]);
    assert_eq!(get("exact-app").mode, NO_CLIENT_AUTH);
    assert_eq!(get("web").alpn, ["h2", "http/1.1"]);
    assert_eq!(get("ssh").mode, CLIENT_AUTH);
    assert_eq!(
        get("postgres").alpn,
        ["teleport-postgres-ping", "teleport-postgres"]
    );
}

#[test]
fn ping_variants_match_the_routes_of_their_protocol() {
    let t = table();
    let tcp_ping = &["teleport-tcp-ping"];
    assert_eq!(name(&t, Some("grafana.example.com"), tcp_ping), "grafana");
    assert_eq!(
        name(&t, Some("db1.example.com"), &["teleport-postgres-ping"]),
        "pg-special"
    );
    assert_eq!(
        ping_variant("teleport-tcp").as_deref(),
        Some("teleport-tcp-ping")
    );
    assert_eq!(ping_variant("teleport-proxy-ssh"), None);
    assert_eq!(ping_variant("teleport-tcp-ping"), None);
}

#[test]
fn without_web_or_tunnel_upstreams_the_proxy_still_answers_its_endpoints_and_the_probe() {
    let config = "
proxy_service:
  web_listen_addr: '127.0.0.1:0'
  https_keypairs: [{cert_file: c.pem, key_file: k.pem}]
upstreams: {ssh: 'ssh:22'}
";
    // Not validated: the certificate files need not exist to build the table.
    let t = Table::new(&serde_yaml_ng::from_str(config).unwrap());
    let web = t.plaintext("web").unwrap();
    assert_eq!((web.name.as_str(), web.upstream.as_deref()), ("web", None));
    assert_eq!(web.role, Role::Web);
    assert_eq!(name(&t, None, &["http/1.1"]), "web");
    let probe = &["teleport-reversetunnel"];
    assert_eq!(name(&t, None, probe), TUNNEL_PROBE);
    let entry = t.entries.iter().find(|e| e.name == TUNNEL_PROBE).unwrap();
    assert_eq!(entry.mode, NO_CLIENT_AUTH);
    assert_eq!(
        (entry.role, entry.upstream.as_deref()),
        (Role::DetectionProbe, None)
    );
    // Without a certificate there is no web route, hence no probe answer either.
    let bare = "proxy_service: {web_listen_addr: '127.0.0.1:0'}\nupstreams: {kube: 'k:443'}\n";
    let t = Table::new(&Config::parse(bare, Path::new(".")).unwrap());
    assert!(t.plaintext("web").is_none());
    assert!(name(&t, None, probe).contains("no upstreams.tunnel"));
}

#[test]
fn ssh_nodes_by_sni_label() {
    let t = table();
    let ssh = &["teleport-proxy-ssh"];
    assert_eq!(
        name(&t, Some("node1.ssh.proxy.example.com"), ssh),
        "ssh:node1"
    );
    assert_eq!(name(&t, Some("node2.ssh.localhost"), ssh), "ssh:Node2");
    assert!(name(&t, Some("node3.ssh.proxy.example.com"), ssh)
        .contains("\"node3\" is not in upstreams.ssh_nodes"));
    // No node label: the default ssh upstream; the label only counts for SSH.
    assert_eq!(name(&t, Some("proxy.example.com"), ssh), "ssh");
    assert_eq!(name(&t, Some("ssh.example.com"), ssh), "ssh");
    assert_eq!(
        name(&t, Some("node1.ssh.proxy.example.com"), &["h2"]),
        "web"
    );
    let get = |n: &str| t.entries.iter().find(|e| e.name == n).unwrap().clone();
    assert_eq!(get("ssh:node1").upstream.as_deref(), Some("node1:22"));
    assert_eq!(get("ssh:node1").mode, CLIENT_AUTH);
}

#[test]
fn http_apps_are_routed_by_server_name_for_web_protocols_only() {
    let config = "
proxy_service: {web_listen_addr: '127.0.0.1:0', public_addr: 'proxy.example.com:443', client_ca_file: /dev/null}
upstreams: {web: 'web:80', ssh: 'ssh:22'}
apps:
  - {name: grafana, uri: 'http://grafana:3000', allow: [sre]}
  - {name: docs, public_addr: 'docs.example.com:8443', uri: 'http://docs:80'}
routes:
  - {name: tcp, sni: grafana.proxy.example.com, alpn: teleport-tcp, mode: terminate, upstream: 'tcp:1'}
";
    let t = Table::new(&Config::parse(config, Path::new(".")).unwrap());
    let sni = Some("grafana.proxy.example.com");
    assert_eq!(name(&t, sni, &["h2", "http/1.1"]), "app:grafana");
    assert_eq!(name(&t, sni, &[]), "app:grafana");
    assert_eq!(
        name(&t, Some("docs.example.com"), &["http/1.1"]),
        "app:docs"
    );
    // Other protocols on an app's name route as they would anywhere.
    assert_eq!(name(&t, sni, &["teleport-tcp"]), "tcp");
    assert_eq!(name(&t, sni, &["teleport-proxy-ssh"]), "ssh");
    // Names that are no app's: the web route (the HTTP layer answers 404 for them).
    assert_eq!(name(&t, Some("nope.proxy.example.com"), &["h2"]), "web");
    let app = t
        .entries()
        .iter()
        .find(|e| e.name == "app:grafana")
        .unwrap();
    assert_eq!(app.role, Role::App);
    assert_eq!(app.mode, CLIENT_AUTH);
    assert_eq!(app.allow, ["sre"]);
    let docs = t.entries().iter().find(|e| e.name == "app:docs").unwrap();
    assert_eq!(docs.mode, NO_CLIENT_AUTH);
}

#[test]
fn source_rules_reach_the_routes_they_name() {
    let text = format!(
        "{CONFIG}  - {{name: office-db, alpn: teleport-mysql, mode: terminate, upstream: 'db:3306', allow_from: [10.1.0.0/16]}}\n\
         allow_from: {{postgres: [127.0.0.2], ssh_nodes: ['192.0.2.0/24'], auth: ['::1']}}\n"
    );
    let t = Table::new(&Config::parse(&text, Path::new(".")).unwrap());
    let rule = |sni: Option<&str>, alpn: &[&str]| {
        let hello = ClientHello {
            sni: sni.map(str::to_owned),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        };
        match t.route(&hello, &NoAgents) {
            Decision::Route(e) => e
                .allow_from
                .as_ref()
                .map(|r| format!("{} {}", r.key, r.nets)),
            Decision::Agent { .. } => panic!("no agents here"),
            Decision::Reject { reason, .. } => panic!("{reason}"),
        }
    };
    assert_eq!(
        rule(None, &["teleport-mysql"]).as_deref(),
        Some("routes[6].allow_from [10.1.0.0/16]")
    );
    assert_eq!(
        rule(None, &["teleport-postgres"]).as_deref(),
        Some("allow_from.postgres [127.0.0.2/32]")
    );
    assert_eq!(
        rule(Some("node1.ssh.proxy"), &["teleport-proxy-ssh"]).as_deref(),
        Some("allow_from.ssh_nodes [192.0.2.0/24]")
    );
    let auth = format!(
        "teleport-auth@{}.teleport.cluster.local",
        hex::encode("leaf")
    );
    assert_eq!(
        rule(None, &[&auth]).as_deref(),
        Some("allow_from.auth [::1/128]")
    );
    // SSH without a node, the web route and the kube route stay open.
    assert_eq!(rule(Some("proxy"), &["teleport-proxy-ssh"]), None);
    assert_eq!(rule(None, &["h2"]), None);
    assert_eq!(rule(Some("kube-teleport-proxy-alpn.x"), &[]), None);
    // The legacy plaintext Postgres route is the same entry.
    assert!(t.plaintext("postgres").unwrap().allow_from.is_some());
}
