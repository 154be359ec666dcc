//! `switchyard probe`: is the proxy reachable, does TLS routing work directly, do the
//! connection upgrades work (in progress).
