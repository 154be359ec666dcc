//! Detector tests: every prefix of captured first bytes must answer `NeedMore` or the final
//! answer, never a wrong class.

use super::*;

const PG_SSL: &[u8] = include_bytes!("../../tests/fixtures/pg_sslrequest.bin");
const SSH: &[u8] = include_bytes!("../../tests/fixtures/ssh_banner.bin");
const TLS: &[u8] = include_bytes!("../../tests/fixtures/hello_openssl_ssh.bin");

/// Feeds every prefix of `bytes`; all but the complete input may answer `NeedMore`.
fn every_prefix(bytes: &[u8], expected: &Detected) {
    for n in 0..bytes.len() {
        let got = detect(&bytes[..n]);
        assert!(
            got == Detected::NeedMore || &got == expected,
            "prefix of {n} bytes: {got:?}, expected NeedMore or {expected:?}"
        );
    }
    assert_eq!(&detect(bytes), expected);
}

#[test]
fn captured_fixtures() {
    every_prefix(PG_SSL, &Detected::Postgres(PgRequest::Ssl));
    every_prefix(SSH, &Detected::Ssh);
    every_prefix(TLS, &Detected::Tls);
    every_prefix(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &Detected::Http);
    every_prefix(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &Detected::Http);
    every_prefix(&PG_GSSENC_REQUEST, &Detected::Postgres(PgRequest::GssEnc));
    let mut cancel = PG_CANCEL_REQUEST.to_vec();
    cancel.extend_from_slice(&[0, 0, 1, 2, 3, 4, 5, 6]);
    every_prefix(&cancel, &Detected::Postgres(PgRequest::Cancel));
}

#[test]
fn unknown_bytes() {
    assert_eq!(detect(b"\x00\x01garbage"), Detected::Unknown);
    assert_eq!(detect(b"hello world"), Detected::Unknown);
    assert_eq!(detect(b"\x16\x01\x00"), Detected::Unknown);
    assert_eq!(detect(b"GETX"), Detected::Unknown);
    // A Postgres StartupMessage without SSLRequest is not one of the routed requests.
    assert_eq!(detect(&[0, 0, 0, 8, 0, 3, 0, 0]), Detected::Unknown);
}

#[test]
fn proxy_v1_tcp4_then_payload() {
    let mut bytes = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n".to_vec();
    let header_len = bytes.len();
    bytes.extend_from_slice(SSH);
    let expected = Detected::Proxy(ProxyHeader {
        version: 1,
        len: header_len,
        source: Some("192.0.2.1:51000".parse().unwrap()),
    });
    every_prefix(&bytes[..header_len], &expected);
    assert_eq!(detect(&bytes), expected);
    assert_eq!(detect(&bytes[header_len..]), Detected::Ssh);
}

#[test]
fn proxy_v1_tcp6_and_unknown() {
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
    match detect(line) {
        Detected::Proxy(h) => assert_eq!(h.source, Some("[2001:db8::1]:4000".parse().unwrap())),
        other => panic!("{other:?}"),
    }
    match detect(b"PROXY UNKNOWN\r\n") {
        Detected::Proxy(h) => assert_eq!((h.len, h.source), (15, None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn proxy_v1_malformed() {
    assert!(matches!(
        detect(b"PROXY TCP4 not-an-ip 1.2.3.4 1 2\r\n"),
        Detected::BadProxy(_)
    ));
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    assert!(matches!(detect(&long), Detected::BadProxy(m) if m.contains("longer")));
}

/// A PROXY v2 header for TCP over IPv4 with one NOOP TLV.
pub(crate) fn proxy_v2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut v = PROXY_V2_SIGNATURE.to_vec();
    v.push(0x21); // version 2, PROXY
    v.push(0x11); // AF_INET, STREAM
    let tlv = [0x04, 0x00, 0x01, 0x2a];
    v.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&tlv);
    v
}

#[test]
fn proxy_v2_tcp4_every_prefix() {
    let header = proxy_v2_tcp4([203, 0, 113, 7], 40000, [10, 0, 0, 1], 443);
    let expected = Detected::Proxy(ProxyHeader {
        version: 2,
        len: header.len(),
        source: Some("203.0.113.7:40000".parse().unwrap()),
    });
    every_prefix(&header, &expected);
    let mut with_tls = header.clone();
    with_tls.extend_from_slice(TLS);
    assert_eq!(detect(&with_tls), expected);
    assert_eq!(detect(&with_tls[header.len()..]), Detected::Tls);
}

#[test]
fn proxy_v2_local_and_bad_version() {
    let mut local = PROXY_V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    match detect(&local) {
        Detected::Proxy(h) => assert_eq!((h.version, h.len, h.source), (2, 16, None)),
        other => panic!("{other:?}"),
    }
    let mut bad = PROXY_V2_SIGNATURE.to_vec();
    bad.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]);
    assert!(matches!(detect(&bad), Detected::BadProxy(_)));
}
