//! The `splice(2)` relay, the plaintext relay when the eBPF front end is not attached
//! (`--ebpf off` here; `auto` without privilege takes the same path), end to end through a
//! real proxy: 50 MB each way, both at once, through a TLS passthrough route and a legacy
//! SSH route, every byte checked against a seeded pattern (loss, duplication, reordering
//! all show) plus an FNV-1a checksum over each stream; `/metrics` counts every byte under
//! `mode="splice"` and none under `userspace` or `kernel_splice`; half-close passed on in
//! each direction; the start-up line says which relay runs.

mod ebpf_common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use ebpf_common::{
    answer_after_eof, bye_then_read_late_words, expect_bytes, late_words_after_eof, relayed,
    request_then_half_close, upstream, Pattern,
};
use switchyard_tests::{wait_until, ProxyConfig, Switchyard, TestPki};

const KUBE_HELLO: &[u8] = include_bytes!("../../proxy-user/tests/fixtures/hello_openssl_kube.bin");
const MB: u64 = 1 << 20;
const BULK: u64 = 50 * MB;
const T: Duration = Duration::from_secs(30);

/// A proxy with `--ebpf off` and `upstreams.<route>` at `addr`.
fn start_off(pki: &TestPki, route: &str, addr: std::net::SocketAddr) -> Switchyard {
    let config = ProxyConfig {
        ebpf: Some("off".into()),
        ..ProxyConfig::default().upstream(route, addr)
    };
    let proxy = Switchyard::start(pki, &config).unwrap();
    assert_eq!(proxy.metric("switchyard_ebpf_loaded", &[]).unwrap(), 0.0);
    proxy
}

/// FNV-1a over everything read until EOF, and the length.
fn checksum(r: &mut impl Read) -> Result<(u64, u64), String> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut len = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).map_err(|e| format!("after {len}: {e}"))?;
        if n == 0 {
            return Ok((h, len));
        }
        for &b in &buf[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        len += n as u64;
    }
}

/// The checksum of the first `len` bytes of pattern `seed`.
fn pattern_checksum(seed: u64, len: u64) -> (u64, u64) {
    let bytes = Pattern::new(seed).render(b"", len);
    checksum(&mut bytes.as_slice()).expect("reading a slice")
}

/// Reads to EOF, checking each byte against `pattern` and checksumming as it goes.
fn receive_checked(r: &mut TcpStream, seed: u64) -> Result<(u64, (u64, u64)), String> {
    struct Tee<'a> {
        inner: &'a mut TcpStream,
        copy: Vec<u8>,
    }
    impl Read for Tee<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.copy.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }
    let mut tee = Tee {
        inner: r,
        copy: Vec::with_capacity(BULK as usize),
    };
    let n = Pattern::new(seed).receive(&mut tee)?;
    let sum = checksum(&mut tee.copy.as_slice())?;
    Ok((n, sum))
}

/// Client: `preface`, then `BULK` bytes of stream 1, then FIN; upstream: `banner`, then
/// `BULK` bytes of stream 2, then FIN, both at once. Checks every byte and the checksums
/// both ways, then the relay counters.
fn bulk(route: &str, preface: &'static [u8], banner: &'static [u8]) {
    let pki = TestPki::new().unwrap();
    let (addr, server) = upstream(1, move |mut s| {
        let mut r = s.try_clone().unwrap();
        let check = std::thread::spawn(move || {
            expect_bytes(&mut r, preface);
            receive_checked(&mut r, 1)
        });
        s.write_all(banner).map_err(|e| e.to_string())?;
        Pattern::new(2)
            .send(&mut s, BULK)
            .map_err(|e| e.to_string())?;
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let (got, sum) = check.join().unwrap()?;
        if got != BULK {
            return Err(format!("upstream got {got} of {BULK}"));
        }
        let want = pattern_checksum(1, BULK);
        (sum == want)
            .then_some(())
            .ok_or(format!("upstream checksum {sum:x?}, sent {want:x?}"))
    });
    let proxy = start_off(&pki, route, addr);
    let mut client = TcpStream::connect(proxy.web).unwrap();
    let mut r = client.try_clone().unwrap();
    let check = std::thread::spawn(move || {
        expect_bytes(&mut r, banner);
        receive_checked(&mut r, 2)
    });
    client.write_all(preface).unwrap();
    Pattern::new(1).send(&mut client, BULK).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (got, sum) = check
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(got, BULK, "client got {got} of {BULK}");
    assert_eq!(sum, pattern_checksum(2, BULK), "client checksum");
    let errors = server.join().unwrap();
    assert!(errors.is_empty(), "upstream: {errors:?}\n{}", proxy.log());

    let up_total = (preface.len() as u64 + BULK) as f64;
    let down_total = (banner.len() as u64 + BULK) as f64;
    wait_until(T, "the relay's counters", || {
        let up = relayed(&proxy, "client_to_upstream", "splice");
        Ok((up >= up_total).then_some(()))
    })
    .unwrap();
    for (direction, total) in [
        ("client_to_upstream", up_total),
        ("upstream_to_client", down_total),
    ] {
        let splice = relayed(&proxy, direction, "splice");
        eprintln!("{direction}: splice={splice} total={total}");
        assert_eq!(splice, total, "{direction}: every byte under mode=splice");
        assert_eq!(relayed(&proxy, direction, "userspace"), 0.0, "{direction}");
        assert_eq!(
            relayed(&proxy, direction, "kernel_splice"),
            0.0,
            "{direction}"
        );
    }
    let log = proxy.log();
    assert!(
        log.contains("plaintext pairs are relayed with splice(2) through pipes relay=Auto"),
        "start-up line\n{log}"
    );
}

#[test]
fn passthrough_route_50mb_each_way_is_byte_exact_through_splice_pipes() {
    bulk("kube", KUBE_HELLO, b"");
}

#[test]
fn legacy_ssh_route_50mb_each_way_is_byte_exact_through_splice_pipes() {
    bulk("ssh", b"SSH-2.0-client\r\n", b"SSH-2.0-upstream\r\n");
}

#[test]
fn half_close_from_the_client_reaches_the_upstream_which_can_still_answer() {
    let pki = TestPki::new().unwrap();
    let (preface_read, preface_in) = std::sync::mpsc::channel();
    let (addr, server) = upstream(1, answer_after_eof(preface_read));
    let proxy = start_off(&pki, "ssh", addr);
    request_then_half_close(&proxy, &preface_in);
    assert!(server.join().unwrap().is_empty(), "{}", proxy.log());
    wait_until(T, "the relay's counters", || {
        let down = relayed(&proxy, "upstream_to_client", "splice");
        Ok((down == 16.0).then_some(()))
    })
    .unwrap();
    assert_eq!(relayed(&proxy, "client_to_upstream", "splice"), 18.0);
}

#[test]
fn half_close_from_the_upstream_reaches_the_client_which_can_still_send() {
    let pki = TestPki::new().unwrap();
    let (addr, server) = upstream(1, bye_then_read_late_words);
    let proxy = start_off(&pki, "ssh", addr);
    late_words_after_eof(proxy.web);
    assert!(server.join().unwrap().is_empty(), "{}", proxy.log());
    wait_until(T, "the relay's counters", || {
        let up = relayed(&proxy, "client_to_upstream", "splice");
        Ok((up == 21.0).then_some(()))
    })
    .unwrap();
}

/// `relay:` picks the relay: `copy` relays legacy SSH with userspace copies (counted under
/// `mode="userspace"`, `relay="userspace"` in the audit line), and `kernel` without the
/// front end is refused at start with the reason and what to do.
#[test]
fn the_relay_key_picks_the_relay_and_kernel_needs_the_front_end() {
    let pki = TestPki::new().unwrap();
    let demo = switchyard_tests::DemoUpstream::echo("ssh").unwrap();
    let echo = demo.addr;
    let config = ProxyConfig {
        ebpf: Some("off".into()),
        relay: Some("copy".into()),
        ..ProxyConfig::default().upstream("ssh", echo)
    };
    let proxy = Switchyard::start(&pki, &config).unwrap();
    let mut s = TcpStream::connect(proxy.web).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"SSH-2.0-copied\r\n").unwrap();
    expect_bytes(&mut s, b"upstream=ssh\nSSH-2.0-copied\r\n");
    drop(s);
    wait_until(T, "the copied connection's audit line", || {
        Ok(proxy.log().contains("relay=\"userspace\"").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert!(proxy
        .log()
        .contains("plaintext pairs are relayed with userspace copies relay=Copy"));
    assert!(relayed(&proxy, "client_to_upstream", "userspace") > 0.0);
    assert_eq!(relayed(&proxy, "client_to_upstream", "splice"), 0.0);

    let kernel = ProxyConfig {
        relay: Some("kernel".into()),
        ..ProxyConfig::default().upstream("ssh", echo)
    };
    let (status, err) = Switchyard::expect_exit_ebpf(&pki, &kernel.render(), Some("off")).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("relay: kernel needs the eBPF front end, which is not attached (--ebpf off)"),
        "{err}"
    );
    let bad = ProxyConfig::default().upstream("ssh", echo).render() + "relay: fastest\n";
    let (status, err) = Switchyard::expect_exit(&pki, &bad).unwrap();
    assert!(!status.success());
    assert!(err.contains("relay"), "{err}");
}
