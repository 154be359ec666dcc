//! The life cycle of the ACME certificate, one task for the process: obtain at start when
//! only the placeholder is served, renew two thirds into the lifetime, and after a failure
//! try again after 1 min, 2 min, 4 min … up to 1 h (each ±20 %, so proxies that failed
//! together do not retry together), keeping the current certificate. Every failure is one
//! line saying which kind it is ([`Failure`], in `failure`) and when the next attempt is.
//!
//! One attempt: the account (from the stored key), an order for every name, the
//! TLS-ALPN-01 answers put up ([`super::challenge`]) and taken down whatever happens, then
//! a fresh key, the CSR, the chain, the files, and the swap.

use super::failure::{Failure, OPENING};
use super::{rfc3339, served_from, Acme, Served};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, Key, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{error, info};

const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Runs for the life of the process.
pub(crate) async fn run(acme: Arc<Acme>) {
    let name = acme.names[0].clone();
    let mut account: Option<Account> = None;
    let mut failures = 0u32;
    let mut retry = Duration::ZERO;
    loop {
        let wait = if failures == 0 {
            let at = acme.served().renew_at(&acme.names);
            at.duration_since(SystemTime::now()).unwrap_or_default()
        } else {
            retry
        };
        acme.metrics
            .acme
            .next(&name, unix(SystemTime::now() + wait));
        if failures == 0 && !wait.is_zero() {
            let at = unix(SystemTime::now() + wait);
            info!(names = ?acme.names, renew_at = %rfc3339(at), "ACME: renewal scheduled");
        }
        sleep_until(SystemTime::now() + wait).await;
        let before = acme.served();
        match attempt(&acme, &mut account).await {
            Ok(new) => {
                failures = 0;
                let what = if before.placeholder {
                    "issued"
                } else {
                    "renewed"
                };
                info!(names = ?new.names, not_before = %rfc3339(new.not_before), not_after = %rfc3339(new.not_after), dir = %acme.store.dir().display(), "ACME: certificate {what}, serving it to new connections");
                acme.metrics
                    .acme
                    .attempt(&name, "issued", unix(SystemTime::now()));
                acme.swap(new);
            }
            Err(failure) => {
                failures += 1;
                if matches!(failure, Failure::CaUnreachable(_) | Failure::Refused(_)) {
                    account = None;
                }
                retry = backoff(failures);
                let keeping = if before.placeholder {
                    "still serving the self-signed placeholder".to_owned()
                } else {
                    format!(
                        "keeping the current certificate (expires {})",
                        rfc3339(before.not_after)
                    )
                };
                error!(names = ?acme.names, result = failure.result(), attempt = failures, "{failure}; {keeping}; next attempt in {}s", retry.as_secs());
                acme.metrics
                    .acme
                    .attempt(&name, failure.result(), unix(SystemTime::now()));
            }
        }
    }
}

/// The wait after the `n`th failure in a row.
fn backoff(n: u32) -> Duration {
    let base = FIRST_RETRY
        .saturating_mul(1 << (n - 1).min(16))
        .min(MAX_RETRY);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Sleeps until the wall clock reads `at`, looking at it at least hourly: a months-long
/// timer would not notice a suspended machine or a corrected clock.
async fn sleep_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Takes the challenge answers down however the attempt ends.
struct Answers<'a> {
    acme: &'a Acme,
    names: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            self.acme.challenges.remove(n);
        }
    }
}

async fn attempt(acme: &Acme, account: &mut Option<Account>) -> Result<Served, Failure> {
    let account = match account {
        Some(a) => a,
        None => account.insert(open_account(acme).await?),
    };
    let uri = acme.uri.as_str();
    let ids: Vec<Identifier> = acme.names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| Failure::acme("creating the order", uri, e))?;
    let mut answers = Answers {
        acme,
        names: Vec::new(),
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| Failure::acme("reading an authorization", uri, e))?;
            let name = a.identifier().to_string();
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Failure::Refused(format!(
                        "authorization for {name} is {other:?}"
                    )))
                }
            }
            let mut challenge = a.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
                Failure::Refused(format!("the CA offers no tls-alpn-01 challenge for {name}"))
            })?;
            let digest = challenge.key_authorization().digest();
            acme.challenges
                .insert(&name, digest.as_ref())
                .map_err(|e| Failure::Local(format!("challenge certificate for {name}: {e}")))?;
            answers.names.push(name);
            challenge
                .set_ready()
                .await
                .map_err(|e| Failure::acme("starting the challenge", uri, e))?;
        }
    }
    match order.poll_ready(&POLL).await {
        Ok(OrderStatus::Ready) => {}
        Ok(OrderStatus::Invalid) | Err(instant_acme::Error::Api(_)) => {
            return Err(why_invalid(&mut order).await)
        }
        Ok(other) => return Err(Failure::Refused(format!("the order is {other:?}"))),
        Err(e) => return Err(Failure::acme("waiting for validation", uri, e)),
    }
    drop(answers);
    let local = |what: &str, e: rcgen::Error| Failure::Local(format!("{what}: {e}"));
    let key = rcgen::KeyPair::generate().map_err(|e| local("certificate key", e))?;
    let mut params =
        rcgen::CertificateParams::new(acme.names.clone()).map_err(|e| local("names", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| local("certificate request", e))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| Failure::acme("finalizing the order", uri, e))?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(|e| Failure::acme("fetching the certificate", uri, e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::Refused(format!("the issued chain is not PEM: {e}")))?;
    let key_pem = key.serialize_pem();
    let served = served_from(&chain, &key_pem)
        .map_err(|e| Failure::Refused(format!("the issued certificate is unusable: {e}")))?;
    acme.store
        .save(&chain_pem, &key_pem)
        .map_err(|e| Failure::Local(format!("saving to {}: {e}", acme.store.dir().display())))?;
    Ok(served)
}

/// The account of the stored key at the directory, created when the CA does not know
/// it, with the contact address.
async fn open_account(acme: &Acme) -> Result<Account, Failure> {
    let dir = acme.store.dir().display();
    let der = acme
        .store
        .account_key()
        .map_err(|e| Failure::Local(format!("account key in {dir}: {e}")))?;
    let key = Key::from_pkcs8_der(der.clone_key())
        .map_err(|e| Failure::Local(format!("account key in {dir}: {e}")))?;
    let uri = acme.uri.clone();
    let (account, _) = Account::builder_with_http(Box::new(acme.http.clone()))
        .create_from_key((key, PrivateKeyDer::Pkcs8(der)), uri.clone())
        .await
        .map_err(|e| Failure::acme(OPENING, &uri, e))?;
    if let Some(email) = &acme.email {
        let contact = format!("mailto:{email}");
        account
            .update_contacts(&[contact.as_str()])
            .await
            .map_err(|e| Failure::acme("setting the account's email", &uri, e))?;
    }
    info!(account = account.id(), directory = %uri, "ACME: account ready");
    Ok(account)
}

/// Why the order became invalid: the first failed challenge's problem.
async fn why_invalid(order: &mut Order) -> Failure {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut a)) = authorizations.next().await {
        let name = a.identifier().to_string();
        let Ok(state) = a.refresh().await else {
            continue;
        };
        if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return Failure::problem(Some(&name), p, "validating");
        }
    }
    match &order.state().error {
        Some(p) => Failure::problem(None, p, "validating"),
        None => Failure::Refused("the order became invalid without saying why".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour_with_jitter() {
        for n in 1..40 {
            let d = backoff(n).as_secs_f64();
            let base = (60.0 * 2f64.powi(n as i32 - 1)).min(3600.0);
            assert!(d >= base * 0.8 && d <= base * 1.2, "n={n} d={d}");
        }
    }
}
