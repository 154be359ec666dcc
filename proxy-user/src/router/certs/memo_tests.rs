//! The memo with real chains: a CA, client certificates it signed (one valid now, one
//! expired) and one of another CA, through rustls' webpki verifier, and whole in-memory
//! handshakes for what a memo hit must still check.

use super::super::{AllowListVerifier, ClusterCa};
use super::*;
use crate::io::tls::provider;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls::{CertificateError, RootCertStore};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate of `ca` valid from `from` to `until` seconds around now.
fn client(ca: &Ca, cn: &str, from: i64, until: i64) -> CertificateDer<'static> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(until);
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &ca.issuer).unwrap().der().clone()
}

/// A route's verifier as the proxy builds it (`certs::AllowListVerifier`, any identity
/// allowed) over `ca`, with a memo of `capacity` chains.
fn verifier(ca: &Ca, capacity: usize) -> AllowListVerifier {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let memo = Some(Arc::new(ChainMemo::new(capacity, Family::default())));
    AllowListVerifier {
        ca: ClusterCa { webpki, memo },
        allow: Vec::new(),
    }
}

fn memo(v: &AllowListVerifier) -> &ChainMemo {
    v.ca.memo.as_deref().unwrap()
}

fn count(v: &AllowListVerifier, result: &'static str) -> u64 {
    memo(v).checks.get_or_create(&ChainCheck { result }).get()
}

fn at(offset: i64) -> UnixTime {
    let now = OffsetDateTime::now_utc().unix_timestamp() + offset;
    UnixTime::since_unix_epoch(Duration::from_secs(now as u64))
}

#[test]
fn a_chain_verified_once_is_remembered() {
    let ca = ca("cluster");
    let alice = client(&ca, "alice", -60, 3600);
    let v = verifier(&ca, 16);
    for _ in 0..3 {
        v.verify_client_cert(&alice, &[], at(0)).unwrap();
    }
    assert_eq!((count(&v, "verified"), count(&v, "remembered")), (1, 2));
}

#[test]
fn a_refused_chain_is_never_remembered() {
    let ours = ca("cluster");
    let theirs = ca("other");
    let mallory = client(&theirs, "mallory", -60, 3600);
    let v = verifier(&ours, 16);
    for _ in 0..2 {
        let e = v.verify_client_cert(&mallory, &[], at(0)).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );
    }
    assert_eq!((count(&v, "refused"), count(&v, "remembered")), (2, 0));
}

#[test]
fn outside_its_validity_a_remembered_chain_is_verified_again_and_refused() {
    let ca = ca("cluster");
    let alice = client(&ca, "alice", -60, 600);
    let v = verifier(&ca, 16);
    v.verify_client_cert(&alice, &[], at(0)).unwrap();
    // An hour later the certificate has expired: webpki's own error, not the memo's yes.
    let e = v.verify_client_cert(&alice, &[], at(3600)).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{e:?}"
    );
    // Before it was valid: likewise.
    let e = v.verify_client_cert(&alice, &[], at(-3600)).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
        ),
        "{e:?}"
    );
    assert_eq!((count(&v, "refused"), count(&v, "remembered")), (2, 0));
}

#[test]
fn the_intermediates_are_part_of_the_key() {
    let ca = ca("cluster");
    let alice = client(&ca, "alice", -60, 3600);
    let v = verifier(&ca, 16);
    v.verify_client_cert(&alice, &[], at(0)).unwrap();
    // The same end entity with an extra certificate is another chain: verified afresh.
    v.verify_client_cert(&alice, std::slice::from_ref(&ca.der), at(0))
        .unwrap();
    assert_eq!((count(&v, "verified"), count(&v, "remembered")), (2, 0));
    // Length prefixes keep "A then B" and "AB" apart.
    let ab = CertificateDer::from(b"ab".to_vec());
    let (a, b) = (
        CertificateDer::from(b"a".to_vec()),
        CertificateDer::from(b"b".to_vec()),
    );
    assert_ne!(chain_key(b"ab", &[]), chain_key(&a, &[b]));
    assert_ne!(chain_key(b"a", &[ab]), chain_key(b"ab", &[]));
}

#[test]
fn the_memo_stays_within_its_capacity() {
    let ca = ca("cluster");
    let certs: Vec<_> = (0..5)
        .map(|i| client(&ca, &format!("user{i}"), -60, 3600))
        .collect();
    let v = verifier(&ca, 2);
    for c in certs.iter().chain(&certs) {
        v.verify_client_cert(c, &[], at(0)).unwrap();
        assert!(memo(&v).memo.lock().unwrap().chains.len() <= 2);
    }
    assert_eq!(count(&v, "verified") + count(&v, "remembered"), 10);
}

#[test]
fn full_memo_drops_expired_chains_first() {
    let span = |from, until| Span { from, until };
    let mut memo = Memo::new(2);
    memo.remember(Box::from(&b"old"[..]), span(0, 10), 5);
    memo.remember(Box::from(&b"live"[..]), span(0, 100), 5);
    memo.remember(Box::from(&b"new"[..]), span(0, 100), 50);
    assert!(!memo.holds(b"old", 50));
    assert!(memo.holds(b"live", 50) && memo.holds(b"new", 50));
    assert!(!memo.holds(b"live", 101), "past its span");
    let long = vec![0u8; MAX_CHAIN_BYTES + 1].into_boxed_slice();
    memo.remember(long.clone(), span(0, 100), 50);
    assert!(!memo.holds(&long, 50), "longer than MAX_CHAIN_BYTES");
    assert!(memo.holds(b"new", 50), "and nothing was dropped for it");
    let mut off = Memo::new(0);
    off.remember(Box::from(&b"x"[..]), span(0, 100), 5);
    assert!(!off.holds(b"x", 5));
}

/// A rustls client presenting `cert` and signing with `key` (not necessarily its own).
fn client_config(ca: &Ca, cert: CertificateDer<'static>, key: &KeyPair) -> Arc<ClientConfig> {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = provider().key_provider.load_private_key(der).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Fixed(Arc::new(CertifiedKey::new(
            vec![cert],
            signer,
        )))));
    // Every handshake a full one: a resumed session shows no certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn server_config(ca: &Ca, verifier: Arc<AllowListVerifier>) -> Arc<ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["proxy.test".into()]).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .unwrap();
    Arc::new(config)
}

/// A whole handshake over in-memory buffers; the server's error if it refuses.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Result<(), rustls::Error> {
    let name = ServerName::try_from("proxy.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name)?;
    let mut s = ServerConnection::new(server.clone())?;
    for _ in 0..8 {
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        s.read_tls(&mut &wire[..]).unwrap();
        s.process_new_packets()?;
        let mut wire = Vec::new();
        s.write_tls(&mut wire).unwrap();
        c.read_tls(&mut &wire[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General(
        "the handshake did not finish".into(),
    ))
}

#[test]
fn a_remembered_chain_without_its_key_is_refused() {
    let ca = ca("cluster");
    let alice_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "alice");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let alice = params
        .signed_by(&alice_key, &ca.issuer)
        .unwrap()
        .der()
        .clone();
    let verifier = Arc::new(verifier(&ca, 16));
    let server = server_config(&ca, verifier.clone());
    let honest = client_config(&ca, alice.clone(), &alice_key);
    handshake(&server, &honest).unwrap();
    handshake(&server, &honest).unwrap();
    assert_eq!(
        (count(&verifier, "verified"), count(&verifier, "remembered")),
        (1, 1)
    );
    // Alice's certificate, a key that is not hers: the chain is remembered, the
    // CertificateVerify signature is not, and it fails.
    let impostor = client_config(&ca, alice, &KeyPair::generate().unwrap());
    let e = handshake(&server, &impostor).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        ),
        "{e:?}"
    );
    assert_eq!(count(&verifier, "remembered"), 2);
}
