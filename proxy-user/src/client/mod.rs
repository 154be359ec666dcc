//! Client side (docs/client.md): local proxies that let clients which cannot set ALPN
//! themselves — OpenSSH, psql, mysql, kubectl, browsers — reach the proxy's single port.
//! Each wraps its client's bytes in TLS with the right SNI and ALPN and the user's
//! certificate. This room imports only `crate::io`, `crate::protocol` and the address
//! helpers of `crate::config`, never the router's internals.
//!
//! [`cli`] is the command line and [`args`] the arguments every command shares;
//! [`identity`] loads and checks the user's files before any traffic, [`dial`] opens one
//! TLS connection to the proxy and names its failures, [`local`] runs a local listener
//! (one TLS connection per client connection), and the protocol modules ([`ssh`], [`db`]
//! with [`pg`] and [`mysql`], [`kube`], [`app`]) add what their clients need.
//!
//! Behind a layer-7 load balancer (docs/balancers.md), [`balancer`] notices it once per
//! proxy address, and every dial then runs its TLS inside the connection upgrade of
//! [`upgrade`]; [`transport`] is what the TLS runs over (TCP, possibly through the
//! `HTTPS_PROXY` that [`http_proxy`] picks, or the upgrade's tunnel); [`probe`] checks all
//! of it for a person. [`agent`] is the other direction: it dials out and serves the
//! services of its machine to the proxy's clients through reverse tunnels.

pub(crate) mod agent;
pub(crate) mod app;
pub(crate) mod args;
pub(crate) mod balancer;
pub(crate) mod cli;
pub(crate) mod db;
pub(crate) mod dial;
pub(crate) mod http_proxy;
pub(crate) mod identity;
pub(crate) mod kube;
pub(crate) mod local;
pub(crate) mod mysql;
pub(crate) mod pg;
pub(crate) mod probe;
pub(crate) mod ssh;
pub(crate) mod transport;
pub(crate) mod upgrade;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a client command or one of its connections failed; each renders as one line.
#[derive(Debug, Error)]
pub(crate) enum ClientError {
    #[error("identity file {path}: {message}")]
    Identity { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("proxy {proxy} unreachable: {error}")]
    Unreachable {
        proxy: String,
        error: std::io::Error,
    },
    #[error("proxy {proxy} refused the client certificate {subject}: {alert}")]
    CertRefused {
        proxy: String,
        subject: String,
        alert: String,
    },
    #[error("proxy {proxy} denied access to SNI {sni:?} ALPN {alpn:?} ({alert}): this client's address is not in the route's allow_from (or certificate {subject} is not in its allow list)")]
    Denied {
        proxy: String,
        sni: String,
        alpn: Vec<String>,
        subject: String,
        alert: String,
    },
    #[error(
        "proxy {proxy} presented a certificate the cluster CA does not vouch for ({name}): {error}"
    )]
    ServerCert {
        proxy: String,
        name: String,
        error: String,
    },
    #[error("proxy {proxy} has no route for SNI {sni:?} ALPN {alpn:?}: {alert}")]
    NoRoute {
        proxy: String,
        sni: String,
        alpn: Vec<String>,
        alert: String,
    },
    #[error("TLS with proxy {proxy}: {error}")]
    Tls {
        proxy: String,
        error: std::io::Error,
    },
    #[error("proxy {proxy}: {mode} connection upgrade failed: {error}")]
    Upgrade {
        proxy: String,
        mode: upgrade::UpgradeMode,
        error: String,
    },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    pub(crate) fn identity(path: &Path, message: impl Display) -> ClientError {
        ClientError::Identity {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
        let what = what.into();
        move |error| ClientError::Io { what, error }
    }
}
