//! `HTTPS_PROXY`: the HTTP forward proxy that TCP connections to the proxy go through, with
//! `CONNECT host:port` (docs/client.md, "HTTPS_PROXY").
//!
//! Which forward proxy applies to an address, and its credentials, is hyper-util's
//! [`Matcher`], which reads the variables as curl does: `HTTPS_PROXY`/`https_proxy`, else
//! `ALL_PROXY`/`all_proxy`; `NO_PROXY`/`no_proxy` exempts hosts (`*`, a domain and its
//! subdomains, `.domain`, IP addresses and networks); `user:password` is percent-decoded.
//! Switchyard adds two things: `NO_PROXY` entries may also be written `*.domain` or with a
//! port, and only `http://` proxies are used — another scheme, or a value that is not a
//! URL, is an error naming the variable rather than a silent direct connection.
//!
//! [`super::transport`] then asks the forward proxy for the tunnel (`CONNECT`).

use hyper::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use std::sync::OnceLock;
use thiserror::Error;

/// An HTTP proxy for `CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpProxy {
    /// `host:port` of the HTTP proxy (port 80 when the URL has none).
    pub(crate) addr: String,
    /// `Proxy-Authorization` value, from `http://user:password@host:port`.
    pub(crate) auth: Option<String>,
    /// The variable it comes from (`HTTPS_PROXY` or `ALL_PROXY`), for messages.
    pub(crate) var: &'static str,
}

/// Why the proxy variables cannot be used for an address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ProxyError {
    #[error("{var}: only http:// proxies are supported (not {scheme}://)")]
    Unsupported { var: &'static str, scheme: String },
    #[error("{var} is not a proxy URL (write http://[user:password@]host[:port])")]
    NotAUrl { var: &'static str },
    #[error("`{0}` is not an address the proxy variables can be matched against")]
    Destination(String),
}

/// The forward proxy settings of the process.
#[derive(Debug)]
pub(crate) struct ProxyEnv {
    matcher: Matcher,
    /// `HTTPS_PROXY` or `ALL_PROXY`: the variable that names the proxy.
    var: &'static str,
    /// Set when that variable cannot be used: the matcher then holds a placeholder, so
    /// `NO_PROXY` still exempts hosts and every other address gets this error.
    unusable: Option<ProxyError>,
}

/// Stands in for a proxy URL that cannot be used (never dialled).
const PLACEHOLDER: &str = "http://unusable.invalid";

impl ProxyEnv {
    /// The process environment's settings, read once.
    pub(crate) fn get() -> &'static ProxyEnv {
        static ENV: OnceLock<ProxyEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let var = |names: [&str; 2]| {
                names
                    .iter()
                    .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
                    .unwrap_or_default()
            };
            ProxyEnv::new(
                &var(["HTTPS_PROXY", "https_proxy"]),
                &var(["ALL_PROXY", "all_proxy"]),
                &var(["NO_PROXY", "no_proxy"]),
            )
        })
    }

    /// From the values of `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (empty when unset).
    pub(crate) fn new(https: &str, all: &str, no: &str) -> ProxyEnv {
        let (var, url) = match https.trim() {
            "" => ("ALL_PROXY", all.trim()),
            https => ("HTTPS_PROXY", https),
        };
        // A bare `host:port` means http://, as for curl.
        let url = match url.contains("://") || url.is_empty() {
            true => url.to_owned(),
            false => format!("http://{url}"),
        };
        let unusable = usable(var, &url).err();
        let no: Vec<String> = no.split(',').map(no_proxy_entry).collect();
        let matcher = Matcher::builder()
            .https(if unusable.is_some() {
                PLACEHOLDER
            } else {
                &url
            })
            .no(no.join(","))
            .build();
        ProxyEnv {
            matcher,
            var,
            unusable,
        }
    }

    /// The HTTP proxy for connections to `addr` (`host:port`, the proxy's address), if any.
    pub(crate) fn for_addr(&self, addr: &str) -> Result<Option<HttpProxy>, ProxyError> {
        let uri: Uri = format!("https://{addr}/")
            .parse()
            .map_err(|_| ProxyError::Destination(addr.to_owned()))?;
        let Some(intercept) = self.matcher.intercept(&uri) else {
            return Ok(None);
        };
        if let Some(e) = &self.unusable {
            return Err(e.clone());
        }
        let proxy = intercept.uri();
        let host = proxy.host().ok_or(ProxyError::NotAUrl { var: self.var })?;
        Ok(Some(HttpProxy {
            addr: format!("{host}:{}", proxy.port_u16().unwrap_or(80)),
            auth: intercept
                .basic_auth()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            var: self.var,
        }))
    }
}

/// Whether `url` (the value of `var`) can be used: empty, or an `http://` URL with a host.
fn usable(var: &'static str, url: &str) -> Result<(), ProxyError> {
    if url.is_empty() {
        return Ok(());
    }
    match url.split_once("://") {
        Some((scheme, _)) if !scheme.eq_ignore_ascii_case("http") => {
            return Err(ProxyError::Unsupported {
                var,
                scheme: scheme.to_ascii_lowercase(),
            })
        }
        _ => {}
    }
    let any = Uri::from_static("https://switchyard.invalid/");
    match Matcher::builder().https(url).build().intercept(&any) {
        Some(i) if i.uri().host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(ProxyError::NotAUrl { var }),
    }
}

/// One `NO_PROXY` entry in the matcher's terms: `*.domain` becomes `.domain`, a port (also
/// `[v6]:port`) and IPv6 brackets are dropped.
fn no_proxy_entry(entry: &str) -> String {
    let entry = entry.trim();
    let host = match entry.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => h,
        _ => entry,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.strip_prefix("*.") {
        Some(domain) => format!(".{domain}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
#[path = "http_proxy_tests.rs"]
mod tests;
