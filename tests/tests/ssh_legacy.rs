//! SSH through the proxy port with the real OpenSSH client and a real sshd as the
//! `ssh` upstream: legacy plaintext SSH (detected by `SSH-`), the same after a PROXY v1
//! header, and SSH inside TLS with ALPN `teleport-proxy-ssh` (client cert required).

use std::io::{Read, Write};
use std::time::Duration;

use switchyard_tests::raw::{connect, proxy_v1};
use switchyard_tests::sshd::{ssh_exec, ssh_exec_with};
use switchyard_tests::{ProxyConfig, Sshd, Switchyard, TestPki};

fn proxy_to(pki: &TestPki, sshd: &Sshd) -> Switchyard {
    Switchyard::start(pki, &ProxyConfig::default().upstream("ssh", sshd.addr)).unwrap()
}

#[test]
fn plain_ssh_at_proxy_port_reaches_sshd() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let proxy = proxy_to(&pki, &sshd);
    let out = ssh_exec(proxy.web, &sshd.client_key, "echo ok").unwrap();
    assert!(
        out.success(),
        "ssh via proxy failed: {out:?}\n{}\n{}",
        proxy.log(),
        sshd.log()
    );
    assert_eq!(out.stdout.trim(), "ok");
}

#[test]
fn proxy_v1_header_then_ssh_banner_reaches_sshd() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let proxy = proxy_to(&pki, &sshd);
    let mut stream = connect(proxy.web).unwrap();
    let header = proxy_v1(
        "192.0.2.10:40000".parse().unwrap(),
        "127.0.0.1:3080".parse().unwrap(),
    );
    stream.write_all(&header).unwrap();
    stream.write_all(b"SSH-2.0-SwitchyardTest\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut banner = [0u8; 8];
    stream.read_exact(&mut banner).unwrap_or_else(|e| {
        panic!("no sshd banner via proxy: {e}\n{}", proxy.log());
    });
    assert_eq!(&banner, b"SSH-2.0-", "{}", proxy.log());
}

/// `ssh -o ProxyCommand="openssl s_client -quiet … -alpn teleport-proxy-ssh"`.
fn ssh_over_tls(proxy: &Switchyard, pki: &TestPki, cert: (&str, &str)) -> String {
    format!(
        "ProxyCommand=openssl s_client -quiet -connect {} -servername proxy.example.test \
         -alpn teleport-proxy-ssh -cert {} -key {} -CAfile {} -verify_return_error",
        proxy.web,
        cert.0,
        cert.1,
        pki.ca_cert().display(),
    )
}

#[test]
fn ssh_inside_tls_with_alpn_and_client_cert_reaches_sshd() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let proxy = proxy_to(&pki, &sshd);
    let cert = pki.client.cert.display().to_string();
    let key = pki.client.key.display().to_string();
    let option = ssh_over_tls(&proxy, &pki, (&cert, &key));
    let out = ssh_exec_with(proxy.web, &sshd.client_key, &[&option], "echo ok").unwrap();
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert_eq!(out.stdout.trim(), "ok");
}

#[test]
fn ssh_inside_tls_with_wrong_ca_client_cert_is_refused() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let proxy = proxy_to(&pki, &sshd);
    let cert = pki.wrong_client.cert.display().to_string();
    let key = pki.wrong_client.key.display().to_string();
    let option = ssh_over_tls(&proxy, &pki, (&cert, &key));
    let out = ssh_exec_with(proxy.web, &sshd.client_key, &[&option], "echo ok").unwrap();
    assert!(!out.success(), "wrong-CA cert got through: {out:?}");
    assert!(!out.stdout.contains("ok"), "{out:?}");
}
