//! `ktls:` on the machine the tests run on. Where the kernel has TLS (`CONFIG_TLS`), a
//! terminated route's session goes to the kernel and the echo still works; where it has
//! none (this project's CI kernel), `auto` keeps sessions in userspace with a warning and
//! `require` refuses to start with the reason. Each branch asserts what that kernel must
//! do. The hand-over itself is checked on Debian's kernel by `cargo xtask ktls`.

use std::time::Duration;

use switchyard_tests::{DemoUpstream, ProxyConfig, SClient, Switchyard, TestPki};

/// Whether the kernel offers the TLS ULP (after the proxy's probe, which loads the module
/// where there is one).
fn kernel_has_tls() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|ulps| ulps.split_whitespace().any(|u| u == "tls"))
}

fn config(app: &DemoUpstream, ktls: &str) -> String {
    let mut config = ProxyConfig::default();
    config.routes.push(format!(
        "{{name: grafana, sni: \"grafana.example.test\", alpn: teleport-tcp, mode: terminate, \
         upstream: \"{}\", allow: [alice]}}",
        app.addr
    ));
    format!("{}\nktls: {ktls}\n", config.render())
}

#[test]
fn ktls_auto_hands_over_where_the_kernel_has_tls_and_stays_in_userspace_elsewhere() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("grafana").unwrap();
    let proxy = Switchyard::start_text(&pki, &config(&app, "auto"), None).unwrap();
    let out = SClient::new(proxy.web)
        .sni("grafana.example.test")
        .alpn("teleport-tcp")
        .verify(&pki.ca_cert())
        .cert(&pki.client.cert, &pki.client.key)
        .run(b"over ktls?\n", "over ktls?", Duration::from_secs(10))
        .unwrap();
    assert!(
        out.stdout.contains("upstream=grafana\n"),
        "{out:?}\n{}",
        proxy.log()
    );
    assert!(out.stdout.contains("over ktls?"), "{out:?}");
    let handed = |p: &Switchyard| {
        p.metric(
            "switchyard_ktls_sessions_total",
            &[("route", "grafana"), ("outcome", "handed_over")],
        )
        .unwrap()
    };
    let bytes = |mode| {
        proxy
            .metric(
                "switchyard_relay_bytes_total",
                &[("direction", "client_to_upstream"), ("mode", mode)],
            )
            .unwrap()
    };
    // The closing line (and its metrics) come once the relay has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bytes("ktls") + bytes("userspace") == 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if kernel_has_tls() {
        assert_eq!(handed(&proxy), 1.0, "{}", proxy.log());
        assert!(bytes("ktls") >= 11.0, "{}", proxy.metrics().unwrap());
    } else {
        let log = proxy.log();
        assert!(
            log.contains("ktls: auto, but terminated sessions stay in userspace: TCP_ULP tls"),
            "{log}"
        );
        assert_eq!(handed(&proxy), 0.0);
        assert!(bytes("userspace") >= 11.0, "{}", proxy.metrics().unwrap());
    }
}

#[test]
fn ktls_require_refuses_to_start_on_a_kernel_without_tls() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::echo("grafana").unwrap();
    if kernel_has_tls() {
        // Nothing to refuse: it serves.
        Switchyard::start_text(&pki, &config(&app, "require"), None).unwrap();
        return;
    }
    let (status, stderr) = Switchyard::expect_exit(&pki, &config(&app, "require")).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("ktls: require, but this kernel has no TLS to hand sessions to"),
        "{stderr}"
    );
    // A mode it does not know is a configuration error naming the key.
    let (status, stderr) = Switchyard::expect_exit(&pki, &config(&app, "fast")).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("ktls"), "{stderr}");
}
