//! The certificates' metric families, labelled by the certificate's `name` (its first DNS
//! name): when each `https_keypairs` certificate expires
//! (`switchyard_certificate_expiry_timestamp_seconds`), and for the ACME one
//! (`switchyard_acme_*`) when the served certificate expires, how the last renewal went,
//! and when the next one is due.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertLabel {
    /// The certificate's first name.
    pub(crate) name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RenewalLabel {
    pub(crate) name: String,
    /// `issued`, `ca_unreachable`, `directory`, `challenge_failed`, `name_unresolvable`,
    /// `refused`, `local`.
    pub(crate) result: &'static str,
}

/// Per ACME certificate.
#[derive(Default)]
pub(crate) struct AcmeMetrics {
    pub(crate) keypairs: Family<CertLabel, Gauge>,
    pub(crate) expiry: Family<CertLabel, Gauge>,
    pub(crate) last_success: Family<CertLabel, Gauge>,
    pub(crate) last_attempt: Family<CertLabel, Gauge>,
    pub(crate) next_attempt: Family<CertLabel, Gauge>,
    pub(crate) renewals: Family<RenewalLabel, Counter>,
}

impl AcmeMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_certificate_expiry_timestamp_seconds",
            "When each https_keypairs certificate expires (Unix time)",
            self.keypairs.clone(),
        );
        registry.register(
            "switchyard_acme_certificate_expiry_timestamp_seconds",
            "When the ACME certificate being served expires (Unix time; absent while the placeholder is served)",
            self.expiry.clone(),
        );
        registry.register(
            "switchyard_acme_renewal_last_success",
            "1 when the last ACME issuance or renewal attempt succeeded, 0 when it failed",
            self.last_success.clone(),
        );
        registry.register(
            "switchyard_acme_renewal_last_attempt_timestamp_seconds",
            "When the last ACME issuance or renewal attempt ended (Unix time)",
            self.last_attempt.clone(),
        );
        registry.register(
            "switchyard_acme_renewal_next_attempt_timestamp_seconds",
            "When the next ACME issuance or renewal attempt is due (Unix time)",
            self.next_attempt.clone(),
        );
        registry.register(
            "switchyard_acme_renewals",
            "ACME issuance and renewal attempts, by result",
            self.renewals.clone(),
        );
    }

    fn label(name: &str) -> CertLabel {
        CertLabel {
            name: name.to_owned(),
        }
    }

    /// The configured certificates now (start, or a reload): `(name, not_after)`.
    pub(crate) fn keypairs(&self, expiries: &[(String, i64)]) {
        self.keypairs.clear();
        for (name, not_after) in expiries {
            self.keypairs
                .get_or_create(&Self::label(name))
                .set(*not_after);
        }
    }

    /// The served certificate of `name` expires at `not_after` (Unix time).
    pub(crate) fn expires(&self, name: &str, not_after: i64) {
        self.expiry.get_or_create(&Self::label(name)).set(not_after);
    }

    /// An attempt for `name` ended at `now` with `result`.
    pub(crate) fn attempt(&self, name: &str, result: &'static str, now: i64) {
        let label = Self::label(name);
        self.renewals
            .get_or_create(&RenewalLabel {
                name: name.to_owned(),
                result,
            })
            .inc();
        let ok = i64::from(result == "issued");
        self.last_success.get_or_create(&label).set(ok);
        self.last_attempt.get_or_create(&label).set(now);
    }

    /// The next attempt for `name` is due at `at` (Unix time).
    pub(crate) fn next(&self, name: &str, at: i64) {
        self.next_attempt.get_or_create(&Self::label(name)).set(at);
    }
}
