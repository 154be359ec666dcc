//! ACME when things go wrong or overlap (`docs/acme.md`, against a real Pebble): a
//! directory URL that is none, a name the CA cannot resolve and a challenge the CA cannot
//! connect to each give one `ERROR` line and one count while the placeholder serves; an
//! `https_keypairs` certificate wins for its names while ACME serves the rest.

use std::time::Duration;

use anyhow::Result;
use switchyard_tests::acme::{config_with, curl_verified, now, setup_with, wait_log, Fault, NAME};
use switchyard_tests::pebble::Pebble;
use switchyard_tests::switchyard::metric_sum;
use switchyard_tests::{curl, free_port, DemoUpstream, Switchyard, TestPki};

#[test]
fn bad_answers_are_one_line_each_and_the_placeholder_keeps_serving() -> Result<()> {
    let cases = [
        (
            Fault::Directory,
            "directory",
            "ACME directory misconfigured",
        ),
        (Fault::Dns, "name_unresolvable", "ACME name not resolvable"),
        (
            Fault::Challenge,
            "challenge_failed",
            "ACME challenge failed for",
        ),
    ];
    for (fault, result, line) in cases {
        let s = setup_with(None, fault)?;
        let failed = wait_log(
            &s.proxy,
            Duration::from_secs(60),
            &[
                line,
                "still serving the self-signed placeholder",
                "next attempt in",
            ],
        )?;
        println!("{failed}");
        assert!(failed.contains("ERROR"), "{failed}");
        let errors = s
            .proxy
            .log()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .count();
        assert_eq!(errors, 1, "{}", s.proxy.log());
        let labels = [("name", NAME), ("result", result)];
        let metrics = s.proxy.metrics()?;
        assert_eq!(
            metric_sum(&metrics, "switchyard_acme_renewals_total", &labels),
            1.0,
            "{result}"
        );
        // The proxy goes on serving, with the placeholder.
        let port = s.proxy.web.port();
        let out = curl([
            "-k".to_owned(),
            "--resolve".to_owned(),
            format!("{NAME}:{port}:127.0.0.1"),
            format!("https://{NAME}:{port}/placeholder"),
        ])?;
        assert_eq!(
            out.stdout, "upstream=web path=/placeholder\n",
            "{}",
            out.stderr
        );
    }
    Ok(())
}

#[test]
fn an_explicit_keypair_wins_for_its_names_and_acme_serves_the_rest() -> Result<()> {
    let pki = TestPki::new()?;
    let web = DemoUpstream::http("web")?;
    let port = free_port();
    let pebble = Pebble::start(&pki, port, None)?;
    // The test PKI's certificate (proxy.crt) covers proxy.example.test and *.example.test.
    let public = format!("[proxy.example.test:{port}, {NAME}:{port}]");
    let keypairs = "  https_keypairs: [{cert_file: proxy.crt, key_file: proxy.key}]\n";
    let config = config_with(port, &pebble, web.addr, &public, keypairs);
    let proxy = Switchyard::start_text(&pki, &config, None)?;
    wait_log(
        &proxy,
        Duration::from_secs(5),
        &["served from https_keypairs", "proxy.example.test"],
    )?;
    let issued = wait_log(
        &proxy,
        Duration::from_secs(60),
        &["ACME: certificate issued"],
    )?;
    assert!(issued.contains(&format!("names=[\"{NAME}\"]")), "{issued}");
    // Each name gets its own certificate, verified by its own CA.
    let root = pebble.root()?;
    assert_eq!(
        curl_verified(&proxy, &root, "/acme")?,
        "upstream=web path=/acme\n"
    );
    let out = curl([
        "--cacert".to_owned(),
        pki.ca_cert().display().to_string(),
        "--resolve".to_owned(),
        format!("proxy.example.test:{port}:127.0.0.1"),
        format!("https://proxy.example.test:{port}/file"),
    ])?;
    assert_eq!(out.stdout, "upstream=web path=/file\n", "{}", out.stderr);
    // Both certificates' expiries are on /metrics.
    let metrics = proxy.metrics()?;
    let file = [("name", "proxy.example.test")];
    let name = "switchyard_certificate_expiry_timestamp_seconds";
    assert!(metric_sum(&metrics, name, &file) > now(), "{metrics}");
    let acme = [("name", NAME)];
    let name = "switchyard_acme_certificate_expiry_timestamp_seconds";
    assert!(metric_sum(&metrics, name, &acme) > now(), "{metrics}");
    Ok(())
}
