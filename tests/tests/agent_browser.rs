//! A browser reaches a web app that only an agent can reach (docs/agent.md): the demo web
//! app lives in a network namespace whose only way out is a forwarder to the proxy; the
//! agent there serves it as `http:board`; headless Chromium loads
//! `https://board.proxy.example.test/` through the proxy's web front door, and the page's
//! fetch and its WebSocket echo both travel through the tunnel.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_tests::agent::{
    agent_identity, tunnel_proxy, unreachable_from_host, Agent, Rule, AGENT_ORG,
};
use switchyard_tests::browser::{element_text, SETTLED};
use switchyard_tests::netns::Netns;
use switchyard_tests::{Chromium, DemoUpstream, TestPki};

#[test]
fn chromium_runs_a_page_with_fetch_and_websocket_through_an_agent() -> Result<()> {
    let pki = TestPki::new()?;
    let identity = agent_identity(&pki, "edge");
    let proxy = tunnel_proxy(&pki, &[Rule::serving(AGENT_ORG, &["http:*"])]);
    let ns = Netns::new("browser")?;
    let app = DemoUpstream::webapp_in(Some(&ns), "board")?;
    // The app must be out of the proxy's reach.
    unreachable_from_host(app.addr);
    let services = [("http", "board", app.addr)];
    let agent = Agent::start_in(&ns, proxy.web, &identity, &services, &[])?;
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
