//! The web route and the HTTP apps as a real HTTP front door (`docs/config.md`, `apps`):
//! headless Chromium runs an HTTP/1.1-only app's page through the proxy (fetch and
//! WebSocket included) although it negotiates h2; curl in both HTTP versions reaches
//! Python's `http.server` (HTTP/1.x only) and nginx speaking h2c only; 1 GiB goes each way
//! with the proxy's memory bounded; two apps share the port by name, an unknown name and
//! a refused identity get clear answers; `X-Forwarded-*` reach the app and a client's own
//! `X-Forwarded-For` is not believed unless trusted.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_tests::browser::element_text;
use switchyard_tests::process::Stream;
use switchyard_tests::{
    curl, free_port, require_tool, run_with_timeout, wait_until, Chromium, DemoUpstream, Proc,
    ProxyConfig, SClientOutput, Switchyard, TempDir, TestPki,
};

/// Starts the proxy with `upstreams.web` (when given), the `apps:` entries (YAML flow
/// maps) and `trust_x_forwarded_for` for the tests' own connections (127.0.0.1).
fn proxy(pki: &TestPki, web: Option<SocketAddr>, apps: &[String], trust: bool) -> Switchyard {
    let trusted: &[&str] = if trust { &["127.0.0.1"] } else { &[] };
    proxy_trusting(pki, web, apps, trust, trusted)
}

/// [`proxy`] with `trusted_proxies` of its own.
fn proxy_trusting(
    pki: &TestPki,
    web: Option<SocketAddr>,
    apps: &[String],
    trust: bool,
    trusted: &[&str],
) -> Switchyard {
    let mut config = ProxyConfig::default()
        .trust_xff(if trust { "true" } else { "false" })
        .trusted(trusted);
    if let Some(web) = web {
        config = config.upstream("web", web);
    }
    let mut text = config.render();
    if !apps.is_empty() {
        text += "apps:\n";
        for a in apps {
            text += &format!("  - {a}\n");
        }
    }
    Switchyard::start_text(pki, &text, None).unwrap()
}

/// curl over TLS to `https://HOST:PORT/PATH` with the cluster CA, `HOST` resolved to
/// loopback, plus `args`.
fn curl_to(pki: &TestPki, p: &Switchyard, host: &str, path: &str, args: &[&str]) -> SClientOutput {
    let port = p.web.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let ca = pki.ca_cert().display().to_string();
    let url = format!("https://{host}:{port}{path}");
    let mut all = vec![
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_version}",
    ];
    all.extend_from_slice(args);
    all.push(&url);
    curl(all).unwrap()
}

/// The body and the HTTP version curl reports (`-w` appends it on its own line).
fn body_and_version(out: &SClientOutput) -> (&str, &str) {
    out.stdout.rsplit_once('\n').unwrap_or((&out.stdout, ""))
}

#[test]
fn chromium_runs_an_http11_apps_page_with_fetch_and_websocket_through_the_proxy() -> Result<()> {
    let pki = TestPki::new()?;
    let dash = DemoUpstream::webapp("dash")?;
    let web = DemoUpstream::webapp("webui")?;
    let app = format!(
        "{{name: dash, public_addr: dash.example.test, uri: 'http://{}'}}",
        dash.addr
    );
    let p = proxy(&pki, Some(web.addr), &[app], false);
    let port = p.web.port();
    let args = [
        "--ignore-certificate-errors",
        "--host-resolver-rules=MAP *.example.test 127.0.0.1",
    ];
    let mut browser = Chromium::start(&args)?;
    for (host, name) in [
        ("dash.example.test", "dash"),
        ("proxy.example.test", "webui"),
    ] {
        let url = format!("https://{host}:{port}/");
        let dom = browser.load(
            &url,
            switchyard_tests::browser::SETTLED,
            Duration::from_secs(30),
        )?;
        println!("--- {url} ---\n{dom}");
        let text = |id: &str| element_text(&dom, id).with_context(|| format!("no #{id}: {dom}"));
        assert_eq!(text("status")?, "done", "{dom}\n{}", p.log());
        let hello: Value = serde_json::from_str(&text("fetch")?)?;
        assert_eq!(hello["app"], name, "{hello}");
        assert_eq!(hello["host"], format!("{host}:{port}"), "{hello}");
        assert_eq!(hello["x_forwarded_proto"], "https", "{hello}");
        assert_eq!(hello["x_forwarded_for"], "127.0.0.1", "{hello}");
        assert_eq!(text("ws")?, "hello over websocket", "{dom}");
    }
    // Chromium negotiated h2 for the page and HTTP/1.1 for the WebSocket: both were seen.
    let log = p.log();
    assert!(log.contains("negotiated=\"h2\""), "{log}");
    assert!(
        log.contains("route=app:dash method=GET host=dash.example.test path=/ws status=101"),
        "{log}"
    );
    Ok(())
}

/// `python3 -m http.server` on a port of its own, serving `dir`.
fn python_http_server(dir: &TempDir) -> (Proc, SocketAddr) {
    let python = require_tool("python3", "python3", &[]).unwrap();
    let mut cmd = Command::new(python);
    cmd.args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d"])
        .arg(dir.path());
    let mut proc = Proc::spawn("http.server", cmd, dir.path()).unwrap();
    let port: u16 = proc
        .wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| {
            l.split(" port ").nth(1)?.split(' ').next()?.parse().ok()
        })
        .unwrap();
    (proc, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn curl_in_h2_and_http11_reaches_pythons_http_server() {
    let pki = TestPki::new().unwrap();
    let dir = TempDir::new("www").unwrap();
    std::fs::write(dir.join("index.html"), "served by python\n").unwrap();
    let (_py, addr) = python_http_server(&dir);
    let p = proxy(&pki, Some(addr), &[], false);
    for (args, version) in [(vec![], "2"), (vec!["--http1.1"], "1.1")] {
        let out = curl_to(&pki, &p, "proxy.example.test", "/index.html", &args);
        assert_eq!(
            body_and_version(&out),
            ("served by python\n", version),
            "{out:?}\n{}",
            p.log()
        );
    }
    // Plaintext HTTP on the same port, as a balancer that terminated TLS would send it.
    let url = format!("http://127.0.0.1:{}/index.html", p.web.port());
    let out = curl([url.as_str()]).unwrap();
    assert_eq!(out.stdout, "served by python\n", "{out:?}");
}

/// nginx answering only h2c (HTTP/2 with prior knowledge) on a port of its own, or, with
/// `tls` (certificate, key), HTTP/2 over TLS.
fn nginx_h2(dir: &TempDir, tls: Option<(&str, &str)>) -> (Proc, SocketAddr) {
    let nginx = require_tool("nginx", "nginx", &[]).unwrap();
    let port = free_port();
    let d = dir.path().display();
    let listen = match tls {
        Some((cert, key)) => {
            format!("ssl http2;\n    ssl_certificate {cert};\n    ssl_certificate_key {key}")
        }
        None => "http2".to_owned(),
    };
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
         \x20 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:{port} {listen};\n\
         \x20   location / {{ return 200 \"nginx $server_protocol host=$host\\n\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.join("error.log"));
    cmd.arg("-c").arg(dir.join("nginx.conf"));
    let proc = Proc::spawn("nginx", cmd, dir.path()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(10), "nginx listening", || {
        Ok(TcpStream::connect(addr).ok().map(|_| ()))
    })
    .unwrap();
    (proc, addr)
}

#[test]
fn an_h2c_app_is_spoken_to_in_http2_whatever_the_client_speaks() {
    let pki = TestPki::new().unwrap();
    let dir = TempDir::new("nginx-h2c").unwrap();
    let (_nginx, addr) = nginx_h2(&dir, None);
    let app = format!(
        "{{name: h2app, public_addr: h2.example.test, uri: 'http://{addr}', protocol: h2c}}"
    );
    let p = proxy(&pki, None, &[app], false);
    for (args, version) in [(vec!["--http2"], "2"), (vec!["--http1.1"], "1.1")] {
        let out = curl_to(&pki, &p, "h2.example.test", "/x", &args);
        let (body, v) = body_and_version(&out);
        assert_eq!(v, version, "{out:?}");
        assert!(
            body.starts_with("nginx HTTP/2.0 host="),
            "{out:?}\n{}",
            p.log()
        );
    }
}

#[test]
fn an_h2_app_over_tls_is_verified_with_its_ca_file() {
    let pki = TestPki::new().unwrap();
    let dir = TempDir::new("nginx-h2").unwrap();
    let cert = pki
        .issue_server("app", "app.internal", &["127.0.0.1"])
        .unwrap();
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let (_nginx, addr) = nginx_h2(&dir, Some((&c, &k)));
    let ca = pki.ca_cert().display().to_string();
    let apps = [
        format!("{{name: good, public_addr: good.example.test, uri: 'https://{addr}', protocol: h2, ca_file: '{ca}'}}"),
        // The wrong CA: the proxy refuses the app's certificate and says so in the 502.
        format!(
            "{{name: bad, public_addr: bad.example.test, uri: 'https://{addr}', protocol: h2, ca_file: '{}'}}",
            pki.wrong_ca_cert().display()
        ),
    ];
    let p = proxy(&pki, None, &apps, false);
    let out = curl_to(&pki, &p, "good.example.test", "/x", &["--http1.1"]);
    let (body, _) = body_and_version(&out);
    assert!(
        body.starts_with("nginx HTTP/2.0 host=127.0.0.1"),
        "{out:?}\n{}",
        p.log()
    );
    let out = curl_to(&pki, &p, "bad.example.test", "/x", &[]);
    let (body, _) = body_and_version(&out);
    assert!(body.starts_with("502 Bad Gateway: app:bad"), "{out:?}");
    assert!(body.contains("certificate"), "the 502 says why: {body}");
}

/// The proxy's resident memory now (`VmRSS`) and at its peak (`VmHWM`), in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// curl with its own time limit (1 GiB through a debug build takes a while).
fn curl_long(args: &[&str]) -> SClientOutput {
    let mut cmd = Command::new(require_tool("curl", "curl", &[]).unwrap());
    cmd.args(["-sS", "--max-time", "300"]).args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(320)).unwrap()
}

#[test]
fn a_gib_up_and_a_gib_down_stream_through_with_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::webapp("bulk").unwrap();
    let p = proxy(&pki, Some(app.addr), &[], false);
    let before = rss_kib(p.pid());
    let dir = TempDir::new("gib").unwrap();
    let file = dir.join("upload");
    std::fs::File::create(&file).unwrap().set_len(GIB).unwrap();
    let port = p.web.port();
    let resolve = format!("proxy.example.test:{port}:127.0.0.1");
    let ca = pki.ca_cert().display().to_string();
    let base = format!("https://proxy.example.test:{port}");
    let common = ["--cacert", ca.as_str(), "--resolve", resolve.as_str()];
    let upload = file.display().to_string();
    let url = format!("{base}/upload");
    let mut args = common.to_vec();
    args.extend(["-X", "POST", "-T", upload.as_str(), url.as_str()]);
    let up = curl_long(&args);
    assert_eq!(
        up.stdout,
        format!("received={GIB}\n"),
        "{up:?}\n{}",
        p.log()
    );
    let url = format!("{base}/download?bytes={GIB}");
    let mut args = common.to_vec();
    args.extend(["-o", "/dev/null", "-w", "%{size_download}", url.as_str()]);
    let down = curl_long(&args);
    assert_eq!(down.stdout, GIB.to_string(), "{down:?}\n{}", p.log());
    let after = rss_kib(p.pid());
    println!(
        "proxy RSS (now, peak) in KiB: {before:?} before, {after:?} after 1 GiB up and 1 GiB down"
    );
    assert!(
        after.1 < 128 * 1024,
        "peak RSS {} KiB: bodies are being buffered",
        after.1
    );
}

#[test]
fn two_apps_by_name_an_unknown_name_and_an_allow_list() {
    let pki = TestPki::new().unwrap();
    let dash = DemoUpstream::webapp("dash").unwrap();
    let files = DemoUpstream::webapp("files").unwrap();
    let bob = pki.issue_client("bob", "bob", Some("guests")).unwrap();
    let apps = [
        format!(
            "{{name: dash, public_addr: dash.example.test, uri: 'http://{}', allow: [alice]}}",
            dash.addr
        ),
        format!(
            "{{name: files, public_addr: files.example.test, uri: 'http://{}'}}",
            files.addr
        ),
    ];
    let p = proxy(&pki, None, &apps, false);
    let app_of = |out: &SClientOutput| -> Value {
        serde_json::from_str(body_and_version(out).0).unwrap_or(Value::Null)
    };
    let out = curl_to(&pki, &p, "files.example.test", "/api/hello", &[]);
    assert_eq!(app_of(&out)["app"], "files", "{out:?}");
    let alice_cert = pki.client.cert.display().to_string();
    let alice_key = pki.client.key.display().to_string();
    let alice = ["--cert", alice_cert.as_str(), "--key", alice_key.as_str()];
    let out = curl_to(&pki, &p, "dash.example.test", "/api/hello", &alice);
    assert_eq!(app_of(&out)["app"], "dash", "{out:?}\n{}", p.log());
    let (bob_cert, bob_key) = (
        bob.cert.display().to_string(),
        bob.key.display().to_string(),
    );
    let out = curl_to(
        &pki,
        &p,
        "dash.example.test",
        "/api/hello",
        &["--cert", &bob_cert, "--key", &bob_key],
    );
    assert!(!out.success(), "bob is not on dash's allow list: {out:?}");
    assert!(
        out.stderr.contains("alert"),
        "a TLS alert tells bob why: {out:?}"
    );
    let out = curl_to(&pki, &p, "dash.example.test", "/api/hello", &[]);
    assert!(!out.success(), "dash asks for a certificate: {out:?}");
    // A name under the public address that is no app's: a clear 404, over TLS and plaintext.
    let out = curl_to(&pki, &p, "nope.proxy.example.test", "/", &["-k"]);
    assert!(
        out.stdout
            .starts_with("404 Not Found: no app is named nope.proxy.example.test"),
        "{out:?}"
    );
    let url = format!("http://127.0.0.1:{}/", p.web.port());
    let out = curl(["-H", "Host: nope.proxy.example.test", url.as_str()]).unwrap();
    assert!(
        out.stdout
            .contains("apps: dash.example.test, files.example.test"),
        "{out:?}"
    );
    // An app's name on another name's connection: 421, so the browser reconnects by name.
    let out = curl_to(
        &pki,
        &p,
        "files.example.test",
        "/",
        &["-H", "Host: dash.example.test"],
    );
    assert!(out.stdout.starts_with("421 Misdirected Request"), "{out:?}");
    // Over plaintext, dash (client certificates) is refused and files served.
    let out = curl(["-H", "Host: dash.example.test", url.as_str()]).unwrap();
    assert!(
        out.stdout
            .starts_with("403 Forbidden: app dash asks for a client certificate"),
        "{out:?}"
    );
    let out = curl(["-H", "Host: files.example.test", &format!("{url}api/hello")]).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap()["app"],
        "files",
        "{out:?}"
    );
    let metrics = p.metrics().unwrap();
    assert!(
        metrics.contains("switchyard_http_requests_total{route=\"app:files\",class=\"2xx\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_http_requests_total{route=\"none\",class=\"4xx\"}"),
        "{metrics}"
    );
}

#[test]
fn x_forwarded_headers_reach_the_app_and_a_spoofed_for_is_believed_only_from_a_trusted_proxy() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::webapp("echo").unwrap();
    let spoof = [
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Forwarded-Host: evil.example",
    ];
    // Trusting X-Forwarded-For from another address (127.0.0.3) than curl's: not believed.
    for (trust, trusted, xff, host) in [
        (false, "127.0.0.1", "127.0.0.1", "proxy.example.test:PORT"),
        (true, "127.0.0.3", "127.0.0.1", "proxy.example.test:PORT"),
        (true, "127.0.0.1", "203.0.113.9, 127.0.0.1", "evil.example"),
    ] {
        let p = proxy_trusting(&pki, Some(app.addr), &[], trust, &[trusted]);
        let out = curl_to(&pki, &p, "proxy.example.test", "/api/hello", &spoof);
        let hello: Value = serde_json::from_str(body_and_version(&out).0).unwrap();
        let host = host.replace("PORT", &p.web.port().to_string());
        assert_eq!(hello["x_forwarded_for"], xff, "trust {trust}: {hello}");
        assert_eq!(
            hello["x_forwarded_proto"], "https",
            "trust {trust}: {hello}"
        );
        assert_eq!(hello["x_forwarded_host"], host, "trust {trust}: {hello}");
    }
}

#[test]
fn an_upstream_that_is_down_gets_a_502_naming_it() {
    let pki = TestPki::new().unwrap();
    let gone = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let app = format!("{{name: gone, public_addr: gone.example.test, uri: 'http://{gone}'}}");
    let p = proxy(&pki, None, &[app], false);
    let out = curl_to(&pki, &p, "gone.example.test", "/", &[]);
    assert!(
        out.stdout.starts_with(&format!(
            "502 Bad Gateway: app:gone ({gone}) did not answer"
        )),
        "{out:?}"
    );
    let log = p.log();
    assert!(
        log.contains("HTTP upstream failed") && log.contains(&gone.to_string()),
        "{log}"
    );
    let errors = p
        .metric(
            "switchyard_upstream_connect_errors_total",
            &[("route", "app:gone")],
        )
        .unwrap();
    assert_eq!(errors, 1.0);
}

/// Sends `bytes` on a plain connection to the proxy port and returns all it answers.
fn raw(p: &Switchyard, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(p.web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_requests_get_a_clear_status_and_the_proxy_keeps_serving() {
    let pki = TestPki::new().unwrap();
    let app = DemoUpstream::webapp("web").unwrap();
    let p = proxy(&pki, Some(app.addr), &[], false);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases: [(&[u8], &str); 6] = [
        (big.as_bytes(), "HTTP/1.1 431 "),
        (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            "HTTP/1.1 405 ",
        ),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "HTTP/1.1 400 "),
        (
            b"GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        // HTTP/2 prior knowledge, then garbage: a GOAWAY frame (type 7), then closed.
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nnot-a-frame-not-a-frame",
            "",
        ),
    ];
    for (bytes, status) in cases {
        let answer = raw(&p, bytes);
        assert!(
            answer.starts_with(status),
            "{:?}: {answer:?}",
            String::from_utf8_lossy(&bytes[..20])
        );
    }
    let ok = raw(
        &p,
        b"GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert!(!p.log().contains("panicked"), "{}", p.log());
}
