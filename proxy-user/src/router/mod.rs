//! The router: the server side of the single port (`docs/architecture.md` §1).
//!
//! The path of one connection: [`listener`] accepts it under the connection limit and gives
//! it a span; [`conn`] runs it — [`detect`] classifies the first bytes, [`hello`] parses a
//! TLS ClientHello, [`route`] picks a route, [`certs`] holds the TLS configurations of the
//! terminated routes, [`http`] serves the web route and the HTTP apps, [`webapi`] answers
//! the proxy's own endpoints, [`trust`] decides whose address a connection is from and
//! whether a route's `allow_from` admits it — and hands the bytes to `relay`. [`state`] is the routing state built from the configuration, [`run`] starts
//! the listeners and handles signals (reload, drain), [`metrics`] and [`diag`] are what
//! operators watch; [`tunnel`] serves the agents that dial in and reaches their services;
//! [`upgrade`] hands the listening sockets to a new binary and [`notify`] tells systemd;
//! [`acme`] obtains and renews the web certificate from an ACME CA and answers its
//! TLS-ALPN-01 challenges.

pub(crate) mod acme;
pub(crate) mod admission;
pub(crate) mod certs;
pub(crate) mod conn;
pub(crate) mod detect;
pub(crate) mod diag;
pub(crate) mod fdlimit;
pub(crate) mod hello;
pub(crate) mod http;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod ratelimit;
pub(crate) mod route;
pub(crate) mod run;
pub(crate) mod state;
pub(crate) mod trust;
pub(crate) mod tunnel;
pub(crate) mod upgrade;
pub(crate) mod webapi;
