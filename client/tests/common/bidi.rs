//! Firefox driven over WebDriver BiDi, which Firefox speaks natively (no driver to
//! download): Firefox launched headless in its own process group with a throw-away
//! profile whose `user.js` gives it a fake camera and microphone (or refuses them), a
//! minimal BiDi client (one WebSocket to `/session`), pages to evaluate, wait on, click,
//! type into and screenshot (the shared [`WebPage`](super::page::WebPage) API, as for
//! Chromium in `cdp.rs`), and the guard that kills the process group when a test ends.
//!
//! `PEER_STREAM_FIREFOX` points at another Firefox (default `/usr/bin/firefox-esr`, then
//! `/usr/bin/firefox`); `PEER_STREAM_FIREFOX_LOG=1` shows Firefox's own log. Without a
//! Firefox the suites skip with a message, except under `CI=true`, where they fail.

#![allow(clippy::print_stderr)]

use super::cdp::{base64_decode, Media, ProcessGuard};
use super::page::{Key, WebPage};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

const DEFAULT_FIREFOXES: [&str; 2] = ["/usr/bin/firefox-esr", "/usr/bin/firefox"];

/// The Firefox the suites use: `PEER_STREAM_FIREFOX`, else Debian's `firefox-esr` or a
/// `firefox`. `None` (after saying why) when there is none and this is not CI; under
/// `CI=true` a missing Firefox fails the test.
pub fn find_firefox() -> Option<PathBuf> {
    if let Some(exe) = std::env::var_os("PEER_STREAM_FIREFOX") {
        let exe = PathBuf::from(exe);
        assert!(
            exe.exists(),
            "PEER_STREAM_FIREFOX points at {} which does not exist",
            exe.display()
        );
        return Some(exe);
    }
    if let Some(exe) = DEFAULT_FIREFOXES.iter().map(Path::new).find(|p| p.exists()) {
        return Some(exe.to_owned());
    }
    let why = "Firefox is needed for the Firefox interop tests but neither /usr/bin/firefox-esr \
               nor /usr/bin/firefox exists. Install Debian's `firefox-esr` package \
               (`scripts/deps.sh --test` does), or point PEER_STREAM_FIREFOX at a Firefox \
               binary. Never let a test tool download a browser.";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The preferences written to the profile's `user.js`.
fn user_js(media: Media) -> String {
    let mut prefs = vec![
        // The fake camera (a colour-cycling frame) and microphone (a tone), no prompt.
        ("media.navigator.streams.fake", "true"),
        // Autoplay keeps Firefox's default (sound only after a click), as users have it:
        // the page must cope (it plays muted and offers "Unmute").
        // ICE on 127.0.0.1 with plain host addresses (no mDNS names), as in the Chromium
        // suites; the server and the desktop peer only listen on loopback.
        ("media.peerconnection.ice.loopback", "true"),
        ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
        // Two windows in one Firefox both keep running at full speed.
        ("dom.min_background_timeout_value", "0"),
        ("dom.timeout.enable_budget_timer_throttling", "false"),
        // Nothing phones home while a test runs.
        ("app.update.enabled", "false"),
        ("browser.shell.checkDefaultBrowser", "false"),
        ("datareporting.policy.dataSubmissionEnabled", "false"),
        ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
        ("browser.safebrowsing.update.enabled", "false"),
        ("media.gmp-manager.updateEnabled", "false"),
        ("services.settings.server", "\"http://127.0.0.1:9/\""),
    ];
    match media {
        Media::Fake => prefs.push(("media.navigator.permission.disabled", "true")),
        Media::Denied => {
            // A prompt that nobody can answer is a "Block": getUserMedia rejects with
            // NotAllowedError, as for a user who said no.
            prefs.push(("media.navigator.permission.disabled", "false"));
            prefs.push(("permissions.default.camera", "2"));
            prefs.push(("permissions.default.microphone", "2"));
        }
    }
    prefs
        .iter()
        .map(|(k, v)| format!("user_pref(\"{k}\", {v});\n"))
        .collect()
}

/// A minimal WebDriver BiDi client: one WebSocket to the browser's `/session`.
pub struct Bidi {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next_id: AtomicU64,
    /// Console messages and uncaught exceptions of every page, for failure reports.
    pub console: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bidi {
    pub async fn connect(url: &str) -> Bidi {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebDriver BiDi WebSocket {url}: {e}"));
        let (mut write, mut read) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if write.send(m).await.is_err() {
                    break;
                }
            }
        });
        let (p, c) = (Arc::clone(&pending), Arc::clone(&console));
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = read.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                    continue;
                }
                if v["method"] != "log.entryAdded" {
                    continue;
                }
                let e = &v["params"];
                let level = e["level"].as_str().unwrap_or("?");
                let text = e["text"].as_str().unwrap_or("");
                let line = if e["type"] == "javascript" {
                    format!("uncaught: {text}")
                } else {
                    format!("console.{level}: {text}")
                };
                let context = e["source"]["context"].as_str().unwrap_or("browser");
                c.lock()
                    .unwrap()
                    .push(format!("[{}] {line}", &context[..context.len().min(6)]));
            }
        });
        Bidi {
            out,
            pending,
            next_id: AtomicU64::new(1),
            console,
            tasks: vec![writer, reader],
        }
    }

    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let msg = json!({ "id": id, "method": method, "params": params });
        self.out
            .send(Message::text(msg.to_string()))
            .map_err(|_| format!("{method}: the BiDi connection is gone"))?;
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| format!("{method}: no reply within 30 s"))?
            .map_err(|_| format!("{method}: the BiDi connection closed"))?;
        if reply["type"] == "error" {
            return Err(format!(
                "{method}: {} {}",
                reply["error"].as_str().unwrap_or("error"),
                reply["message"].as_str().unwrap_or("")
            ));
        }
        Ok(reply["result"].clone())
    }

    pub fn console_dump(&self) -> String {
        self.console.lock().unwrap().join("\n")
    }

    /// Uncaught exceptions and console errors.
    pub fn problems(&self) -> Vec<String> {
        self.console
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("uncaught: ") || l.contains("console.error: "))
            .cloned()
            .collect()
    }
}

impl Drop for Bidi {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Firefox {
    pub bidi: Bidi,
    /// Kills Firefox's process group when dropped (after the BiDi connection).
    _proc: ProcessGuard,
    _profile: tempfile::TempDir,
}

impl Firefox {
    /// Starts Firefox with a fresh profile, or `None` when there is no Firefox (and this
    /// is not CI: see [`find_firefox`]).
    pub async fn launch(media: Media) -> Option<Firefox> {
        let exe = find_firefox()?;
        let profile = tempfile::tempdir().unwrap();
        std::fs::write(profile.path().join("user.js"), user_js(media)).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.args(["--headless", "--no-remote", "--profile"])
            .arg(profile.path())
            // Port 0: Firefox picks one and writes it to WebDriverBiDiServer.json.
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .env("MOZ_HEADLESS_WIDTH", "1280")
            .env("MOZ_HEADLESS_HEIGHT", "800")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if std::env::var_os("PEER_STREAM_FIREFOX_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut proc = ProcessGuard {
            child: Some(child),
            group: true,
        };

        let port_file = profile.path().join("WebDriverBiDiServer.json");
        let start = Instant::now();
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Some(port) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["ws_port"].as_u64())
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                {
                    break port;
                }
            }
            if let Some(status) = proc.exited() {
                panic!("Firefox exited at start-up ({status}); run with PEER_STREAM_FIREFOX_LOG=1");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Firefox did not open its WebDriver BiDi port within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let bidi = Bidi::connect(&format!("ws://127.0.0.1:{port}/session")).await;
        bidi.call("session.new", json!({ "capabilities": {} }))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        bidi.call("session.subscribe", json!({ "events": ["log.entryAdded"] }))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "firefox pid {} up in {} ms",
            proc.id(),
            start.elapsed().as_millis()
        );
        Some(Firefox {
            bidi,
            _proc: proc,
            _profile: profile,
        })
    }

    /// Opens a new window, navigates it to `url` and waits for the page's script to run.
    pub async fn open(&self, name: &'static str, url: &str) -> Page<'_> {
        let created = self
            .bidi
            .call("browsingContext.create", json!({ "type": "window" }))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let context = created["context"].as_str().unwrap().to_owned();
        let page = Page {
            bidi: &self.bidi,
            context,
            name,
        };
        page.cmd(
            "browsingContext.setViewport",
            json!({ "viewport": { "width": 1280, "height": 800 } }),
        )
        .await;
        page.cmd(
            "browsingContext.navigate",
            json!({ "url": url, "wait": "none" }),
        )
        .await;
        page.wait_for(
            "the page script to run",
            "typeof window.peerStream === 'object' && location.href.startsWith('http')",
            Duration::from_secs(20),
        )
        .await;
        page
    }

    /// Fails if any page threw or logged an error.
    pub fn assert_clean(&self) {
        if std::env::var_os("PEER_STREAM_BROWSER_CONSOLE").is_some() {
            eprintln!("browser console:\n{}", self.bidi.console_dump());
        }
        let problems = self.bidi.problems();
        assert!(
            problems.is_empty(),
            "the pages reported problems:\n{}",
            problems.join("\n")
        );
    }
}

/// One window (a top-level browsing context) of a [`Firefox`].
pub struct Page<'a> {
    pub bidi: &'a Bidi,
    pub context: String,
    pub name: &'static str,
}

impl Page<'_> {
    /// A BiDi command about this page (`context` is added to `params`).
    pub async fn cmd(&self, method: &str, mut params: Value) -> Value {
        params["context"] = json!(self.context);
        self.bidi
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// Key presses (WebDriver key values) as the user types them, to the focused element.
    async fn keys(&self, keys: &[String]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({ "type": "keyDown", "value": k }),
                    json!({ "type": "keyUp", "value": k }),
                ]
            })
            .collect();
        self.cmd(
            "input.performActions",
            json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] }),
        )
        .await;
    }
}

impl WebPage for Page<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn console_dump(&self) -> String {
        self.bidi.console_dump()
    }

    /// Evaluates `expr` (awaiting a promise) and hands back its value as JSON: BiDi's
    /// own serialization is typed, so the page serializes the value itself.
    async fn try_eval_as(&self, expr: &str, user: bool) -> Result<Value, String> {
        let wrapped = format!("(async () => JSON.stringify(await ({expr}\n)) ?? 'null')()");
        let r = self
            .bidi
            .call(
                "script.evaluate",
                json!({
                    "expression": wrapped,
                    "target": { "context": self.context },
                    "awaitPromise": true,
                    "userActivation": user,
                }),
            )
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        if r["type"] == "exception" {
            let d = &r["exceptionDetails"];
            return Err(format!(
                "{}: `{expr}` threw: {}",
                self.name,
                d["text"].as_str().unwrap_or(&d.to_string())
            ));
        }
        let text = r["result"]["value"].as_str().unwrap_or("null");
        serde_json::from_str(text).map_err(|e| format!("{}: `{expr}` gave {text}: {e}", self.name))
    }

    async fn type_text(&self, text: &str) {
        let keys: Vec<String> = text.chars().map(String::from).collect();
        self.keys(&keys).await;
    }

    async fn press(&self, key: Key) {
        let value = match key {
            Key::Enter => "\u{E007}",
            Key::Escape => "\u{E00C}",
        };
        self.keys(&[value.to_owned()]).await;
    }

    async fn screenshot(&self, path: &Path) {
        let shot = self
            .cmd("browsingContext.captureScreenshot", json!({}))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    async fn close(&self) {
        let _ = self
            .bidi
            .call("browsingContext.close", json!({ "context": self.context }))
            .await;
    }
}
