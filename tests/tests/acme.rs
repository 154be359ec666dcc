//! Certificates from a real ACME CA (Debian's `pebble`, loopback only; `docs/acme.md`):
//! the proxy starts with no certificate and obtains one for its `public_addr` through
//! TLS-ALPN-01 on its own port, and `curl` trusting Pebble's root verifies it; a
//! short-lived certificate is renewed while a TLS connection stays open, and new
//! connections see the new one; with the CA stopped the renewal fails with one clear line
//! and the current certificate keeps serving. Bad answers: `acme_bad_input.rs`.

use std::time::Duration;

use anyhow::Result;
use switchyard_tests::acme::{
    config_text, curl_verified, expiry, now, setup, wait_log, KeptOpen, NAME,
};
use switchyard_tests::switchyard::metric_sum;
use switchyard_tests::SClient;

#[test]
fn starts_without_a_certificate_obtains_one_and_curl_verifies_it() -> Result<()> {
    let s = setup(None)?;
    println!(
        "config used:\n{}",
        config_text(s.proxy.web.port(), &s.pebble, s.web.addr)
    );
    let placeholder = wait_log(
        &s.proxy,
        Duration::from_secs(5),
        &["self-signed placeholder"],
    )?;
    let issued = wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    let answered = wait_log(
        &s.proxy,
        Duration::from_secs(5),
        &["answered an ACME TLS-ALPN-01 challenge", NAME],
    )?;
    println!("{placeholder}\n{answered}\n{issued}");
    let root = s.pebble.root()?;
    let body = curl_verified(&s.proxy, &root, "/verified")?;
    assert_eq!(body, "upstream=web path=/verified\n");
    let expires = expiry(&s.proxy)?;
    assert!(expires > now(), "expiry {expires} is not in the future");
    for line in s
        .proxy
        .metrics()?
        .lines()
        .filter(|l| l.starts_with("switchyard_acme"))
    {
        println!("{line}");
    }

    // The state directory: the account key, the chain and its key, 0600.
    use std::os::unix::fs::PermissionsExt;
    let state = s.proxy.dir().join("acme-state");
    for file in ["account.key", "cert.pem", "key.pem"] {
        let mode = std::fs::metadata(state.join(file))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }

    // acme-tls/1 with no pending challenge: refused like an unknown protocol (alert 120).
    let out = SClient::new(s.proxy.web)
        .sni(NAME)
        .alpn("acme-tls/1")
        .run_to_end(b"", Duration::from_secs(10))?;
    assert!(
        out.stderr.contains("no application protocol"),
        "{}",
        out.stderr
    );
    wait_log(
        &s.proxy,
        Duration::from_secs(5),
        &["no ACME challenge is pending for that name"],
    )?;
    Ok(())
}

#[test]
fn a_short_lived_certificate_is_renewed_under_an_open_connection() -> Result<()> {
    // 30 s certificates: renewed 20 s after issuance.
    let s = setup(Some(30))?;
    wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    let root = s.pebble.root()?;
    let mut open = KeptOpen::connect(&s.proxy, &root)?;
    assert_eq!(open.get("/before")?, "upstream=web path=/before\n");
    let first = open.certificate();
    let first_expiry = expiry(&s.proxy)?;

    let renewed = wait_log(
        &s.proxy,
        Duration::from_secs(90),
        &["ACME: certificate renewed"],
    )?;
    println!("{renewed}");
    // The connection opened before the renewal goes on.
    assert_eq!(open.get("/after")?, "upstream=web path=/after\n");
    // A new one gets the new certificate, and it verifies.
    let fresh = KeptOpen::connect(&s.proxy, &root)?;
    assert_ne!(
        fresh.certificate(),
        first,
        "a new connection still got the old certificate"
    );
    assert_eq!(
        curl_verified(&s.proxy, &root, "/new")?,
        "upstream=web path=/new\n"
    );
    let second_expiry = expiry(&s.proxy)?;
    assert!(
        second_expiry > first_expiry,
        "{second_expiry} <= {first_expiry}"
    );
    let metrics = s.proxy.metrics()?;
    for line in metrics.lines().filter(|l| l.starts_with("switchyard_acme")) {
        println!("{line}");
    }
    let issued = [("name", NAME), ("result", "issued")];
    assert_eq!(
        metric_sum(&metrics, "switchyard_acme_renewals_total", &issued),
        2.0
    );
    Ok(())
}

#[test]
fn with_the_ca_stopped_renewal_fails_loudly_and_the_certificate_keeps_serving() -> Result<()> {
    // 45 s certificates: the renewal falls due after 30 s, with 15 s of validity left.
    let mut s = setup(Some(45))?;
    wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    let root = s.pebble.root()?;
    let served = KeptOpen::connect(&s.proxy, &root)?.certificate();
    s.pebble.stop();

    let failed = wait_log(
        &s.proxy,
        Duration::from_secs(60),
        &[
            "ACME CA unreachable",
            "keeping the current certificate",
            "next attempt in",
        ],
    )?;
    println!("{failed}");
    assert!(failed.contains("ERROR"), "{failed}");
    // Still served, still verified.
    assert_eq!(KeptOpen::connect(&s.proxy, &root)?.certificate(), served);
    assert_eq!(
        curl_verified(&s.proxy, &root, "/still")?,
        "upstream=web path=/still\n"
    );
    let metrics = s.proxy.metrics()?;
    let name = [("name", NAME)];
    assert_eq!(
        metric_sum(&metrics, "switchyard_acme_renewal_last_success", &name),
        0.0
    );
    let unreachable = [("name", NAME), ("result", "ca_unreachable")];
    assert_eq!(
        metric_sum(&metrics, "switchyard_acme_renewals_total", &unreachable),
        1.0
    );
    Ok(())
}
