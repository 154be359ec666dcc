//! Staying up with reverse tunnels, with real processes: a `switchyard agent` (in a
//! network namespace with its sshd, the proxy reachable only through a forwarder out)
//! keeps its tunnels through a proxy killed and restarted on the same port (back within
//! the 8 s backoff cap), through a SIGTERM drain (an scp in flight finishes intact, the
//! proxy exits 0 after it, the agent redials at once and is back when the proxy is), and
//! with two proxies behind one HAProxy round robin (the agent mesh: tunnels to each, and
//! ssh through each proxy reaches the agent's node).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use switchyard_tests::agent::{
    agent_identity, agents_json, metric, ssh, streams_opened, tunnel_section, Agent, Rule,
    AGENT_ORG,
};
use switchyard_tests::balancer::{HAProxy, BALANCER_SOURCE};
use switchyard_tests::local_proxy::{client_args, write_ssh_config};
use switchyard_tests::process::{signal, Proc, Signal};
use switchyard_tests::{
    free_port, log_fields, require_tool, wait_until, Netns, ProxyConfig, Sshd, Switchyard, TempDir,
    TestPki,
};

const T: Duration = Duration::from_secs(15);
/// The agent's backoff cap (8 s) plus its +25 % jitter, plus 1 s for the dial itself
/// (forwarder, TLS, Hello) on a loaded machine. An uncapped doubling would be 16 s ±25 %
/// (at least 12 s) by the time this is measured.
/// The longest reconnect wait the agent may take: the 8 s cap plus 25 % jitter.
const MAX_WAIT: f64 = 10.0;

/// A proxy with the tunnel service (`proxy_id`, `peers`, agents of O `switchyard-agent`
/// may serve any ssh node, any client may reach them) listening on `listen`.
fn config(proxy_id: &str, peers: &[&str], listen: &str) -> ProxyConfig {
    let rules = [Rule::serving(AGENT_ORG, &["ssh:*"])];
    ProxyConfig {
        extra: tunnel_section(proxy_id, peers, &rules),
        listen: listen.into(),
        ..Default::default()
    }
}

/// A lone proxy `p1` on a fixed loopback port (so it can be restarted on it); tries
/// another port when the free one was taken in between.
fn start_fixed(pki: &TestPki) -> (Switchyard, ProxyConfig) {
    let mut last = None;
    for _ in 0..3 {
        let config = config("p1", &["p1"], &format!("127.0.0.1:{}", free_port()));
        match Switchyard::start(pki, &config) {
            Ok(proxy) => return (proxy, config),
            Err(e) if format!("{e:#}").contains("in use") => last = Some(e),
            Err(e) => panic!("{e:#}"),
        }
    }
    panic!("{:#}", last.expect("three attempts"))
}

/// The restart and drain tests' set-up: an sshd in a new namespace `label`, served as
/// `ssh:node1` by the agent `edge` in there, both its tunnels up to a lone proxy on a
/// fixed port ([`start_fixed`]; [`Fixed::start`] returns it beside, to be stopped and
/// started again from `config`), and an ssh config for `root@node1.test` through that
/// proxy. Fields drop in order: the agent first, the namespace last.
struct Fixed {
    agent: Agent,
    config: ProxyConfig,
    ssh_config: PathBuf,
    dir: TempDir,
    _sshd: Sshd,
    _ns: Netns,
}

impl Fixed {
    fn start(pki: &TestPki, label: &str) -> (Fixed, Switchyard) {
        let identity = agent_identity(pki, "edge");
        let ns = Netns::new(label).unwrap();
        let sshd = Sshd::start_in(Some(&ns)).unwrap();
        let (proxy, config) = start_fixed(pki);
        let services = [("ssh", "node1", sshd.addr)];
        let agent = Agent::start_in(&ns, proxy.web, &identity, &services, &[]).unwrap();
        agent.wait_tunnels_up(2, T).unwrap();
        let dir = TempDir::new(&format!("uptime-{label}")).unwrap();
        let client = client_args(pki, &proxy, "client");
        let (ssh_config, _) = write_ssh_config(client, &sshd, dir.path());
        let fixed = Fixed {
            agent,
            config,
            ssh_config,
            dir,
            _sshd: sshd,
            _ns: ns,
        };
        (fixed, proxy)
    }
}

/// The proxy's log and the agent's, for a failure message.
fn logs(proxy: &Switchyard, agent: &Agent) -> String {
    format!("{}\n{}", proxy.log(), agent.log())
}

/// `ssh root@node1.test -- echo <word>` with `config` must print `word`.
fn assert_ssh_reaches_node(config: &Path, word: &str, context: &dyn Fn() -> String) {
    let out = ssh(config, &["root@node1.test", "--", "echo", word]);
    assert!(out.success(), "ssh: {out:?}\n{}", context());
    assert_eq!(out.stdout.trim(), word, "{out:?}\n{}", context());
}

/// The seconds since midnight of a log line's timestamp (`2026-…T01:29:03.123456Z …`).
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The reconnect waits the agent logged (`reconnecting … wait=8.1s`), in seconds.
fn reconnect_waits(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("reconnecting"))
        .filter_map(|l| {
            let w = l.split("wait=").nth(1)?.split_whitespace().next()?;
            match w.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().ok().map(|v| v / 1000.0),
                None => w.strip_suffix('s')?.parse().ok(),
            }
        })
        .collect()
}

/// How many "tunnel failed" lines worker `n` logged.
fn failures_of(log: &str, worker: usize) -> usize {
    let me = format!("worker={worker}");
    log.lines()
        .filter(|l| l.contains("tunnel failed") && l.split_whitespace().any(|w| w == me))
        .count()
}

fn killed(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(Signal::KILL.as_raw())
}

/// SIGKILL the proxy, keep it down until both of the agent's workers have failed four
/// dials (1 + 2 + 4 + 8 s of backoff: the next wait would be 16 s without the cap),
/// restart it on the same port: both tunnels are back within the cap, and ssh through
/// the new proxy reaches the agent's node.
#[test]
fn killed_proxy_restarted_on_its_port_gets_the_agent_back_within_the_backoff_cap() {
    let pki = TestPki::new().unwrap();
    let (fixed, mut proxy) = Fixed::start(&pki, "restart");
    let Fixed {
        agent, ssh_config, ..
    } = &fixed;
    assert_ssh_reaches_node(ssh_config, "before", &|| logs(&proxy, agent));

    let port = proxy.web.port();
    signal(proxy.pid(), Signal::KILL).unwrap();
    let status = proxy.wait_exit(T).unwrap().expect("SIGKILL ends the proxy");
    assert!(killed(status), "{status:?}");
    let down = Instant::now();
    drop(proxy);
    agent.wait_count("tunnel lost", 2, T).unwrap();
    // Both workers at the cap: each has waited 1, 2, 4 and 8 s (±25 %) since the loss.
    wait_until(
        Duration::from_secs(30),
        "four failed dials per worker",
        || {
            let log = agent.log();
            Ok((failures_of(&log, 1) >= 4 && failures_of(&log, 2) >= 4).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    let proxy = Switchyard::start(&pki, &fixed.config).unwrap();
    let restarted = Instant::now();
    assert_eq!(proxy.web.port(), port);
    // A condition, not a stopwatch: how long it takes under load is the bench's; that
    // the waits stayed at the cap is read from the agent's own log below.
    let ups = |n: usize| {
        agent.wait_tunnels_up(n, Duration::from_secs(60)).unwrap();
        restarted.elapsed()
    };
    let first = ups(3);
    let both = ups(4);
    println!(
        "proxy down {:.1} s; after the restart the first tunnel was back in {:.2} s, both in {:.2} s",
        (restarted - down).as_secs_f64(),
        first.as_secs_f64(),
        both.as_secs_f64()
    );
    // Every reconnect wait the agent logged is within the cap (8 s + 25 % jitter), and
    // the waits reached it: without the cap the fifth would have been 16 s.
    let waits = reconnect_waits(&agent.log());
    assert!(waits.len() >= 8, "{waits:?}\n{}", agent.log());
    let longest = waits.iter().copied().fold(0.0, f64::max);
    assert!(
        (6.0..=MAX_WAIT).contains(&longest),
        "reconnect waits {waits:?}: over the 8 s cap + jitter, or never at it\n{}",
        agent.log()
    );
    wait_until(T, "the restarted proxy counts 2 tunnels", || {
        Ok((proxy.metric("switchyard_tunnel_tunnels", &[])? == 2.0).then_some(()))
    })
    .unwrap();
    assert_ssh_reaches_node(ssh_config, "after", &|| logs(&proxy, agent));
}

/// SIGTERM while an scp runs through the agent's tunnel: the agent gets the drain
/// notice on both tunnels (one with the scp's stream in flight), redials at once, the
/// scp finishes intact, the proxy exits 0 once it has, and the agent is back as soon as
/// the proxy is restarted on the same port.
#[test]
fn sigterm_drain_lets_a_running_scp_finish_and_the_agent_comes_back() {
    let pki = TestPki::new().unwrap();
    let (fixed, mut proxy) = Fixed::start(&pki, "drain");
    let Fixed {
        agent,
        ssh_config,
        dir,
        ..
    } = &fixed;

    // 4 MiB at 8000 kbit/s: about 4 s on the wire.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let local = dir.join("payload");
    std::fs::write(&local, &data).unwrap();
    let remote = dir.join("copied");
    let mut cmd = Command::new(require_tool("scp", "openssh-client", &[]).unwrap());
    cmd.args(["-O", "-q", "-l", "8000", "-F"])
        .arg(ssh_config)
        .arg(&local)
        .arg(format!("root@node1.test:{}", remote.display()));
    let mut scp = Proc::spawn("scp", cmd, dir.path()).unwrap();
    let size = || std::fs::metadata(&remote).map_or(0, |m| m.len());
    wait_until(T, "scp bytes flowing through a tunnel stream", || {
        let streams = proxy.metric("switchyard_tunnel_streams", &[])?;
        Ok((size() >= 256 << 10 && streams >= 1.0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}\n{}", scp.logs(), proxy.log(), agent.log()));
    let at_term = size();
    signal(proxy.pid(), Signal::TERM).unwrap();

    agent.wait_count("drain notice", 2, T).unwrap();
    let at_drain = size();
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("drain notice") && l.contains("streams=1")),
        "no drain notice with the scp's stream in flight:\n{log}"
    );
    assert!(
        at_drain < data.len() as u64,
        "the scp was over before the drain notice ({at_drain} bytes)"
    );
    // The agent redials at once (no backoff: the shortest is 750 ms); the proxy no
    // longer listens, so that dial fails.
    agent.wait_count("tunnel failed", 1, T).unwrap();
    let log = agent.log();
    let notice = log.lines().find(|l| l.contains("drain notice"));
    let redial = log.lines().find(|l| l.contains("tunnel failed"));
    let gap = log_time(redial.unwrap()).unwrap() - log_time(notice.unwrap()).unwrap();
    println!("scp at SIGTERM {at_term} bytes, at the drain notice {at_drain}; redial {gap:.3} s after the notice");
    assert!(
        gap < 0.75,
        "redial {gap:.3} s after the drain notice:\n{log}"
    );

    let status = scp
        .wait_exit(Duration::from_secs(40))
        .unwrap()
        .expect("scp finishes");
    assert!(
        status.success(),
        "scp {status:?}\n{}\n{}\n{}",
        scp.logs(),
        proxy.log(),
        agent.log()
    );
    let copied = std::fs::read(&remote).unwrap();
    assert!(
        copied == data,
        "copied {} bytes, not the payload",
        copied.len()
    );
    let status = proxy
        .wait_exit(T)
        .unwrap()
        .unwrap_or_else(|| panic!("proxy still draining\n{}", proxy.log()));
    assert!(status.success(), "{status:?}\n{}", proxy.log());
    let log = proxy.log();
    assert_eq!(log.matches("drain notice sent").count(), 2, "{log}");
    assert_eq!(log.matches("agent tunnel drained").count(), 2, "{log}");
    // The proxy relayed all of it before it stopped.
    let relayed: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("connection closed route=agent:ssh"))
        .filter_map(|l| log_fields(l, "bytes_to_upstream").last()?.parse().ok())
        .collect();
    assert!(
        matches!(relayed.as_slice(), [n] if *n >= data.len() as u64),
        "the scp's connection relayed {relayed:?} bytes\n{log}"
    );
    drop(proxy);

    let proxy = Switchyard::start(&pki, &fixed.config).unwrap();
    let restarted = Instant::now();
    agent.wait_tunnels_up(4, Duration::from_secs(60)).unwrap();
    println!(
        "after the restart both tunnels were back in {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    let waits = reconnect_waits(&agent.log());
    assert!(
        waits.iter().all(|w| *w <= MAX_WAIT),
        "reconnect waits {waits:?} over the cap\n{}",
        agent.log()
    );
    assert_ssh_reaches_node(ssh_config, "back", &|| logs(&proxy, agent));
}

/// The number of tunnels of the one agent in `/agents`, when there is exactly one.
fn tunnels_of_one_agent(doc: &serde_json::Value) -> Option<usize> {
    match doc["agents"].as_array()?.as_slice() {
        [agent] => Some(agent["tunnels"].as_array()?.len()),
        _ => None,
    }
}

fn tunnel_metric_lines(proxy: &Switchyard) -> String {
    let text = proxy.metrics().unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_tunnel_"))
        .collect();
    lines.join("\n")
}

/// Two proxies (`p1`, `p2`, each naming both as peers) behind HAProxy `mode tcp` round
/// robin, the agent dialing only the balancer: it ends with its 2 tunnels to each (both
/// `/agents` documents, the metrics and its log say so, every tunnel came through the
/// balancer), and ssh straight to each proxy reaches the agent's node.
#[test]
fn two_proxies_behind_haproxy_each_get_the_agents_tunnels_and_route_ssh() {
    let pki = TestPki::new().unwrap();
    let identity = agent_identity(&pki, "edge");
    let ns = Netns::new("mesh").unwrap();
    let sshd = Sshd::start_in(Some(&ns)).unwrap();
    let p1 = Switchyard::start(&pki, &config("p1", &["p1", "p2"], "127.0.0.1:0")).unwrap();
    let p2 = Switchyard::start(&pki, &config("p2", &["p1", "p2"], "127.0.0.1:0")).unwrap();
    let lb_dir = TempDir::new("uptime-haproxy").unwrap();
    let lb = HAProxy::tcp_round_robin(lb_dir.path(), &[p1.web, p2.web]).unwrap();
    let started = Instant::now();
    let services = [("ssh", "node1", sshd.addr)];
    let agent = Agent::start_in(&ns, lb.addr, &identity, &services, &[]).unwrap();
    let context = || {
        format!(
            "--- p1 ---\n{}\n--- p2 ---\n{}\n--- agent ---\n{}\n--- haproxy ---\n{}",
            p1.log(),
            p2.log(),
            agent.log(),
            lb.logs()
        )
    };
    wait_until(
        Duration::from_secs(30),
        "2 tunnels of one agent on each proxy",
        || {
            let both = [&p1, &p2]
                .iter()
                .all(|p| tunnels_of_one_agent(&agents_json(p)) == Some(2));
            Ok(both.then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", context()));
    println!(
        "mesh complete (2 tunnels to each proxy) {:.2} s after the agent started",
        started.elapsed().as_secs_f64()
    );

    let (d1, d2) = (agents_json(&p1), agents_json(&p2));
    for (doc, id) in [(&d1, "p1"), (&d2, "p2")] {
        println!(
            "/agents of {id}:\n{}",
            serde_json::to_string_pretty(doc).unwrap()
        );
        assert_eq!(doc["proxy_id"], id, "{doc}");
        assert_eq!(doc["peers"], serde_json::json!(["p1", "p2"]), "{doc}");
        let a = &doc["agents"][0];
        assert_eq!(a["identity"], "CN=edge,O=switchyard-agent", "{doc}");
        assert_eq!(a["services"], serde_json::json!(["ssh:node1"]), "{doc}");
        for t in a["tunnels"].as_array().unwrap() {
            let peer = t["peer"].as_str().unwrap_or_default();
            assert!(
                peer.starts_with(&format!("{BALANCER_SOURCE}:")),
                "a tunnel not through the balancer: {doc}"
            );
            assert_eq!(t["draining"], false, "{doc}");
        }
    }
    assert_eq!(
        d1["agents"][0]["agent_id"], d2["agents"][0]["agent_id"],
        "one agent process"
    );
    let log = agent.log();
    for id in ["p1", "p2"] {
        let ups = log
            .lines()
            .filter(|l| l.contains("tunnel up") && l.contains(&format!("proxy=\"{id}\"")))
            .count();
        assert_eq!(ups, 2, "agent's tunnel up lines for {id}:\n{log}");
    }
    assert!(log.contains("proxies known"), "{log}");
    let mesh_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["proxies known", "tunnel up", "already holds"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    println!("agent:\n{}", mesh_lines.join("\n"));

    for (proxy, id) in [(&p1, "p1"), (&p2, "p2")] {
        let dir = TempDir::new(&format!("uptime-ssh-{id}")).unwrap();
        let (ssh_config, _) =
            write_ssh_config(client_args(&pki, proxy, "client"), &sshd, dir.path());
        assert_ssh_reaches_node(&ssh_config, id, &context);
        assert_eq!(
            streams_opened(proxy, "ssh"),
            1.0,
            "{id}: ssh did not go through its tunnel\n{}",
            context()
        );
    }
    for (proxy, id) in [(&p1, "p1"), (&p2, "p2")] {
        let lines = tunnel_metric_lines(proxy);
        println!("switchyard_tunnel_* of {id}:\n{lines}");
        let accepted = [("outcome", "accepted")];
        assert_eq!(
            metric(proxy, "switchyard_tunnel_agents", &[]),
            1.0,
            "{lines}"
        );
        assert_eq!(
            metric(proxy, "switchyard_tunnel_tunnels", &[]),
            2.0,
            "{lines}"
        );
        let events = metric(proxy, "switchyard_tunnel_events_total", &accepted);
        assert_eq!(events, 2.0, "{lines}");
    }
}
