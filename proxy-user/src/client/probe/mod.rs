//! `switchyard probe https://HOST:PORT`: the `curl … /webapi/connectionupgrade` check of a
//! proxy behind a load balancer, in plain words. One line per check, each with its
//! round-trip time (the median of `--count` attempts):
//!
//! - reachable: TCP connect (through `HTTPS_PROXY` when set);
//! - TLS routing (ALPN): the detection handshake of [`super::balancer`] — works directly, or
//!   an upgrade is required, and why;
//! - websocket upgrade, legacy upgrade: TLS with ALPN `http/1.1`, the request, `101`, and a
//!   TLS ClientHello through the tunnel that the proxy answers;
//! - with an identity: a full TLS connection with the user's certificate directly and
//!   through the upgrade, and the latency the upgrade adds;
//! - a conclusion: how clients will connect.
//!
//! Exit status 0 when clients can use the proxy one way or another, 1 otherwise.
//!
//! This file owns the command line and the set-up (URL, identity, how the server
//! certificate is checked); [`checks`] makes the connections and times them, [`report`]
//! prints one line per check and the conclusion; `--insecure` uses `io::insecure`.

mod checks;
mod report;

use super::balancer::PROBE_ALPN;
use super::dial::{Dialer, Verify};
use super::identity::{load_roots, Identity, IdentityFiles};
use super::upgrade::{Endpoint, UpgradeMode};
use super::ClientError;
use crate::io::tls::provider;
use checks::Probe;
use clap::Args;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `switchyard probe`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ProbeArgs {
    /// The proxy, or the load balancer in front of it: https://HOST:PORT (HOST is checked
    /// against the certificate and sent as SNI).
    pub(crate) url: String,
    /// Cluster CA certificate(s) (PEM) the server certificate must chain to (default: the
    /// identity's ca.crt).
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// An identity (as for the local proxies): adds a full TLS connection with the user's
    /// certificate, directly and through the upgrade.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub(crate) identity: Option<PathBuf>,
    /// User certificate (PEM), with --key and --ca.
    #[arg(long, requires_all = ["key", "ca"])]
    pub(crate) cert: Option<PathBuf>,
    /// User private key (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Do not check the server certificate (reachability only; clients will check it).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// The upgrade clients are going to use (both are probed).
    #[arg(long, value_enum, default_value_t = UpgradeMode::Websocket)]
    pub(crate) upgrade_mode: UpgradeMode,
    /// ALPN of the connection made with the identity.
    #[arg(long, default_value = PROBE_ALPN)]
    pub(crate) alpn: String,
    /// SNI of the connection made with the identity (default: HOST).
    #[arg(long)]
    pub(crate) sni: Option<String>,
    /// Attempts per check; times are their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) count: u32,
}

/// `https://HOST:PORT[/…]` (or `HOST:PORT`; port 443 when omitted) → (`host:port`, host).
pub(crate) fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => rest,
        Some((s, _)) => {
            return Err(format!(
                "`{url}`: the proxy speaks TLS, use https:// (not {s}://)"
            ))
        }
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    let has_port = match authority.rsplit_once(':') {
        Some((h, p)) => p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')),
        None => false,
    };
    let addr = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    crate::config::host_port("url", &addr).map_err(|e| e.to_string())?;
    let (host, _) = addr.rsplit_once(':').expect("checked host:port");
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((addr, host))
}

/// Runs the probe, printing as it goes.
pub(crate) async fn run(args: &ProbeArgs) -> Result<ExitCode, ClientError> {
    let (addr, host) = parse_url(&args.url).map_err(ClientError::Usage)?;
    let identity = match (&args.identity, &args.cert, &args.key) {
        (Some(dir), ..) => {
            let mut files = IdentityFiles::from_identity(dir)?;
            if let Some(ca) = &args.ca {
                files.ca = ca.clone();
            }
            Some(Identity::load(&files)?)
        }
        (None, Some(cert), Some(key)) => Some(Identity::load(&IdentityFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: args.ca.clone().expect("clap requires --ca with --cert"),
        })?),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if args.insecure {
        Arc::new(crate::io::insecure::NoVerify)
    } else {
        let roots =
            match (&identity, &args.ca) {
                (Some(id), _) => id.roots.clone(),
                (None, Some(ca)) => Arc::new(load_roots(ca)?),
                (None, None) => return Err(ClientError::Usage(
                    "pass --ca FILE (the cluster CA), an identity (--identity DIR), or --insecure"
                        .into(),
                )),
            };
        WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| ClientError::Usage(format!("CA unusable: {e}")))?
    };
    let endpoint = Endpoint::new(&addr, &host, verifier.clone())?;
    let connector = match identity {
        Some(identity) => {
            let dialer = Dialer::new(&addr, identity)?;
            Some(dialer.connector(args.sni.as_deref(), &[&args.alpn], Verify::Proxy)?)
        }
        None => None,
    };
    let probe = Probe {
        endpoint,
        connector,
        count: args.count as usize,
    };
    Ok(if probe.report(args.upgrade_mode).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let p = |u| parse_url(u).unwrap();
        assert_eq!(
            p("https://proxy.example.com:8443"),
            ("proxy.example.com:8443".into(), "proxy.example.com".into())
        );
        assert_eq!(
            p("https://proxy.example.com/webapi/ping"),
            ("proxy.example.com:443".into(), "proxy.example.com".into())
        );
        assert_eq!(
            p("localhost:3080"),
            ("localhost:3080".into(), "localhost".into())
        );
        assert_eq!(p("https://[::1]:3080"), ("[::1]:3080".into(), "::1".into()));
        assert_eq!(p("https://[::1]"), ("[::1]:443".into(), "::1".into()));
        assert!(parse_url("http://proxy:80").is_err());
        assert!(parse_url("https://").is_err());
    }
}
