//! Which class a route's connections count in (`limits.classes`): by the route's role,
//! then by its first ALPN for the built-in relays.

use crate::io::tunnel::Kind;
use crate::protocol::{AUTH_ALPN_PREFIX, MONGODB_ALPN, MYSQL_ALPN, POSTGRES_ALPN, SSH_ALPN};
use crate::router::route::{Mode, Role};
use crate::router::state::Route;

/// The class of a route.
pub(crate) fn class_of(route: &Route) -> &'static str {
    let alpn = route.alpn.first().map(String::as_str).unwrap_or("");
    let base = alpn
        .strip_suffix(crate::protocol::PING_SUFFIX)
        .unwrap_or(alpn);
    match route.role {
        Role::Web | Role::DetectionProbe => "web",
        Role::App | Role::Agent(Kind::Http) | Role::Agent(Kind::Tcp) => "app",
        Role::TunnelService => "tunnel",
        Role::Agent(Kind::Kube) => "kube",
        Role::Agent(Kind::Ssh) => "ssh",
        Role::Agent(Kind::Postgres) => "postgres",
        Role::Agent(Kind::Mysql) => "mysql",
        Role::Agent(Kind::Mongodb) => "mongodb",
        Role::Relay => match base {
            SSH_ALPN => "ssh",
            POSTGRES_ALPN => "postgres",
            MYSQL_ALPN => "mysql",
            MONGODB_ALPN => "mongodb",
            _ if route.name == "kube" => "kube",
            _ if route.name.starts_with("auth:") || base.starts_with(AUTH_ALPN_PREFIX) => "auth",
            _ if matches!(route.mode, Mode::Passthrough) => "app",
            _ => "app",
        },
    }
}
