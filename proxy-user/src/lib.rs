//! Switchyard: a single-port TLS routing proxy (`docs/architecture.md` §1), in rooms by role:
//!
//! - [`router`]: the server side — accept, detect, route, terminate or pass through.
//! - [`relay`]: moving the bytes of a routed pair (kernel splice, `splice(2)`, copy).
//! - [`ebpf`]: loading and attaching the kernel programs, and their maps.
//! - [`client`]: the local proxies users run in front of OpenSSH, database clients,
//!   kubectl and apps, the connection upgrade through layer-7 balancers, `probe`.
//! - [`io`]: I/O both sides share (replay, copy, wire framings, TLS identity);
//!   [`protocol`]: every wire value both sides agree on; [`config`]: the YAML file and the
//!   address types both sides parse.
//! - [`tools`]: the CA and the demo upstreams; [`cli`]: the command line.
//!
//! The binary calls [`main`]; everything else is internal to the crate.

mod cli;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod ebpf;
pub(crate) mod io;
pub(crate) mod protocol;
pub(crate) mod relay;
pub(crate) mod router;
pub(crate) mod tools;

/// Entry points of the fuzz targets (`fuzz/`, docs/fuzzing.md): the real parsers, fed bytes.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use cli::main;
