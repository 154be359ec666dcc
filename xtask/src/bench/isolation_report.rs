//! The isolation rows as the Markdown block of docs/benchmarks.md (`bench:isolation`):
//! postgres connect time idle and under the SSH-handshake flood, the goal (p99 under flood
//! ≤ 2× idle), the proxy's CPU during the flood, and Switchyard's per-class refusals.

use std::fmt::Write as _;

use super::{
    isolation::{Round, Row, Who, HAPROXY_LIMITS, ROUNDS, SSH_BUDGET, UNCLASSIFIED},
    load::percentile,
    report::median_min_max,
};

/// The block of docs/benchmarks.md the isolation rows rewrite.
pub const BLOCK: &str = "isolation";

pub fn markdown(measured: &str, rows: &[Row]) -> String {
    let mut s = format!(
        "{measured}; loopback. Each row: {ROUNDS} rounds on one proxy, each an idle phase and then a flood \
         phase; cells are the median (min–max) over the rounds, and the ratio is taken \
         within each round (this VM's p99 drifts by 2× from minute to minute). Probe: \
         `teleport-postgres` connections one after the other for 5 s per phase (TCP connect, mTLS handshake with client certificate, one line echoed \
         by the plaintext upstream), from 127.0.0.1. Flood: 64 clients bound to 127.0.0.2 on a \
         one-thread runtime, each opening TLS connections with ALPN `teleport-proxy-ssh` and \
         client certificate and closing each right after its handshake, as fast as they can; \
         the probe runs 1 s after the flood starts. Proxy CPU from /proc/PID/stat during the \
         probe (100% = one core). Switchyard `--ebpf off` except in the third row; \
         `limits.classes.ssh: {SSH_BUDGET}` \
         in the budget rows, the second with `unclassified: {UNCLASSIFIED}` as well (one \
         token bucket per source, checked at accept before anything is read: a flooding \
         source is closed at once); the third row is the second with `--ebpf require`, where \
         the same per-source rate also drops the flood's SYNs in the kernel \
         (`cgroup_skb/ingress`), so the flooding clients wait on their SYN retransmits \
         instead of costing a handshake, an accept and a close; none set in the default row \
         (ssh: 256 handshakes, 4096 per source, no rates). \
         HAProxy: one TLS-terminating frontend with both ALPNs routing by `ssl_fc_alpn`, and \
         per-source limits (the closest it has to a class budget before the handshake: a \
         frontend `maxconn` would hold postgres back as much as ssh; the rate is 1000/s \
         rather than 300 because HAProxy's `conn_rate` is per source, and the probe's own \
         ~300–700/s must stay under it; \
         rejected connections count in it too): `{HAPROXY_LIMITS}`. The last row is a \
         control, not a flood: Switchyard with default budgets while a thread of the bench \
         spins on one core for the second phase, so it shows what losing a core to any busy \
         process alone does to the probe on this machine.\n\n"
    );
    let _ = writeln!(
        s,
        "| proxy | idle p50 / p99 µs | flood p50 / p99 µs | p99 flood ÷ idle | goal ≤ 2× | \
         probe errors idle / flood | proxy CPU % | flood handshakes/s | \
         flood refused or failed/s |\n\
         |---|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for r in rows {
        let of = |f: &dyn Fn(&Round) -> f64| median_min_max(r.rounds.iter().map(f).collect());
        let cell = |f: &dyn Fn(&Round) -> f64| {
            let (m, lo, hi) = of(f);
            format!("{m:.0} ({lo:.0}–{hi:.0})")
        };
        let (ratio, lo, hi) = of(&Round::ratio);
        let goal = match (r.who, ratio <= 2.0) {
            (Who::Haproxy | Who::Spin, _) => "—",
            (_, true) => "met",
            (_, false) => "not met",
        };
        let errors = |f: &dyn Fn(&Round) -> usize| r.rounds.iter().map(f).sum::<usize>();
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} / {} | {ratio:.2} ({lo:.2}–{hi:.2}) | {goal} | {} / {} | {} | \
             {} | {} |",
            r.who.name(),
            cell(&|x| percentile(&x.idle.us, 0.5)),
            cell(&|x| percentile(&x.idle.us, 0.99)),
            cell(&|x| percentile(&x.flood.us, 0.5)),
            cell(&|x| percentile(&x.flood.us, 0.99)),
            errors(&|x| x.idle.errors),
            errors(&|x| x.flood.errors),
            cell(&|x| x.proxy_cpu),
            cell(&|x| x.flood_ok),
            cell(&|x| x.flood_refused),
        );
    }
    for r in rows.iter().filter(|r| !r.refused.is_empty()) {
        let _ = write!(
            s,
            "\n`/metrics` of {} after its floods:\n\n```\n",
            r.who.name()
        );
        for line in &r.refused {
            let _ = writeln!(s, "{line}");
        }
        s.push_str("```\n");
    }
    s
}
