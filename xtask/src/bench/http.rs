//! HTTP request rate through Switchyard's web route, next to nginx and HAProxy as
//! TLS-terminating reverse proxies and the upstream itself (plaintext, the ceiling), all in
//! front of one `switchyard demo-upstream --http` (HTTP/1.1 and h2c, a 25-byte body) and
//! all with the bench PKI's `proxy` certificate.
//!
//! Two rows per peer: HTTP/1.1 keep-alive driven by `wrk` and HTTP/2 driven by `h2load`,
//! both external load clients run as children of the bench, one thread each. For every run:
//! requests per second, p50 and p99 latency (wrk's own histogram; h2load's per-request log),
//! errors, and CPU seconds per 10 000 requests of the proxy's processes (utime + stime from
//! `/proc/PID/stat`, nginx's workers included), of the upstream, and of the whole machine
//! (`/proc/stat`: load client, kernel and all). Runs are interleaved across peers and redone
//! when other work shared the CPUs, as in the other rows.
//!
//! The proxy under test only needs `upstreams.web` and its certificate, so the rows measure
//! whatever the web route does: relaying HTTP/1.1 and h2 (as h2c) bytes today, or
//! terminating HTTP and pooling HTTP/1.1 to the upstream.

use std::{
    fmt::Write as _,
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    env::{self, Children},
    load::percentile,
    peers::{self, Peer as Running},
    quiet,
    report::median_min_max,
    ATTEMPTS,
};

/// The path every request asks for; the demo upstream echoes it in its body.
const PATH: &str = "/bench";
/// What the demo upstream answers on [`PATH`].
const BODY: &str = "upstream=web path=/bench\n";
/// Seconds of the unreported warm-up run per protocol and peer.
const WARMUP_SECONDS: u64 = 1;
/// Seconds after which wrk counts a request as timed out.
const WRK_TIMEOUT: &str = "5s";
/// The one TLS 1.3 cipher suite the load clients offer, so that every TLS peer does the
/// same record work (left alone, nginx 1.22 stops at TLS 1.2 and the servers that follow
/// the client's order pick AES-256 for wrk and AES-128 for h2load).
const CIPHER: &str = "TLS_AES_128_GCM_SHA256";
/// The one key exchange group they offer.
const GROUP: &str = "X25519";
/// OpenSSL configuration (`OPENSSL_CONF`) of wrk, h2load and curl: TLS 1.3 only, [`CIPHER`]
/// and [`GROUP`] only. wrk has no TLS options of its own; h2load sets its own TLS 1.3 list,
/// so it also gets `--tls13-ciphers`.
fn openssl_conf() -> String {
    format!(
        "# Written by cargo xtask bench for its HTTP load clients.\n\
         openssl_conf = bench_conf\n[bench_conf]\nssl_conf = bench_ssl\n\
         [bench_ssl]\nsystem_default = bench_tls\n[bench_tls]\n\
         MinProtocol = TLSv1.3\nCiphersuites = {CIPHER}\nGroups = {GROUP}\n"
    )
}

/// The load of the HTTP rows.
pub struct Settings {
    /// Whole seconds per run (wrk takes no fractions).
    pub seconds: u64,
    pub runs: usize,
    /// wrk's keep-alive connections (`-c`), one thread.
    pub wrk_connections: usize,
    /// h2load's connections (`-c`), one thread.
    pub h2_clients: usize,
    /// h2load's concurrent streams per connection (`-m`).
    pub h2_streams: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// Whom the load client talks to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The upstream itself, plaintext (h2c prior knowledge for HTTP/2): the ceiling.
    Direct,
    Switchyard,
    Nginx,
    Haproxy,
}

const VIAS: [Via; 4] = [Via::Direct, Via::Switchyard, Via::Nginx, Via::Haproxy];

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct (plaintext)",
            Via::Switchyard => "switchyard",
            Via::Nginx => "nginx",
            Via::Haproxy => "haproxy",
        }
    }
}

/// The upstream and the three proxies, stopped when dropped.
struct Servers {
    upstream: SocketAddr,
    switchyard: SocketAddr,
    /// The upstream's and Switchyard's processes.
    children: Children,
    nginx: Running,
    haproxy: Running,
    pki: PathBuf,
    logs: PathBuf,
}

impl Servers {
    fn start(binary: &Path, logs: &Path, pki: &Path) -> Result<Servers> {
        let mut children = Children::new(logs.to_path_buf());
        #[rustfmt::skip]
        let upstream = children.spawn(binary, "http-upstream", "addr",
            &["demo-upstream", "--http", "--name", "web", "--listen", "127.0.0.1:0"])?;
        let config = pki.join("switchyard-http.yaml");
        std::fs::write(
            &config,
            format!(
                "version: v2\n\
                 auth_service: {{cluster_name: bench}}\n\
                 proxy_service:\n  web_listen_addr: 127.0.0.1:0\n  \
                 https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n\
                 upstreams: {{web: \"{upstream}\"}}\n\
                 limits: {{max_connections: 10000}}\n"
            ),
        )
        .with_context(|| format!("write {}", config.display()))?;
        #[rustfmt::skip]
        let switchyard = children.spawn(binary, "switchyard-http", "web",
            &["serve", "--config", env::path(&config)?])?;
        let nginx = start_nginx(upstream, logs, pki)?;
        let haproxy = start_haproxy(upstream, logs, pki)?;
        Ok(Servers {
            upstream,
            switchyard,
            children,
            nginx,
            haproxy,
            pki: pki.to_path_buf(),
            logs: logs.to_path_buf(),
        })
    }

    /// The port the load client connects to.
    fn addr(&self, via: Via) -> SocketAddr {
        match via {
            Via::Direct => self.upstream,
            Via::Switchyard => self.switchyard,
            Via::Nginx => self.nginx.addr,
            Via::Haproxy => self.haproxy.addr,
        }
    }

    /// The URL the load client asks for: plaintext to the upstream, else HTTPS under the
    /// name the proxy certificate covers (wrk and h2load send it as SNI).
    fn url(&self, via: Via) -> String {
        match via {
            Via::Direct => format!("http://{}{PATH}", self.upstream),
            _ => format!("https://localhost:{}{PATH}", self.addr(via).port()),
        }
    }

    /// The proxy's processes (none for direct).
    fn proxy_pids(&self, via: Via) -> Vec<u32> {
        match via {
            Via::Direct => Vec::new(),
            // children: [upstream, switchyard]
            Via::Switchyard => self.children.pids().into_iter().skip(1).collect(),
            Via::Nginx => self.nginx.pids(),
            Via::Haproxy => self.haproxy.pids(),
        }
    }

    fn upstream_pids(&self) -> Vec<u32> {
        self.children.pids().into_iter().take(1).collect()
    }

    /// Everything the bench started, for the foreign-CPU check: this process (with its
    /// reaped load clients), the upstream and every proxy.
    fn all_pids(&self) -> Vec<u32> {
        let mut pids = vec![0];
        pids.extend(self.children.pids());
        pids.extend(self.nginx.pids());
        pids.extend(self.haproxy.pids());
        pids
    }

    /// One `curl` per peer and protocol before measuring: the certificate verifies as
    /// `localhost` against the bench CA, TLS 1.3 with [`CIPHER`] works (curl offers only
    /// that, as the load clients do), the protocol is the one asked for, and the body is
    /// the upstream's.
    fn check(&self, via: Via, protocol: Protocol) -> Result<()> {
        let mut curl = Command::new("curl");
        curl.env("OPENSSL_CONF", self.logs.join("bench-openssl.cnf"));
        curl.args(["-sS", "--max-time", "5", "-w", "\n%{http_version}"]);
        curl.arg(match (protocol, via) {
            (Protocol::Http1, _) => "--http1.1",
            (Protocol::Http2, Via::Direct) => "--http2-prior-knowledge",
            (Protocol::Http2, _) => "--http2",
        });
        if via != Via::Direct {
            let port = self.addr(via).port();
            curl.arg("--cacert").arg(self.pki.join("ca.crt"));
            curl.args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
        }
        let out = curl
            .arg(self.url(via))
            .output()
            .context("spawn curl (Debian package curl)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let want = match protocol {
            Protocol::Http1 => "1.1",
            Protocol::Http2 => "2",
        };
        if !out.status.success() || text != format!("{BODY}\n{want}") {
            bail!(
                "{} over {} does not answer like the upstream: {:?} {}",
                via.name(),
                protocol.name(),
                text,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// nginx as a TLS-terminating reverse proxy: `http2` on the listener, HTTP/1.1 with a
/// keep-alive pool to the upstream, no access log, no request limit per connection, and
/// TLS 1.3 enabled (nginx 1.22's default `ssl_protocols` ends at TLS 1.2).
fn start_nginx(upstream: SocketAddr, logs: &Path, pki: &Path) -> Result<Running> {
    let addr: SocketAddr = ([127, 0, 0, 1], peers::free_port()?).into();
    let config = logs.join("nginx-http.conf");
    let tmp = logs.join("nginx-http-tmp");
    std::fs::create_dir_all(&tmp)?;
    let (dir, tmp, pki) = (logs.display(), tmp.display(), pki.display());
    std::fs::write(
        &config,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx-http.pid;\n\
             error_log {dir}/nginx-http.err warn;\nevents {{ worker_connections 10000; }}\n\
             http {{\n  access_log off;\n  \
             client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  \
             fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  \
             scgi_temp_path {tmp}/scgi;\n  \
             upstream web {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}\n  \
             server {{\n    listen {addr} ssl http2;\n    \
             ssl_certificate {pki}/proxy.crt;\n    ssl_certificate_key {pki}/proxy.key;\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    \
             keepalive_requests 1000000;\n    \
             location / {{\n      proxy_pass http://web;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(logs)
        .arg("-e")
        .arg(logs.join("nginx-http.err"))
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(logs.join("nginx-http.log"))?)
        .spawn()
        .context("spawn nginx")?;
    Running::spawned(addr, child, "nginx (http)", logs)
}

/// HAProxy as a TLS-terminating reverse proxy: `mode http`, ALPN `h2,http/1.1` on the
/// bind, `http-reuse safe` to the upstream (HTTP/1.1), no log.
fn start_haproxy(upstream: SocketAddr, logs: &Path, pki: &Path) -> Result<Running> {
    let addr: SocketAddr = ([127, 0, 0, 1], peers::free_port()?).into();
    // HAProxy wants the certificate and its key in one PEM file.
    let pem = logs.join("haproxy-http.pem");
    let mut both = std::fs::read(pki.join("proxy.crt"))?;
    both.extend(std::fs::read(pki.join("proxy.key"))?);
    std::fs::write(&pem, both)?;
    let config = logs.join("haproxy-http.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind {addr} ssl crt {pem} alpn h2,http/1.1\n  default_backend web\n\
             backend web\n  http-reuse safe\n  server up {upstream}\n",
            pem = pem.display(),
        ),
    )?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(logs.join("haproxy-http.log"))?)
        .spawn()
        .context("spawn haproxy")?;
    Running::spawned(addr, child, "haproxy (http)", logs)
}

/// What the load client reported for one run.
struct Load {
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// One measured run.
struct Run {
    load: Load,
    rps: f64,
    proxy_cpu_per_10k: f64,
    upstream_cpu_per_10k: f64,
    machine_cpu_per_10k: f64,
    /// The upstream's CPU seconds per second of the run (2.0 = both CPUs).
    upstream_busy: f64,
    foreign_cpu: f64,
}

/// Every run of one protocol through one peer.
struct Row {
    protocol: Protocol,
    via: Via,
    runs: Vec<Run>,
}

impl Row {
    fn spread(&self, f: fn(&Run) -> f64) -> (f64, f64, f64) {
        median_min_max(self.runs.iter().map(f).collect())
    }
}

/// The load client's command line for `protocol` against `via`, for `seconds`.
fn command(
    servers: &Servers,
    settings: &Settings,
    protocol: Protocol,
    via: Via,
    seconds: u64,
    logs: &Path,
) -> Command {
    let mut c = match protocol {
        Protocol::Http1 => {
            let mut c = Command::new("wrk");
            c.args(["-t1", &format!("-c{}", settings.wrk_connections)]);
            c.args([&format!("-d{seconds}s"), "--timeout", WRK_TIMEOUT, "-s"]);
            c.arg(logs.join("wrk-report.lua")).arg(servers.url(via));
            c
        }
        Protocol::Http2 => {
            let mut c = Command::new("h2load");
            c.args(["-t1", &format!("-c{}", settings.h2_clients)]);
            c.args([
                &format!("-m{}", settings.h2_streams),
                "-D",
                &seconds.to_string(),
            ]);
            c.arg(format!("--tls13-ciphers={CIPHER}"));
            let log = logs.join("h2load-requests.tsv");
            c.arg(format!("--log-file={}", log.display()));
            if via != Via::Direct {
                let addr = servers.addr(via);
                c.arg(format!("--connect-to={}:{}", addr.ip(), addr.port()));
            }
            c.arg(servers.url(via));
            c
        }
    };
    c.env("OPENSSL_CONF", logs.join("bench-openssl.cnf"));
    c
}

/// wrk's `done` hook: one machine-readable line with wrk's own totals and percentiles.
const WRK_REPORT: &str = r#"-- Written by cargo xtask bench: one line for the bench to read when wrk is done.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk-result requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// Runs the load client once and reads what it reports.
fn drive(
    servers: &Servers,
    settings: &Settings,
    protocol: Protocol,
    via: Via,
    seconds: u64,
    logs: &Path,
) -> Result<Load> {
    let log = logs.join("h2load-requests.tsv");
    if log.exists() {
        std::fs::remove_file(&log).with_context(|| format!("remove {}", log.display()))?;
    }
    let mut cmd = command(servers, settings, protocol, via, seconds, logs);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The last run's output of each client and peer, for a look at what was negotiated.
    let tool = match protocol {
        Protocol::Http1 => "wrk",
        Protocol::Http2 => "h2load",
    };
    let slug = via.name().split_whitespace().next().unwrap_or("peer");
    std::fs::write(logs.join(format!("{tool}-{slug}.out")), &out.stdout)?;
    let what = || format!("{} through {}", protocol.name(), via.name());
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let load = match protocol {
        Protocol::Http1 => parse_wrk(&stdout),
        Protocol::Http2 => {
            let log =
                std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
            let tls = (via != Via::Direct).then_some(("TLSv1.3", CIPHER, GROUP));
            let want = if via == Via::Direct { "h2c" } else { "h2" };
            parse_h2load(&stdout, &log, want, tls)
        }
    }
    .with_context(|| format!("{}: {stdout}", what()))?;
    if load.requests == 0 {
        bail!("no request completed, {}: {stdout}", what());
    }
    Ok(load)
}

/// Reads the `wrk-result` line of [`WRK_REPORT`].
fn parse_wrk(stdout: &str) -> Result<Load> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrk-result "))
        .context("no wrk-result line")?;
    let field = |key: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key}= in {line:?}"))?
            .parse()
            .with_context(|| format!("bad {key} in {line:?}"))
    };
    let errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| field(k))
        .sum::<Result<f64>>()?;
    Ok(Load {
        requests: field("requests")? as u64,
        seconds: field("duration_us")? / 1e6,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        errors: errors as u64,
    })
}

/// Reads h2load's summary (`finished in …`, `requests: …`, the application protocol,
/// which must be `protocol`, and the TLS version, cipher and key exchange, which must be
/// `tls` when given) and its per-request log (start µs, status, µs to the end of the
/// response) for the latency percentiles of the successful requests.
fn parse_h2load(
    stdout: &str,
    log: &str,
    protocol: &str,
    tls: Option<(&str, &str, &str)>,
) -> Result<Load> {
    let printed = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    let negotiated = printed("Application protocol")
        .context("h2load printed no application protocol (did the connections fail?)")?;
    if negotiated != protocol {
        bail!("h2load spoke {negotiated}, not {protocol}");
    }
    if let Some((version, cipher, group)) = tls {
        let got = (
            printed("TLS Protocol").unwrap_or("?"),
            printed("Cipher").unwrap_or("?"),
            printed("Server Temp Key").unwrap_or("?"),
        );
        if got.0 != version || got.1 != cipher || !got.2.starts_with(group) {
            bail!("h2load negotiated {got:?}, not {version} {cipher} {group}");
        }
    }
    let seconds = stdout
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("finished in ")?;
            let (d, _) = rest.split_once(',')?;
            duration_seconds(d.trim())
        })
        .context("no `finished in` line")?;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .context("no `requests:` line")?;
    // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    let count = |what: &str| -> Result<u64> {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(what)?.trim().parse().ok())
            .with_context(|| format!("no {what} count in {line:?}"))
    };
    let succeeded = count("succeeded")?;
    let errors = count("failed")? + count("errored")? + count("timeout")?;
    let mut us: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_, status, us) = (f.next()?, f.next()?, f.next()?);
            let status: u16 = status.trim().parse().ok()?;
            (200..400)
                .contains(&status)
                .then(|| us.trim().parse().ok())?
        })
        .collect();
    if us.is_empty() {
        bail!("h2load's log lists no successful request");
    }
    us.sort_by(f64::total_cmp);
    Ok(Load {
        requests: succeeded,
        seconds,
        p50_us: percentile(&us, 0.50),
        p99_us: percentile(&us, 0.99),
        errors,
    })
}

/// h2load's durations: `3.00s`, `999.12ms`, `12us`.
fn duration_seconds(s: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else {
        (s.strip_suffix('s')?, 1.0)
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// One run, redone (up to [`ATTEMPTS`]) when other processes used more than
/// `quiet::FOREIGN` of the CPUs during it.
fn measure(
    servers: &Servers,
    settings: &Settings,
    protocol: Protocol,
    via: Via,
    logs: &Path,
) -> Result<Run> {
    let (proxy, upstream, all) = (
        servers.proxy_pids(via),
        servers.upstream_pids(),
        servers.all_pids(),
    );
    let mut attempt = 1;
    loop {
        quiet::wait()?;
        let before = quiet::Sample::take(&all);
        let (proxy0, upstream0) = (quiet::cpu_seconds(&proxy), quiet::cpu_seconds(&upstream));
        let load = drive(servers, settings, protocol, via, settings.seconds, logs)?;
        let (proxy1, upstream1) = (quiet::cpu_seconds(&proxy), quiet::cpu_seconds(&upstream));
        let after = quiet::Sample::take(&all);
        let foreign = after.foreign_since(&before);
        let (machine, _) = after.cpu_seconds_since(&before);
        let per_10k = |cpu: f64| cpu / load.requests as f64 * 10_000.0;
        let run = Run {
            rps: load.requests as f64 / load.seconds,
            proxy_cpu_per_10k: per_10k(proxy1 - proxy0),
            upstream_cpu_per_10k: per_10k(upstream1 - upstream0),
            machine_cpu_per_10k: per_10k(machine),
            upstream_busy: (upstream1 - upstream0) / load.seconds,
            foreign_cpu: foreign,
            load,
        };
        if foreign <= quiet::FOREIGN || attempt == ATTEMPTS {
            if foreign > quiet::FOREIGN {
                eprintln!(
                    "xtask: other processes used {:.0}% of the CPUs during the run; keeping it anyway",
                    foreign * 100.0
                );
            }
            return Ok(run);
        }
        eprintln!(
            "xtask: other processes used {:.0}% of the CPUs during the run; redoing it",
            foreign * 100.0
        );
        attempt += 1;
    }
}

/// The HTTP rows' results: the Markdown block for docs/benchmarks.md and the `http` list of
/// results.json.
pub struct Report {
    pub markdown: String,
    pub json: Value,
}

/// Starts the servers, checks every peer answers both protocols, measures, and stops them.
/// `measured` is the report's `Measured … on …` line.
pub fn run(binary: &Path, out: &Path, pki: &Path, s: &Settings, measured: &str) -> Result<Report> {
    peers::install()?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("wrk-report.lua"), WRK_REPORT)?;
    std::fs::write(logs.join("bench-openssl.cnf"), openssl_conf())?;
    let servers = Servers::start(binary, &logs, pki)?;
    for protocol in PROTOCOLS {
        for via in VIAS {
            servers.check(via, protocol)?;
        }
    }
    let mut rows = Vec::new();
    for protocol in PROTOCOLS {
        let mut row: Vec<Row> = VIAS
            .iter()
            .map(|&via| Row {
                protocol,
                via,
                runs: Vec::new(),
            })
            .collect();
        for via in VIAS {
            quiet::wait()?;
            drive(&servers, s, protocol, via, WARMUP_SECONDS, &logs).with_context(|| {
                format!("warm-up of {} through {}", protocol.name(), via.name())
            })?;
        }
        for i in 1..=s.runs {
            for r in &mut row {
                let m = measure(&servers, s, protocol, r.via, &logs)?;
                eprintln!(
                    "xtask: http {} {} run {i}/{}: {:.0} req/s, p99 {:.0} us, proxy {:.3} / \
                     upstream {:.3} / machine {:.3} CPU s per 10k requests, {} errors",
                    protocol.name(),
                    r.via.name(),
                    s.runs,
                    m.rps,
                    m.load.p99_us,
                    m.proxy_cpu_per_10k,
                    m.upstream_cpu_per_10k,
                    m.machine_cpu_per_10k,
                    m.load.errors
                );
                r.runs.push(m);
            }
        }
        rows.extend(row);
    }
    drop(servers);
    Ok(Report {
        markdown: markdown(&rows, s, measured),
        json: to_json(&rows, s),
    })
}

/// First line of `program args` (stdout, else stderr), token `index`: its version.
pub fn version(program: &str, args: &[&str], index: usize) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = [o.stdout, o.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            Some(
                text.lines()
                    .next()?
                    .split_whitespace()
                    .nth(index)?
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "?".into())
}

fn median_of(rows: &[Row], protocol: Protocol, via: Via) -> f64 {
    rows.iter()
        .find(|r| r.protocol == protocol && r.via == via)
        .map_or(f64::NAN, |r| r.spread(|x| x.rps).0)
}

fn markdown(rows: &[Row], s: &Settings, measured: &str) -> String {
    let mut t = format!(
        "{measured}; loopback, {runs} runs × {secs} s per row. Upstream: `switchyard \
         demo-upstream --http` (body `{body}`, {len} bytes). HTTP/1.1: `wrk -t1 -c{c}` ({wrk}), \
         keep-alive. HTTP/2: `h2load -t1 -c{h2c} -m{m}` ({h2load}), h2 over TLS (h2c to the \
         direct upstream). TLS 1.3 with {CIPHER} and {GROUP} for every TLS peer. Peers: nginx {nginx}, \
         HAProxy {haproxy}. Cells: median (min–max) \
         over the runs; CPU s/10k req: CPU seconds per 10 000 requests of the proxy's \
         processes, of the upstream, and of the whole machine (load client and kernel \
         included).\n\n\
         | protocol | via | req/s | × direct | × haproxy | p50 µs | p99 µs | proxy CPU s/10k req | upstream CPU s/10k req | machine CPU s/10k req | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        runs = s.runs,
        secs = s.seconds,
        body = BODY.trim_end(),
        len = BODY.len(),
        c = s.wrk_connections,
        h2c = s.h2_clients,
        m = s.h2_streams,
        wrk = version("wrk", &["-v"], 1),
        h2load = version("h2load", &["--version"], 1),
        nginx = version("nginx", &["-v"], 2).trim_start_matches("nginx/"),
        haproxy = version("haproxy", &["-v"], 2),
    );
    for r in rows {
        let (rps, lo, hi) = r.spread(|x| x.rps);
        let direct = median_of(rows, r.protocol, Via::Direct);
        let haproxy = median_of(rows, r.protocol, Via::Haproxy);
        let cell = |f: fn(&Run) -> f64| {
            let (m, lo, hi) = r.spread(f);
            format!("{m:.0} ({lo:.0}–{hi:.0})")
        };
        let proxy_cpu = if r.via == Via::Direct {
            "—".to_owned()
        } else {
            format!("{:.3}", r.spread(|x| x.proxy_cpu_per_10k).0)
        };
        let errors: u64 = r.runs.iter().map(|x| x.load.errors).sum();
        let _ = writeln!(
            t,
            "| {} | {} | {rps:.0} ({lo:.0}–{hi:.0}) | {:.2} | {:.2} | {} | {} | {proxy_cpu} | {:.3} | {:.3} | {errors} |",
            r.protocol.name(),
            r.via.name(),
            rps / direct,
            rps / haproxy,
            cell(|x| x.load.p50_us),
            cell(|x| x.load.p99_us),
            r.spread(|x| x.upstream_cpu_per_10k).0,
            r.spread(|x| x.machine_cpu_per_10k).0,
        );
    }
    t
}

fn to_json(rows: &[Row], s: &Settings) -> Value {
    let spread = |r: &Row, f: fn(&Run) -> f64| {
        let (m, lo, hi) = r.spread(f);
        json!({"median": m, "min": lo, "max": hi})
    };
    json!(rows
        .iter()
        .map(|r| json!({
            "protocol": r.protocol.name(),
            "via": r.via.name(),
            "client": match r.protocol {
                Protocol::Http1 => format!("wrk -t1 -c{}", s.wrk_connections),
                Protocol::Http2 => format!("h2load -t1 -c{} -m{}", s.h2_clients, s.h2_streams),
            },
            "seconds_per_run": s.seconds,
            "req_per_sec": spread(r, |x| x.rps),
            "p50_us": spread(r, |x| x.load.p50_us),
            "p99_us": spread(r, |x| x.load.p99_us),
            "proxy_cpu_s_per_10k": spread(r, |x| x.proxy_cpu_per_10k),
            "upstream_cpu_s_per_10k": spread(r, |x| x.upstream_cpu_per_10k),
            "machine_cpu_s_per_10k": spread(r, |x| x.machine_cpu_per_10k),
            "runs": r.runs.iter().map(|x| json!({
                "requests": x.load.requests,
                "seconds": x.load.seconds,
                "req_per_sec": x.rps,
                "p50_us": x.load.p50_us,
                "p99_us": x.load.p99_us,
                "errors": x.load.errors,
                "proxy_cpu_s_per_10k": x.proxy_cpu_per_10k,
                "upstream_cpu_s_per_10k": x.upstream_cpu_per_10k,
                "machine_cpu_s_per_10k": x.machine_cpu_per_10k,
                "upstream_cpu_share": x.upstream_busy,
                "foreign_cpu": x.foreign_cpu,
            })).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report_line() {
        let out = "Running 3s test @ https://localhost:1/bench\n\
                   wrk-result requests=30000 duration_us=3000000 p50_us=812 p99_us=2400 \
                   connect=0 read=1 write=0 status=2 timeout=0\n";
        let load = parse_wrk(out).unwrap();
        assert_eq!(load.requests, 30000);
        assert_eq!(load.seconds, 3.0);
        assert_eq!((load.p50_us, load.p99_us), (812.0, 2400.0));
        assert_eq!(load.errors, 3);
    }

    #[test]
    fn reads_h2loads_summary_and_log() {
        let out = "finished in 3.00s, 1000.00 req/s, 40.00KB/s\n\
                   requests: 3003 total, 3003 started, 3003 done, 3000 succeeded, 3 failed, \
                   1 errored, 0 timeout\nTLS Protocol: TLSv1.3\n\
                   Cipher: TLS_AES_128_GCM_SHA256\nServer Temp Key: X25519 253 bits\n\
                   Application protocol: h2\n";
        let log: String = (1..=100).map(|i| format!("1\t200\t{i}\n")).collect();
        let tls = Some(("TLSv1.3", CIPHER, GROUP));
        let load = parse_h2load(out, &(log.clone() + "1\t502\t99999\n"), "h2", tls).unwrap();
        assert_eq!(load.requests, 3000);
        assert_eq!(load.seconds, 3.0);
        assert_eq!((load.p50_us, load.p99_us), (50.0, 99.0));
        assert_eq!(load.errors, 4);
        assert!(parse_h2load(out, &log, "h2c", None).is_err());
        let tls12 = Some(("TLSv1.2", CIPHER, GROUP));
        assert!(parse_h2load(out, &log, "h2", tls12).is_err());
    }

    #[test]
    fn reads_h2loads_durations() {
        assert_eq!(duration_seconds("3.00s"), Some(3.0));
        assert_eq!(duration_seconds("500ms"), Some(0.5));
        assert_eq!(duration_seconds("x"), None);
    }
}
