//! Reverse tunnels in tests: the proxy's `tunnel:` section ([`tunnel_section`],
//! [`tunnel_proxy`]), agent identities ([`agent_identity`]) and a running
//! `switchyard agent` ([`Agent`]), optionally inside a network namespace
//! ([`crate::netns::Netns`]) whose only way out is a forwarder to the proxy.
//!
//! Below those, the helpers the `agent_*` tests share (reaching the agent's apps, waiting
//! for log lines, the `/agents` document), so that no test file keeps a copy of its own.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::local_proxy::{client_args, LocalProxy};
use crate::netns::{command_in, Netns};
use crate::process::{Proc, Stream};
use crate::{
    http_get, require_tool, run_with_timeout, switchyard_bin, wait_until, ProxyConfig,
    SClientOutput, Switchyard, TempDir, TestPki,
};

/// The organisation of an agent certificate (`ca issue --agent` gives `CN=name,
/// O=switchyard-agent`): a [`Rule`] naming it admits every agent of the cluster CA.
pub const AGENT_ORG: &str = "switchyard-agent";

/// One `tunnel.agents` entry: the agent identity (CN or O), what it may serve
/// (`kind:name`, `kind:*`), and which clients may reach it (empty: any).
pub struct Rule<'a> {
    pub identity: &'a str,
    pub serve: &'a [&'a str],
    pub allow: &'a [&'a str],
}

impl<'a> Rule<'a> {
    /// `identity` may serve `serve`, and any client may reach it (`allow: []`).
    pub fn serving(identity: &'a str, serve: &'a [&'a str]) -> Rule<'a> {
        Rule {
            identity,
            serve,
            allow: &[],
        }
    }
}

/// The `tunnel:` section for [`crate::ProxyConfig::extra`]: this proxy's id, its peers,
/// a 1 s heartbeat (so a lost tunnel shows within seconds), and the rules.
pub fn tunnel_section(proxy_id: &str, peers: &[&str], rules: &[Rule<'_>]) -> String {
    let list = |v: &[&str]| {
        let items: Vec<String> = v.iter().map(|s| format!("'{s}'")).collect();
        format!("[{}]", items.join(", "))
    };
    let mut y = format!(
        "tunnel:\n  proxy_id: {proxy_id}\n  peers: {}\n  heartbeat_interval: 1s\n  agents:\n",
        list(peers)
    );
    for r in rules {
        y += &format!(
            "    - {{identity: '{}', serve: {}, allow: {}}}\n",
            r.identity,
            list(r.serve),
            list(r.allow)
        );
    }
    y
}

/// A proxy config with the tunnel service: proxy id `p1`, its own only peer, `rules`.
pub fn tunnel_config(rules: &[Rule<'_>]) -> ProxyConfig {
    ProxyConfig {
        extra: tunnel_section("p1", &["p1"], rules),
        ..ProxyConfig::default()
    }
}

/// A running proxy of [`tunnel_config`]`(rules)`.
pub fn tunnel_proxy(pki: &TestPki, rules: &[Rule<'_>]) -> Switchyard {
    Switchyard::start(pki, &tunnel_config(rules)).unwrap()
}

/// The text of the proxy the namespace tests (`agent_services`, `agent_http`,
/// `agent_security`) start: id `proxy-a` with no peers, `rules`, and max_connections
/// raised to 4000 for the 1000 streams (each local connection is its own TLS connection
/// to the proxy).
pub fn proxy_a_text(rules: &[Rule<'_>]) -> String {
    let config = ProxyConfig {
        extra: tunnel_section("proxy-a", &[], rules),
        ..ProxyConfig::default()
    };
    let text = config
        .render()
        .replace("max_connections: 1000", "max_connections: 4000");
    assert!(text.contains("max_connections: 4000"), "{text}");
    text
}

/// A running proxy of [`proxy_a_text`]`(rules)`.
pub fn proxy_a(pki: &TestPki, rules: &[Rule<'_>]) -> Switchyard {
    Switchyard::start_text(pki, &proxy_a_text(rules), None).unwrap()
}

/// Issues the agent certificate `PKI/STEM.{crt,key}` from the cluster CA (CN `stem`, O
/// [`AGENT_ORG`], what `ca issue --agent` gives) and returns the identity `PKI/STEM`, for
/// `--identity`.
pub fn agent_identity(pki: &TestPki, stem: &str) -> PathBuf {
    pki.issue_client(stem, stem, Some(AGENT_ORG)).unwrap();
    pki.dir().join(stem)
}

/// A running `switchyard agent`. Dropping it stops the process.
pub struct Agent {
    proc: Proc,
    _dir: TempDir,
}

impl Agent {
    /// Starts `switchyard agent --proxy localhost:PORT --identity IDENTITY` with `services`
    /// (`(kind, name, address as seen by the agent)`) and `extra` flags, inside `ns` when
    /// given (then `proxy` is the namespace side of a [`Netns::forward_out`]).
    pub fn start(
        ns: Option<&Netns>,
        proxy: SocketAddr,
        identity: &Path,
        services: &[(&str, &str, SocketAddr)],
        extra: &[&str],
    ) -> Result<Agent> {
        Agent::start_with(ns, proxy, identity, services, extra, |_| {})
    }

    /// [`Agent::start`] inside `ns`, dialing `proxy` (on the host's loopback) through a
    /// new [`Netns::forward_out`], the namespace's only way out.
    pub fn start_in(
        ns: &Netns,
        proxy: SocketAddr,
        identity: &Path,
        services: &[(&str, &str, SocketAddr)],
        extra: &[&str],
    ) -> Result<Agent> {
        let way_out = ns.forward_out(proxy)?;
        Agent::start(Some(ns), way_out, identity, services, extra)
    }

    /// [`Agent::start_in`] with `--tunnels N`, not waiting for them (for an agent the
    /// proxy refuses).
    pub fn start_tunnels(
        ns: &Netns,
        proxy: &Switchyard,
        identity: &Path,
        services: &[(&str, &str, SocketAddr)],
        tunnels: usize,
    ) -> Agent {
        let n = tunnels.to_string();
        Agent::start_in(ns, proxy.web, identity, services, &["--tunnels", &n]).unwrap()
    }

    /// The agent `cn` ([`agent_identity`]) inside `ns` with `--tunnels N`
    /// ([`Agent::start_tunnels`]); returns once its `tunnels` tunnels are up (within
    /// [`WAIT`], failing with the proxy's log).
    pub fn up_in(
        pki: &TestPki,
        ns: &Netns,
        proxy: &Switchyard,
        cn: &str,
        services: &[(&str, &str, SocketAddr)],
        tunnels: usize,
    ) -> Agent {
        let identity = agent_identity(pki, cn);
        let agent = Agent::start_tunnels(ns, proxy, &identity, services, tunnels);
        agent
            .wait_tunnels_up(tunnels, WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n--- proxy ---\n{}", proxy.log()));
        agent
    }

    /// [`Agent::start`], with `setup` applied to the command first (environment such as
    /// `HTTPS_PROXY`).
    pub fn start_with(
        ns: Option<&Netns>,
        proxy: SocketAddr,
        identity: &Path,
        services: &[(&str, &str, SocketAddr)],
        extra: &[&str],
        setup: impl FnOnce(&mut std::process::Command),
    ) -> Result<Agent> {
        let dir = TempDir::new("agent")?;
        let mut cmd = command_in(ns, switchyard_bin()?);
        cmd.arg("agent")
            .arg(format!("--proxy=localhost:{}", proxy.port()))
            .arg(format!("--identity={}", identity.display()));
        for (kind, name, addr) in services {
            cmd.arg(format!("--{kind}={name}={addr}"));
        }
        cmd.args(extra)
            .env("SWITCHYARD_LOG", "info,switchyard=debug");
        setup(&mut cmd);
        let proc = Proc::spawn("agent", cmd, dir.path())?;
        Ok(Agent { proc, _dir: dir })
    }

    /// Waits until the agent has logged `n` "tunnel up" lines in all.
    pub fn wait_tunnels_up(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_count("tunnel up", n, timeout)
    }

    /// Waits until `needle` appears `n` times in the agent's log.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        crate::wait_until(
            timeout,
            &format!("{n}× `{needle}` in the agent's log"),
            || Ok((self.log().matches(needle).count() >= n).then_some(())),
        )
        .map_err(|e| e.context(self.log()))
    }

    /// The agent's stderr so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// The process, to signal or wait for it.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Waits for one line of its log matching `f`.
    pub fn wait_line<T>(&mut self, timeout: Duration, f: impl Fn(&str) -> Option<T>) -> Result<T> {
        self.proc.wait_for_line(Stream::Stderr, timeout, f)
    }
}

/// How long the agent tests wait for a line, a count or a tunnel.
pub const WAIT: Duration = Duration::from_secs(15);

/// The host cannot connect to `addr` (it is inside a namespace): refused, as nothing
/// listens on the host's loopback at that port.
pub fn unreachable_from_host(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => panic!("{addr} is reachable from the host"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{addr}: {e}"),
    }
}

/// `proxy app NAME` as the client identity `stem` (`client`, or one issued by the test).
pub fn app_proxy(pki: &TestPki, proxy: &Switchyard, name: &str, stem: &str) -> LocalProxy {
    let mut args = vec!["proxy".to_owned(), "app".into(), name.into()];
    args.extend(client_args(pki, proxy, stem));
    LocalProxy::start(&args).unwrap()
}

/// One exchange with a demo echo app named `echo` through `addr`: its banner
/// (`upstream=echo\n`), then `text` back.
pub fn echo_once(addr: SocketAddr, text: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut banner = vec![0u8; "upstream=echo\n".len()];
    stream.read_exact(&mut banner)?;
    stream.write_all(text.as_bytes())?;
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back)?;
    Ok((
        String::from_utf8_lossy(&banner).into_owned(),
        String::from_utf8_lossy(&back).into_owned(),
    ))
}

/// `GET /agents` on the proxy's diag address (which must answer 200), parsed.
pub fn agents_json(proxy: &Switchyard) -> serde_json::Value {
    let (code, body) = http_get(proxy.diag, "/agents").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits up to [`WAIT`] until `needle` is in `log()` (the `what` log), failing with it.
pub fn wait_log(what: &str, needle: &str, log: impl Fn() -> String) {
    wait_until(WAIT, &format!("`{needle}` in the {what} log"), || {
        Ok(log().contains(needle).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n--- {what} ---\n{}", log()));
}

/// The first line of `log` containing `needle` (failing with the log when none does).
pub fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{log}"))
}

/// `len` bytes only stream `seed` sends: its number first, then a pattern of it.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut data = format!("stream {seed:04}:").into_bytes();
    data.extend(
        (0..len as u32).map(|i| (i.wrapping_add(seed << 12).wrapping_mul(2654435761) >> 13) as u8),
    );
    data.truncate(len);
    data
}

/// `ssh -F CONFIG ARGS…` (an ssh config of [`crate::local_proxy::write_ssh_config`]),
/// with a 20 s timeout.
pub fn ssh(config: &Path, args: &[&str]) -> SClientOutput {
    let mut cmd = Command::new(require_tool("ssh", "openssh-client", &[]).unwrap());
    cmd.arg("-F").arg(config).args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(20)).unwrap()
}

/// The metric `name{labels}` of `proxy` (the sum over its other labels), which must
/// be readable.
pub fn metric(proxy: &Switchyard, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metric(name, labels).unwrap()
}

/// `switchyard_tunnel_streams_opened_total{kind=KIND, outcome=opened}`: the streams the
/// proxy opened through agents' tunnels for clients of `kind` (`tcp`, `ssh`, `http`…).
pub fn streams_opened(proxy: &Switchyard, kind: &str) -> f64 {
    let opened = [("kind", kind), ("outcome", "opened")];
    metric(proxy, "switchyard_tunnel_streams_opened_total", &opened)
}

/// `switchyard_tunnel_bytes_total{direction=DIRECTION}` (`to_agent`, `from_agent`).
pub fn tunnel_bytes(proxy: &Switchyard, direction: &str) -> f64 {
    metric(
        proxy,
        "switchyard_tunnel_bytes_total",
        &[("direction", direction)],
    )
}
