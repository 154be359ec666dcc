//! ClientHello tests on captured hellos (openssl, curl), every prefix, and re-split records.

use super::*;

const SSH: &[u8] = include_bytes!("../../tests/fixtures/hello_openssl_ssh.bin");
const KUBE: &[u8] = include_bytes!("../../tests/fixtures/hello_openssl_kube.bin");
const CURL: &[u8] = include_bytes!("../../tests/fixtures/hello_curl_h2.bin");
const NOEXT: &[u8] = include_bytes!("../../tests/fixtures/hello_openssl_noext.bin");
const AUTH: &[u8] = include_bytes!("../../tests/fixtures/hello_auth.bin");
const MAX: usize = 64 * 1024;

fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
    ClientHello {
        sni: sni.map(str::to_owned),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every proper prefix needs more; the whole record gives `expected`.
fn every_prefix(bytes: &[u8], expected: &ClientHello) {
    for n in 0..bytes.len() {
        assert_eq!(parse(&bytes[..n], MAX), Ok(None), "prefix of {n} bytes");
    }
    assert_eq!(parse(bytes, MAX), Ok(Some(expected.clone())));
}

/// Re-frames a single-record hello into records of at most `chunk` payload bytes.
fn resplit(bytes: &[u8], chunk: usize) -> Vec<u8> {
    let payload = &bytes[5..];
    let mut out = Vec::new();
    for piece in payload.chunks(chunk) {
        out.extend_from_slice(&bytes[..3]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

#[test]
fn captured_hellos() {
    every_prefix(
        SSH,
        &hello(Some("proxy.example.test"), &["teleport-proxy-ssh"]),
    );
    every_prefix(
        KUBE,
        &hello(Some("kube-teleport-proxy-alpn.example.test"), &[]),
    );
    every_prefix(CURL, &hello(Some("app.example.test"), &["h2", "http/1.1"]));
    every_prefix(NOEXT, &hello(None, &[]));
    every_prefix(
        AUTH,
        &hello(
            Some("x"),
            &[
                "teleport-auth@6578616d706c65.teleport.cluster.local",
                "teleport-postgres-ping",
            ],
        ),
    );
}

#[test]
fn hello_split_over_records() {
    let expected = hello(Some("app.example.test"), &["h2", "http/1.1"]);
    for chunk in [1, 3, 4, 5, 50, 100, 511] {
        let split = resplit(CURL, chunk);
        every_prefix(&split, &expected);
    }
}

#[test]
fn trailing_bytes_are_ignored() {
    let mut bytes = SSH.to_vec();
    bytes.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
    assert!(parse(&bytes, MAX).unwrap().is_some());
}

#[test]
fn limits_and_garbage() {
    assert_eq!(
        parse(CURL, 100),
        Err(HelloError::TooLarge(CURL.len() - 5, 100))
    );
    assert_eq!(
        parse(b"\x16\x03\x01\x00\x00", MAX),
        Err(HelloError::BadRecordLength(0))
    );
    assert_eq!(
        parse(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", MAX),
        Err(HelloError::NotClientHello(2))
    );
    // A second record of another type in the middle of a split hello.
    let split = resplit(SSH, 10);
    let mut bad = split[..15].to_vec();
    bad.extend_from_slice(b"\x15\x03\x03\x00\x02\x02\x28");
    assert_eq!(parse(&bad, MAX), Err(HelloError::NotHandshake(0x15)));
    // A ClientHello whose body is junk.
    let junk = b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff";
    assert!(matches!(parse(junk, MAX), Err(HelloError::Malformed(_))));
}
