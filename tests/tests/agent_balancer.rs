//! An agent reaches the proxy the way every client does (docs/agent.md): behind a
//! TLS-terminating nginx it detects the balancer and runs its tunnel inside the
//! `/webapi/connectionupgrade` WebSocket; through an `HTTPS_PROXY` (tinyproxy) it tunnels
//! with CONNECT. Either way a client of the proxy then reaches the agent's TCP app.

use std::io::{BufRead, Write};
use std::time::Duration;

use switchyard_tests::agent::{agent_identity, app_proxy, tunnel_proxy, Agent, Rule, AGENT_ORG};
use switchyard_tests::balancer::{ConnectProxy, Nginx};
use switchyard_tests::local_proxy::connect_lines;
use switchyard_tests::{wait_until, DemoUpstream, Switchyard, TempDir, TestPki};

/// A proxy where every agent of the cluster CA may serve any TCP app.
fn proxy(pki: &TestPki) -> Switchyard {
    tunnel_proxy(pki, &[Rule::serving(AGENT_ORG, &["tcp:*"])])
}

/// `proxy app echo` straight to the proxy: the greeting of the agent's echo app and one
/// echoed line.
fn echo_through(pki: &TestPki, proxy: &Switchyard) -> Result<(), String> {
    let local = app_proxy(pki, proxy, "echo", "client");
    let (stream, mut reader) =
        connect_lines(local.addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    (&stream)
        .write_all(b"through the agent\n")
        .map_err(|e| e.to_string())?;
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line == "upstream=tunnelled-echo\nthrough the agent\n" {
        Ok(())
    } else {
        Err(format!("{line:?}\n{}", local.logs()))
    }
}

#[test]
fn behind_a_layer7_balancer_the_agent_tunnels_inside_the_connection_upgrade() {
    let pki = TestPki::new().unwrap();
    let identity = agent_identity(&pki, "edge");
    let proxy = proxy(&pki);
    let dir = TempDir::new("nginx").unwrap();
    let front = pki
        .issue_server(
            "balancer",
            "balancer.localhost",
            &["localhost", "127.0.0.1"],
        )
        .unwrap();
    let nginx = Nginx::layer7(dir.path(), &front.cert, &front.key, proxy.web, None).unwrap();
    let echo = DemoUpstream::echo("tunnelled-echo").unwrap();
    let services = [("tcp", "echo", echo.addr)];
    let agent = Agent::start(None, nginx.addr, &identity, &services, &[]).unwrap();
    agent.wait_tunnels_up(2, Duration::from_secs(20)).unwrap();
    // The proxy saw the tunnels as the inner connections of WebSocket upgrades.
    let log = proxy.log();
    let upgraded = log
        .lines()
        .filter(|l| l.contains("agent tunnel up") && l.contains("upgrade="))
        .count();
    assert_eq!(upgraded, 2, "{log}\n--- agent ---\n{}", agent.log());
    echo_through(&pki, &proxy).unwrap();
}

#[test]
fn through_https_proxy_the_agent_dials_with_connect() {
    let pki = TestPki::new().unwrap();
    let identity = agent_identity(&pki, "edge");
    let proxy = proxy(&pki);
    let dir = TempDir::new("tinyproxy").unwrap();
    let forward = ConnectProxy::start(dir.path()).unwrap();
    let echo = DemoUpstream::echo("tunnelled-echo").unwrap();
    let url = format!("http://{}", forward.addr);
    let services = [("tcp", "echo", echo.addr)];
    let agent = Agent::start_with(None, proxy.web, &identity, &services, &[], |cmd| {
        cmd.env("HTTPS_PROXY", &url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
    })
    .unwrap();
    agent.wait_tunnels_up(2, Duration::from_secs(20)).unwrap();
    // tinyproxy writes its request log as it goes; wait for both tunnels' CONNECTs.
    let want = format!("CONNECT localhost:{} ", proxy.web.port());
    let connects = || {
        forward
            .requests()
            .iter()
            .filter(|r| r.contains(&want))
            .count()
    };
    let seen = wait_until(Duration::from_secs(10), "two CONNECTs", || {
        Ok((connects() >= 2).then_some(()))
    });
    assert!(seen.is_ok(), "{:?}\n{}", forward.requests(), agent.log());
    echo_through(&pki, &proxy).unwrap();
}
