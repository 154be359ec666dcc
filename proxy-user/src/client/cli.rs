//! Command line of the client side: `proxy ssh|db|kube|app|tcp`, `config ssh`,
//! `db connect`, `kube config`, `probe`. Each command loads the identity first
//! ([`ClientArgs::dialer`]: one clear line and no network traffic when it is unusable),
//! then runs on its own runtime.

use super::args::ClientArgs;
use super::db::{self, DbProtocol};
use super::{app, kube, probe, ssh, ClientError};
use clap::Subcommand;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// `switchyard proxy …`: local proxies.
#[derive(Subcommand, Debug)]
pub(crate) enum ProxyCommand {
    /// For OpenSSH's ProxyCommand: stdin/stdout over TLS (ALPN teleport-proxy-ssh) to the
    /// node named by HOST (NODE, NODE.CLUSTER, or NODE.<proxy host>).
    Ssh {
        #[command(flatten)]
        client: ClientArgs,
        /// Cluster name: hosts are written NODE.CLUSTER.
        #[arg(long)]
        cluster: Option<String>,
        /// USER@HOST:PORT, as ProxyCommand's %r@%h:%p.
        target: String,
    },
    /// A local listener for psql, mysql or mongosh (ALPN teleport-<protocol>).
    Db {
        #[command(flatten)]
        client: ClientArgs,
        /// Database protocol: sets the ALPN and what the local side does.
        #[arg(long, value_enum)]
        protocol: DbProtocol,
        /// A database by name (SNI NAME.db.<proxy host>): one an agent serves. Without
        /// it, the proxy's `upstreams.<protocol>`.
        #[arg(long = "db", value_name = "NAME")]
        db: Option<String>,
        /// Local port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A local TLS listener for kubectl, with an ephemeral kubeconfig.
    Kube {
        #[command(flatten)]
        client: ClientArgs,
        /// A Kubernetes cluster by name (SNI kube-teleport-proxy-alpn.NAME.<proxy host>):
        /// one an agent serves. Without it, the proxy's `upstreams.kube`.
        #[arg(long = "kube", value_name = "NAME")]
        kube: Option<String>,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A local listener for app NAME (SNI NAME.<proxy host>, ALPN teleport-tcp).
    App {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A local listener for any TLS route: the given ALPN and SNI.
    Tcp {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        alpn: String,
        #[arg(long)]
        sni: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

/// `switchyard config …`.
#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Print an OpenSSH config block for the nodes behind the proxy.
    Ssh {
        #[command(flatten)]
        client: ClientArgs,
        /// Cluster name: hosts are written NODE.CLUSTER (default NODE.<proxy host>).
        #[arg(long)]
        cluster: Option<String>,
        /// known_hosts file for the nodes (default ~/.switchyard/known_hosts).
        #[arg(long)]
        known_hosts: Option<PathBuf>,
        /// Add `ForwardAgent yes`.
        #[arg(long)]
        forward_agent: bool,
    },
}

/// `switchyard db …`.
#[derive(Subcommand, Debug)]
pub(crate) enum DbCommand {
    /// Run a database client against a temporary local proxy; stops it when the client exits.
    Connect {
        #[command(flatten)]
        client: ClientArgs,
        /// Database protocol: sets the ALPN and what the local side does.
        #[arg(long, value_enum)]
        protocol: DbProtocol,
        /// A database by name (SNI NAME.db.<proxy host>): one an agent serves. Without
        /// it, the proxy's `upstreams.<protocol>`.
        #[arg(long = "db", value_name = "NAME")]
        db: Option<String>,
        /// The client and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// `switchyard kube …`.
#[derive(Subcommand, Debug)]
pub(crate) enum KubeCommand {
    /// Write a kubeconfig that reaches the Kubernetes upstream through the proxy directly.
    Config {
        #[command(flatten)]
        client: ClientArgs,
        /// A cluster an agent serves (as for `proxy kube --kube NAME`).
        #[arg(long = "kube", value_name = "NAME")]
        kube: Option<String>,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(crate) fn proxy(c: ProxyCommand) -> Result<ExitCode, ClientError> {
    match c {
        ProxyCommand::Ssh {
            client,
            cluster,
            target,
        } => {
            let dialer = client.dialer()?;
            block_on(ssh::proxy_ssh(
                &dialer,
                cluster.as_deref(),
                &target,
                client.verbose,
            ))
        }
        ProxyCommand::Db {
            client,
            protocol,
            db,
            port,
        } => {
            let dialer = client.dialer()?;
            let db = db.as_deref();
            block_on(db::proxy_db(&dialer, protocol, db, port, client.verbose))
        }
        ProxyCommand::Kube { client, kube, port } => {
            let dialer = client.dialer()?;
            let sni = kube::kube_sni(&dialer, kube.as_deref())?;
            block_on(kube::proxy_kube(&dialer, &sni, port, client.verbose))
        }
        ProxyCommand::App { client, name, port } => {
            let dialer = client.dialer()?;
            block_on(app::proxy_app(&dialer, &name, port, client.verbose))
        }
        ProxyCommand::Tcp {
            client,
            alpn,
            sni,
            port,
        } => {
            let dialer = client.dialer()?;
            block_on(app::proxy_tcp(&dialer, &alpn, &sni, port, client.verbose))
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

pub(crate) fn config(c: ConfigCommand) -> Result<ExitCode, ClientError> {
    let ConfigCommand::Ssh {
        client,
        cluster,
        known_hosts,
        forward_agent,
    } = c;
    let dialer = client.dialer()?;
    let exe = std::env::current_exe().map_err(ClientError::io("locating this executable"))?;
    let known_hosts = match known_hosts {
        Some(k) => k,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".switchyard/known_hosts"))
            .ok_or_else(|| ClientError::Usage("HOME is not set: pass --known-hosts".into()))?,
    };
    print!(
        "{}",
        ssh::config_block(&ssh::SshConfig {
            exe: &exe,
            client_args: &client.forwarded()?,
            cluster: cluster.as_deref(),
            proxy_host: &dialer.host,
            known_hosts: &known_hosts,
            forward_agent,
        })
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn db(c: DbCommand) -> Result<ExitCode, ClientError> {
    let DbCommand::Connect {
        client,
        protocol,
        db,
        command,
    } = c;
    let dialer = client.dialer()?;
    block_on(db::connect(
        &dialer,
        protocol,
        db.as_deref(),
        &command,
        client.verbose,
    ))
}

/// `switchyard probe`.
pub(crate) use probe::ProbeArgs;

pub(crate) fn probe(args: ProbeArgs) -> Result<ExitCode, ClientError> {
    block_on(probe::run(&args))
}

pub(crate) fn kube(c: KubeCommand) -> Result<ExitCode, ClientError> {
    let KubeCommand::Config { client, kube, out } = c;
    let dialer = client.dialer()?;
    let text = kube::direct_kubeconfig(&dialer, &kube::kube_sni(&dialer, kube.as_deref())?);
    match out {
        Some(path) => {
            kube::write_private(&path, &text)?;
            println!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` on a fresh runtime and drops it without waiting for blocking reads of stdin.
/// `switchyard agent`.
pub(crate) fn agent(a: super::agent::AgentArgs) -> Result<ExitCode, ClientError> {
    block_on(super::agent::run(a)).map(|()| ExitCode::SUCCESS)
}

fn block_on<T>(f: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    let rt = tokio::runtime::Runtime::new().map_err(ClientError::io("starting the runtime"))?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}
