//! The arguments every client command shares ([`ClientArgs`]): which proxy
//! (`--proxy`, `SWITCHYARD_PROXY`), who the user is (`--identity`, or `--cert/--key/--ca`),
//! and how to pass a layer-7 load balancer (`--upgrade-mode`); docs/client.md, "Identity
//! and proxy". They become a [`Dialer`], or are written back with absolute paths into the
//! commands of generated config files.

use super::dial::Dialer;
use super::identity::{Identity, IdentityFiles};
use super::upgrade::{Override, UpgradeMode};
use super::ClientError;
use clap::Args;
use std::path::{Path, PathBuf};

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
