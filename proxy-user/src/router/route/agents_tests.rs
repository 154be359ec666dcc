//! Precedence between the static configuration and the services of connected agents.

use super::agents::Agents;
use super::*;
use crate::config::Config;
use crate::io::tunnel::{Kind, Service};
use std::collections::BTreeSet;
use std::path::Path;

fn table(ssh_nodes: &str) -> Table {
    let ca = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "proxy_service: {{web_listen_addr: '127.0.0.1:0', client_ca_file: '{}'}}\n\
         upstreams: {{ssh: 'bastion:22', postgres: 'pg:5432', kube: 'kube:443'{ssh_nodes}}}\n\
         routes:\n  - {{name: grafana, sni: grafana.proxy, alpn: teleport-tcp, mode: terminate, upstream: 'g:1'}}\n\
         tunnel: {{agents: [{{identity: edge, serve: ['ssh:*']}}]}}\n",
        ca.path().display()
    );
    Table::new(&Config::parse(&text, Path::new(".")).unwrap())
}

fn served(list: &[(Kind, &str)]) -> BTreeSet<Service> {
    list.iter()
        .map(|(kind, name)| Service {
            kind: *kind,
            name: (*name).into(),
        })
        .collect()
}

fn name(t: &Table, agents: &dyn Agents, sni: &str, alpn: &str) -> String {
    let hello = ClientHello {
        sni: Some(sni.into()),
        alpn: vec![alpn.into()],
    };
    match t.route(&hello, agents) {
        Decision::Route(e) => e.name.clone(),
        Decision::Agent { entry, service } => format!("{} {service}", entry.name),
        Decision::Reject { reason, .. } => format!("reject: {reason}"),
    }
}

#[test]
fn static_names_win_agents_beat_catch_alls() {
    let t = table(", ssh_nodes: {node1: 'n1:22'}");
    let agents = served(&[
        (Kind::Ssh, "node1"),
        (Kind::Ssh, "edge1"),
        (Kind::Postgres, "orders"),
        (Kind::Tcp, "grafana"),
        (Kind::Tcp, "echo"),
        (Kind::Kube, "edge"),
    ]);
    let a: &dyn Agents = &agents;
    assert_eq!(
        name(&t, a, "node1.ssh.proxy", "teleport-proxy-ssh"),
        "ssh:node1"
    );
    assert_eq!(
        name(&t, a, "edge1.ssh.proxy", "teleport-proxy-ssh"),
        "agent:ssh ssh:edge1"
    );
    assert!(name(&t, a, "gone.ssh.proxy", "teleport-proxy-ssh")
        .contains("not in upstreams.ssh_nodes and no connected agent serves it"));
    assert_eq!(
        name(&t, a, "orders.db.proxy", "teleport-postgres-ping"),
        "agent:postgres postgres:orders"
    );
    assert_eq!(
        name(&t, a, "other.db.proxy", "teleport-postgres"),
        "postgres"
    );
    assert_eq!(name(&t, a, "grafana.proxy", "teleport-tcp"), "grafana");
    assert_eq!(
        name(&t, a, "echo.proxy", "teleport-tcp"),
        "agent:tcp tcp:echo"
    );
    assert_eq!(
        name(&t, a, "kube-teleport-proxy-alpn.edge.proxy", "h2"),
        "agent:kube kube:edge"
    );
    assert_eq!(name(&t, a, "kube-teleport-proxy-alpn.proxy", "h2"), "kube");
    assert_eq!(name(&t, a, "proxy", "teleport-reversetunnel"), "tunnel");
}

#[test]
fn a_lone_bastion_takes_node_names_when_no_nodes_are_configured() {
    let t = table("");
    let none = served(&[]);
    assert_eq!(
        name(&t, &none, "anything.ssh.proxy", "teleport-proxy-ssh"),
        "ssh"
    );
    let with_nodes = table(", ssh_nodes: {node1: 'n1:22'}");
    assert!(name(
        &with_nodes,
        &none,
        "anything.ssh.proxy",
        "teleport-proxy-ssh"
    )
    .starts_with("reject"));
}
