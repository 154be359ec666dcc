//! HTTP apps behind a reverse tunnel, with real processes: an HTTP app in a network
//! namespace whose only way out is a forwarder to the proxy, served by `switchyard agent`
//! as `http:web1`, is reached by `curl` at `https://web1.proxy.example.test` over HTTP/1.1
//! and HTTP/2, 1 MiB up and 5 MiB down intact; a name no agent serves gets a 404 naming
//! it; and the rule's `allow` list is checked in the TLS handshake (a client it does not
//! name gets an alert it can read, one without a certificate is told one is required, an
//! allowed one gets 200).

use switchyard_tests::agent::{
    metric, pattern, proxy_a_text, streams_opened, tunnel_bytes, unreachable_from_host, wait_log,
    Agent, Rule,
};
use switchyard_tests::pki::CertFiles;
use switchyard_tests::{curl, DemoUpstream, Netns, SClientOutput, Switchyard, TempDir, TestPki};

/// The HTTP app host of the tests: `<name>.<public address host>`.
const WEB1: &str = "web1.proxy.example.test";

/// curl to `https://HOST:PORT/PATH` (HOST resolved to loopback, the cluster CA), with
/// the status code and HTTP version on a last line of their own.
fn curl_host(
    pki: &TestPki,
    proxy: &Switchyard,
    host: &str,
    path: &str,
    args: &[&str],
) -> SClientOutput {
    let port = proxy.web.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let ca = pki.ca_cert().display().to_string();
    let url = format!("https://{host}:{port}{path}");
    let mut all = vec!["-sS", "--cacert", &ca, "--resolve", &resolve];
    all.extend_from_slice(&["-w", "\n%{http_code} %{http_version}"]);
    all.extend_from_slice(args);
    all.push(&url);
    curl(all).unwrap()
}

/// [`curl_host`] to `WEB1` with the client certificate `PKI/STEM.{crt,key}`.
fn curl_web1_as(pki: &TestPki, proxy: &Switchyard, stem: &str, path: &str) -> SClientOutput {
    let file = |ext: &str| {
        pki.dir()
            .join(format!("{stem}.{ext}"))
            .display()
            .to_string()
    };
    let (cert, key) = (file("crt"), file("key"));
    curl_host(pki, proxy, WEB1, path, &["--cert", &cert, "--key", &key])
}

/// The body, and the `CODE VERSION` line [`curl_host`] appends.
fn body_and_status(out: &SClientOutput) -> (&str, &str) {
    out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout))
}

/// [`switchyard_tests::agent::proxy_a`] with a certificate that also covers
/// `*.proxy.example.test`, where HTTP apps are named (the default one's `*.example.test`
/// does not cover a name two labels under it).
fn web_proxy(pki: &TestPki, rules: &[Rule<'_>]) -> Switchyard {
    let sans = [
        "proxy.example.test",
        "*.proxy.example.test",
        "*.example.test",
        "localhost",
        "127.0.0.1",
    ];
    let wild: CertFiles = pki
        .issue_server("wild", "proxy.example.test", &sans)
        .unwrap();
    let text = proxy_a_text(rules).replace(
        "https_keypairs: [{cert_file: proxy.crt, key_file: proxy.key}]",
        &format!(
            "https_keypairs: [{{cert_file: '{}', key_file: '{}'}}]",
            wild.cert.display(),
            wild.key.display()
        ),
    );
    Switchyard::start_text(pki, &text, None).unwrap()
}

#[test]
fn curl_reaches_an_http_app_in_the_namespace_by_host_name() {
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("http").unwrap();
    let web = DemoUpstream::webapp_in(Some(&ns), "web1").unwrap();
    unreachable_from_host(web.addr);
    let proxy = web_proxy(&pki, &[Rule::serving("edge", &["http:web1"])]);
    let _agent = Agent::up_in(&pki, &ns, &proxy, "edge", &[("http", "web1", web.addr)], 1);

    for version in ["--http1.1", "--http2"] {
        let out = curl_host(&pki, &proxy, WEB1, "/api/hello", &[version]);
        let (body, status) = body_and_status(&out);
        assert!(out.success(), "{version}: {out:?}\n{}", proxy.log());
        let want = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, want, "{version}: {out:?}\n{}", proxy.log());
        let json: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(json["app"], "web1", "{json}");
        assert_eq!(json["x_forwarded_proto"], "https", "{json}");
    }

    // 1 MiB up, 5 MiB down, every byte.
    let dir = TempDir::new("agent-http").unwrap();
    let upload = dir.join("upload");
    std::fs::write(&upload, pattern(7, 1 << 20)).unwrap();
    let data = format!("@{}", upload.display());
    let out = curl_host(&pki, &proxy, WEB1, "/upload", &["--data-binary", &data]);
    assert_eq!(
        body_and_status(&out),
        ("received=1048576\n", "200 2"),
        "{out:?}"
    );
    let download = dir.join("download");
    let out_file = download.display().to_string();
    let five_mib = "/download?bytes=5242880";
    let out = curl_host(&pki, &proxy, WEB1, five_mib, &["-o", &out_file]);
    assert_eq!(body_and_status(&out).1, "200 2", "{out:?}");
    let got = std::fs::read(&download).unwrap();
    let want: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    assert!(
        got == want,
        "download: {} bytes, not the 5 MiB pattern",
        got.len()
    );

    assert!(streams_opened(&proxy, "http") >= 4.0);
    assert!(tunnel_bytes(&proxy, "from_agent") > 5e6);

    // A name under the public address that no agent serves: a 404 naming it.
    let out = curl_host(&pki, &proxy, "nope.proxy.example.test", "/", &[]);
    let (body, status) = body_and_status(&out);
    assert!(status.starts_with("404"), "{out:?}");
    assert!(body.contains("nope"), "{out:?}");
}

#[test]
fn an_http_client_not_in_the_allow_list_is_refused_in_the_handshake_and_an_allowed_one_gets_200() {
    let pki = TestPki::new().unwrap();
    pki.issue_client("bob", "bob", Some("guests")).unwrap();
    let ns = Netns::new("allow-h").unwrap();
    let web = DemoUpstream::http_in(Some(&ns), "web1").unwrap();
    unreachable_from_host(web.addr);
    let rule = Rule {
        identity: "edge",
        serve: &["http:web1"],
        allow: &["admins"],
    };
    let proxy = web_proxy(&pki, &[rule]);
    let _agent = Agent::up_in(&pki, &ns, &proxy, "edge", &[("http", "web1", web.addr)], 1);
    // As for a static app with an allow list: the agent's `allow` is checked inside the
    // handshake, so a client it does not name gets a TLS alert it can read.
    let out = curl_web1_as(&pki, &proxy, "bob", "/x");
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("access denied"),
        "{out:?}\n{}",
        proxy.log()
    );
    // Without a certificate: one is required.
    let out = curl_host(&pki, &proxy, WEB1, "/x", &[]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("certificate required"), "{out:?}");
    wait_log("proxy", "reason=\"not_allowed\"", || proxy.log());
    let refused = [("route", "agent:http"), ("reason", "not_allowed")];
    assert_eq!(
        metric(&proxy, "switchyard_tls_handshake_failures_total", &refused),
        1.0
    );

    let out = curl_web1_as(&pki, &proxy, "client", "/x");
    let (body, status) = body_and_status(&out);
    assert_eq!(
        (body, status),
        ("upstream=web1 path=/x\n", "200 2"),
        "{out:?}\n{}",
        proxy.log()
    );
}
