//! The tunnel service against hostile and broken agents, in process: a real `Proxy`
//! from a configuration, `serve` on one end of an in-memory pipe, a yamux client on the
//! other speaking (or mangling) the control protocol.

use super::*;
use crate::config::Config;
use crate::io::tunnel::frame;
use crate::io::tunnel::{Kind, Service};
use crate::router::admission::Admission;
use crate::router::metrics::Metrics;
use crate::router::tunnel::Registry;
use crate::tools::ca;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

struct Fixture {
    proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path(), "test").unwrap();
    let server = ca::IssueRequest {
        name: "proxy".into(),
        dns: vec!["localhost".into()],
        ttl: Duration::from_secs(3600),
        ..Default::default()
    };
    ca::issue(dir.path(), &server).unwrap();
    let text = "proxy_service: {web_listen_addr: '127.0.0.1:0', client_ca_file: ca.crt,\n\
        https_keypairs: [{cert_file: proxy.crt, key_file: proxy.key}]}\n\
        tunnel: {proxy_id: p1, heartbeat_interval: 1s,\n\
        agents: [{identity: edge, serve: ['ssh:*']}]}\n";
    let config = Config::parse(text, dir.path()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, stopping) = watch::channel(false);
    let registry = Arc::new(Registry::new(metrics.clone()));
    let admission = Arc::new(Admission::new(&config, metrics.clone()));
    let shared = crate::router::state::Shared {
        tunnels: registry,
        admission,
        acme: None,
    };
    let proxy = Proxy::new(config, metrics, stopping, shared).unwrap();
    Fixture {
        proxy: Arc::new(proxy),
        stop,
        _dir: dir,
    }
}

type Served = tokio::task::JoinHandle<Result<Finished, ConnError>>;

/// The error a tunnel ended with (it must end with one).
async fn err(task: Served) -> String {
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Err(e))) => e.to_string(),
        Ok(Ok(Ok(done))) => panic!("ended cleanly: route {}", done.route),
        Ok(Err(e)) => panic!("the tunnel task failed: {e}"),
        Err(_) => panic!("the tunnel did not end"),
    }
}

/// A tunnel from an agent with certificate CN `cn`: the agent's session and the proxy's task.
fn tunnel(f: &Fixture, cn: &str) -> (mux::Session, Served) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let proxy = f.proxy.clone();
    let identity = CertIdentity {
        cn: Some(cn.into()),
        orgs: vec![],
    };
    let task = tokio::spawn(async move { serve(&proxy, b, identity, "127.0.0.1:9".into()).await });
    let limits = Limits {
        max_streams: 16,
        window_bytes: 0,
    };
    (mux::start(a, Mode::Client, limits, 16), task)
}

fn hello(agent_id: &str, version: u32) -> Control {
    Control::Hello {
        version,
        agent_id: agent_id.into(),
        tunnels: 2,
        services: vec![
            Service {
                kind: Kind::Ssh,
                name: "node1".into(),
            },
            Service {
                kind: Kind::Tcp,
                name: "echo".into(),
            },
        ],
    }
}

async fn control(session: &mux::Session) -> ControlChannel {
    ControlChannel::new(session.opener.open().await.unwrap())
}

fn node1() -> Service {
    Service {
        kind: Kind::Ssh,
        name: "node1".into(),
    }
}

#[tokio::test]
async fn a_broken_agent_costs_only_its_own_tunnel() {
    let f = fixture();
    let (good, _good_task) = tunnel(&f, "edge");
    let mut ctl = control(&good).await;
    ctl.send(&hello("a1", WIRE_VERSION)).await.unwrap();
    let Control::Welcome {
        accepted, refused, ..
    } = ctl.recv().await.unwrap()
    else {
        panic!("no welcome")
    };
    assert_eq!(accepted, [node1()]);
    assert!(
        refused[0].reason.contains("may not serve tcp:echo"),
        "{refused:?}"
    );

    // A second agent of the same identity opens a stream toward the proxy (refused),
    // then sends an oversize control message: only its own tunnel ends.
    let (bad, bad_task) = tunnel(&f, "edge");
    let mut bad_ctl = bad.opener.open().await.unwrap();
    bad_ctl
        .write_all(&frame::encode(&hello("a2", WIRE_VERSION)))
        .await
        .unwrap();
    let mut sneaky = bad.opener.open().await.unwrap();
    let _ = sneaky.write_all(b"let me in").await;
    let mut buf = [0u8; 16];
    let refused = sneaky.read(&mut buf).await.map_or(true, |n| n == 0);
    assert!(refused, "a stream the agent opens is reset");
    bad_ctl.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let e = err(bad_task).await;
    assert!(e.contains("control stream"), "{e}");

    // The good agent still serves and answers heartbeats.
    assert!(f.proxy.tunnels.serves(&node1()));
    ctl.send(&Control::Ping { seq: 9 }).await.unwrap();
    loop {
        match ctl.recv().await.unwrap() {
            Control::Pong { seq: 9 } => break,
            Control::Ping { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn oversize_and_malformed_control_messages_close_the_tunnel_with_a_reason() {
    let f = fixture();
    for garbage in [
        u32::MAX.to_be_bytes().to_vec(),
        frame::encode(&serde_json::json!({"type": "launch", "now": true})),
    ] {
        let (agent, task) = tunnel(&f, "edge");
        let mut s = agent.opener.open().await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let e = err(task).await;
        assert!(e.contains("bad Hello"), "{e}");
        // The agent was told why.
        let mut ctl = ControlChannel::new(s);
        match ctl.recv().await {
            Ok(Control::Refused { reason }) => assert!(reason.contains("bad Hello"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        f.proxy.tunnels.snapshot("p1", &[])["agents"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn unknown_identities_and_other_versions_are_refused() {
    let f = fixture();
    for (cn, version, why) in [
        ("mallory", WIRE_VERSION, "is not in tunnel.agents"),
        ("edge", WIRE_VERSION + 1, "control protocol version"),
    ] {
        let (agent, task) = tunnel(&f, cn);
        let mut ctl = control(&agent).await;
        ctl.send(&hello("a1", version)).await.unwrap();
        match ctl.recv().await.unwrap() {
            Control::Refused { reason } => assert!(reason.contains(why), "{reason}"),
            other => panic!("{other:?}"),
        }
        let e = err(task).await;
        assert!(e.contains(why), "{e}");
    }
    assert!(!f.proxy.tunnels.serves(&node1()));
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_is_offline_after_three_missed_heartbeats() {
    let f = fixture();
    let (agent, task) = tunnel(&f, "edge");
    let mut ctl = control(&agent).await;
    ctl.send(&hello("quiet", WIRE_VERSION)).await.unwrap();
    assert!(matches!(ctl.recv().await.unwrap(), Control::Welcome { .. }));
    assert!(f.proxy.tunnels.serves(&node1()));
    // The agent reads the proxy's pings but never answers.
    let e = err(task).await;
    assert!(e.contains("missed 3 heartbeats"), "{e}");
    assert!(
        !f.proxy.tunnels.serves(&node1()),
        "offline: its services are gone"
    );
}

#[tokio::test]
async fn sigterm_sends_the_drain_notice_and_the_tunnel_ends_when_the_agent_closes() {
    let f = fixture();
    let (mut agent, task) = tunnel(&f, "edge");
    let mut ctl = control(&agent).await;
    ctl.send(&hello("d1", WIRE_VERSION)).await.unwrap();
    assert!(matches!(ctl.recv().await.unwrap(), Control::Welcome { .. }));
    f.stop.send(true).unwrap();
    loop {
        match ctl.recv().await.unwrap() {
            Control::Drain => break,
            Control::Ping { seq } => ctl.send(&Control::Pong { seq }).await.unwrap(),
            other => panic!("{other:?}"),
        }
    }
    ctl.close().await;
    agent.close();
    let done = task.await.unwrap();
    assert!(
        done.is_ok(),
        "{}",
        done.err().map(|e| e.to_string()).unwrap_or_default()
    );
}
