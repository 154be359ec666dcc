//! Debian's `pebble` (an RFC 8555 test CA) and `pebble-challtestsrv` (its DNS responder),
//! on loopback ports only, for the ACME tests ([`Pebble`]).
//!
//! The DNS responder answers every A query with 127.0.0.1 (and no AAAA), so every name the
//! CA validates resolves to the proxy (unless [`Pebble::servfail`]); Pebble dials TLS-ALPN-01 validations at
//! `tlsPort`, the proxy's port. Pebble's own HTTPS certificate comes from the test PKI, so
//! the proxy trusts the directory through `proxy_service.acme.ca_file` = the PKI's CA.
//! The certificates Pebble issues chain to a root made at its start, served by its
//! management interface at `/roots/0` ([`Pebble::root`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{Proc, Stream};
use crate::{curl, free_port, require_tool, TempDir, TestPki};

/// A running Pebble with its DNS responder; both stop on drop.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The management interface (`/roots/0`).
    pub management: SocketAddr,
    /// The CA that signs Pebble's HTTPS certificate (for `ca_file` and curl).
    pub https_ca: PathBuf,
    pebble: Option<Proc>,
    _dns: Proc,
    dns_management: String,
    dir: TempDir,
}

impl Pebble {
    /// Starts the DNS responder and Pebble, validating TLS-ALPN-01 at `127.0.0.1:tls_port`;
    /// `validity` sets `certificateValidityPeriod` (seconds) of the issued certificates.
    pub fn start(pki: &TestPki, tls_port: u16, validity: Option<u64>) -> Result<Pebble> {
        let pebble_bin = require_tool("pebble", "pebble", &[])?;
        let dns_bin = require_tool("pebble-challtestsrv", "pebble", &[])?;
        let dir = TempDir::new("pebble")?;
        let tls = pki.issue_server("pebble", "localhost", &["localhost", "127.0.0.1"])?;
        let (dns, dns_addr, dns_management) = start_dns(&dns_bin, &dir)?;
        for _ in 0..5 {
            let (listen, management) = (free_port(), free_port());
            let mut config = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": tls.cert, "privateKey": tls.key,
                "httpPort": free_port(), "tlsPort": tls_port,
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
            }});
            if let Some(secs) = validity {
                config["pebble"]["certificateValidityPeriod"] = secs.into();
            }
            let path = dir.join("pebble.json");
            std::fs::write(&path, config.to_string())?;
            let mut cmd = Command::new(&pebble_bin);
            cmd.arg("-config")
                .arg(&path)
                .arg("-dnsserver")
                .arg(&dns_addr);
            // Validations at once, every nonce good, a challenge for every order.
            cmd.env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_VA_ALWAYS_VALID", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0");
            let mut proc = Proc::spawn("pebble", cmd, dir.path())?;
            let up = proc.wait_for_line(Stream::Stdout, Duration::from_secs(15), |l| {
                l.contains("ACME directory available at").then_some(())
            });
            match up {
                Ok(()) => {
                    return Ok(Pebble {
                        directory: format!("https://127.0.0.1:{listen}/dir"),
                        management: format!("127.0.0.1:{management}").parse()?,
                        https_ca: pki.ca_cert(),
                        pebble: Some(proc),
                        _dns: dns,
                        dns_management,
                        dir,
                    })
                }
                Err(e) if format!("{e:#}").contains("address already in use") => continue,
                Err(e) => return Err(e),
            }
        }
        bail!("pebble: no free ports after 5 tries")
    }

    /// Fetches the root of the issued chains to `root.pem` in Pebble's directory.
    pub fn root(&self) -> Result<PathBuf> {
        let path = self.dir.join("root.pem");
        let url = format!("https://{}/roots/0", self.management);
        let out = curl([
            "--cacert".as_ref(),
            self.https_ca.as_os_str(),
            "-o".as_ref(),
            path.as_os_str(),
            url.as_ref(),
        ])?;
        if !out.success() {
            bail!("curl {url}: {}", out.stderr);
        }
        Ok(path)
    }

    /// Makes the DNS responder answer SERVFAIL for `host`: the CA cannot resolve it.
    pub fn servfail(&self, host: &str) -> Result<()> {
        let url = format!("http://{}/set-servfail", self.dns_management);
        let body = serde_json::json!({ "host": host }).to_string();
        let out = curl(["-f", "-d", body.as_str(), url.as_str()])?;
        if !out.success() {
            bail!("curl {url}: {}", out.stderr);
        }
        Ok(())
    }

    /// Stops the CA (the DNS responder stays): the ACME directory is unreachable.
    pub fn stop(&mut self) {
        self.pebble = None;
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        self.pebble.as_ref().map(|p| p.stdout()).unwrap_or_default()
    }
}

/// `pebble-challtestsrv` answering DNS on a loopback port (UDP and TCP), every other
/// challenge server off.
fn start_dns(bin: &std::path::Path, dir: &TempDir) -> Result<(Proc, String, String)> {
    for _ in 0..5 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(bin);
        cmd.args([
            "-dns01",
            &addr,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let management = format!("127.0.0.1:{}", free_port());
        cmd.arg("-management").arg(&management);
        let mut proc = Proc::spawn("challtestsrv", cmd, dir.path())?;
        let up = proc.wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| {
            l.contains("Starting management server").then_some(())
        });
        match up {
            Ok(()) => return Ok((proc, addr, management)),
            Err(e) if format!("{e:#}").contains("address already in use") => continue,
            Err(e) => return Err(e).context("pebble-challtestsrv"),
        }
    }
    bail!("pebble-challtestsrv: no free port after 5 tries")
}
