//! OpenSSH support: `proxy ssh` carries stdin/stdout over one TLS connection with ALPN
//! `teleport-proxy-ssh` (made for `ProxyCommand`), and `config ssh` prints the
//! `~/.ssh/config` block that uses it.
//!
//! Naming a node (docs/client.md): the SSH host `NODE`, `NODE.CLUSTER` (with `--cluster`)
//! or `NODE.<proxy host>` becomes the SNI `NODE.ssh.<proxy host>`; the proxy maps `NODE`
//! through `upstreams.ssh_nodes` (docs/config.md). The proxy's certificate is still checked
//! against the proxy's own name.

use super::dial::{Dialer, Verify};
use super::local::relay_until;
use super::ClientError;
use crate::io::copy::Until;
use crate::protocol::{SSH_ALPN, SSH_NODE_LABEL};
use std::path::Path;

/// The SNI naming `host` (as OpenSSH's `%h` gives it) under the proxy's name.
pub(crate) fn node_sni(
    host: &str,
    cluster: Option<&str>,
    proxy_host: &str,
) -> Result<String, ClientError> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let node = [cluster, Some(proxy_host)]
        .into_iter()
        .flatten()
        .find_map(|suffix| host.strip_suffix(&format!(".{}", suffix.to_ascii_lowercase())))
        .unwrap_or(&host);
    if !crate::config::dns_label(node) {
        return Err(ClientError::Usage(format!(
            "cannot name an SSH node from host `{host}`: use NODE, NODE.<cluster> with --cluster, or NODE.{proxy_host} (NODE: letters, digits, '-')"
        )));
    }
    if proxy_host.parse::<std::net::IpAddr>().is_ok() {
        return Err(ClientError::Usage(format!(
            "--proxy {proxy_host}: naming an SSH node needs the proxy's host name, not an IP address"
        )));
    }
    Ok(format!("{node}.{SSH_NODE_LABEL}.{proxy_host}"))
}

/// Splits `USER@HOST:PORT` (user and port optional) and returns HOST.
pub(crate) fn target_host(target: &str) -> Result<&str, ClientError> {
    let host_port = target.rsplit_once('@').map_or(target, |(_, h)| h);
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => host_port,
    };
    if host.is_empty() {
        return Err(ClientError::Usage(format!(
            "`{target}` is not USER@HOST:PORT"
        )));
    }
    Ok(host)
}

/// `switchyard proxy ssh`: stdin/stdout over TLS to the node named by `target`; with
/// `verbose`, one line on stderr when the connection ends.
pub(crate) async fn proxy_ssh(
    dialer: &Dialer,
    cluster: Option<&str>,
    target: &str,
    verbose: bool,
) -> Result<(), ClientError> {
    let sni = node_sni(target_host(target)?, cluster, &dialer.host)?;
    let connector = dialer.connector(Some(&sni), &[SSH_ALPN], Verify::Proxy)?;
    let tls = connector.dial().await?;
    let stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    // OpenSSH keeps stdin open until it is done: the count of bytes sent is not final here.
    let (_, down) = relay_until(stdio, tls, &connector, Until::BEnds).await?;
    if verbose {
        tracing::info!(
            "ssh to {target} via {} (SNI {sni}) closed: {down} bytes received",
            connector.proxy
        );
    }
    Ok(())
}

/// What `config ssh` needs to write the block.
pub(crate) struct SshConfig<'a> {
    pub(crate) exe: &'a Path,
    /// Arguments naming the proxy and identity, passed on to `proxy ssh`.
    pub(crate) client_args: &'a [String],
    pub(crate) cluster: Option<&'a str>,
    pub(crate) proxy_host: &'a str,
    pub(crate) known_hosts: &'a Path,
    pub(crate) forward_agent: bool,
}

/// The `~/.ssh/config` block: nodes as `NODE.CLUSTER` (or `NODE.<proxy host>`).
pub(crate) fn config_block(c: &SshConfig) -> String {
    let suffix = c.cluster.unwrap_or(c.proxy_host);
    let mut proxy_command = vec![
        quote(&c.exe.display().to_string()),
        "proxy".into(),
        "ssh".into(),
    ];
    proxy_command.extend(c.client_args.iter().map(|a| quote(a)));
    if let Some(cluster) = c.cluster {
        proxy_command.push(format!("--cluster={}", quote(cluster)));
    }
    proxy_command.push("%r@%h:%p".into());
    let mut out = format!(
        "# Switchyard: SSH nodes behind {proxy} as NODE.{suffix}\n\
         Host *.{suffix}\n\
         \x20   UserKnownHostsFile {known}\n\
         \x20   ProxyCommand {command}\n",
        proxy = c.proxy_host,
        known = quote(&c.known_hosts.display().to_string()),
        command = proxy_command.join(" "),
    );
    if c.forward_agent {
        out += "    ForwardAgent yes\n";
    }
    out
}

/// Double-quotes an argument for ssh_config when it needs it.
fn quote(s: &str) -> String {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '%') {
        return s.to_owned();
    }
    format!("\"{}\"", s.replace('%', "%%").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_sni_labels_under_the_proxy() {
        let sni = |h, c| node_sni(target_host(h).unwrap(), c, "proxy.example.com");
        assert_eq!(
            sni("root@node1:22", None).unwrap(),
            "node1.ssh.proxy.example.com"
        );
        assert_eq!(
            sni("root@Node1.prod:22", Some("prod")).unwrap(),
            "node1.ssh.proxy.example.com"
        );
        assert_eq!(
            sni("node1.proxy.example.com", None).unwrap(),
            "node1.ssh.proxy.example.com"
        );
        assert!(sni("root@a.b.other:22", None).is_err());
        assert!(sni("root@bad_name:22", None).is_err());
        assert!(node_sni("node1", None, "127.0.0.1").is_err());
    }

    #[test]
    fn config_block_names_nodes_under_the_cluster() {
        let args = [
            "--proxy=proxy.example.com:443".to_owned(),
            "--identity=/my pki/alice".to_owned(),
        ];
        let block = config_block(&SshConfig {
            exe: Path::new("/usr/bin/switchyard"),
            client_args: &args,
            cluster: Some("prod"),
            proxy_host: "proxy.example.com",
            known_hosts: Path::new("/home/a/.switchyard/known_hosts"),
            forward_agent: true,
        });
        assert!(block.contains("Host *.prod\n"), "{block}");
        assert!(block.contains(
            "ProxyCommand /usr/bin/switchyard proxy ssh --proxy=proxy.example.com:443 \"--identity=/my pki/alice\" --cluster=prod %r@%h:%p\n"
        ), "{block}");
        assert!(block.ends_with("ForwardAgent yes\n"), "{block}");
    }
}
