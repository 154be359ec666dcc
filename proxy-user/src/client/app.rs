//! Apps and raw TLS routes: `proxy app NAME` listens locally and dials the proxy with SNI
//! `NAME.<proxy host>` and ALPN `teleport-tcp` (a `routes:` entry names the app by that
//! SNI); `proxy tcp --alpn A --sni S` does the same for any ALPN and SNI.

use super::dial::{Dialer, Verify};
use super::local::{self, Local};
use super::ClientError;
use crate::protocol::TCP_ALPN;

/// `switchyard proxy app NAME`.
pub(crate) async fn proxy_app(
    dialer: &Dialer,
    name: &str,
    port: u16,
    verbose: bool,
) -> Result<(), ClientError> {
    if !crate::config::dns_label(name) {
        return Err(ClientError::Usage(format!(
            "app name `{name}` must be one DNS label (letters, digits, '-')"
        )));
    }
    let sni = format!("{name}.{}", dialer.host);
    proxy_tcp(dialer, TCP_ALPN, &sni, port, verbose).await
}

/// `switchyard proxy tcp --alpn A --sni S`: the proxy's certificate is checked against
/// the proxy's name, whatever the SNI.
pub(crate) async fn proxy_tcp(
    dialer: &Dialer,
    alpn: &str,
    sni: &str,
    port: u16,
    verbose: bool,
) -> Result<(), ClientError> {
    let connector = dialer.connector(Some(sni), &[alpn], Verify::Proxy)?;
    let (listener, addr) = local::bind(port).await?;
    println!("switchyard ready addr={addr}");
    println!("local proxy for SNI {sni} ALPN {alpn} via {}", dialer.proxy);
    local::serve(
        listener,
        connector,
        Local::Raw,
        verbose,
        local::interrupted(),
    )
    .await
}
