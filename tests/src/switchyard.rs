//! The `switchyard` binary under test: locating/building it ([`switchyard_bin`]), a
//! config builder ([`ProxyConfig`]), the running proxy ([`Switchyard`]) and demo
//! upstreams ([`DemoUpstream`], on the host or inside a [`Netns`]).
//!
//! Locating the binary: `env!("CARGO_BIN_EXE_switchyard")` only exists inside the
//! `proxy-user` package, and a normal dependency on `proxy-user` builds its library,
//! not its binary. So the harness runs `cargo build -p proxy-user --bin switchyard`
//! once per test process (a no-op when fresh; same profile and target dir as the test
//! executable, so the workspace target dir is shared) and uses
//! `<target>/<profile>/switchyard`. `SWITCHYARD_BIN=/path` skips the build.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{command_in, Netns};
use crate::pki::CertFiles;
use crate::process::{Proc, Stream};
use crate::{http_get, parse_addr, TempDir, TestPki};

/// The `switchyard` executable, built on first use (see the module docs).
pub fn switchyard_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_switchyard().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_switchyard() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SWITCHYARD_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // <target>/<profile>/deps/<test-exe>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not in <target>/<profile>/deps")?;
    let target_dir = profile_dir.parent().context("no target dir")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "proxy-user",
            "--bin",
            "switchyard",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // `cargo test` gives the test process this package's CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, …; build scripts (ring's) rerun when those change, so passing
    // them on would rebuild half the workspace on every run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix));
        let others = [
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ];
        if per_package || others.contains(&key.as_ref()) {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = cmd.output().context("run cargo build -p proxy-user")?;
    if !out.status.success() {
        bail!(
            "cargo build -p proxy-user failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(profile_dir.join("switchyard"))
}

/// The parts of a `serve` config a test varies; [`ProxyConfig::render`] writes the YAML
/// of the binary contract (TLS files are copied next to it as `proxy.crt`,
/// `proxy.key`, `ca.crt`).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// `proxy_service.proxy_protocol`: `Some("on")`, `Some("off")`, or omitted.
    pub proxy_protocol: Option<String>,
    /// `proxy_service.trusted_proxies` (addresses or CIDRs); omitted when empty.
    pub trusted_proxies: Vec<String>,
    /// `proxy_service.trust_x_forwarded_for`: `false`, `true` or `hops`.
    pub trust_x_forwarded_for: String,
    /// The top-level `allow_from:` section: `(upstreams key, YAML list)`.
    pub allow_from: Vec<(String, String)>,
    /// `limits.handshake_timeout`.
    pub handshake_timeout: String,
    /// `upstreams.<key>: <value>` (value is YAML: an address or a flow map).
    pub upstreams: Vec<(String, String)>,
    /// `routes:` entries, each a YAML flow map.
    pub routes: Vec<String>,
    /// `serve --ebpf <mode>` (`auto`, `require`, `off`); omitted uses the binary's default.
    pub ebpf: Option<String>,
    /// The top-level `relay:` key (`auto`, `kernel`, `splice`, `copy`); omitted: `auto`.
    pub relay: Option<String>,
    /// Top-level YAML appended as is (e.g. a `tunnel:` section, [`crate::agent::tunnel_section`]).
    pub extra: String,
    /// `proxy_service.web_listen_addr` (default `127.0.0.1:0`): a fixed one lets a test
    /// restart the proxy on the same port.
    pub listen: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            proxy_protocol: None,
            trusted_proxies: Vec::new(),
            trust_x_forwarded_for: "false".into(),
            allow_from: Vec::new(),
            handshake_timeout: "2s".into(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            ebpf: None,
            relay: None,
            extra: String::new(),
            listen: "127.0.0.1:0".into(),
        }
    }
}

impl ProxyConfig {
    /// Sets `upstreams.<key>` to a plain address.
    pub fn upstream(mut self, key: &str, addr: SocketAddr) -> Self {
        self.upstreams.push((key.into(), addr.to_string()));
        self
    }

    /// Adds an SSH node: `upstreams.ssh_nodes.<node>`.
    pub fn node(mut self, node: &str, addr: SocketAddr) -> Self {
        match self.upstreams.iter_mut().find(|(k, _)| k == "ssh_nodes") {
            Some((_, map)) => *map = format!("{}, {node}: '{addr}'}}", map.trim_end_matches('}')),
            None => self
                .upstreams
                .push(("ssh_nodes".into(), format!("{{{node}: '{addr}'}}"))),
        }
        self
    }

    /// Adds the TCP app route `echo-app`: SNI `echo.localhost`, ALPN `teleport-tcp`,
    /// terminated and relayed to `addr` (what [`crate::local_proxy::echo_tcp_args`] reach).
    pub fn echo_app(mut self, addr: SocketAddr) -> Self {
        self.routes.push(format!(
            "{{name: echo-app, sni: echo.localhost, alpn: teleport-tcp, mode: terminate, upstream: '{addr}'}}"
        ));
        self
    }

    /// Sets `proxy_service.proxy_protocol`.
    pub fn proxy_protocol(mut self, value: &str) -> Self {
        self.proxy_protocol = Some(value.into());
        self
    }

    /// Adds `proxy_service.trusted_proxies` entries.
    pub fn trusted(mut self, proxies: &[&str]) -> Self {
        self.trusted_proxies
            .extend(proxies.iter().map(|p| p.to_string()));
        self
    }

    /// Sets `proxy_service.trust_x_forwarded_for` (`false`, `true`, `hops`).
    pub fn trust_xff(mut self, value: &str) -> Self {
        self.trust_x_forwarded_for = value.into();
        self
    }

    /// Sets `allow_from.<key>` (`key` an `upstreams` key) to the ranges `nets`.
    pub fn allow_from(mut self, key: &str, nets: &[&str]) -> Self {
        let list = nets
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        self.allow_from.push((key.into(), format!("[{list}]")));
        self
    }

    /// The config file text.
    pub fn render(&self) -> String {
        let mut y = String::from(
            "version: v2\n\
             auth_service:\n  cluster_name: example\n  proxy_listener_mode: multiplex\n\
             proxy_service:\n\
             \x20 public_addr: proxy.example.test:3080\n\
             \x20 https_keypairs: [{cert_file: proxy.crt, key_file: proxy.key}]\n\
             \x20 client_ca_file: ca.crt\n",
        );
        y += &format!("  web_listen_addr: {}\n", self.listen);
        y += &format!("  trust_x_forwarded_for: {}\n", self.trust_x_forwarded_for);
        if !self.trusted_proxies.is_empty() {
            let list = self
                .trusted_proxies
                .iter()
                .map(|p| format!("'{p}'"))
                .collect::<Vec<_>>()
                .join(", ");
            y += &format!("  trusted_proxies: [{list}]\n");
        }
        if let Some(pp) = &self.proxy_protocol {
            y += &format!("  proxy_protocol: \"{pp}\"\n");
        }
        y += &format!(
            "limits: {{handshake_timeout: {}, max_connections: 1000}}\n",
            self.handshake_timeout
        );
        y += if self.upstreams.is_empty() {
            "upstreams: {}\n"
        } else {
            "upstreams:\n"
        };
        for (key, value) in &self.upstreams {
            y += &format!("  {key}: {value}\n");
        }
        if !self.routes.is_empty() {
            y += "routes:\n";
            for route in &self.routes {
                y += &format!("  - {route}\n");
            }
        }
        if !self.allow_from.is_empty() {
            y += "allow_from:\n";
            for (key, list) in &self.allow_from {
                y += &format!("  {key}: {list}\n");
            }
        }
        y += "diag_addr: 127.0.0.1:0\n";
        if let Some(relay) = &self.relay {
            y += &format!("relay: {relay}\n");
        }
        y += &self.extra;
        y
    }
}

/// A running `switchyard serve`. Dropping it stops the process.
pub struct Switchyard {
    /// The single proxy port.
    pub web: SocketAddr,
    /// Diagnostics: /metrics, /healthz, /readyz.
    pub diag: SocketAddr,
    proc: Proc,
    _dir: TempDir,
}

impl Switchyard {
    /// Writes `config` (with `pki`'s server cert and CA) and starts the proxy; waits
    /// for `switchyard ready web=… diag=…` on stdout.
    pub fn start(pki: &TestPki, config: &ProxyConfig) -> Result<Switchyard> {
        Self::start_text(pki, &config.render(), config.ebpf.as_deref())
    }

    /// [`Switchyard::start`] with the config text as given (e.g. a rendered
    /// [`ProxyConfig`] with keys it does not model) and `serve --ebpf <mode>`.
    pub fn start_text(pki: &TestPki, text: &str, ebpf: Option<&str>) -> Result<Switchyard> {
        let (dir, config_path) = write_config(pki, text)?;
        let mut proc = spawn_serve(&dir, &config_path, ebpf)?;
        let (web, diag) = proc.wait_for_line(Stream::Stdout, Duration::from_secs(15), |l| {
            let rest = l.strip_prefix("switchyard ready web=")?;
            let (web, diag) = rest.split_once(" diag=")?;
            Some((parse_addr(web).ok()?, parse_addr(diag).ok()?))
        })?;
        Ok(Switchyard {
            web,
            diag,
            proc,
            _dir: dir,
        })
    }

    /// Runs `serve` with raw config text expected to be rejected; returns the exit
    /// status and stderr.
    pub fn expect_exit(pki: &TestPki, config_text: &str) -> Result<(ExitStatus, String)> {
        Self::expect_exit_ebpf(pki, config_text, None)
    }

    /// [`Switchyard::expect_exit`] with `serve --ebpf <mode>`.
    pub fn expect_exit_ebpf(
        pki: &TestPki,
        config_text: &str,
        ebpf: Option<&str>,
    ) -> Result<(ExitStatus, String)> {
        let (dir, config_path) = write_config(pki, config_text)?;
        let mut proc = spawn_serve(&dir, &config_path, ebpf)?;
        let status = proc
            .wait_exit(Duration::from_secs(10))?
            .with_context(|| format!("serve kept running\n{}", proc.logs()))?;
        Ok((status, proc.stderr()))
    }

    /// The directory of its config file (relative paths in the config resolve here).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits up to `timeout` for the proxy to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.proc.wait_exit(timeout)
    }

    /// The proxy's log (stderr) so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// The text of `GET /metrics` on the diag address.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.diag, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}: {body}");
        }
        Ok(body)
    }

    /// Sum of the samples of `name` whose labels include every `key="value"` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_sum(&self.metrics()?, name, labels))
    }
}

/// Sums Prometheus text samples of `name` carrying all `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn write_config(pki: &TestPki, text: &str) -> Result<(TempDir, PathBuf)> {
    let dir = TempDir::new("switchyard")?;
    std::fs::copy(&pki.server.cert, dir.join("proxy.crt"))?;
    std::fs::copy(&pki.server.key, dir.join("proxy.key"))?;
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt"))?;
    let path = dir.join("config.yaml");
    std::fs::write(&path, text)?;
    Ok((dir, path))
}

fn spawn_serve(dir: &TempDir, config: &Path, ebpf: Option<&str>) -> Result<Proc> {
    let mut cmd = Command::new(switchyard_bin()?);
    cmd.arg("serve").arg("--config").arg(config);
    if let Some(mode) = ebpf {
        cmd.args(["--ebpf", mode]);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "debug");
    }
    Proc::spawn("switchyard", cmd, dir.path())
}

/// A running `switchyard demo-upstream`.
pub struct DemoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

impl DemoUpstream {
    /// Echo kind: writes `upstream=NAME\n`, then echoes every byte.
    pub fn echo(name: &str) -> Result<DemoUpstream> {
        Self::start_in(None, name, &[])
    }

    /// [`DemoUpstream::echo`] inside `ns` (on the host when `None`).
    pub fn echo_in(ns: Option<&Netns>, name: &str) -> Result<DemoUpstream> {
        Self::start_in(ns, name, &[])
    }

    /// HTTP/1.1 + h2c: answers `200 upstream=NAME path=PATH\n`.
    pub fn http(name: &str) -> Result<DemoUpstream> {
        Self::start_in(None, name, &["--http".into()])
    }

    /// [`DemoUpstream::http`] inside `ns` (on the host when `None`).
    pub fn http_in(ns: Option<&Netns>, name: &str) -> Result<DemoUpstream> {
        Self::start_in(ns, name, &["--http".into()])
    }

    /// The web application for browsers, HTTP/1.1 only (`--webapp`): `GET /` is a page
    /// whose script fills `#fetch` from `/api/hello` and `#ws` from a WebSocket echo on
    /// `/ws`, then sets `#status` to `done` (or `error: …`); `/api/hello` answers JSON
    /// with `app`, `host` and the `x_forwarded_*` headers; `/headers` lists the request
    /// headers; `POST /upload` answers `received=N`; `/download?bytes=N` streams N bytes,
    /// byte i being `i % 251`.
    pub fn webapp(name: &str) -> Result<DemoUpstream> {
        Self::start_in(None, name, &["--webapp".into()])
    }

    /// [`DemoUpstream::webapp`] inside `ns` (on the host when `None`).
    pub fn webapp_in(ns: Option<&Netns>, name: &str) -> Result<DemoUpstream> {
        Self::start_in(ns, name, &["--webapp".into()])
    }

    /// Echo kind inside TLS terminated by the upstream with `tls`.
    pub fn tls_echo(name: &str, tls: &CertFiles) -> Result<DemoUpstream> {
        let args = [
            "--tls-cert".into(),
            tls.cert.display().to_string(),
            "--tls-key".into(),
            tls.key.display().to_string(),
        ];
        Self::start_in(None, name, &args)
    }

    /// `switchyard demo-upstream --name NAME --listen 127.0.0.1:0 EXTRA…` in `ns` (on
    /// the host when `None`); ready when it prints the address it bound.
    fn start_in(ns: Option<&Netns>, name: &str, extra: &[String]) -> Result<DemoUpstream> {
        let dir = TempDir::new("upstream")?;
        let mut cmd = command_in(ns, switchyard_bin()?);
        cmd.args(["demo-upstream", "--name", name, "--listen", "127.0.0.1:0"]);
        cmd.args(extra);
        let mut proc = Proc::spawn(&format!("upstream-{name}"), cmd, dir.path())?;
        let addr = proc.wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| {
            parse_addr(l.strip_prefix("switchyard ready addr=")?).ok()
        })?;
        Ok(DemoUpstream {
            addr,
            _proc: proc,
            _dir: dir,
        })
    }
}
