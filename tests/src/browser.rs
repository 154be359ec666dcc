//! [`Chromium`]: a real headless Chromium (Debian's `chromium`) that loads a page, runs
//! its scripts (fetches, WebSockets) and hands back the DOM, for tests of what a browser
//! sees directly or through the proxy.
//!
//! Why not simply `chromium --dump-dom --virtual-time-budget=MS URL`: virtual time waits
//! for pending fetches but not for WebSockets, so the demo page was dumped before its
//! WebSocket echo came back in about one run in eight here (with or without
//! `--run-all-compositor-stages-before-draw`, with any budget). So the browser runs with
//! `--remote-debugging-port=0` and the harness speaks the DevTools protocol over its
//! WebSocket on 127.0.0.1: open a tab, navigate (a failed navigation is an error naming
//! Chromium's `net::ERR_…`), poll a JavaScript condition, then read the DOM.
//!
//! Every browser gets a fresh `--user-data-dir` and `HOME`, no proxy from the
//! environment (pass `--proxy-server=…` to use one), and is stopped with its whole
//! process group on drop ([`Proc`]); its stderr, less the D-Bus noise of a machine
//! without a session bus, goes into error messages.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::process::{Proc, Stream};
use crate::{require_tool, TempDir};

/// The flags of every run: headless as root, and nothing that reaches off the machine.
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
];

/// The condition [`Chromium::dump_dom`] waits for: the load event has fired and, on a
/// page with a `#status` element (the demo web app's), its text is no longer `pending`.
pub const SETTLED: &str = "document.readyState === 'complete' && \
    (document.getElementById('status')?.textContent ?? 'settled') !== 'pending'";

/// How long [`Chromium::dump_dom`] waits for [`SETTLED`].
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the browser may take to start, and to answer one DevTools message.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running headless Chromium and its DevTools connection; dropping it stops the browser.
pub struct Chromium {
    devtools: WebSocket<TcpStream>,
    next_id: u64,
    proc: Proc,
    _dir: TempDir,
}

impl Chromium {
    /// Starts a browser with `extra_args` (e.g. `--ignore-certificate-errors`,
    /// `--host-resolver-rules=MAP *.example.test 127.0.0.1`), loads `url`, waits for
    /// [`SETTLED`] (at most [`LOAD_TIMEOUT`]) and returns `document.documentElement.outerHTML`.
    pub fn dump_dom(url: &str, extra_args: &[&str]) -> Result<String> {
        Chromium::start(extra_args)?.load(url, SETTLED, LOAD_TIMEOUT)
    }

    /// Starts a browser with [`FLAGS`], a fresh profile and `extra_args`; waits for its
    /// DevTools endpoint and connects to it.
    pub fn start(extra_args: &[&str]) -> Result<Chromium> {
        let bin = require_tool("chromium", "chromium", &[])?;
        let dir = TempDir::new("chromium")?;
        let mut cmd = Command::new(bin);
        cmd.args(FLAGS)
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra_args)
            .arg("about:blank")
            .env("HOME", dir.path());
        for var in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
            cmd.env_remove(var).env_remove(var.to_uppercase());
        }
        let mut proc = Proc::spawn("chromium", cmd, dir.path())?;
        let endpoint = proc.wait_for_line(Stream::Stderr, START_TIMEOUT, |line| {
            line.strip_prefix("DevTools listening on ")
                .map(|url| url.trim().to_owned())
        })?;
        let devtools = connect(&endpoint).with_context(|| {
            format!(
                "DevTools connection to {endpoint}\n{}",
                stderr_excerpt(&proc)
            )
        })?;
        Ok(Chromium {
            devtools,
            next_id: 1,
            proc,
            _dir: dir,
        })
    }

    /// Opens `url` in a new tab, polls the JavaScript expression `condition` every 50 ms
    /// until it is `true`, and returns the tab's DOM (`outerHTML`), then closes the tab.
    /// A navigation Chromium refuses (connection refused, certificate error, …) or a
    /// `condition` still false after `timeout` is an error with the DOM and stderr.
    pub fn load(&mut self, url: &str, condition: &str, timeout: Duration) -> Result<String> {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"}), None)?;
        let target_id = string(&target, "targetId")?;
        let attach = json!({"targetId": target_id, "flatten": true});
        let session = string(
            &self.call("Target.attachToTarget", attach, None)?,
            "sessionId",
        )?;
        let session = Some(session.as_str());
        let navigated = self.call("Page.navigate", json!({"url": url}), session)?;
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            bail!("Chromium could not load {url}: {error}\n{}", self.stderr());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.evaluate(condition, session);
            if matches!(ready, Ok(Value::Bool(true))) {
                break;
            }
            if Instant::now() >= deadline {
                let dom = self.evaluate(OUTER_HTML, session);
                bail!(
                    "{url}: `{condition}` still not true after {timeout:?} (last answer \
                     {ready:?})\n--- DOM ---\n{}\n{}",
                    dom.map(|v| v.as_str().unwrap_or_default().to_owned())
                        .unwrap_or_else(|e| format!("({e:#})")),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dom = self.evaluate(OUTER_HTML, session)?;
        let _ = self.call("Target.closeTarget", json!({"targetId": target_id}), None);
        dom.as_str()
            .map(str::to_owned)
            .with_context(|| format!("outerHTML of {url} is not a string: {dom}"))
    }

    /// Chromium's stderr so far, without the D-Bus lines, labelled for error messages.
    pub fn stderr(&self) -> String {
        stderr_excerpt(&self.proc)
    }

    /// The value of a JavaScript `expression` in the page of `session`; an exception in
    /// the page is an error.
    fn evaluate(&mut self, expression: &str, session: Option<&str>) -> Result<Value> {
        let params = json!({"expression": expression, "returnByValue": true});
        let answer = self.call("Runtime.evaluate", params, session)?;
        if let Some(exception) = answer.get("exceptionDetails") {
            bail!("`{expression}` threw: {exception}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Sends one DevTools command and returns its `result`, skipping events.
    fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.devtools
            .send(Message::text(command.to_string()))
            .with_context(|| format!("DevTools {method}"))?;
        loop {
            let message = self
                .devtools
                .read()
                .with_context(|| format!("DevTools answer to {method}"))?;
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(text.as_str())
                .with_context(|| format!("DevTools sent non-JSON: {text}"))?;
            if answer["id"] != id {
                continue;
            }
            if let Some(error) = answer.get("error") {
                bail!("DevTools {method} failed: {error}");
            }
            return Ok(answer["result"].clone());
        }
    }
}

/// The page's DOM as `--dump-dom` prints it (less the doctype).
const OUTER_HTML: &str = "document.documentElement.outerHTML";

/// A WebSocket to `ws://127.0.0.1:PORT/devtools/browser/ID`, loopback only.
fn connect(endpoint: &str) -> Result<WebSocket<TcpStream>> {
    let authority = endpoint
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("not a ws:// address: {endpoint}"))?;
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("not host:port: {authority}"))?;
    if !addr.ip().is_loopback() {
        bail!("DevTools listens off loopback: {addr}");
    }
    let stream = TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let (socket, _) = tungstenite::client(endpoint, stream)
        .map_err(|e| anyhow!("WebSocket handshake with {endpoint}: {e}"))?;
    Ok(socket)
}

fn string(value: &Value, key: &str) -> Result<String> {
    value[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {key} in {value}"))
}

fn stderr_excerpt(proc: &Proc) -> String {
    let lines: Vec<String> = proc
        .stderr()
        .lines()
        .filter(|line| !line.contains("dbus"))
        .map(str::to_owned)
        .collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    format!("--- chromium stderr ---\n{}", tail.join("\n"))
}

/// The text of the element whose `id` attribute is `id` in a serialized DOM, entities
/// decoded: the text up to the element's first child tag or end tag. `None` when no
/// element has that id.
pub fn element_text(dom: &str, id: &str) -> Option<String> {
    let marker = format!(" id=\"{id}\"");
    let after_id = dom.find(&marker)? + marker.len();
    let text_start = after_id + dom[after_id..].find('>')? + 1;
    let text_len = dom[text_start..].find('<')?;
    let text = &dom[text_start..text_start + text_len];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&"),
    )
}
