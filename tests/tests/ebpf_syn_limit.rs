//! The kernel's per-source SYN rate (`limits.classes.unclassified.per_source_rate` with
//! `--ebpf require`): a source opening connections faster than its rate has its SYNs
//! dropped by the `cgroup_skb/ingress` program — no handshake completes, nothing reaches
//! the proxy process — while another source connects at once and the diagnostics port
//! stays reachable. Needs root and CAP_BPF: ignored unless `CI=true`, where a kernel that
//! refuses the programs fails it.

mod ebpf_common;

use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use ebpf_common::expect_bytes;
use switchyard_tests::raw::connect_from;
use switchyard_tests::{wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki};

const BURST: usize = 10;
const FLOOD: usize = 25;

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn a_source_over_its_syn_rate_is_held_back_in_the_kernel() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("ssh").unwrap();
    let config = ProxyConfig::default().upstream("ssh", echo.addr);
    let text = config.render().replace(
        "max_connections: 1000}",
        &format!(
            "max_connections: 1000, classes: {{unclassified: {{per_source_rate: 0.1, \
             per_source_burst: {BURST}}}}}}}"
        ),
    );
    assert!(text.contains("per_source_rate"), "{text}");
    let proxy = Switchyard::start_text(&pki, &text, Some("require")).unwrap();
    assert_eq!(proxy.metric("switchyard_ebpf_loaded", &[]).unwrap(), 1.0);

    // The flood, from 127.0.0.1: each connect waits 300 ms at most. The first BURST
    // complete at once; the others' SYNs are dropped, so they time out (a client's first
    // SYN retransmit comes after 1 s). At 0.1/s, the 4.5 s of timeouts earn one more
    // token at most.
    let (mut connected, mut timed_out) = (Vec::new(), 0);
    for _ in 0..FLOOD {
        match TcpStream::connect_timeout(&proxy.web, Duration::from_millis(300)) {
            Ok(s) => connected.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => timed_out += 1,
            Err(e) => panic!("connect: {e}\n{}", proxy.log()),
        }
    }
    assert!(
        (BURST..=BURST + 1).contains(&connected.len()) && connected.len() + timed_out == FLOOD,
        "connected {}, timed out {timed_out}\n{}",
        connected.len(),
        proxy.log()
    );
    // Another source has its own rate: it connects at once and is relayed.
    let started = Instant::now();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut s = connect_from(other, proxy.web).unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    s.write_all(b"SSH-2.0-other\r\n").unwrap();
    expect_bytes(&mut s, b"upstream=ssh\nSSH-2.0-other\r\n");
    // The diagnostics port is not rate-limited: /metrics answers from the flooding source.
    let dropped = proxy
        .metric("switchyard_ebpf_syn_dropped_total", &[])
        .unwrap();
    assert!(
        dropped >= timed_out as f64,
        "dropped {dropped}\n{}",
        proxy.log()
    );
    // Nothing of the flood beyond its burst reached the proxy process.
    let refused = proxy
        .metric(
            "switchyard_class_refused_total",
            &[("class", "unclassified"), ("reason", "per_source_rate")],
        )
        .unwrap_or(0.0);
    assert_eq!(refused, 0.0, "{}", proxy.log());
    // The kernel's own debug records (aya-log) reach the proxy's log: the tests run it
    // with RUST_LOG=debug.
    wait_until(Duration::from_secs(10), "the kernel's debug record", || {
        let log = proxy.log();
        Ok(log
            .lines()
            .any(|l| {
                l.contains("switchyard::ebpf::kernel")
                    && l.contains("SYN dropped: its source is over the per-source rate")
            })
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    drop(connected);
}
