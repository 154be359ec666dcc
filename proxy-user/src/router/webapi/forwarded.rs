//! `X-Forwarded-For` on the connection upgrade (`docs/balancers.md`): believed only from a
//! trusted proxy (`proxy_service.trusted_proxies`), under `trust_x_forwarded_for`:
//!
//! - `true`: exactly one header with one value (`ip`, `ip:port`, `[v6]:port`): the
//!   balancer directly in front sets it;
//! - `hops`: the values of every header, in order, as one list; walking it from the
//!   right, the first address that is not a trusted proxy is the client (all trusted: the
//!   left-most). Only the walked part must be addresses: what the client wrote to the left
//!   of it is not looked at.
//!
//! From any other sender the header is ignored and what it claims is only reported
//! ([`Forwarded::Claimed`]). A malformed header from a trusted proxy is refused (400).

use super::head::Request;
use super::Refused;
use crate::config::{Nets, XffMode};
use crate::router::trust::ClientAddr;
use std::net::{IpAddr, SocketAddr};

/// Most addresses a `hops` list may hold.
pub(crate) const MAX_HOPS: usize = 32;

/// The `X-Forwarded-For` rule of one HTTP connection: the setting, and whether the
/// connection's client (its TCP peer, or a trusted PROXY header's source) is a trusted
/// proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Xff {
    pub(crate) mode: XffMode,
    pub(crate) sender_trusted: bool,
}

impl Xff {
    /// Whether incoming `X-Forwarded-*` fields are believed (and appended to).
    pub(crate) fn believed(self) -> bool {
        self.mode != XffMode::Off && self.sender_trusted
    }
}

/// What `X-Forwarded-For` said, as judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// No header, or the setting is off.
    None,
    /// From a trusted proxy: the client's address.
    Believed(ClientAddr),
    /// From another sender: what it claimed, for the log only.
    Claimed(ClientAddr),
}

/// Judges the `X-Forwarded-For` of `req` under `xff`; `trusted` are the trusted proxies.
pub(crate) fn forwarded_for(req: &Request, xff: Xff, trusted: &Nets) -> Result<Forwarded, Refused> {
    let addr = match xff.mode {
        XffMode::Off => return Ok(Forwarded::None),
        XffMode::Single => single(req),
        XffMode::Hops => hops(req, trusted),
    };
    Ok(match (xff.sender_trusted, addr) {
        (true, addr) => addr?.map_or(Forwarded::None, Forwarded::Believed),
        (false, Ok(Some(a))) => Forwarded::Claimed(a),
        (false, _) => Forwarded::None,
    })
}

/// One header, one value.
fn single(req: &Request) -> Result<Option<ClientAddr>, Refused> {
    let values: Vec<&str> = req.all("x-forwarded-for").collect();
    let value = match values[..] {
        [] => return Ok(None),
        [v] => v,
        _ => {
            return Err(Refused::new(
                400,
                format!(
                    "{} X-Forwarded-For headers: exactly one is accepted (trust_x_forwarded_for: hops takes a chain)",
                    values.len()
                ),
            ))
        }
    };
    if value.contains(',') {
        return Err(Refused::new(
            400,
            format!(
                "X-Forwarded-For {value:?} is a list: exactly one address is accepted (trust_x_forwarded_for: hops takes a chain)"
            ),
        ));
    }
    address(value).map(Some)
}

/// The right-most address that is not a trusted proxy.
fn hops(req: &Request, trusted: &Nets) -> Result<Option<ClientAddr>, Refused> {
    let list: Vec<&str> = req
        .all("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if list.len() > MAX_HOPS {
        return Err(Refused::new(
            400,
            format!(
                "X-Forwarded-For has {} addresses: at most {MAX_HOPS} are accepted",
                list.len()
            ),
        ));
    }
    let mut leftmost = None;
    for value in list.iter().rev() {
        let addr = address(value)?;
        if !trusted.contains(addr.ip()) {
            return Ok(Some(addr));
        }
        leftmost = Some(addr);
    }
    Ok(leftmost)
}

/// `ip`, `ip:port` or `[v6]:port`.
fn address(value: &str) -> Result<ClientAddr, Refused> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(ClientAddr::Ip(ip));
    }
    if let Ok(s) = value.parse::<SocketAddr>() {
        return Ok(ClientAddr::Socket(s));
    }
    Err(Refused::new(
        400,
        format!("X-Forwarded-For {value:?} is not an address (ip or ip:port)"),
    ))
}

#[cfg(test)]
#[path = "forwarded_tests.rs"]
mod tests;
