//! The probe's output: runs [`super::checks`] in order and prints one line per check as it
//! finishes (times in milliseconds), then the conclusion — how clients will connect, or
//! why they cannot (docs/client.md, "switchyard probe").

use super::checks::{Direct, Probe};
use crate::client::dial::Connector;
use crate::client::http_proxy::ProxyEnv;
use crate::client::upgrade::UpgradeMode;
use std::time::Duration;

/// Prints one line on stdout; a closed stdout (`| head`) is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Both upgrades, in the order they are probed.
const MODES: [UpgradeMode; 2] = [UpgradeMode::Websocket, UpgradeMode::Legacy];

impl Probe {
    /// All checks, printed; true when clients can use the proxy.
    pub(super) async fn report(&self, mode: UpgradeMode) -> bool {
        let addr = self.addr().to_owned();
        let mut via_proxy = false;
        match ProxyEnv::get().for_addr(&addr) {
            Ok(Some(p)) => {
                via_proxy = true;
                say!("via HTTP proxy {} ({}, CONNECT)", p.addr, p.var)
            }
            Ok(None) => {}
            Err(e) => {
                say!("reachable: no — {e}");
                return false;
            }
        }
        if self.count > 1 {
            say!("times: median of {} attempts", self.count);
        }

        // Reachable?
        let tcp = self.tcp().await;
        match tcp {
            Ok(t) if via_proxy => say!(
                "reachable: yes (TCP connect and CONNECT through the HTTP proxy {})",
                ms(t)
            ),
            Ok(t) => say!("reachable: yes (TCP connect {})", ms(t)),
            Err(e) => {
                say!("reachable: no — TCP connect to {addr} failed: {e}");
                say!("conclusion: clients cannot reach {addr}");
                return false;
            }
        }

        // TLS routing directly?
        let direct = self.direct().await;
        let direct_ok = match &direct {
            Ok((Direct::Works(why), t)) => {
                say!(
                    "TLS routing (ALPN): works directly (TLS handshake {}; {why})",
                    ms(*t)
                );
                true
            }
            Ok((Direct::UpgradeRequired(why), t)) => {
                say!(
                    "TLS routing (ALPN): upgrade required — the server at {addr} {why} (answer in {})",
                    ms(*t)
                );
                false
            }
            Ok((Direct::Broken(why), _)) => {
                say!("TLS routing (ALPN): unclear — {why}");
                false
            }
            Err(e) => {
                say!("TLS: fails — {e}");
                false
            }
        };

        // The two upgrades.
        let mut works = [false, false];
        let mut connect = [None, None];
        for (i, m) in MODES.into_iter().enumerate() {
            match self.upgrade(m).await {
                Ok(u) => {
                    works[i] = true;
                    connect[i] = Some(u.total);
                    say!(
                        "{m} upgrade: works (101 in {}, {}; outer TLS {}; the proxy answered TLS through the tunnel in {})",
                        ms(u.upgrade),
                        u.protocol,
                        ms(u.tls),
                        ms(u.inner)
                    );
                }
                Err(e) => say!("{m} upgrade: fails — {e}"),
            }
        }

        // With the identity: a full connection each way.
        if let Some(c) = &self.connector {
            self.report_identity(c, direct_ok, &works).await;
        } else if let (true, Some(ws), Ok((_, d))) = (direct_ok, connect[0], &direct) {
            let direct_total = tcp.unwrap_or_default() + *d;
            say!(
                "connect latency (TCP + TLS handshake, no client certificate): direct {}, through the websocket upgrade {} ({})",
                ms(direct_total),
                ms(ws),
                added(ws, direct_total)
            );
        }

        let tls_broken = matches!(&direct, Err(_) | Ok((Direct::Broken(_), _)));
        let (usable, conclusion) = conclusion(&addr, direct_ok, tls_broken, works, mode);
        say!("conclusion: {conclusion}");
        usable
    }

    /// The connections with the user's certificate: directly (when TLS routing works
    /// directly) and through each upgrade that works, on one line.
    async fn report_identity(&self, c: &Connector, direct_ok: bool, works: &[bool; 2]) {
        let what = format!(
            "connect with the identity (SNI {}, ALPN {})",
            c.sni,
            c.alpn.join(",")
        );
        let mut direct = None;
        if direct_ok {
            match self.with_identity_direct(c).await {
                Ok(t) => direct = Some(t),
                Err(e) => say!("{what}, direct: fails — {e}"),
            }
        }
        let mut parts = Vec::new();
        if let Some(d) = direct {
            parts.push(format!("direct {}", ms(d)));
        }
        for (m, _) in MODES.into_iter().zip(works).filter(|(_, w)| **w) {
            match (self.with_identity_through(c, m).await, direct) {
                (Ok(t), Some(d)) => parts.push(format!(
                    "through the {m} upgrade {} ({})",
                    ms(t),
                    added(t, d)
                )),
                (Ok(t), None) => parts.push(format!("through the {m} upgrade {}", ms(t))),
                (Err(e), _) => parts.push(format!("through the {m} upgrade: fails — {e}")),
            }
        }
        if !parts.is_empty() {
            say!("{what}: {}", parts.join(", "));
        }
    }
}

/// Whether clients can use `addr`, and how, in one sentence: from whether TLS routing
/// works directly, whether the direct TLS itself failed, which upgrades work
/// (websocket, legacy) and the mode the user chose.
fn conclusion(
    addr: &str,
    direct_ok: bool,
    tls_broken: bool,
    works: [bool; 2],
    mode: UpgradeMode,
) -> (bool, String) {
    let chosen = match mode {
        UpgradeMode::Websocket => works[0],
        UpgradeMode::Legacy => works[1],
    };
    match (direct_ok, chosen, works) {
        (true, _, _) => (true, "clients will connect directly (TLS routing by ALPN)".to_owned()),
        (false, true, _) => (true, format!("clients will tunnel through the {mode} upgrade")),
        (false, false, [true, _]) => (
            true,
            "clients will tunnel through the websocket upgrade (drop --upgrade-mode legacy)".into(),
        ),
        (false, false, [_, true]) => (
            true,
            "clients need --upgrade-mode legacy: the balancer passes only the legacy upgrade"
                .into(),
        ),
        (false, false, _) if tls_broken => (
            false,
            format!("clients cannot use {addr}: fix the TLS problem above"),
        ),
        (false, false, _) => (
            false,
            format!(
                "clients cannot use {addr}: TLS routing needs an upgrade and the balancer passes neither upgrade to /webapi/connectionupgrade"
            ),
        ),
    }
}

/// `1.23 ms`.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `+2.10 ms over direct`.
fn added(upgraded: Duration, direct: Duration) -> String {
    let diff = upgraded.as_secs_f64() - direct.as_secs_f64();
    format!("{:+.2} ms over direct", diff * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::super::checks::median;
    use super::*;

    #[test]
    fn times_read_in_milliseconds() {
        assert_eq!(ms(Duration::from_micros(1420)), "1.42 ms");
        assert_eq!(
            added(Duration::from_micros(3500), Duration::from_micros(1500)),
            "+2.00 ms over direct"
        );
        let mut v = vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ];
        assert_eq!(median(&mut v), Duration::from_millis(2));
    }

    #[test]
    fn conclusions() {
        let c =
            |direct_ok, broken, works, mode| conclusion("lb:443", direct_ok, broken, works, mode);
        let ws = UpgradeMode::Websocket;
        let legacy = UpgradeMode::Legacy;
        assert!(c(true, false, [false, false], ws).1.contains("directly"));
        assert_eq!(
            c(false, false, [true, true], legacy),
            (
                true,
                "clients will tunnel through the legacy upgrade".into()
            )
        );
        assert!(c(false, false, [true, false], legacy)
            .1
            .contains("drop --upgrade-mode legacy"));
        assert!(c(false, false, [false, true], ws)
            .1
            .starts_with("clients need --upgrade-mode legacy"));
        let (usable, text) = c(false, true, [false, false], ws);
        assert!(
            !usable && text.ends_with("fix the TLS problem above"),
            "{text}"
        );
        let (usable, text) = c(false, false, [false, false], ws);
        assert!(!usable && text.contains("passes neither upgrade"), "{text}");
    }
}
