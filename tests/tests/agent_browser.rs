//! A browser reaches a web app that only an agent can reach (docs/agent.md): the demo web
//! app lives in a network namespace whose only way out is a forwarder to the proxy; the
//! agent there serves it as `http:board`; headless Chromium loads
//! `https://board.proxy.example.test/` through the proxy's web front door, and the page's
//! fetch and its WebSocket echo both travel through the tunnel.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_tests::agent::{tunnel_section, Agent, Rule};
use switchyard_tests::browser::{element_text, SETTLED};
use switchyard_tests::netns::Netns;
use switchyard_tests::{Chromium, DemoUpstream, ProxyConfig, Switchyard, TestPki};

#[test]
fn chromium_runs_a_page_with_fetch_and_websocket_through_an_agent() -> Result<()> {
    let pki = TestPki::new()?;
    let agent_cert = pki.issue_client("edge", "edge", Some("switchyard-agent"))?;
    let rules = [Rule {
        identity: "switchyard-agent",
        serve: &["http:*"],
        allow: &[],
    }];
    let config = ProxyConfig {
        extra: tunnel_section("p1", &["p1"], &rules),
        ..ProxyConfig::default()
    };
    let proxy = Switchyard::start(&pki, &config)?;
    let ns = Netns::new("browser")?;
    let app = DemoUpstream::webapp_in(Some(&ns), "board")?;
    assert!(
        std::net::TcpStream::connect(app.addr).is_err(),
        "the app must be out of the proxy's reach"
    );
    let way_out = ns.forward_out(proxy.web)?;
    let identity = agent_cert.cert.with_extension("");
    let services = [("http", "board", app.addr)];
    let agent = Agent::start(Some(&ns), way_out, &identity, &services, &[])?;
    agent.wait_tunnels_up(2, Duration::from_secs(20))?;

    let args = [
        "--ignore-certificate-errors",
        "--host-resolver-rules=MAP *.example.test 127.0.0.1",
    ];
    let mut browser = Chromium::start(&args)?;
    let host = "board.proxy.example.test";
    let url = format!("https://{host}:{}/", proxy.web.port());
    let dom = browser.load(&url, SETTLED, Duration::from_secs(30))?;
    let text = |id: &str| element_text(&dom, id).with_context(|| format!("no #{id}: {dom}"));
    assert_eq!(text("status")?, "done", "{dom}\n{}", proxy.log());
    let hello: Value = serde_json::from_str(&text("fetch")?)?;
    assert_eq!(hello["app"], "board", "{hello}");
    assert_eq!(
        hello["host"],
        format!("{host}:{}", proxy.web.port()),
        "{hello}"
    );
    assert_eq!(hello["x_forwarded_proto"], "https", "{hello}");
    assert_eq!(text("ws")?, "hello over websocket", "{dom}");
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "route=agent:http:board method=GET host={host} path=/ws status=101"
        )),
        "{log}"
    );
    let opened = proxy.metric(
        "switchyard_tunnel_streams_opened_total",
        &[("kind", "http"), ("outcome", "opened")],
    )?;
    assert!(opened >= 3.0, "page, fetch and WebSocket: {opened}");
    Ok(())
}
