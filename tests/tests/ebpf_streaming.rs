//! A sender that streams at full speed from its first bytes still ends up spliced in the
//! kernel (`relay: kernel`): a legacy SSH client writing its banner and 256 MiB in one
//! `write`, and a passthrough client pipelining 256 MiB right behind its ClientHello. Most
//! of it is queued in the proxy's receive buffer before the proxy has even routed the
//! connection, and the client never pauses; at least 95% of its bytes must cross in the
//! kernel, every byte checked by the upstream. Needs root and CAP_BPF: ignored unless
//! `CI=true` (`tests/build.rs`), and a kernel that refuses the programs fails them.

mod ebpf_common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use ebpf_common::{expect_bytes, relayed, start_spliced, upstream, Pattern};
use switchyard_tests::{wait_until, ProxyConfig, TestPki};

const KUBE_HELLO: &[u8] = include_bytes!("../../proxy-user/tests/fixtures/hello_openssl_kube.bin");
const MB: u64 = 1 << 20;
const BULK: u64 = 256 * MB;
const T: Duration = Duration::from_secs(60);

/// The client writes `preface` and `BULK` bytes in one `write_all`, then FIN; the upstream
/// answers `banner`, checks every byte and counts them. Returns the kernel's share of the
/// client's bytes as the proxy's `/metrics` report it.
fn kernel_share(route: &str, preface: &'static [u8], banner: &'static [u8]) -> f64 {
    let pki = TestPki::new().unwrap();
    let (addr, server) = upstream(1, move |mut s| {
        s.write_all(banner).map_err(|e| e.to_string())?;
        expect_bytes(&mut s, preface);
        let got = Pattern::new(1).receive(&mut s)?;
        (got == BULK)
            .then_some(())
            .ok_or(format!("upstream got {got} of {BULK}"))
    });
    let proxy = start_spliced(&pki, &ProxyConfig::default().upstream(route, addr));
    let bytes = Pattern::new(1).render(preface, BULK);
    let mut client = TcpStream::connect(proxy.web).unwrap();
    let mut r = client.try_clone().unwrap();
    let reader = std::thread::spawn(move || expect_bytes(&mut r, banner));
    client.write_all(&bytes).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    reader.join().unwrap();
    let errors = server.join().unwrap();
    assert!(errors.is_empty(), "upstream: {errors:?}\n{}", proxy.log());
    let total = (preface.len() as u64 + BULK) as f64;
    let (kernel, user) = wait_until(T, "the audit of the relay", || {
        let k = relayed(&proxy, "client_to_upstream", "kernel_splice");
        let u = relayed(&proxy, "client_to_upstream", "userspace");
        Ok((k + u >= total).then_some((k, u)))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(kernel + user, total, "every byte counted once");
    let log = proxy.log();
    assert!(log.contains("relay=\"kernel_splice\""), "{log}");
    let share = kernel / total;
    let refused = proxy
        .metric("switchyard_ebpf_redirects_failed_total", &[])
        .unwrap();
    eprintln!(
        "{route}: kernel_splice={kernel} userspace={user} share={share:.4} redirects_refused={refused}"
    );
    share
}

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn a_legacy_ssh_client_streaming_from_its_banner_is_spliced_in_the_kernel() {
    let share = kernel_share("ssh", b"SSH-2.0-streamer\r\n", b"SSH-2.0-upstream\r\n");
    assert!(share >= 0.95, "kernel share {share:.4}");
}

#[test]
#[cfg_attr(not(ci), ignore = "needs root and CAP_BPF (runs under CI=true)")]
fn a_passthrough_client_pipelining_behind_its_client_hello_is_spliced_in_the_kernel() {
    let share = kernel_share("kube", KUBE_HELLO, b"");
    assert!(share >= 0.95, "kernel share {share:.4}");
}
