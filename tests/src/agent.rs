//! Reverse tunnels in tests: the proxy's `tunnel:` section ([`tunnel_section`]) and a
//! running `switchyard agent` ([`Agent`]), optionally inside a network namespace
//! ([`crate::netns::Netns`]) whose only way out is a forwarder to the proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::netns::{command_in, Netns};
use crate::process::{Proc, Stream};
use crate::{switchyard_bin, TempDir};

/// One `tunnel.agents` entry: the agent identity (CN or O), what it may serve
/// (`kind:name`, `kind:*`), and which clients may reach it (empty: any).
pub struct Rule<'a> {
    pub identity: &'a str,
    pub serve: &'a [&'a str],
    pub allow: &'a [&'a str],
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
