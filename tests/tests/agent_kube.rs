//! kubectl to a Kubernetes API that only an agent can reach (docs/agent.md): the API (a
//! stand-in, `openssl s_server -WWW`) lives in a network namespace whose only way out is
//! a forwarder to the proxy; the agent there serves it as `kube:edge`; kubectl reaches it
//! with SNI `kube-teleport-proxy-alpn.edge.localhost`, its TLS passed through end to end —
//! through `proxy kube --kube edge` and with the kubeconfig of `kube config --kube edge`.

use std::time::Duration;

use switchyard_tests::agent::{
    agent_identity, tunnel_proxy, unreachable_from_host, Agent, Rule, AGENT_ORG,
};
use switchyard_tests::kube::{direct_kubeconfig, kubectl_version, KubeApi};
use switchyard_tests::local_proxy::{client_args, LocalProxy};
use switchyard_tests::netns::Netns;
use switchyard_tests::{Switchyard, TestPki};

/// `switchyard proxy kube --kube=CLUSTER` as the client identity `client`: a local proxy
/// with an ephemeral kubeconfig it prints.
fn proxy_kube(pki: &TestPki, proxy: &Switchyard, cluster: &str) -> LocalProxy {
    let mut args = vec![
        "proxy".to_owned(),
        "kube".into(),
        format!("--kube={cluster}"),
    ];
    args.extend(client_args(pki, proxy, "client"));
    LocalProxy::start(&args).unwrap()
}

#[test]
fn kubectl_reaches_an_api_server_only_an_agent_can_reach() {
    let pki = TestPki::new().unwrap();
    let identity = agent_identity(&pki, "edge");
    let proxy = tunnel_proxy(&pki, &[Rule::serving(AGENT_ORG, &["kube:*"])]);
    let ns = Netns::new("kube").unwrap();
    let sni = "kube-teleport-proxy-alpn.edge.localhost";
    let api = KubeApi::start(&pki, sni, Some(&ns)).unwrap();
    // The API must be out of the proxy's reach.
    unreachable_from_host(api.addr);
    let services = [("kube", "edge", api.addr)];
    let agent = Agent::start_in(&ns, proxy.web, &identity, &services, &[]).unwrap();
    agent.wait_tunnels_up(2, Duration::from_secs(20)).unwrap();

    let local = proxy_kube(&pki, &proxy, "edge");
    let kubeconfig = local.printed("kubeconfig").expect("kubeconfig printed");
    let out = kubectl_version(&kubeconfig).unwrap();
    assert!(
        out.success() && out.stdout.contains("v1.31.0-switchyard-test"),
        "{out:?}\n{}\n--- proxy ---\n{}\n--- agent ---\n{}",
        local.logs(),
        proxy.log(),
        agent.log()
    );
    assert!(
        proxy
            .log()
            .contains("service=kube:edge route=\"agent:kube\""),
        "{}",
        proxy.log()
    );

    let (_dir, direct, text) = direct_kubeconfig(&pki, &proxy, &["--kube=edge"]).unwrap();
    assert!(text.contains(&format!("tls-server-name: {sni}")), "{text}");
    let out = kubectl_version(&direct).unwrap();
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert!(out.stdout.contains("v1.31.0-switchyard-test"), "{out:?}");

    // A cluster no agent serves (and no upstreams.kube): refused with a reason.
    let gone = proxy_kube(&pki, &proxy, "gone");
    let out = kubectl_version(&gone.printed("kubeconfig").unwrap()).unwrap();
    assert!(!out.success(), "{out:?}");
    assert!(
        proxy
            .log()
            .contains("Kubernetes cluster \"gone\": no connected agent serves it"),
        "{}",
        proxy.log()
    );
}
