//! A client flood toward an agent's service meets `tunnel.max_streams_per_tunnel`: the
//! connection over the limit is refused at the proxy with a line that says why and a
//! metric, while the streams already open keep working and the tunnel stays up.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use switchyard_tests::agent::{
    agent_identity, app_proxy, metric, tunnel_config, Agent, Rule, AGENT_ORG,
};
use switchyard_tests::local_proxy::connect_lines;
use switchyard_tests::{wait_until, DemoUpstream, Switchyard, TestPki};

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
    let identity = agent_identity(&pki, "edge");
    let mut config = tunnel_config(&[Rule::serving(AGENT_ORG, &["tcp:*"])]);
    config.extra = config.extra.replace(
        "  heartbeat_interval: 1s\n",
        &format!("  heartbeat_interval: 1s\n  max_streams_per_tunnel: {LIMIT}\n"),
    );
    assert!(config.extra.contains("max_streams_per_tunnel"));
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let services = [("tcp", "echo", echo.addr)];
    let agent = Agent::start(None, proxy.web, &identity, &services, &["--tunnels=1"]).unwrap();
    agent.wait_tunnels_up(1, Duration::from_secs(20)).unwrap();

    let local = app_proxy(&pki, &proxy, "echo", "client");
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
    let over_limit = [("kind", "tcp"), ("outcome", "over_limit")];
    let refused = metric(
        &proxy,
        "switchyard_tunnel_streams_opened_total",
        &over_limit,
    );
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
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 1.0);
}
