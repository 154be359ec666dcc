//! A stand-in Kubernetes API for kubectl: `openssl s_server -WWW` with its own
//! certificate serving the `/version` document ([`KubeApi`]; no real API server installs
//! here), optionally inside a network namespace, and [`kubectl_version`] to ask it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::local_proxy::{client_args, switchyard_cmd};
use crate::netns::{command_in, Netns};
use crate::process::Proc;
use crate::{
    free_port, require_tool, run_with_timeout, SClientOutput, Switchyard, TempDir, TestPki,
};
use std::path::PathBuf;

/// The version document the stand-in serves.
pub const VERSION: &str = r#"{"major":"1","minor":"31","gitVersion":"v1.31.0-switchyard-test"}"#;

/// A running stand-in API.
pub struct KubeApi {
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

impl KubeApi {
    /// Starts it with a certificate for `san` (the SNI kubectl's TLS carries), in `ns`
    /// when given.
    pub fn start(pki: &TestPki, san: &str, ns: Option<&Netns>) -> Result<KubeApi> {
        let tls = pki.issue_server("kube", "kube", &[san])?;
        let dir = TempDir::new("kube-api")?;
        std::fs::write(dir.join("version"), VERSION)?;
        let openssl = require_tool("openssl", "openssl", &[])?;
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = command_in(ns, &openssl);
            cmd.args(["s_server", "-WWW", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&tls.cert)
                .arg("-key")
                .arg(&tls.key)
                .current_dir(dir.path());
            let mut proc = Proc::spawn("kube-api", cmd, dir.path())?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let probe = || std::net::TcpStream::connect(addr).is_ok();
            let up = crate::wait_until(Duration::from_secs(5), "s_server listening", || {
                let listening = match ns {
                    Some(ns) => ns.run(probe),
                    None => probe(),
                };
                Ok(listening.then_some(()))
            });
            if up.is_ok() && proc.wait_exit(Duration::ZERO)?.is_none() {
                return Ok(KubeApi {
                    addr,
                    _proc: proc,
                    _dir: dir,
                });
            }
        }
        bail!("openssl s_server did not start")
    }
}

/// `kubectl --kubeconfig K get --raw /version`.
pub fn kubectl_version(kubeconfig: &Path) -> Result<SClientOutput> {
    let mut cmd = Command::new(require_tool("kubectl", "kubernetes-client", &[])?);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/version"]);
    if let Some(home) = kubeconfig.parent() {
        cmd.env("HOME", home);
    }
    run_with_timeout(cmd, b"", Duration::from_secs(20))
}

/// Writes the kubeconfig of `switchyard kube config EXTRA… --out` (straight to `proxy`, the
/// client identity) into a fresh directory, and returns its text and path.
pub fn direct_kubeconfig(
    pki: &TestPki,
    proxy: &Switchyard,
    extra: &[&str],
) -> Result<(TempDir, PathBuf, String)> {
    let dir = TempDir::new("kubeconfig")?;
    let path = dir.join("config");
    let mut args = vec!["kube".to_owned(), "config".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("--out={}", path.display()));
    args.extend(client_args(pki, proxy, "client"));
    let out = run_with_timeout(switchyard_cmd(&args)?, b"", Duration::from_secs(10))?;
    if !out.success() {
        bail!("kube config: {out:?}");
    }
    let text = std::fs::read_to_string(&path)?;
    Ok((dir, path, text))
}
