//! The `switchyard` command line: `serve` (the router), `ca` and `demo-upstream` (tools),
//! and the client side (`proxy`, `config`, `db`, `kube`, `probe`: `client::cli`). `main`
//! parses, sets up logging and dispatches; each room does its own work.
//!
//! Exit codes: 0 after a clean drain, 64 for a configuration that is refused at start
//! (the message names the key), 1 for any other start-up failure.

use crate::client::{cli, ClientError};
use crate::config::ConfigError;
use crate::ebpf;
use crate::router::run;
use crate::tools::{ca, demo};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    Serve(ServeArgs),
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
    /// Serve this machine's services through reverse tunnels to the proxy (docs/agent.md).
    Agent(crate::client::agent::AgentArgs),
    /// Upgrade the binary of a running `serve --upgrade-socket PATH` without losing a
    /// connection: it starts the binary again, which takes the listening sockets over
    /// (docs/deploy.md). Exits 0 once the new process serves.
    Upgrade(UpgradeArgs),
    /// A demo upstream that identifies itself (used by dev mode and the tests).
    DemoUpstream(DemoArgs),
}

/// `switchyard serve`.
#[derive(clap::Args)]
struct ServeArgs {
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
    /// The eBPF front end (first-bytes classification, the per-source SYN rate, the
    /// kernel splice): `auto` loads it when the kernel and privileges allow, `require`
    /// refuses to start without it, `off` never loads it.
    #[arg(long, value_enum, default_value_t = ebpf::Mode::Auto)]
    ebpf: ebpf::Mode,
    /// How plaintext pairs are relayed, over the configuration's `relay:` key: `auto`
    /// (`splice(2)` on the hosts measured, docs/ebpf.md), `kernel` (the eBPF splice;
    /// needs the front end), `splice` or `copy`.
    #[arg(long, value_enum)]
    relay: Option<crate::relay::choice::RelayMode>,
    /// Terminated sessions handed to the kernel's TLS after the handshake, over the
    /// configuration's `ktls:` key: `off`, `auto` (where the kernel takes the cipher) or
    /// `require` (refuse to start without kernel TLS); docs/ebpf.md, "kTLS".
    #[arg(long, value_enum)]
    ktls: Option<crate::io::ktls::KtlsMode>,
    /// Who protects a terminated TLS 1.3 session's records after the handshake where the
    /// kernel's TLS does not, over the configuration's `tls_records:` key: `proxy` (the
    /// relay, decrypting in place) or `rustls`; docs/ebpf.md, "Terminated routes".
    #[arg(long, value_enum)]
    tls_records: Option<crate::io::records::RecordsMode>,
    /// Unix socket where this process hands its listening sockets to a new binary
    /// (`SIGUSR2` starts it; docs/deploy.md).
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the process serving --upgrade-socket; it
    /// stops accepting and drains once this one serves.
    #[arg(long, requires = "upgrade_socket")]
    takeover: bool,
    /// Check the configuration (every key, every file it names) and exit: 0 when it
    /// would be accepted, 64 with the key named otherwise.
    #[arg(long, conflicts_with_all = ["dev", "takeover"])]
    check: bool,
}

/// `switchyard upgrade`.
#[derive(clap::Args)]
struct UpgradeArgs {
    /// The running process's --upgrade-socket.
    #[arg(long, value_name = "PATH")]
    upgrade_socket: PathBuf,
    /// How long the new process may take to serve.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// `switchyard demo-upstream`.
#[derive(clap::Args)]
struct DemoArgs {
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
    /// Be a web application for browsers, HTTP/1.1 only: a page whose script fetches
    /// `/api/hello` and echoes over the WebSocket `/ws`; `/headers`, `POST /upload`,
    /// `/download?bytes=N`.
    #[arg(long, conflicts_with_all = ["tls_cert", "http"])]
    webapp: bool,
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
        /// An agent certificate: a client certificate whose subject also carries
        /// O=switchyard-agent (name it in the proxy's `tunnel.agents`).
        #[arg(long, conflicts_with_all = ["dns", "ip"])]
        agent: bool,
        /// Validity, e.g. 24h, 30d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

/// The whole command line: what the `switchyard` binary runs.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Ca(c) => run_ca(c),
        Command::Serve(a) => block_on(serve(a)),
        Command::DemoUpstream(a) => block_on(demo_upstream(a)),
        Command::Upgrade(a) => upgrade(a),
        Command::Proxy(c) => return client_exit(cli::proxy(c)),
        Command::Config(c) => return client_exit(cli::config(c)),
        Command::Db(c) => return client_exit(cli::db(c)),
        Command::Kube(c) => return client_exit(cli::kube(c)),
        Command::Probe(a) => return client_exit(cli::probe(a)),
        Command::Agent(a) => return client_exit(cli::agent(a)),
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
fn client_exit(result: Result<ExitCode, ClientError>) -> ExitCode {
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
            mut org,
            agent,
            ttl,
        } => {
            if agent {
                org.push(ca::AGENT_ORG.to_owned());
            }
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

/// Runs a server command on a multi-threaded runtime.
fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the tokio runtime")?
        .block_on(f)
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let (path, dev) = match (a.config, a.dev) {
        (Some(path), _) => (path, None),
        (None, Some(dir)) => {
            let d = demo::setup(&dir, a.listen, a.diag).await?;
            (d.config_path.clone(), Some(d))
        }
        (None, None) => anyhow::bail!("serve needs --config FILE or --dev DIR"),
    };
    if a.check {
        run::check(&path)?;
        println!("{}: configuration accepted", path.display());
        return Ok(());
    }
    let upgrade = crate::router::upgrade::Options {
        socket: a.upgrade_socket,
        takeover: a.takeover,
    };
    run::serve(
        &path,
        a.ebpf,
        a.relay,
        (a.ktls, a.tls_records),
        &upgrade,
        |web, diag| {
            if let (Some(dev), Some(diag)) = (&dev, diag) {
                demo::start_agent(dev);
                println!("{}", demo::instructions(dev, web, diag));
            }
        },
    )
    .await
}

fn upgrade(a: UpgradeArgs) -> anyhow::Result<()> {
    let (old, new) = crate::router::upgrade::trigger::upgrade(&a.upgrade_socket, a.timeout)?;
    println!("switchyard upgrade: pid {old} handed its sockets over to pid {new}");
    Ok(())
}

async fn demo_upstream(a: DemoArgs) -> anyhow::Result<()> {
    let kind = match (a.tls_cert, a.tls_key) {
        (Some(c), Some(k)) => demo::Kind::TlsEcho(demo::tls_config(&c, &k)?),
        _ if a.http => demo::Kind::Http,
        _ if a.webapp => demo::Kind::WebApp,
        _ => demo::Kind::Echo,
    };
    let listener =
        crate::io::listen(a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    println!("switchyard ready addr={}", listener.local_addr()?);
    demo::run(listener, a.name, kind).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks of the whole command line (conflicting or missing
    /// argument references, duplicate flags), client commands included.
    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
