//! [`Session`] against a real rustls client: a handshake in memory, the server's session
//! taken out of rustls, then the client's records opened here and ours read by the client.

use super::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, RootCertStore};
use rustls::{ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

/// A self-signed `localhost` certificate, made once.
fn identity() -> &'static (CertificateDer<'static>, Vec<u8>) {
    static ID: OnceLock<(CertificateDer<'static>, Vec<u8>)> = OnceLock::new();
    ID.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), key.serialize_der())
    })
}

/// Moves what `from` has to send into `to`.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut read = &wire[..];
    while !read.is_empty() {
        to.read_tls(&mut read).unwrap();
    }
    to.process_new_packets().unwrap();
}

/// A client's and a server's configuration for `suite` (TLS 1.3, the server's secrets
/// extractable, the client trusting its certificate for `localhost`).
pub(crate) fn configs(
    suite: rustls::SupportedCipherSuite,
) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let (cert, key) = identity();
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(client), Arc::new(server))
}

/// A client and the server's [`Session`], handshake done, for `suite`.
fn pair(suite: rustls::SupportedCipherSuite) -> (ClientConnection, Session) {
    let (client, server) = configs(suite);
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client, name).unwrap();
    let mut server = ServerConnection::new(server).unwrap();
    while client.is_handshaking() || server.is_handshaking() || server.wants_write() {
        transfer(&mut *client, &mut *server);
        transfer(&mut *server, &mut *client);
    }
    let suite = server.negotiated_cipher_suite().unwrap();
    let secrets = server.dangerous_extract_secrets().unwrap();
    (client, Session::new(suite, secrets).unwrap())
}

pub(crate) fn suites() -> [rustls::SupportedCipherSuite; 3] {
    use rustls::crypto::ring::cipher_suite as s;
    [
        s::TLS13_AES_128_GCM_SHA256,
        s::TLS13_AES_256_GCM_SHA384,
        s::TLS13_CHACHA20_POLY1305_SHA256,
    ]
}

/// What the client sends for `writes` (one `write_all` each), as bytes on the wire.
fn client_wire(client: &mut ClientConnection, writes: &[&[u8]]) -> Vec<u8> {
    for w in writes {
        client.writer().write_all(w).unwrap();
    }
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Opens `wire` as a relay reads it: `cut` bytes first, then the rest after what was
/// not consumed; returns the plaintext and the consumed count of the first read.
fn open_in_two(session: &mut Session, wire: &[u8], cut: usize) -> (Vec<u8>, usize, bool) {
    let mut plain = Vec::new();
    let mut buf = wire[..cut].to_vec();
    let mut data = Vec::new();
    let first = session.opener.open(&mut buf, &mut data).unwrap();
    data.iter()
        .for_each(|r| plain.extend_from_slice(&buf[r.clone()]));
    let mut rest = buf[first.consumed..].to_vec();
    rest.extend_from_slice(&wire[cut..]);
    data.clear();
    let second = session.opener.open(&mut rest, &mut data).unwrap();
    data.iter()
        .for_each(|r| plain.extend_from_slice(&rest[r.clone()]));
    assert_eq!(second.consumed, rest.len(), "whole records in the end");
    (plain, first.consumed, first.closed || second.closed)
}

#[test]
fn client_records_open_in_place_at_every_cut_with_each_suite() {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let writes: [&[u8]; 2] = [b"hello", &payload];
    for suite in suites() {
        // Record boundaries of this suite's wire, for the consumed count.
        let (mut client, _) = pair(suite);
        let wire = client_wire(&mut client, &writes);
        let mut ends = vec![0];
        while *ends.last().unwrap() < wire.len() {
            let at = *ends.last().unwrap();
            let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
            ends.push(at + HEADER + len);
        }
        let cuts: Vec<usize> = (0..=wire.len())
            .filter(|c| c % 509 == 0 || ends.iter().any(|e| e.abs_diff(*c) <= 1))
            .collect();
        for cut in cuts {
            let (mut client, mut session) = pair(suite);
            let wire = client_wire(&mut client, &writes);
            let (plain, consumed, closed) = open_in_two(&mut session, &wire, cut);
            assert_eq!(&plain[..5], b"hello");
            assert_eq!(plain[5..], payload[..], "{suite:?} cut {cut}");
            let boundary = ends.iter().copied().filter(|e| *e <= cut).max().unwrap();
            assert_eq!(consumed, boundary, "{suite:?} cut {cut}");
            assert!(!closed);
        }
    }
}

#[test]
fn sealed_records_and_close_notify_read_back_in_the_client() {
    for suite in suites() {
        let (mut client, mut session) = pair(suite);
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 241) as u8).collect();
        let mut records = Vec::new();
        session
            .sealer
            .seal(ContentType::ApplicationData, &payload, &mut records)
            .unwrap();
        // 16 KiB at most per record: 40,000 bytes are three.
        assert_eq!(records.len(), 3);
        records.push(session.sealer.close_notify().unwrap());
        let wire = records.concat();
        let mut read = &wire[..];
        let mut got = Vec::new();
        let mut closed = false;
        while !read.is_empty() {
            client.read_tls(&mut read).unwrap();
            let state = client.process_new_packets().unwrap();
            closed |= state.peer_has_closed();
            let mut chunk = vec![0u8; state.plaintext_bytes_to_read()];
            client.reader().read_exact(&mut chunk).unwrap();
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, payload, "{suite:?}");
        assert!(closed, "{suite:?}: close_notify");
    }
}

#[test]
fn the_clients_close_notify_ends_its_data_and_what_follows_is_ignored() {
    let (mut client, mut session) = pair(suites()[0]);
    let mut wire = client_wire(&mut client, &[b"last words"]);
    client.send_close_notify();
    wire.extend(client_wire(&mut client, &[]));
    wire.extend_from_slice(b"trailing junk");
    let mut data = Vec::new();
    let opened = session.opener.open(&mut wire, &mut data).unwrap();
    assert!(opened.closed);
    assert_eq!(opened.consumed, wire.len() - b"trailing junk".len());
    assert_eq!(&wire[data[0].clone()], b"last words");
}

#[test]
fn bad_records_get_precise_errors() {
    // A flipped byte of ciphertext.
    let (mut client, mut session) = pair(suites()[0]);
    let mut wire = client_wire(&mut client, &[b"secret"]);
    wire[HEADER + 2] ^= 1;
    let e = session.opener.open(&mut wire, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, RecordError::Decrypt), "{e}");
    // A plaintext handshake record after the handshake.
    let mut hs = vec![22, 3, 3, 0, 1, 0];
    let e = session.opener.open(&mut hs, &mut Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the client sent a TLS record of outer type 22 after the handshake (only 23)"
    );
    // A length no record may have: refused before its body arrives.
    let mut long = vec![23, 3, 3, 0x41, 0x01];
    let e = session.opener.open(&mut long, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, RecordError::Oversized(16641)), "{e}");
    // Any prefix of a header is simply not a record yet.
    for n in 0..HEADER {
        let (_, mut fresh) = pair(suites()[0]);
        let mut head = vec![23, 3, 3, 0, 40][..n].to_vec();
        assert_eq!(
            fresh.opener.open(&mut head, &mut Vec::new()).unwrap(),
            Opened::default()
        );
    }
}

#[test]
fn a_key_update_and_a_fatal_alert_end_the_session_with_their_reason() {
    let (mut client, mut session) = pair(suites()[0]);
    client.refresh_traffic_keys().unwrap();
    let mut wire = client_wire(&mut client, &[]);
    let e = session.opener.open(&mut wire, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, RecordError::KeyUpdate), "{e}");
    assert!(e.to_string().contains("tls_records: rustls"), "{e}");

    let (mut client, mut session) = pair(suites()[0]);
    // A fatal alert, as rustls sends one when it gives up (through a bad record of ours).
    let mut bad = Vec::new();
    session
        .sealer
        .seal(ContentType::ApplicationData, b"x", &mut bad)
        .unwrap();
    bad[0][HEADER] ^= 1;
    let mut read = &bad[0][..];
    client.read_tls(&mut read).unwrap();
    assert!(client.process_new_packets().is_err());
    let mut wire = client_wire(&mut client, &[]);
    let e = session.opener.open(&mut wire, &mut Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the client sent the TLS alert BadRecordMac (fatal)"
    );
}
