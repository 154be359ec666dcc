//! Command line of the client side: `proxy ssh|db|kube|app|tcp`, `config ssh`,
//! `db connect`, `kube config`. Each command loads the identity first (one clear line and
//! no network traffic when it is unusable), then runs on its own runtime.

use super::db::{self, DbProtocol};
use super::dial::Dialer;
use super::identity::{Identity, IdentityFiles};
use super::upgrade::{Override, UpgradeMode};
use super::{app, kube, probe, ssh, ClientError};
use clap::{Args, Subcommand};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Which proxy, and who the user is.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// The proxy's public address, host:port (its host name is checked against the proxy's
    /// certificate and used in SNI).
    #[arg(long, env = "SWITCHYARD_PROXY")]
    pub(crate) proxy: Option<String>,
    /// DIR holding NAME.crt, NAME.key and ca.crt (as `switchyard ca issue` writes them), or
    /// DIR/NAME when DIR holds several identities.
    #[arg(long, conflicts_with_all = ["cert", "key", "ca"])]
    pub(crate) identity: Option<PathBuf>,
    /// User certificate (PEM), with --key and --ca.
    #[arg(long, requires_all = ["key", "ca"])]
    pub(crate) cert: Option<PathBuf>,
    /// User private key (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Cluster CA certificate(s) (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) ca: Option<PathBuf>,
    /// Behind a layer-7 load balancer: `websocket` upgrade, or `legacy` (`Upgrade:
    /// alpn-ping`) for balancers that pass only custom upgrades.
    #[arg(long, value_enum, default_value_t = UpgradeMode::Websocket)]
    pub(crate) upgrade_mode: UpgradeMode,
    /// One line per connection.
    #[arg(short, long)]
    pub(crate) verbose: bool,
}

impl ClientArgs {
    fn files(&self) -> Result<IdentityFiles, ClientError> {
        match (&self.identity, &self.cert, &self.key, &self.ca) {
            (Some(dir), ..) => IdentityFiles::from_identity(dir),
            (None, Some(cert), Some(key), Some(ca)) => Ok(IdentityFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => Err(ClientError::Usage(
                "no identity: pass --identity DIR or --cert/--key/--ca".into(),
            )),
        }
    }

    /// Loads and checks the identity, then names the proxy.
    pub(crate) fn dialer(&self) -> Result<Dialer, ClientError> {
        let identity = Identity::load(&self.files()?)?;
        let proxy = self.proxy.as_deref().ok_or_else(|| {
            ClientError::Usage("no proxy: pass --proxy HOST:PORT or set SWITCHYARD_PROXY".into())
        })?;
        let over = Override::from_env()?;
        Ok(Dialer::new(proxy, identity)?.with_upgrade(self.upgrade_mode, over, self.verbose))
    }

    /// The same arguments with absolute paths, for commands written into config files.
    pub(crate) fn forwarded(&self) -> Result<Vec<String>, ClientError> {
        let abs = |p: &Path| {
            std::path::absolute(p)
                .map(|p| p.display().to_string())
                .map_err(|e| ClientError::identity(p, e))
        };
        let mut out = Vec::new();
        if let Some(p) = &self.proxy {
            out.push(format!("--proxy={p}"));
        }
        let f = self.files()?;
        match &self.identity {
            Some(id) => out.push(format!("--identity={}", abs(id)?)),
            None => {
                out.push(format!("--cert={}", abs(&f.cert)?));
                out.push(format!("--key={}", abs(&f.key)?));
                out.push(format!("--ca={}", abs(&f.ca)?));
            }
        }
        if self.upgrade_mode != UpgradeMode::default() {
            out.push(format!("--upgrade-mode={}", self.upgrade_mode));
        }
        Ok(out)
    }
}

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
        /// Local port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A local TLS listener for kubectl, with an ephemeral kubeconfig.
    Kube {
        #[command(flatten)]
        client: ClientArgs,
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
            port,
        } => {
            let dialer = client.dialer()?;
            block_on(db::proxy_db(&dialer, protocol, port, client.verbose))
        }
        ProxyCommand::Kube { client, port } => {
            let dialer = client.dialer()?;
            block_on(kube::proxy_kube(&dialer, port, client.verbose))
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
        command,
    } = c;
    let dialer = client.dialer()?;
    block_on(db::connect(&dialer, protocol, &command, client.verbose))
}

/// `switchyard probe`.
pub(crate) use probe::ProbeArgs;

pub(crate) fn probe(args: ProbeArgs) -> Result<ExitCode, ClientError> {
    block_on(probe::run(&args))
}

pub(crate) fn kube(c: KubeCommand) -> Result<ExitCode, ClientError> {
    let KubeCommand::Config { client, out } = c;
    let text = kube::direct_kubeconfig(&client.dialer()?);
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
fn block_on<T>(f: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    let rt = tokio::runtime::Runtime::new().map_err(ClientError::io("starting the runtime"))?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}
