//! The eBPF front end's lifecycle (`--ebpf require`): 1,000 concurrent spliced pairs opened
//! and closed leave no map entries behind, and a proxy killed with SIGKILL leaves no
//! program or link in the kernel. These need root and CAP_BPF: they are ignored unless
//! `CI=true` (`tests/build.rs`), and a kernel that refuses the programs fails them.

mod ebpf_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ebpf_common::{expect_bytes, start_spliced};
use switchyard_tests::process::{signal, Signal};
use switchyard_tests::{require_tool, wait_until, DemoUpstream, ProxyConfig, Switchyard, TestPki};

const T: Duration = Duration::from_secs(30);

/// A legacy-SSH client through the proxy to the echo upstream, checked by a round trip.
fn spliced_client(proxy: &Switchyard) -> TcpStream {
    let mut s = TcpStream::connect(proxy.web).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"SSH-2.0-many\r\n").unwrap();
    expect_bytes(&mut s, b"upstream=ssh\nSSH-2.0-many\r\n");
    s.write_all(b"ping").unwrap();
    expect_bytes(&mut s, b"ping");
    s
}

fn gauge(proxy: &Switchyard, name: &str) -> f64 {
    proxy.metric(name, &[]).unwrap()
}

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn thousand_concurrent_pairs_leave_no_map_entries() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("ssh").unwrap();
    let config = ProxyConfig::default().upstream("ssh", echo.addr);
    let proxy = start_spliced(&pki, &config);
    let clients: Vec<TcpStream> = (0..1000).map(|_| spliced_client(&proxy)).collect();
    let spliced = wait_until(T, "2,000 spliced sockets", || {
        let n = gauge(&proxy, "switchyard_ebpf_spliced_sockets");
        Ok((n == 2000.0).then_some(n))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let registered = gauge(&proxy, "switchyard_ebpf_sockets");
    eprintln!("open: {spliced} spliced sockets, {registered} registered");
    assert!(registered >= 2000.0);
    drop(clients);
    wait_until(T, "empty maps", || {
        let left = (
            gauge(&proxy, "switchyard_ebpf_spliced_sockets"),
            gauge(&proxy, "switchyard_ebpf_sockets"),
        );
        Ok((left == (0.0, 0.0)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    // Each client's FIN reached its spliced socket as a zero-length skb, which the verdict
    // drops (userspace passes the half-close on), counted and logged by the kernel.
    let empty = gauge(&proxy, "switchyard_ebpf_empty_skbs_dropped_total");
    assert!(empty > 0.0, "empty skbs dropped: {empty}");
    assert!(
        proxy.log().contains("a zero-length skb dropped"),
        "the kernel's debug record\n{}",
        proxy.log()
    );
    let kernel = proxy
        .metric("switchyard_relay_bytes_total", &[("mode", "kernel_splice")])
        .unwrap();
    assert!(kernel >= 2.0 * 4.0 * 1000.0, "ping/pong spliced: {kernel}");
}

/// The ids of BPF objects of `kind` (`prog_id`, `link_id`) the process holds open.
fn held_ids(pid: u32, kind: &str) -> Vec<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{kind}:"))?.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether `bpftool <object> show id <id>` still finds it.
fn exists(bpftool: &std::path::Path, object: &str, id: u32) -> bool {
    Command::new(bpftool)
        .args([object, "show", "id", &id.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn sigkill_leaves_no_program_or_link_attached() {
    let bpftool = require_tool("bpftool", "bpftool", &[]).unwrap();
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("ssh").unwrap();
    let config = ProxyConfig::default().upstream("ssh", echo.addr);
    let mut proxy = start_spliced(&pki, &config);
    let mut live = spliced_client(&proxy);
    let (progs, links) = (
        held_ids(proxy.pid(), "prog_id"),
        held_ids(proxy.pid(), "link_id"),
    );
    eprintln!(
        "proxy {} holds programs {progs:?}, links {links:?}",
        proxy.pid()
    );
    assert_eq!(progs.len(), 3, "sock_ops, stream verdict, first bytes");
    assert_eq!(
        links.len(),
        2,
        "sock_ops and first bytes are attached through links"
    );
    assert!(progs.iter().all(|&id| exists(&bpftool, "prog", id)));
    signal(proxy.pid(), Signal::KILL).unwrap();
    proxy.wait_exit(T).unwrap().expect("proxy exits on SIGKILL");
    wait_until(T, "programs and links gone", || {
        let left: Vec<String> = progs
            .iter()
            .filter(|&&id| exists(&bpftool, "prog", id))
            .map(|id| format!("prog {id}"))
            .chain(
                links
                    .iter()
                    .filter(|&&id| exists(&bpftool, "link", id))
                    .map(|id| format!("link {id}")),
            )
            .collect();
        if !left.is_empty() {
            eprintln!("still in the kernel: {left:?}");
        }
        Ok(left.is_empty().then_some(()))
    })
    .unwrap();
    // The client's connection died with the proxy.
    let mut rest = Vec::new();
    let _ = live.read_to_end(&mut rest);
}
