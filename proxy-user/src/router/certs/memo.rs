//! A memo of client certificate chains the cluster CA has already verified
//! (`limits.verified_chains`), so a client that comes back with the same certificate is
//! not made to pay for the chain's signature checks again.
//!
//! What it remembers and why that is sound: webpki's verdict on a chain depends only on
//! the chain's bytes (the end-entity certificate and the intermediates the client sent),
//! the trust anchors, the usage checked (client authentication) and the time. The memo
//! belongs to one cluster CA verifier, so the anchors and the usage are fixed for its life
//! (a reload builds a new verifier and an empty memo). The key is the chain's exact bytes.
//! The time is kept by storing, with each chain, the span in which every certificate of
//! it is valid (the latest `notBefore`, the earliest `notAfter`): outside that span the
//! chain is verified afresh, which gives the client webpki's own error. Only successes
//! are remembered. No revocation lists are configured; if they ever are, a memo hit
//! would have to consult them too.
//!
//! What a memo hit still does: the handshake's `CertificateVerify` signature, which proves
//! the client holds the certificate's key, is checked on every connection (the route's
//! verifier, `AllowListVerifier` in `certs`, consults the memo only for the chain, never
//! for `verify_tls13_signature`), and so is the route's allow list.

use crate::router::metrics::ChainCheck;
use prometheus_client::metrics::{counter::Counter, family::Family};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use std::collections::HashMap;
use std::sync::Mutex;

/// The longest chain remembered, bytes. Real client chains are 0.5–4 KB; a client may
/// append certificates the path does not use, so without this bound one holder of a
/// valid certificate could fill the memo with near-64 KiB keys (1024 of them: 64 MiB).
/// With it the memo holds at most `capacity` × 8 KiB.
const MAX_CHAIN_BYTES: usize = 8 * 1024;

/// The chains the cluster CA's verifier accepted, shared by every route's verifier.
#[derive(Debug)]
pub(crate) struct ChainMemo {
    memo: Mutex<Memo>,
    checks: Family<ChainCheck, Counter>,
}

impl ChainMemo {
    /// Remembers up to `capacity` chains; `checks` counts each outcome.
    pub(crate) fn new(capacity: usize, checks: Family<ChainCheck, Counter>) -> ChainMemo {
        ChainMemo {
            memo: Mutex::new(Memo::new(capacity)),
            checks,
        }
    }

    /// `webpki`'s verdict on the chain: remembered when it accepted the same chain before
    /// and every certificate of it is valid `now`, else asked afresh (and remembered when
    /// it accepts).
    pub(crate) fn verify(
        &self,
        webpki: &dyn ClientCertVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_key(end_entity, intermediates);
        let secs = now.as_secs();
        if self.memo.lock().is_ok_and(|m| m.holds(&key, secs)) {
            self.count("remembered");
            return Ok(ClientCertVerified::assertion());
        }
        let verified = webpki.verify_client_cert(end_entity, intermediates, now);
        if verified.is_err() {
            self.count("refused");
            return verified;
        }
        self.count("verified");
        if let Some(span) = valid_span(end_entity, intermediates) {
            if let Ok(mut memo) = self.memo.lock() {
                memo.remember(key, span, secs);
            }
        }
        verified
    }

    fn count(&self, result: &'static str) {
        self.checks.get_or_create(&ChainCheck { result }).inc();
    }
}

/// The chain's bytes, each certificate preceded by its length, so two different chains
/// never share a key.
fn chain_key(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Box<[u8]> {
    let certs = std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref()));
    let mut key = Vec::with_capacity(
        end_entity.len() + intermediates.iter().map(|c| c.len() + 4).sum::<usize>() + 4,
    );
    for c in certs {
        key.extend_from_slice(&(c.len() as u32).to_be_bytes());
        key.extend_from_slice(c);
    }
    key.into_boxed_slice()
}

/// The seconds in which every certificate of the chain is valid, both ends inclusive (as
/// webpki checks them); `None` when one does not parse or the span is empty.
fn valid_span(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Option<Span> {
    let mut span = Span {
        from: 0,
        until: u64::MAX,
    };
    let certs = std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref()));
    for der in certs {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let v = cert.validity();
        span.from = span
            .from
            .max(u64::try_from(v.not_before.timestamp()).unwrap_or(0));
        span.until = span.until.min(u64::try_from(v.not_after.timestamp()).ok()?);
    }
    (span.from <= span.until).then_some(span)
}

/// When a remembered chain is valid, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    from: u64,
    until: u64,
}

/// The remembered chains, at most `capacity` of them.
#[derive(Debug)]
struct Memo {
    chains: HashMap<Box<[u8]>, Span>,
    capacity: usize,
}

impl Memo {
    fn new(capacity: usize) -> Memo {
        Memo {
            chains: HashMap::new(),
            capacity,
        }
    }

    /// True when `key` was verified and every certificate of it is valid at `now`.
    fn holds(&self, key: &[u8], now: u64) -> bool {
        self.chains
            .get(key)
            .is_some_and(|s| s.from <= now && now <= s.until)
    }

    /// Remembers a verified chain. When full, the chains no longer valid go first; if
    /// that frees nothing, the memo starts again empty (bounded memory, and a miss costs
    /// only one verification).
    /// A chain longer than [`MAX_CHAIN_BYTES`] is not remembered.
    fn remember(&mut self, key: Box<[u8]>, span: Span, now: u64) {
        if self.capacity == 0 || key.len() > MAX_CHAIN_BYTES {
            return;
        }
        if self.chains.len() >= self.capacity && !self.chains.contains_key(&key) {
            self.chains.retain(|_, s| s.from <= now && now <= s.until);
            if self.chains.len() >= self.capacity {
                self.chains.clear();
            }
        }
        self.chains.insert(key, span);
    }
}

#[cfg(test)]
#[path = "memo_tests.rs"]
mod tests;
