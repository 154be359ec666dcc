//! Switchyard: a single-port TLS routing proxy.
//!
//! The path of one connection (DESIGN.md §1): [`detect`] classifies the first bytes,
//! [`hello`] parses a TLS ClientHello, [`route`] picks a route, [`server`] runs the
//! per-connection handler, and [`relay`] moves the bytes. [`client`] holds the local
//! proxies users run in front of OpenSSH, database clients, kubectl and apps.

pub mod ca;
pub mod client;
pub mod config;
pub mod conn;
pub mod demo;
pub mod detect;
pub mod diag;
pub mod ebpf;
pub mod hello;
pub mod metrics;
pub mod relay;
pub mod route;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod wire;
