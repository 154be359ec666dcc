//! The label sets of the metric families (`Metrics`), one struct per family that has labels.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Accepted {
    /// `direct` or `proxy_protocol`; for the inner connection of an upgrade, its kind
    /// (`websocket_alpn_ping`, `alpn`, ...).
    pub(crate) ingress_path: &'static str,
    /// Detected protocol: `tls`, `ssh`, `http`, `postgres`, `unknown`, or a legacy listener.
    pub(crate) protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Upgrade {
    /// `websocket_alpn_ping`, `websocket_alpn`, `alpn_ping`, `alpn`, or `none` when refused.
    pub(crate) kind: &'static str,
    /// `accepted`, or why it was refused (`bad_request`, `timeout`, ...).
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Claim {
    /// `proxy_v1`, `proxy_v2` or `x_forwarded_for`.
    pub(crate) kind: &'static str,
    /// `believed` (from a trusted proxy), `ignored` (kept as `claimed_client` only) or
    /// `refused` (the connection was closed: `proxy_protocol: on`).
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Protocol {
    pub(crate) protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteAction {
    pub(crate) route: String,
    /// `passthrough`, `terminate`, `relay` (plaintext), `reject` (no route) or
    /// `source_refused` (the route's `allow_from`).
    pub(crate) action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Handshake {
    pub(crate) route: String,
    /// `full`, or `resumed` (a session ticket: no certificate exchange, no signature).
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ChainCheck {
    /// `verified` (the CA's signatures checked), `remembered` (the same chain verified
    /// before, `limits.verified_chains`) or `refused`.
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KtlsLabel {
    pub(crate) route: String,
    /// `handed_over`, `kept_cipher`, `kept_closed`, `kept_framing`, `failed`.
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeFailure {
    pub(crate) route: String,
    /// `no_certificate`, `bad_certificate`, `not_allowed`, `timeout`, `other`.
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Bytes {
    /// `client_to_upstream` or `upstream_to_client`.
    pub(crate) direction: &'static str,
    /// `userspace`, `splice` (`splice(2)`), `kernel_splice` for bytes the eBPF front end
    /// redirected, or `ktls` for a terminated session the kernel's TLS held.
    pub(crate) mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabel {
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabel {
    /// `web`, `app:<name>`, or `none` for a host that names no app.
    pub(crate) route: String,
    /// `1xx` … `5xx`.
    pub(crate) class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    /// `fd_limit`: the process was out of file descriptors.
    pub(crate) reason: &'static str,
}
