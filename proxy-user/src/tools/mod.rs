//! Tools around the proxy that are neither the router nor the client: [`ca`], a small
//! certificate authority so a new user can try everything on one machine, and [`demo`],
//! the demo upstreams and the dev mode behind `cargo xtask run`.

pub(crate) mod ca;
pub(crate) mod demo;
