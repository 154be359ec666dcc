//! The demo web application (`demo-upstream --webapp`) as the browser tests through the
//! proxy will use it, checked directly first: a real headless Chromium runs its page
//! (fetch and WebSocket), and curl streams 64 MiB both ways through its upload and
//! download endpoints.

use std::fs::File;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_tests::browser::{element_text, LOAD_TIMEOUT, SETTLED};
use switchyard_tests::{curl, Chromium, DemoUpstream, TempDir};

/// Bytes streamed each way by the curl tests.
const BULK: u64 = 64 << 20;

#[test]
fn chromium_runs_the_pages_fetch_and_websocket_echo() -> Result<()> {
    let app = DemoUpstream::webapp("grafana")?;
    let dom = Chromium::dump_dom(&format!("http://{}/", app.addr), &[])?;
    let text = |id: &str| element_text(&dom, id).with_context(|| format!("no #{id} in {dom}"));
    assert_eq!(text("status")?, "done", "{dom}");
    let hello: Value = serde_json::from_str(&text("fetch")?).context("#fetch is JSON")?;
    assert_eq!(hello["app"], "grafana", "{hello}");
    assert_eq!(hello["host"], app.addr.to_string(), "{hello}");
    assert_eq!(hello["x_forwarded_for"], Value::Null, "{hello}");
    assert_eq!(text("ws")?, "hello over websocket", "{dom}");
    Ok(())
}

/// What the tests through the proxy need: a name in the URL (so in `Host` and, over
/// TLS, in SNI) that Chromium resolves to loopback.
#[test]
fn chromium_resolves_a_mapped_name_to_loopback() -> Result<()> {
    let app = DemoUpstream::webapp("named")?;
    let port = app.addr.port();
    let rules = "--host-resolver-rules=MAP *.example.test 127.0.0.1";
    let dom = Chromium::dump_dom(&format!("http://named.example.test:{port}/"), &[rules])?;
    assert_eq!(
        element_text(&dom, "status").as_deref(),
        Some("done"),
        "{dom}"
    );
    let hello: Value = serde_json::from_str(&element_text(&dom, "fetch").unwrap_or_default())?;
    assert_eq!(
        hello["host"],
        format!("named.example.test:{port}"),
        "{hello}"
    );
    Ok(())
}

#[test]
fn a_condition_never_met_is_an_error_with_the_dom() -> Result<()> {
    let app = DemoUpstream::webapp("slow")?;
    let mut browser = Chromium::start(&[])?;
    let url = format!("http://{}/", app.addr);
    let error = browser
        .load(&url, "false", Duration::from_millis(500))
        .expect_err("false never becomes true");
    let text = format!("{error:#}");
    assert!(text.contains("still not true after 500ms"), "{text}");
    assert!(
        text.contains("<title>slow (Switchyard demo web app)</title>"),
        "{text}"
    );
    // The same browser loads again after a failed wait.
    let dom = browser.load(&url, SETTLED, LOAD_TIMEOUT)?;
    assert_eq!(
        element_text(&dom, "status").as_deref(),
        Some("done"),
        "{dom}"
    );
    Ok(())
}

#[test]
fn a_page_chromium_cannot_load_is_an_error_naming_why() -> Result<()> {
    let app = DemoUpstream::webapp("gone")?;
    let url = format!("http://{}/", app.addr);
    drop(app);
    let error = Chromium::dump_dom(&url, &[]).expect_err("nothing listens any more");
    assert!(
        format!("{error:#}").contains("net::ERR_CONNECTION_REFUSED"),
        "{error:#}"
    );
    Ok(())
}

#[test]
fn curl_uploads_64_mib_with_a_length_and_chunked() -> Result<()> {
    let app = DemoUpstream::webapp("files")?;
    let dir = TempDir::new("upload")?;
    let file = dir.join("bulk");
    File::create(&file)?.set_len(BULK)?;
    let url = format!("http://{}/upload", app.addr);
    let sized = ["-X", "POST", "-T"];
    let chunked = ["-X", "POST", "-H", "Transfer-Encoding: chunked", "-T"];
    for args in [&sized[..], &chunked[..]] {
        let out = curl(args.iter().copied().chain([file.to_str().unwrap(), &url]))?;
        assert!(out.success(), "curl {args:?}: {out:?}");
        assert_eq!(out.stdout, format!("received={BULK}\n"), "curl {args:?}");
    }
    Ok(())
}

#[test]
fn curl_downloads_64_mib_of_the_pattern_with_its_length() -> Result<()> {
    let app = DemoUpstream::webapp("files")?;
    let dir = TempDir::new("download")?;
    let file = dir.join("bulk");
    let url = format!("http://{}/download?bytes={BULK}", app.addr);
    let written = "%{http_code} %{size_download} %header{content-length}";
    let out = curl(["-o", file.to_str().unwrap(), "-w", written, &url])?;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, format!("200 {BULK} {BULK}"));
    let body = std::fs::read(&file)?;
    let wrong = body
        .iter()
        .enumerate()
        .position(|(i, &b)| b as usize != i % 251);
    assert_eq!(wrong, None, "byte i must be i % 251");
    Ok(())
}
