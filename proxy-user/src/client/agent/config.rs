//! The agent's configuration (`docs/agent.md`): a YAML file and flags, flags winning.
//! Services are `name → host:port` per kind, as seen from the agent's machine; the proxy
//! only ever learns their kinds and names.

use super::super::args::ClientArgs;
use super::super::ClientError;
use crate::config::{host_port, service_name};
use crate::io::tunnel::{Kind, Service};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `switchyard agent`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// YAML file (docs/agent.md); flags given too win over its values.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Tunnels kept to each proxy (default 2).
    #[arg(long)]
    pub(crate) tunnels: Option<u32>,
    /// An SSH node: NAME=HOST:PORT (repeatable).
    #[arg(long = "ssh", value_name = "NAME=HOST:PORT")]
    pub(crate) ssh: Vec<String>,
    /// A TCP app.
    #[arg(long = "tcp", value_name = "NAME=HOST:PORT")]
    pub(crate) tcp: Vec<String>,
    /// An HTTP app (plain HTTP/1.1 on the agent's side).
    #[arg(long = "http", value_name = "NAME=HOST:PORT")]
    pub(crate) http: Vec<String>,
    /// A PostgreSQL database.
    #[arg(long = "postgres", value_name = "NAME=HOST:PORT")]
    pub(crate) postgres: Vec<String>,
    /// A MySQL or MariaDB database.
    #[arg(long = "mysql", value_name = "NAME=HOST:PORT")]
    pub(crate) mysql: Vec<String>,
    /// A MongoDB database.
    #[arg(long = "mongodb", value_name = "NAME=HOST:PORT")]
    pub(crate) mongodb: Vec<String>,
    /// A Kubernetes API server (its TLS is passed through end to end).
    #[arg(long = "kube", value_name = "NAME=HOST:PORT")]
    pub(crate) kube: Vec<String>,
}

/// The YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    proxy: Option<String>,
    /// DIR/NAME, as `--identity`.
    identity: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    tunnels: Option<u32>,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<String, String>>,
}

/// The agent's settled configuration.
#[derive(Debug, Clone)]
pub(crate) struct AgentConfig {
    pub(crate) client: ClientArgs,
    pub(crate) tunnels: u32,
    /// What it serves, and where each is from here.
    pub(crate) services: BTreeMap<Service, String>,
}

/// Most tunnels per proxy an agent may ask for.
const MAX_TUNNELS: u32 = 16;

impl AgentArgs {
    /// Reads the file (when given), lays the flags over it and checks the result.
    pub(crate) fn settle(&self) -> Result<AgentConfig, ClientError> {
        let file = match &self.config {
            Some(p) => read(p)?,
            None => File::default(),
        };
        let base = self
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let rel = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
        let mut client = self.client.clone();
        client.proxy = client.proxy.or(file.proxy);
        if client.identity.is_none() && client.cert.is_none() {
            client.identity = rel(&file.identity);
            client.cert = rel(&file.cert);
            client.key = rel(&file.key);
            client.ca = rel(&file.ca);
        }
        let tunnels = self.tunnels.or(file.tunnels).unwrap_or(2);
        if !(1..=MAX_TUNNELS).contains(&tunnels) {
            return Err(ClientError::Usage(format!(
                "tunnels: {tunnels} is not between 1 and {MAX_TUNNELS}"
            )));
        }
        let mut services = BTreeMap::new();
        for (kind, entries) in &file.services {
            let k = Kind::parse(kind).ok_or_else(|| {
                ClientError::Usage(format!(
                    "services.{kind}: unknown kind (ssh, tcp, http, postgres, mysql, mongodb, kube)"
                ))
            })?;
            for (name, addr) in entries {
                add(
                    &mut services,
                    k,
                    name,
                    addr,
                    &format!("services.{kind}.{name}"),
                )?;
            }
        }
        let flags = [
            (Kind::Ssh, &self.ssh),
            (Kind::Tcp, &self.tcp),
            (Kind::Http, &self.http),
            (Kind::Postgres, &self.postgres),
            (Kind::Mysql, &self.mysql),
            (Kind::Mongodb, &self.mongodb),
            (Kind::Kube, &self.kube),
        ];
        for (kind, values) in flags {
            for v in values {
                let (name, addr) = v.split_once('=').ok_or_else(|| {
                    ClientError::Usage(format!("--{kind} {v}: expected NAME=HOST:PORT"))
                })?;
                add(&mut services, kind, name, addr, &format!("--{kind} {v}"))?;
            }
        }
        if services.is_empty() {
            return Err(ClientError::Usage(
                "the agent serves nothing: give services in --config or flags like --ssh NAME=HOST:PORT".into(),
            ));
        }
        Ok(AgentConfig {
            client,
            tunnels,
            services,
        })
    }
}

fn read(path: &Path) -> Result<File, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(ClientError::io(format!("cannot read {}", path.display())))?;
    serde_yaml_ng::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("agent config {}: {e}", path.display())))
}

fn add(
    services: &mut BTreeMap<Service, String>,
    kind: Kind,
    name: &str,
    addr: &str,
    what: &str,
) -> Result<(), ClientError> {
    if !service_name(name) {
        return Err(ClientError::Usage(format!(
            "{what}: `{name}` is not a service name (one DNS label: letters, digits, '-')"
        )));
    }
    host_port(what, addr).map_err(|e| ClientError::Usage(e.to_string()))?;
    let service = Service {
        kind,
        name: name.to_ascii_lowercase(),
    };
    services.insert(service, addr.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: AgentArgs,
    }

    fn settle(args: &[&str], yaml: Option<&str>) -> Result<AgentConfig, ClientError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["agent".to_owned()];
        if let Some(y) = yaml {
            let p = dir.path().join("agent.yaml");
            std::fs::write(&p, y).unwrap();
            argv.push(format!("--config={}", p.display()));
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        Cli::try_parse_from(argv).unwrap().a.settle()
    }

    #[test]
    fn file_and_flags_merge_and_bad_values_say_where() {
        let yaml =
            "proxy: proxy.example:443\ntunnels: 3\nservices:\n  ssh: {node1: 127.0.0.1:22}\n";
        let c = settle(&["--tcp", "echo=127.0.0.1:7"], Some(yaml)).unwrap();
        assert_eq!(c.tunnels, 3);
        assert_eq!(c.client.proxy.as_deref(), Some("proxy.example:443"));
        assert_eq!(c.services.len(), 2);
        let e = settle(&["--ssh", "a.b=127.0.0.1:22"], None).unwrap_err();
        assert!(e.to_string().contains("not a service name"), "{e}");
        let e = settle(&[], Some("services:\n  gopher: {x: 1.2.3.4:70}\n")).unwrap_err();
        assert!(
            e.to_string().contains("services.gopher: unknown kind"),
            "{e}"
        );
        let e = settle(&["--tcp", "echo"], None).unwrap_err();
        assert!(e.to_string().contains("NAME=HOST:PORT"), "{e}");
        assert!(settle(&[], None)
            .unwrap_err()
            .to_string()
            .contains("serves nothing"));
        let e = settle(&[], Some("servces: {}\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
