//! The scale rows as the Markdown block of docs/benchmarks.md (`bench:scale`): one table of
//! RSS per idle connection, each Switchyard row checked against its goal (≤ HAProxy's
//! per-connection memory and ≤ 4 KB for relayed plaintext pairs, ≤ 4 KB for passthrough,
//! ≤ 24 KB for terminated connections), and the open-file limit that bounded N.

use std::fmt::Write as _;

use super::{
    scale::{Results, Route, Row},
    scale_peers::Via,
};

/// The block of docs/benchmarks.md the scale rows rewrite.
pub const BLOCK: &str = "scale";

pub fn markdown(measured: &str, counts: &[usize], r: &Results) -> String {
    let mut s = format!(
        "{measured}; loopback. RSS (`VmRSS`, all the proxy's processes) before and with N idle \
         connections open, each one fully established and one line echoed through it; a fresh \
         proxy per row; KB per connection = (open − before) / N. Connections opened 64 at a \
         time by the bench's tokio + rustls client (TLS 1.3, no resumption); echo upstreams \
         `switchyard demo-upstream` (plaintext `ssh`, TLS `kube`) as child processes.\n\n"
    );
    let _ = writeln!(
        s,
        "| route | proxy | N | RSS before / open MB | KB per connection | goal | s to open N |\n\
         |---|---|---:|---|---:|---|---:|"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} / {:.1} | {:.1} | {} | {:.1} |",
            row.route.name(),
            row.via.name(),
            row.n,
            row.before_kb as f64 / 1024.0,
            row.open_kb as f64 / 1024.0,
            row.per_conn_kb(),
            goal(row, &r.rows),
            row.open_secs
        );
    }
    s.push('\n');
    for (via, why) in &r.skipped {
        let _ = writeln!(s, "Not measured: {} ({}).\n", via.name(), why.trim());
    }
    let largest = counts.iter().max().copied().unwrap_or(0);
    let _ = writeln!(
        s,
        "N stops at {largest}, not the issue's 10k and 100k: this machine's hard open-file \
         limit (RLIMIT_NOFILE, /proc/self/limits at run time) is {} and the container lacks \
         CAP_SYS_RESOURCE to raise it, so one process can hold at most about 9,900 relayed \
         pairs (two sockets each). 100k connections were not measured.",
        r.nofile_hard
    );
    s
}

/// The goal of a Switchyard row, met or not; `—` for HAProxy and nginx.
fn goal(row: &Row, rows: &[Row]) -> String {
    if matches!(row.via, Via::Haproxy | Via::Nginx) {
        return "—".into();
    }
    let kb = row.per_conn_kb();
    let mark = |ok: bool| if ok { "met" } else { "not met" };
    match row.route {
        Route::Plaintext => {
            let haproxy = rows
                .iter()
                .find(|h| h.via == Via::Haproxy && h.route == row.route && h.n == row.n)
                .map(Row::per_conn_kb);
            match haproxy {
                Some(h) => format!(
                    "≤ 4 KB and ≤ HAProxy ({h:.1}): {}",
                    mark(kb <= 4.0 && kb <= h)
                ),
                None => format!("≤ 4 KB: {}", mark(kb <= 4.0)),
            }
        }
        Route::Passthrough => format!("≤ 4 KB: {}", mark(kb <= 4.0)),
        Route::Terminated => format!("≤ 24 KB: {}", mark(kb <= 24.0)),
    }
}
