//! Heads between a client and an upstream (RFC 9110 §7.6), as pure functions of header
//! maps: hop-by-hop fields dropped in both directions (an `Upgrade` kept when it is being
//! passed through), `X-Forwarded-For` / `-Proto` / `-Host` set toward the upstream, and the
//! host a request names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use std::net::IpAddr;

/// Fields that describe one hop and are never forwarded (RFC 9110 §7.6.1, plus the
/// de-facto `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a request asks for an HTTP/1.1 upgrade (`Connection: upgrade` and `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Drops the hop-by-hop fields and those `Connection` names. With `upgrade`, `Upgrade`
/// and `Connection: upgrade` stay (an upgrade passed through to the other side); `TE:
/// trailers` stays toward an upstream (gRPC needs it).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = connection_tokens(headers).collect();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in named {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            if !(upgrade && n == header::UPGRADE) {
                headers.remove(n);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// What the proxy tells the upstream about the client.
pub(crate) struct Forwarded<'a> {
    /// The client's address as the proxy believes it.
    pub(crate) client: IpAddr,
    /// `https` or `http`: how the client reached the proxy.
    pub(crate) proto: &'static str,
    /// The host the client asked for.
    pub(crate) host: Option<&'a str>,
    /// `trust_x_forwarded_for`: a balancer in front already set these; append to its
    /// `X-Forwarded-For` and keep its `-Proto` and `-Host`.
    pub(crate) trust_incoming: bool,
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host`. Untrusted incoming values (and a
/// `Forwarded` field, which the proxy does not write) are dropped, so a client cannot
/// choose the address an app sees.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, f: &Forwarded) {
    let incoming: Vec<String> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let client = f.client.to_string();
    let xff = if f.trust_incoming && !incoming.is_empty() {
        format!("{}, {client}", incoming.join(", "))
    } else {
        client
    };
    if !f.trust_incoming {
        headers.remove(header::FORWARDED);
    }
    set(headers, &X_FORWARDED_FOR, &xff);
    if !(f.trust_incoming && headers.contains_key(&X_FORWARDED_PROTO)) {
        set(headers, &X_FORWARDED_PROTO, f.proto);
    }
    if !(f.trust_incoming && headers.contains_key(&X_FORWARDED_HOST)) {
        match f.host {
            Some(h) => set(headers, &X_FORWARDED_HOST, h),
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// The authority a request names as sent: `:authority` (HTTP/2, absolute-form) or `Host`.
pub(crate) fn authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?.trim();
    (!host.is_empty()).then(|| host.to_owned())
}

/// The host name of an authority: lower-case, without the port (IPv6 keeps its brackets).
pub(crate) fn host_name(authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    if a.starts_with('[') {
        return match a.find(']') {
            Some(end) => a[..=end].to_owned(),
            None => a,
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => a,
    }
}

#[cfg(test)]
#[path = "headers_tests.rs"]
mod tests;
