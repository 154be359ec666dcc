//! What a reverse tunnel must refuse, with real processes (the agent in a network
//! namespace whose only way out is a forwarder to the proxy): an agent certificate from
//! another CA (even one named like the cluster's), an identity no `tunnel.agents` entry
//! names, a service the rule does not let the agent serve, and a client not in the rule's
//! `allow`, and a yamux frame that would overflow the window — each with a line that says
//! why, a metric, and the allowed case still working.

use std::net::SocketAddr;

use switchyard_tests::agent::{
    agent_identity, agents_json, app_proxy, echo_once, line_with, metric, proxy_a, streams_opened,
    unreachable_from_host, wait_log, Agent, Rule, AGENT_ORG, WAIT,
};
use switchyard_tests::local_proxy::LocalProxy;
use switchyard_tests::{DemoUpstream, Netns, Switchyard, TempDir, TestPki};

/// An identity directory like `ca issue --agent` writes (`edge.crt`, `edge.key`,
/// `ca.crt` = the cluster CA, to check the proxy by), but the certificate is signed by a
/// rogue CA that has the cluster CA's very name.
fn rogue_agent_identity(pki: &TestPki, dir: &TempDir) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Switchyard Test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "edge");
    leaf.distinguished_name
        .push(DnType::OrganizationName, AGENT_ORG);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("edge.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("edge.key"), key.serialize_pem()).unwrap();
    switchyard_tests::set_mode(&dir.join("edge.key"), 0o600).unwrap();
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt")).unwrap();
    dir.join("edge")
}

/// The first "tunnel failed" line of an agent the proxy refuses.
fn first_failure(agent: &mut Agent) -> String {
    agent
        .wait_line(WAIT, |l| l.contains("tunnel failed").then(|| l.to_owned()))
        .unwrap()
}

/// An agent of [`rogue_agent_identity`] (written to `dir`) in `ns` with one tunnel, and
/// its first "tunnel failed" line.
fn rogue_agent(
    pki: &TestPki,
    dir: &TempDir,
    ns: &Netns,
    proxy: &Switchyard,
    services: &[(&str, &str, SocketAddr)],
) -> (Agent, String) {
    let identity = rogue_agent_identity(pki, dir);
    let mut rogue = Agent::start_tunnels(ns, proxy, &identity, services, 1);
    let line = first_failure(&mut rogue);
    (rogue, line)
}

#[test]
fn an_agent_from_another_ca_or_not_in_tunnel_agents_is_refused_with_a_clear_line() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("refuse").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["tcp:*"])]);
    let services = [("tcp", "echo", echo.addr)];

    // Signed by another CA (named like the cluster's): the handshake fails.
    let dir = TempDir::new("rogue").unwrap();
    let (rogue, _) = rogue_agent(&pki, &dir, &ns, &proxy, &services);
    let needle = "connection refused: TLS handshake failed on route tunnel: invalid peer certificate: BadSignature";
    wait_log("proxy", needle, || proxy.log());
    let failed = line_with(&proxy.log(), needle).to_owned();
    assert!(
        failed.contains("alpn=[\"teleport-reversetunnel\""),
        "{failed}"
    );
    let bad = [("route", "tunnel"), ("reason", "bad_certificate")];
    assert!(metric(&proxy, "switchyard_tls_handshake_failures_total", &bad) >= 1.0);
    assert!(!rogue.log().contains("tunnel up"), "{}", rogue.log());
    assert_eq!(agents_json(&proxy)["agents"], serde_json::json!([]));
    drop(rogue);

    // From the cluster CA but an identity no tunnel.agents entry names: Refused.
    let stranger_id = agent_identity(&pki, "stranger");
    let mut stranger = Agent::start_tunnels(&ns, &proxy, &stranger_id, &services, 1);
    let line = first_failure(&mut stranger);
    assert!(line.contains("the proxy refused the agent: "), "{line}");
    assert!(
        line.contains("identity CN=stranger,O=switchyard-agent is not in tunnel.agents"),
        "{line}"
    );
    wait_log("proxy", "is not in tunnel.agents", || proxy.log());
    let refused = [("outcome", "refused")];
    assert!(metric(&proxy, "switchyard_tunnel_events_total", &refused) >= 1.0);
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 0.0);
    let local = app_proxy(&pki, &proxy, "echo", "client");
    assert!(echo_once(local.addr, "nobody serves me\n").is_err());
    drop(stranger);

    // The identity the rule names, from the cluster CA, gets in (same namespace, app).
    let _edge = Agent::up_in(&pki, &ns, &proxy, "edge", &services, 1);
    let (banner, back) = echo_once(local.addr, "edge serves\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "edge serves\n")
    );
    let accepted = [("outcome", "accepted")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_events_total", &accepted),
        1.0
    );
}

#[test]
fn an_agent_whose_certificate_the_proxy_refuses_says_so() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("rogue").unwrap();
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["tcp:*"])]);
    let dir = TempDir::new("rogue").unwrap();
    let echo: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (_rogue, line) = rogue_agent(&pki, &dir, &ns, &proxy, &[("tcp", "echo", echo)]);
    // What every other client says when the proxy refuses its certificate.
    assert!(
        line.contains("refused the client certificate CN=edge,O=switchyard-agent"),
        "{line}"
    );
}

#[test]
fn a_service_the_rule_does_not_allow_is_refused_and_the_allowed_one_still_works() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("svc").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["tcp:echo"])]);
    let services = [
        ("tcp", "echo", echo.addr),
        ("tcp", "secret", echo.addr),
        ("postgres", "orders", echo.addr),
    ];
    let agent = Agent::up_in(&pki, &ns, &proxy, "edge", &services, 1);

    for service in ["tcp:secret", "postgres:orders"] {
        let needle = format!(
            "agent service refused: identity CN=edge,O=switchyard-agent may not serve {service} (tunnel.agents[0].serve)"
        );
        wait_log("proxy", &needle, || proxy.log());
        let needle = format!(
            "the proxy refused a service: identity CN=edge,O=switchyard-agent may not serve {service}"
        );
        wait_log("agent", &needle, || agent.log());
    }
    let up = line_with(&agent.log(), "tunnel up").to_owned();
    assert!(up.contains("services=[\"tcp:echo\"]"), "{up}");
    let refused = [("outcome", "service_refused")];
    assert_eq!(
        metric(&proxy, "switchyard_tunnel_events_total", &refused),
        2.0
    );
    let json = agents_json(&proxy);
    assert_eq!(
        json["agents"][0]["services"],
        serde_json::json!(["tcp:echo"]),
        "{json}"
    );

    let secret = app_proxy(&pki, &proxy, "secret", "client");
    assert!(echo_once(secret.addr, "let me in\n").is_err());
    wait_log(
        "local proxy",
        "has no route for SNI \"secret.localhost\"",
        || secret.log(),
    );
    let local = app_proxy(&pki, &proxy, "echo", "client");
    let (banner, back) = echo_once(local.addr, "allowed\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "allowed\n")
    );
}

/// What bob's local proxy logs when its connection fails.
const BOB_FAILED: &str = "WARN switchyard::client::local: connection from";

/// The scene of the allow-list tests: an agent `edge` serving an echo app in a namespace
/// of its own, under a rule for `identity` that only `admins` may reach, and bob's
/// `proxy app echo` (`CN=bob, O=guests`), whose connection has failed. Fields drop in
/// order: bob's local proxy first, the namespace last.
struct BobRefused {
    bob: LocalProxy,
    _agent: Agent,
    proxy: Switchyard,
    _echo: DemoUpstream,
    _ns: Netns,
}

fn bob_refused(pki: &TestPki, label: &str, identity: &str) -> BobRefused {
    pki.issue_client("bob", "bob", Some("guests")).unwrap();
    let ns = Netns::new(label).unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let rule = Rule {
        identity,
        serve: &["tcp:echo"],
        allow: &["admins"],
    };
    let proxy = proxy_a(pki, &[rule]);
    let agent = Agent::up_in(pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 1);
    let bob = app_proxy(pki, &proxy, "echo", "bob");
    assert!(echo_once(bob.addr, "I am bob\n").is_err());
    wait_log("bob's local proxy", BOB_FAILED, || bob.log());
    BobRefused {
        bob,
        _agent: agent,
        proxy,
        _echo: echo,
        _ns: ns,
    }
}

#[test]
fn a_client_not_in_the_allow_list_is_refused_and_an_allowed_one_gets_through() {
    let pki = TestPki::new().unwrap();
    let scene = bob_refused(&pki, "allow", AGENT_ORG);
    let proxy = &scene.proxy;
    // Refused inside the handshake (the agent's `allow` in the connection's TLS
    // configuration), as a static route's allow list is. (What bob's local proxy says:
    // the test below.)
    let needle = "TLS handshake failed on route agent:tcp";
    wait_log("proxy", needle, || proxy.log());
    let refused = line_with(&proxy.log(), needle).to_owned();
    assert!(refused.contains("reason=\"not_allowed\""), "{refused}");
    let not_allowed = [("route", "agent:tcp"), ("reason", "not_allowed")];
    assert_eq!(
        metric(
            proxy,
            "switchyard_tls_handshake_failures_total",
            &not_allowed
        ),
        1.0
    );

    let alice = app_proxy(&pki, proxy, "echo", "client");
    let (banner, back) = echo_once(alice.addr, "I am alice\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "I am alice\n")
    );
    assert_eq!(streams_opened(proxy, "tcp"), 1.0);
}

#[test]
fn a_client_not_in_the_allow_list_is_told_it_was_refused() {
    let pki = TestPki::new().unwrap();
    let scene = bob_refused(&pki, "told", "edge");
    let line = line_with(&scene.bob.log(), BOB_FAILED).to_owned();
    // Like a refused certificate elsewhere: who was refused, not a TLS close.
    assert!(line.contains("CN=bob,O=guests"), "{line}");
}

/// The frame the `tunnel_session` fuzz target found (docs/fuzzing.md): a WindowUpdate with
/// SYN whose credit overflows yamux's window. From a real TLS client with a valid agent
/// certificate (`openssl s_client`), it ends that tunnel with a line that says so; the
/// proxy is unharmed and a real agent's tunnel still carries bytes.
#[test]
fn a_yamux_frame_that_would_overflow_the_window_ends_only_that_tunnel_with_a_clear_line() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("yamux").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["tcp:*"])]);
    let _edge = Agent::up_in(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 1);

    let hostile = agent_identity(&pki, "hostile");
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &proxy.web.to_string()])
        .args([
            "-servername",
            "localhost",
            "-alpn",
            "teleport-reversetunnel",
        ])
        .arg("-CAfile")
        .arg(pki.ca_cert())
        .arg("-cert")
        .arg(hostile.with_extension("crt"))
        .arg("-key")
        .arg(hostile.with_extension("key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // version 0, WindowUpdate, flags SYN|0x60, stream 0x27dff, credit 0xffff377d.
    let frame = [0, 1, 0, 0x61, 0, 2, 0x7d, 0xff, 0xff, 0xff, 0x37, 0x7d];
    client.stdin.as_mut().unwrap().write_all(&frame).unwrap();
    let needle = "with a window credit of 4294915965 bytes, which overflows yamux's window";
    wait_log("proxy", needle, || proxy.log());
    let _ = client.kill();
    let _ = client.wait();
    let line = line_with(&proxy.log(), needle).to_owned();
    assert!(
        line.contains("identity=\"CN=hostile,O=switchyard-agent\"")
            && line.contains("ended its tunnel before opening a control stream"),
        "{line}"
    );
    let refused = [("outcome", "refused")];
    assert!(metric(&proxy, "switchyard_tunnel_events_total", &refused) >= 1.0);

    // The real agent's tunnel is still up and carries a client's bytes.
    let local = app_proxy(&pki, &proxy, "echo", "client");
    let (banner, back) = echo_once(local.addr, "still here\n").unwrap();
    assert_eq!(
        (banner.as_str(), back.as_str()),
        ("upstream=echo\n", "still here\n")
    );
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 1.0);
}
