//! The class of a connection's first bytes, known before the proxy reads a byte (issue 12,
//! item 1). Without the eBPF front end, the single port's `TCP_DEFER_ACCEPT` holds the
//! accept until the first segment is there and a peek classifies it: a legacy SSH
//! connection is admitted by `legacy-plaintext` from accept, never counting against
//! `unclassified`. With it, the kernel's classification, looked up by socket cookie once
//! the first segment has reached the accepted socket, moves the connection from
//! `unclassified` to `legacy-plaintext` before detection reads anything.

mod ebpf_common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use ebpf_common::{expect_bytes, start_spliced};
use switchyard_tests::{DemoUpstream, ProxyConfig, Switchyard, TestPki};

const T: Duration = Duration::from_secs(30);

/// `n` legacy SSH clients, each checked by a round trip through the echo upstream.
fn ssh_clients(proxy: &Switchyard, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.web).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.write_all(b"SSH-2.0-first\r\n").unwrap();
            expect_bytes(&mut s, b"upstream=ssh\nSSH-2.0-first\r\n");
            s
        })
        .collect()
}

/// `switchyard_first_bytes_at_accept_total` for one source and class.
fn at_accept(proxy: &Switchyard, source: &str, class: &str) -> f64 {
    let labels = [("source", source), ("class", class)];
    proxy
        .metric("switchyard_first_bytes_at_accept_total", &labels)
        .unwrap()
}

/// `switchyard_class_admitted_total` of one class.
fn admitted(proxy: &Switchyard, class: &str) -> f64 {
    proxy
        .metric("switchyard_class_admitted_total", &[("class", class)])
        .unwrap()
}

#[test]
fn without_the_kernel_a_peek_admits_legacy_ssh_by_its_class_from_accept() {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("ssh").unwrap();
    let config = ProxyConfig {
        ebpf: Some("off".into()),
        ..ProxyConfig::default().upstream("ssh", echo.addr)
    };
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let _clients = ssh_clients(&proxy, 5);
    let log = proxy.log();
    assert_eq!(at_accept(&proxy, "peek", "ssh"), 5.0, "{log}");
    assert_eq!(admitted(&proxy, "legacy-plaintext"), 5.0, "{log}");
    assert_eq!(admitted(&proxy, "unclassified"), 0.0, "{log}");
}

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn with_the_kernel_the_class_is_found_by_socket_cookie_at_accept() {
    kernel_classifies_every_connection("127.0.0.1:0");
}

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn with_the_kernel_ipv6_clients_are_classified_too() {
    kernel_classifies_every_connection("\"[::1]:0\"");
}

/// 20 legacy SSH clients of a proxy listening on `listen`: each one's class came from the
/// kernel at accept.
fn kernel_classifies_every_connection(listen: &str) {
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("ssh").unwrap();
    let config = ProxyConfig {
        listen: listen.into(),
        ..ProxyConfig::default().upstream("ssh", echo.addr)
    };
    let proxy = start_spliced(&pki, &config);
    let _clients = ssh_clients(&proxy, 20);
    let log = proxy.log();
    // The classes came from the kernel, by cookie. The single port defers accept, so each
    // first segment completed its handshake and was classified on the listener, then
    // handed to the new socket by `sock_ops`.
    let (kernel, peek) = (
        at_accept(&proxy, "kernel", "ssh"),
        at_accept(&proxy, "peek", "ssh"),
    );
    let family: Vec<String> = proxy
        .metrics()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("switchyard_first_bytes_at_accept"))
        .map(str::to_owned)
        .collect();
    eprintln!("first bytes at accept: {kernel} from the kernel, {peek} from a peek\n{family:#?}");
    let all = proxy
        .metric("switchyard_first_bytes_at_accept_total", &[])
        .unwrap();
    assert_eq!(all, 20.0, "{family:#?}\n{log}");
    assert_eq!(
        kernel, 20.0,
        "{kernel} of 20 from the kernel, {peek} from a peek\n{log}"
    );
    let handed = proxy
        .metric("switchyard_ebpf_first_bytes_handed_over_total", &[])
        .unwrap();
    assert!(handed >= 20.0, "{handed} handed over\n{log}");
    assert_eq!(admitted(&proxy, "legacy-plaintext"), 20.0, "{log}");
    // The kernel's own counter agrees for the ones it classified.
    let counted = proxy
        .metric("switchyard_ebpf_first_bytes_total", &[("class", "ssh")])
        .unwrap();
    assert!(
        counted >= kernel,
        "{counted} counted, {kernel} looked up\n{log}"
    );
}
