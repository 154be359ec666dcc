//! A client flood toward an agent's service meets `tunnel.max_streams_per_tunnel`: the
//! connection over the limit is refused at the proxy with a line that says why and a
//! metric, while the streams already open keep working and the tunnel stays up.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use switchyard_tests::agent::{tunnel_section, Agent, Rule};
use switchyard_tests::local_proxy::{client_args, connect_lines, LocalProxy};
use switchyard_tests::{wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki};

const LIMIT: usize = 3;

/// One echo connection through the local proxy: greeting read, one line echoed.
fn open_echo(addr: std::net::SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let (stream, mut reader) =
        connect_lines(addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line != "upstream=echo\n" {
        return Err(format!("greeting {line:?}"));
    }
    Ok((stream, reader))
}

fn echo_line(conn: &mut (TcpStream, BufReader<TcpStream>), text: &str) -> String {
    conn.0.write_all(format!("{text}\n").as_bytes()).unwrap();
    let mut line = String::new();
    conn.1.read_line(&mut line).unwrap();
    line
}

#[test]
fn streams_over_the_tunnel_limit_are_refused_and_the_others_keep_working() {
    let pki = TestPki::new().unwrap();
    let agent_cert = pki
        .issue_client("edge", "edge", Some("switchyard-agent"))
        .unwrap();
    let rules = [Rule {
        identity: "switchyard-agent",
        serve: &["tcp:*"],
        allow: &[],
    }];
    let section = tunnel_section("p1", &["p1"], &rules);
    let config = ProxyConfig {
        extra: section.replace(
            "  heartbeat_interval: 1s\n",
            &format!("  heartbeat_interval: 1s\n  max_streams_per_tunnel: {LIMIT}\n"),
        ),
        ..ProxyConfig::default()
    };
    assert!(config.extra.contains("max_streams_per_tunnel"));
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let identity = agent_cert.cert.with_extension("");
    let services = [("tcp", "echo", echo.addr)];
    let agent = Agent::start(None, proxy.web, &identity, &services, &["--tunnels=1"]).unwrap();
    agent.wait_tunnels_up(1, Duration::from_secs(20)).unwrap();

    let mut args: Vec<String> = ["proxy", "app", "echo"].map(String::from).to_vec();
    args.extend(client_args(&pki, &proxy, "client"));
    let local = LocalProxy::start(&args).unwrap();
    let mut open: Vec<_> = (0..LIMIT).map(|_| open_echo(local.addr).unwrap()).collect();
    wait_until(Duration::from_secs(5), "streams counted", || {
        Ok((proxy.metric("switchyard_tunnel_streams", &[])? == LIMIT as f64).then_some(()))
    })
    .unwrap();

    let over = open_echo(local.addr);
    assert!(over.is_err(), "a stream over the limit must be refused");
    wait_until(Duration::from_secs(5), "the refusal's line", || {
        Ok(proxy
            .log()
            .contains("the tunnel has its limit of 3 streams open (tunnel.max_streams_per_tunnel)")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let refused = proxy
        .metric(
            "switchyard_tunnel_streams_opened_total",
            &[("kind", "tcp"), ("outcome", "over_limit")],
        )
        .unwrap();
    assert_eq!(refused, 1.0);

    for (i, conn) in open.iter_mut().enumerate() {
        let text = format!("still here {i}");
        assert_eq!(echo_line(conn, &text), format!("{text}\n"));
    }
    // Once one closes, a new stream fits again.
    drop(open.pop());
    wait_until(Duration::from_secs(5), "a free stream", || {
        Ok((proxy.metric("switchyard_tunnel_streams", &[])? < LIMIT as f64).then_some(()))
    })
    .unwrap();
    let mut again = open_echo(local.addr).unwrap();
    assert_eq!(echo_line(&mut again, "again"), "again\n");
    assert_eq!(proxy.metric("switchyard_tunnel_tunnels", &[]).unwrap(), 1.0);
}
