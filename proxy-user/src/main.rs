//! The `switchyard` command line: `serve`, `ca`, `demo-upstream`, and the client side
//! (`proxy`, `config`, `db`, `kube`: see `switchyard::client::cli`).
//!
//! Exit codes: 0 after a clean drain, 64 for a configuration that is refused at start
//! (the message names the key), 1 for any other start-up failure.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use switchyard::client::cli;
use switchyard::config::{self, Config, ConfigError};
use switchyard::metrics::Metrics;
use switchyard::server::{self, Ingress, Proxy};
use switchyard::{ca, demo, diag, ebpf};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tracing::{error, info};

/// Exit code for a configuration refused at start.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Single-port TLS routing proxy")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// YAML configuration file (see docs/config.md).
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Dev mode: generate a PKI and demo upstreams under DIR and serve the embedded
        /// default config on --listen.
        #[arg(long, value_name = "DIR")]
        dev: Option<PathBuf>,
        /// Listen address in dev mode.
        #[arg(long, default_value = "127.0.0.1:3080", requires = "dev")]
        listen: SocketAddr,
        /// Diagnostics address in dev mode.
        #[arg(long, default_value = "127.0.0.1:3081", requires = "dev")]
        diag: SocketAddr,
        /// Kernel splice of plaintext pairs (eBPF): `auto` uses it when the kernel and
        /// privileges allow, `require` refuses to start without it, `off` never loads it.
        #[arg(long, value_enum, default_value_t = ebpf::Mode::Auto)]
        ebpf: ebpf::Mode,
    },
    /// Certificate authority for trying Switchyard on one machine.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Local proxies for OpenSSH, database clients, kubectl and apps.
    #[command(subcommand)]
    Proxy(cli::ProxyCommand),
    /// Print client configuration (OpenSSH).
    #[command(subcommand)]
    Config(cli::ConfigCommand),
    /// Database clients through a temporary local proxy.
    #[command(subcommand)]
    Db(cli::DbCommand),
    /// Kubernetes client configuration.
    #[command(subcommand)]
    Kube(cli::KubeCommand),
    /// Check a proxy (or the load balancer in front of it): reachable, TLS routing
    /// directly or through a connection upgrade, round-trip times.
    Probe(cli::ProbeArgs),
    /// A demo upstream that identifies itself (used by dev mode and the tests).
    DemoUpstream {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Terminate TLS with this certificate (PEM).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Speak HTTP/1.1 and h2c instead of echo.
        #[arg(long, conflicts_with = "tls_cert")]
        http: bool,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create DIR/ca.crt and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Cluster name written into the CA subject.
        #[arg(long, default_value = "switchyard")]
        cluster: String,
    },
    /// Issue DIR/NAME.crt and DIR/NAME.key: a server certificate with --dns/--ip, else a
    /// client certificate with CN=NAME.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Subject organisation(s), matched by route allow lists.
        #[arg(long)]
        org: Vec<String>,
        /// Validity, e.g. 24h, 30d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Ca(c) => run_ca(c),
        Command::Proxy(c) => return client_exit(cli::proxy(c)),
        Command::Config(c) => return client_exit(cli::config(c)),
        Command::Db(c) => return client_exit(cli::db(c)),
        Command::Kube(c) => return client_exit(cli::kube(c)),
        Command::Probe(a) => return client_exit(cli::probe(a)),
        command => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")
            .and_then(|rt| rt.block_on(run(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Client commands report their error in one line and exit 1, or with the client's code.
fn client_exit(result: Result<ExitCode, switchyard::client::ClientError>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("switchyard: {e}");
        ExitCode::FAILURE
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run_ca(c: CaCommand) -> anyhow::Result<()> {
    match c {
        CaCommand::Init { dir, cluster } => {
            ca::init(&dir, &cluster)?;
            println!("created {0}/ca.crt and {0}/ca.key", dir.display());
        }
        CaCommand::Issue {
            dir,
            name,
            dns,
            ip,
            org,
            ttl,
        } => {
            let req = ca::IssueRequest {
                name,
                dns,
                ips: ip,
                orgs: org,
                ttl,
            };
            let (crt, key) = ca::issue(&dir, &req)?;
            println!("created {} and {}", crt.display(), key.display());
        }
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            dev,
            listen,
            diag,
            ebpf,
        } => {
            let (path, dev) = match (config, dev) {
                (Some(path), _) => (path, None),
                (None, Some(dir)) => {
                    let d = demo::setup(&dir, listen, diag).await?;
                    (d.config_path.clone(), Some(d))
                }
                (None, None) => unreachable!("clap requires --config or --dev"),
            };
            serve(&path, dev, ebpf).await
        }
        Command::DemoUpstream {
            name,
            listen,
            tls_cert,
            tls_key,
            http,
        } => {
            let kind = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => demo::Kind::TlsEcho(demo::tls_config(&c, &k)?),
                _ if http => demo::Kind::Http,
                _ => demo::Kind::Echo,
            };
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("switchyard ready addr={}", listener.local_addr()?);
            demo::run(listener, name, kind).await;
            Ok(())
        }
        Command::Ca(_)
        | Command::Proxy(_)
        | Command::Config(_)
        | Command::Db(_)
        | Command::Kube(_)
        | Command::Probe(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    let a = config::listen_addr(key, addr)?;
    TcpListener::bind(a)
        .await
        .with_context(|| format!("cannot listen on {a} ({key})"))
}

async fn serve(path: &Path, dev: Option<demo::Dev>, mode: ebpf::Mode) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // Before any listener: sockets belong to the cgroup of the process that creates them.
    let frontend = ebpf::start(mode).context("--ebpf require")?;
    let mut metrics = Metrics::new();
    if let Some(f) = frontend {
        metrics.ebpf_loaded.set(1);
        metrics.register_collector(Box::new(ebpf::metrics::FrontendCollector(f)));
    }
    let metrics = Arc::new(metrics);
    let web = bind(
        "proxy_service.web_listen_addr",
        &config.proxy_service.web_listen_addr,
    )
    .await?;
    let mut legacy = Vec::new();
    for (key, addr) in config.legacy_listeners() {
        let route = server::legacy_route(&config, key)?;
        legacy.push((bind(&format!("proxy_service.{key}"), &addr).await?, route));
    }
    let diag_listener = match &config.diag_addr {
        Some(a) => Some(bind("diag_addr", a).await?),
        None => None,
    };
    let limits = config.limits.clone();
    let proxy = Arc::new(Proxy::new(config, metrics.clone())?);
    if let Some(f) = frontend {
        let ports = std::iter::once(&web).chain(legacy.iter().map(|(l, _)| l));
        for listener in ports {
            f.watch_port(listener.local_addr()?.port())
                .context("registering a listening port with the eBPF front end")?;
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (proxy_tx, proxy_rx) = watch::channel(proxy.clone());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let web_addr = web.local_addr()?;
    let diag_addr = diag_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(l) = diag_listener {
        tokio::spawn(diag::serve(l, metrics.clone(), stop_rx.clone()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    let accept = |listener, ingress| {
        server::serve(
            listener,
            ingress,
            proxy_rx.clone(),
            permits.clone(),
            stop_rx.clone(),
        )
    };
    tasks.spawn(accept(web, Ingress::Multiplex));
    for (listener, route) in legacy {
        info!(listen = %listener.local_addr()?, route = %route.name, upstream = %route.upstream, "legacy listener");
        tasks.spawn(accept(listener, Ingress::Fixed(route)));
    }
    info!(web = %web_addr, diag = ?diag_addr, routes = proxy.table.entries.len(), "switchyard serving");
    println!(
        "switchyard ready web={web_addr} diag={}",
        diag_addr.map_or("-".to_owned(), |a| a.to_string())
    );
    if let (Some(dev), Some(diag)) = (&dev, diag_addr) {
        println!("{}", demo::instructions(dev, web_addr, diag));
    }

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(path, &metrics, &proxy_tx),
            _ = shutdown_signal() => break,
        }
    }
    info!("shutdown requested: no new connections, draining live ones");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    server::drain(&permits, limits.max_connections, limits.drain_timeout).await;
    ebpf::stop();
    info!("stopped");
    Ok(())
}

/// SIGHUP: reload certificates and routes; live connections keep the old ones. Listener
/// addresses and limits need a restart.
fn reload(path: &Path, metrics: &Arc<Metrics>, proxies: &watch::Sender<Arc<Proxy>>) {
    match Config::load(path).and_then(|c| Proxy::new(c, metrics.clone())) {
        Ok(p) => {
            info!(routes = p.table.entries.len(), config = %path.display(), "reloaded certificates and routes");
            let _ = proxies.send(Arc::new(p));
        }
        Err(e) => {
            error!(config = %path.display(), "reload refused, keeping the running configuration: {e}")
        }
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
