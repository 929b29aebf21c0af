//! The web client's kinder-chat features (issue 12) in Debian's Chromium, driven over
//! the Chrome DevTools Protocol like `browser.rs` (whose minimal CDP helpers are copied
//! here so the two suites can change independently): the stranger's video blurred until
//! "Show video", live counts, Mute chat, Next then Undo (button and Alt+U) bringing the
//! same stranger back (`resumed`), Block keeping two pages apart while a third is paired,
//! and the "Check my setup" panel with its verdict.
//!
//! `PEER_STREAM_SCREENSHOT_DIR` saves web-client-blurred.png, web-client-undo.png and
//! web-client-setup-check.png there. Chromium is required (see browser.rs).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr, dead_code)]

mod common;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// One test at a time (an async mutex: the guard is held across awaits).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every test is cut off after this long (the guards then kill what it started).
const TEST_LIMIT: Duration = Duration::from_secs(150);
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

use common::Server;

impl Server {
    fn page_url(&self, query: &str) -> String {
        format!("http://127.0.0.1:{}/?{query}", self.port)
    }
}

/// Kills a child process (and with `group`, its whole process group) when dropped.
struct ProcessGuard {
    child: Option<Child>,
    group: bool,
}

impl ProcessGuard {
    fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.group {
            // Chromium's renderer, GPU and utility processes share its process group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ------------------------------------------------------------------------- Chromium + CDP

/// A minimal Chrome DevTools Protocol client: one WebSocket to the browser, pages
/// reached through flattened target sessions.
struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next_id: AtomicU64,
    /// Console messages and uncaught exceptions of every page, for failure reports.
    console: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"));
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
                let line = match v["method"].as_str() {
                    Some("Runtime.consoleAPICalled") => {
                        let args: Vec<String> = v["params"]["args"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| {
                                        x["value"]
                                            .as_str()
                                            .map(str::to_owned)
                                            .or_else(|| x.get("value").map(Value::to_string))
                                            .or_else(|| {
                                                x["description"].as_str().map(str::to_owned)
                                            })
                                            .unwrap_or_default()
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        format!(
                            "console.{}: {}",
                            v["params"]["type"].as_str().unwrap_or("?"),
                            args.join(" ")
                        )
                    }
                    Some("Runtime.exceptionThrown") => {
                        let d = &v["params"]["exceptionDetails"];
                        format!(
                            "uncaught: {} {}",
                            d["text"].as_str().unwrap_or(""),
                            d["exception"]["description"].as_str().unwrap_or("")
                        )
                    }
                    Some("Log.entryAdded") => {
                        let e = &v["params"]["entry"];
                        format!(
                            "log.{} ({}): {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["source"].as_str().unwrap_or("?"),
                            e["text"].as_str().unwrap_or("")
                        )
                    }
                    Some("Inspector.targetCrashed") => "uncaught: the page crashed".to_owned(),
                    _ => continue,
                };
                let session = v["sessionId"].as_str().unwrap_or("browser");
                c.lock()
                    .unwrap()
                    .push(format!("[{}] {line}", &session[..session.len().min(6)]));
            }
        });
        Cdp {
            out,
            pending,
            next_id: AtomicU64::new(1),
            console,
            tasks: vec![writer, reader],
        }
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.out
            .send(Message::text(msg.to_string()))
            .map_err(|_| format!("{method}: the DevTools connection is gone"))?;
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| format!("{method}: no reply within 30 s"))?
            .map_err(|_| format!("{method}: the DevTools connection closed"))?;
        match reply.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(reply["result"].clone()),
        }
    }

    fn console_dump(&self) -> String {
        self.console.lock().unwrap().join("\n")
    }

    /// Uncaught exceptions, console errors and Content-Security-Policy violations.
    fn problems(&self) -> Vec<String> {
        self.console
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains("uncaught: ")
                    || l.contains("console.error: ")
                    || l.contains("Content Security Policy")
            })
            .cloned()
            .collect()
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Chromium {
    cdp: Cdp,
    /// Kills Chromium's process group when dropped (after the DevTools connection).
    _proc: ProcessGuard,
    _profile: tempfile::TempDir,
}

/// What getUserMedia gets in a browser.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Media {
    /// Chromium's fake camera (a green frame with a moving pie) and fake microphone (beeps).
    Fake,
    /// The user said no to the camera and microphone.
    Denied,
}

impl Chromium {
    async fn launch(media: Media) -> Chromium {
        let exe =
            std::env::var("PEER_STREAM_CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_owned());
        assert!(
            Path::new(&exe).exists(),
            "Chromium is required for the browser interop tests but {exe} does not exist. \
             Install Debian's `chromium` package (`scripts/deps.sh --test` does, so does \
             `apt-get install chromium`), or point PEER_STREAM_CHROMIUM at a Chromium binary. \
             Never let a test tool download a browser."
        );
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            if media == Media::Fake {
                "--use-fake-ui-for-media-stream"
            } else {
                "--deny-permission-prompts"
            },
            "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-gpu",
            // Two pages in one browser both keep running at full speed.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1280,800",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        if std::env::var_os("PEER_STREAM_CHROMIUM_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let mut proc = ProcessGuard {
            child: Some(child),
            group: true,
        };

        // Chromium writes the port it picked and the browser target's path here.
        let port_file = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    if let Ok(port) = port.trim().parse::<u16>() {
                        break (port, path.trim().to_owned());
                    }
                }
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "Chromium exited at start-up ({status}); run with PEER_STREAM_CHROMIUM_LOG=1"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Chromium did not open its DevTools port within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let cdp = Cdp::connect(&format!("ws://127.0.0.1:{port}{path}")).await;
        eprintln!(
            "chromium pid {} up in {} ms",
            proc.id(),
            start.elapsed().as_millis()
        );
        Chromium {
            cdp,
            _proc: proc,
            _profile: profile,
        }
    }

    /// Opens a new window, attaches to it, then navigates to `url` and waits for the
    /// page's script to be running.
    async fn open(&self, name: &'static str, url: &str) -> Page<'_> {
        let cdp = &self.cdp;
        let target = cdp
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "newWindow": true, "width": 1280, "height": 800 }),
            )
            .await
            .unwrap();
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await
            .unwrap();
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let page = Page { cdp, session, name };
        page.cmd("Runtime.enable", json!({})).await;
        page.cmd("Log.enable", json!({})).await;
        page.cmd("Page.enable", json!({})).await;
        page.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        page.cmd("Page.navigate", json!({ "url": url })).await;
        page.wait_for(
            "the page script to run",
            "typeof window.peerStream === 'object' && location.href.startsWith('http')",
            Duration::from_secs(20),
        )
        .await;
        page
    }
}

impl Chromium {
    /// Fails if any page threw, logged an error or broke its Content-Security-Policy.
    fn assert_clean(&self) {
        if std::env::var_os("PEER_STREAM_BROWSER_CONSOLE").is_some() {
            eprintln!("browser console:\n{}", self.cdp.console_dump());
        }
        let problems = self.cdp.problems();
        assert!(
            problems.is_empty(),
            "the pages reported problems:\n{}",
            problems.join("\n")
        );
    }
}

struct Page<'a> {
    cdp: &'a Cdp,
    session: String,
    name: &'static str,
}

/// What a failure report shows of a page.
const SNAPSHOT: &str =
    "({ state: peerStream.state, role: peerStream.role, matchId: peerStream.matchId, \
    connection: peerStream.connectionState, media: peerStream.media, chat: peerStream.chat, \
    system: peerStream.system, banner: document.getElementById('banner').hidden ? null : \
    document.getElementById('banner-text').textContent })";

impl Page<'_> {
    async fn cmd(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!(
                "{}: `{expr}` threw: {}",
                self.name,
                ex["exception"]["description"]
                    .as_str()
                    .unwrap_or(&ex.to_string())
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn snapshot(&self) -> String {
        match self.try_eval(SNAPSHOT).await {
            Ok(v) => v.to_string(),
            Err(e) => e,
        }
    }

    /// Polls `expr` until it is truthy and returns its value; fails with the page's
    /// state and console after `limit`.
    async fn wait_for(&self, what: &str, expr: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let last = self.try_eval(expr).await;
            if let Ok(v) = &last {
                let truthy = !matches!(v, Value::Null | Value::Bool(false))
                    && v.as_f64() != Some(0.0)
                    && v.as_str() != Some("");
                if truthy {
                    return v.clone();
                }
            }
            if start.elapsed() > limit {
                panic!(
                    "{}: timed out after {limit:?} waiting for {what} (last: {last:?})\n\
                     page: {}\nconsole:\n{}",
                    self.name,
                    self.snapshot().await,
                    self.cdp.console_dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks a real element through its own click handler.
    async fn click(&self, selector: &str) {
        let clicked = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e || e.disabled || e.closest('[hidden]')) return false; e.click(); return true; }})()",
                sel = json!(selector)
            ))
            .await;
        assert_eq!(
            clicked,
            json!(true),
            "{}: {selector} is missing, hidden or disabled; page: {}",
            self.name,
            self.snapshot().await
        );
    }

    /// Presses a key as the user would (a trusted key event).
    async fn press_escape(&self) {
        self.cmd("Page.bringToFront", json!({})).await;
        for ty in ["keyDown", "keyUp"] {
            self.cmd(
                "Input.dispatchKeyEvent",
                json!({ "type": ty, "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27, "nativeVirtualKeyCode": 27 }),
            )
            .await;
        }
    }

    async fn visible(&self, id: &str) -> bool {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id}); return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0; }})()",
            id = json!(id)
        ))
        .await
            == json!(true)
    }

    async fn chat(&self) -> Vec<String> {
        serde_json::from_value(self.eval("peerStream.chat").await).unwrap()
    }

    async fn screenshot(&self, path: &Path) {
        let shot = self
            .cmd("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Waits until the page decoded more than `frames` video frames and received audio;
    /// returns the page's stats.
    async fn wait_for_media(&self, frames: u64, limit: Duration) -> Value {
        self.wait_for(
            &format!("more than {frames} decoded video frames and received audio"),
            &format!(
                "(async () => {{ const s = await peerStream.stats(); \
                 return s && s.framesDecoded > {frames} && s.audioPacketsReceived > 0 ? s : null; }})()"
            ),
            limit,
        )
        .await
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

// ------------------------------------------------------------------------- helpers

fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("PEER_STREAM_SCREENSHOT_DIR").map(PathBuf::from)
}

async fn limited(fut: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("the test took longer than {TEST_LIMIT:?}"));
}

impl Page<'_> {
    /// Alt+U as the user presses it (trusted key events), with the focus where it is.
    async fn press_alt_u(&self) {
        self.cmd("Page.bringToFront", json!({})).await;
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({ "type": "rawKeyDown", "modifiers": 1, "key": "u", "code": "KeyU", "windowsVirtualKeyCode": 85, "nativeVirtualKeyCode": 85 }),
        )
        .await;
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({ "type": "char", "modifiers": 1, "key": "u", "code": "KeyU", "text": "u", "unmodifiedText": "u" }),
        )
        .await;
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "modifiers": 1, "key": "u", "code": "KeyU", "windowsVirtualKeyCode": 85, "nativeVirtualKeyCode": 85 }),
        )
        .await;
    }

    /// Sends a chat line through the compose box.
    async fn say(&self, text: &str) {
        self.eval(&format!(
            "(() => {{ const m = document.getElementById('message'); m.value = {t}; \
             document.getElementById('compose').requestSubmit(); return true; }})()",
            t = json!(text)
        ))
        .await;
    }

    /// How many of the stranger's chat lines are on screen.
    async fn visible_stranger_lines(&self) -> u64 {
        self.eval(
            "Array.from(document.querySelectorAll('#log li.stranger')).filter((e) => e.getClientRects().length > 0).length",
        )
        .await
        .as_u64()
        .unwrap()
    }

    async fn system_has(&self, line: &str) -> bool {
        self.eval(&format!("peerStream.system.includes({})", json!(line)))
            .await
            == json!(true)
    }

    async fn text_of(&self, id: &str) -> String {
        self.eval(&format!(
            "document.getElementById({}).textContent",
            json!(id)
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }
}

const BOTH_CHATTING: &str = "peerStream.state === 'chatting' && peerStream.matchId";
const REMOTE_FILTER: &str = "getComputedStyle(document.getElementById('remote-video')).filter";

fn counts_text_ok(text: &str) -> bool {
    // "3 online · 1 waiting"
    let parts: Vec<&str> = text.split(" · ").collect();
    parts.len() == 2
        && parts[0].ends_with(" online")
        && parts[1].ends_with(" waiting")
        && parts[0].trim_end_matches(" online").parse::<u64>().is_ok()
        && parts[1].trim_end_matches(" waiting").parse::<u64>().is_ok()
}

// ------------------------------------------------------------------------- tests

/// Blur until revealed, live counts, Mute chat, Next + Undo (button and Alt+U), and
/// Block, between two pages (and a third that gets paired instead of the blocked one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blur_counts_mute_undo_and_block_in_the_page() {
    let _serial = SERIAL.lock().await;
    limited(async {
        let started = Instant::now();
        // No rematch cooldown: only the block keeps A and B apart at the end.
        let server = common::start_server(0, None, 0).await;
        let chrome = Chromium::launch(Media::Fake).await;
        let shots = screenshot_dir();

        // Live counts on the home screen of a page that has not started.
        let home = chrome.open("home", &server.page_url("")).await;
        home.wait_for(
            "live counts on the home screen",
            "peerStream.counts",
            Duration::from_secs(20),
        )
        .await;
        assert!(
            home.visible("home-counts").await,
            "the home screen shows the counts"
        );
        let text = home.text_of("home-counts").await;
        assert!(counts_text_ok(&text), "home counts: {text:?}");
        assert_eq!(home.eval("peerStream.counts.online").await, 1);

        let a = chrome.open("A", &server.page_url("autostart=1")).await;
        a.wait_for("A to queue", "peerStream.queued", Duration::from_secs(20))
            .await;
        // The home page's numbers follow (one more online, one waiting).
        home.wait_for(
            "the counts to follow A",
            "peerStream.counts.online === 2 && peerStream.counts.waiting === 1 && \
             document.getElementById('home-counts').textContent === '2 online · 1 waiting'",
            Duration::from_secs(10),
        )
        .await;
        let status = a.text_of("remote-status").await;
        assert!(
            status.contains(" waiting)"),
            "the searching screen shows the counts: {status}"
        );
        assert!(counts_text_ok(&a.text_of("online").await));

        let b = chrome.open("B", &server.page_url("autostart=1")).await;
        let m1 = a
            .wait_for("a match", BOTH_CHATTING, Duration::from_secs(20))
            .await;
        assert_eq!(
            b.wait_for("a match", BOTH_CHATTING, Duration::from_secs(20))
                .await,
            m1
        );
        home.wait_for(
            "the counts to show nobody waiting",
            "peerStream.counts.online === 3 && peerStream.counts.waiting === 0",
            Duration::from_secs(10),
        )
        .await;

        // Blur until revealed (the default): the stranger's video is blurred on the page.
        for page in [&a, &b] {
            assert_eq!(
                page.eval("peerStream.videoHidden").await,
                true,
                "{}",
                page.name
            );
            assert!(
                page.system_has("Video hidden until you show it.").await,
                "{}",
                page.name
            );
            assert!(page.visible("reveal").await, "{}: Show video", page.name);
            let filter = page.eval(REMOTE_FILTER).await;
            assert!(
                filter.as_str().unwrap_or_default().contains("blur("),
                "{}: {filter}",
                page.name
            );
        }
        a.wait_for_media(10, Duration::from_secs(40)).await;
        if let Some(dir) = &shots {
            std::fs::create_dir_all(dir).unwrap();
            a.screenshot(&dir.join("web-client-blurred.png")).await;
        }
        a.click("#reveal").await;
        assert_eq!(a.eval("peerStream.videoHidden").await, false);
        assert_eq!(a.eval(REMOTE_FILTER).await, "none");
        assert!(!a.visible("reveal").await);
        // B did not reveal: still blurred there (per call, per page).
        assert_eq!(b.eval("peerStream.videoHidden").await, true);

        // Mute chat hides the stranger's lines for the rest of the call.
        b.say("line one").await;
        a.wait_for(
            "B's first line",
            "peerStream.chat.includes('stranger: line one')",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(a.visible_stranger_lines().await, 1);
        a.click("#mute-chat").await;
        assert_eq!(a.eval("peerStream.chatMuted").await, true);
        b.say("line two").await;
        a.wait_for(
            "B's second line",
            "peerStream.chat.includes('stranger: line two')",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            a.visible_stranger_lines().await,
            0,
            "muted: no stranger line on screen"
        );
        assert_eq!(a.text_of("mute-chat").await, "Unmute chat");

        // Alt+U in the chat box types nothing (and there is nothing to undo yet).
        a.eval("document.getElementById('message').focus()").await;
        a.press_alt_u().await;
        assert_eq!(a.eval("document.getElementById('message').value").await, "");
        assert_eq!(a.eval("peerStream.state").await, "chatting");

        // Next, then Undo with the button: the same stranger comes back.
        a.click("#next").await;
        a.click("#next").await;
        assert_eq!(a.eval("peerStream.state").await, "searching");
        assert!(a.visible("undo").await, "Undo is offered after Next");
        let label = a.text_of("undo-label").await;
        assert!(label.starts_with("Undo ("), "countdown: {label}");
        b.wait_for(
            "B to see A skip",
            "peerStream.state === 'ended'",
            Duration::from_secs(10),
        )
        .await;
        if let Some(dir) = &shots {
            a.screenshot(&dir.join("web-client-undo.png")).await;
        }
        a.click("#undo").await;
        let m2 = a
            .wait_for("the resumed match", BOTH_CHATTING, Duration::from_secs(20))
            .await;
        assert_ne!(m2, m1, "a resumed match has a new id");
        assert_eq!(
            b.wait_for("the resumed match", BOTH_CHATTING, Duration::from_secs(20))
                .await,
            m2
        );
        assert!(
            a.system_has("You're back with the previous stranger.")
                .await
        );
        assert!(b.system_has("Stranger came back.").await);
        assert!(!a.visible("undo").await, "Undo is gone once used");
        // A new call: blurred again, chat not muted.
        assert_eq!(a.eval("peerStream.videoHidden").await, true);
        assert_eq!(a.eval("peerStream.chatMuted").await, false);

        // Next, then Alt+U: back again.
        b.click("#next").await;
        b.click("#next").await;
        a.wait_for(
            "A to see B skip",
            "peerStream.state === 'ended'",
            Duration::from_secs(10),
        )
        .await;
        b.press_alt_u().await;
        let m3 = b
            .wait_for(
                "the second resumed match",
                BOTH_CHATTING,
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(
            a.wait_for(
                "the second resumed match",
                BOTH_CHATTING,
                Duration::from_secs(20)
            )
            .await,
            m3
        );
        assert!(a.system_has("Stranger came back.").await);

        // Report never offers Undo. A reports B (the dialog's block box is ticked).
        a.click("#report").await;
        assert_eq!(
            a.eval("document.getElementById('report-block').checked")
                .await,
            true
        );
        a.eval("document.getElementById('report-block').checked = false")
            .await;
        a.click("#report-submit").await;
        assert_eq!(a.eval("peerStream.state").await, "searching");
        assert!(!a.visible("undo").await, "no Undo after a report");
        b.wait_for(
            "B to see A leave",
            "peerStream.state === 'ended'",
            Duration::from_secs(10),
        )
        .await;
        // After the call, B blocks A ("Don't match me with this person again").
        assert!(b.visible("block").await, "Block is offered after a call");
        b.click("#block").await;
        assert!(
            b.system_has("You won't be matched with this person again.")
                .await
        );
        assert!(!b.visible("block").await);
        // B looks for someone new while A waits: never paired with each other.
        b.click("#next").await;
        b.wait_for("B to queue", "peerStream.queued", Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.eval("peerStream.state").await, "searching");
        assert_eq!(b.eval("peerStream.state").await, "searching");
        // A third page is paired with one of them (A waited longest) instead.
        let c = chrome.open("C", &server.page_url("autostart=1")).await;
        let m4 = c
            .wait_for("C's match", BOTH_CHATTING, Duration::from_secs(20))
            .await;
        assert_eq!(
            a.wait_for("A meets C", BOTH_CHATTING, Duration::from_secs(20))
                .await,
            m4
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.eval("peerStream.state").await, "searching", "B waits on");

        // A skips C, C presses Stop on the "stranger left" screen: A's Undo is refused
        // in plain words, C stays on its home screen and A keeps searching.
        a.click("#next").await;
        a.click("#next").await;
        c.wait_for("C to see A skip", "peerStream.state === 'ended'", Duration::from_secs(10))
            .await;
        c.click("#stop").await;
        assert_eq!(c.eval("peerStream.state").await, "idle");
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.press_alt_u().await;
        a.wait_for(
            "A's undo to be refused",
            "!document.getElementById('banner').hidden && \
             document.getElementById('banner-text').textContent.includes('the stranger has stopped')",
            Duration::from_secs(10),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.eval("peerStream.state").await, "searching");
        assert_eq!(c.eval("peerStream.state").await, "idle");

        chrome.assert_clean();
        drop((home, a, b, c));
        drop(chrome);
        server.stop().await;
        eprintln!("kinder page flow: {:.1} s", started.elapsed().as_secs_f64());
    })
    .await;
}

/// "Check my setup" on the home screen: the server round trip, the fake camera and
/// microphone with a preview and a level meter, the test tone, the candidates gathered
/// with the server's ICE servers, and a verdict in plain words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_check_panel_gives_a_verdict() {
    let _serial = SERIAL.lock().await;
    limited(async {
        let server = common::start_server(0, None, 60).await;
        let chrome = Chromium::launch(Media::Fake).await;
        let page = chrome.open("check", &server.page_url("")).await;
        assert!(!page.visible("setup").await, "the panel opens on demand");
        page.click("#setup-open").await;
        assert!(page.visible("setup").await);
        let report = page
            .wait_for(
                "the check to finish",
                "peerStream.setup && peerStream.setup.done && peerStream.setup",
                Duration::from_secs(40),
            )
            .await;
        eprintln!("setup check: {report}");
        assert_eq!(report["server_ok"], true, "{report}");
        assert!(report["server_rtt_ms"].as_f64().is_some(), "{report}");
        assert!(
            report["camera"].is_string() && report["microphone"].is_string(),
            "{report}"
        );
        assert!(report["speaker"].is_string(), "{report}");
        assert!(
            report["candidates"]["host"].as_u64().unwrap() >= 1,
            "{report}"
        );
        // A server on loopback: host candidates reach it, so direct calls work.
        assert_eq!(report["can_call"], "direct", "{report}");
        let text = page.text_of("setup-verdict").await;
        assert!(text.len() > 20, "a verdict in plain words: {text:?}");
        assert!(page
            .text_of("setup-server")
            .await
            .starts_with("Reachable: round trip "));
        assert!(page.text_of("setup-camera").await.starts_with("Found: "));
        // The preview plays and the meter moves with the fake microphone's beeps.
        page.wait_for(
            "the preview",
            "document.getElementById('setup-preview').videoWidth > 0",
            Duration::from_secs(10),
        )
        .await;
        page.wait_for(
            "the level meter to move",
            "document.getElementById('setup-level').value > 0",
            Duration::from_secs(15),
        )
        .await;
        page.click("#setup-tone").await;
        assert_eq!(page.eval("peerStream.toneCount").await, 1);
        if let Some(dir) = screenshot_dir() {
            std::fs::create_dir_all(&dir).unwrap();
            page.eval("document.getElementById('setup-verdict').scrollIntoView({ block: 'end' })")
                .await;
            page.screenshot(&dir.join("web-client-setup-check.png"))
                .await;
        }
        page.click("#setup-close").await;
        assert!(!page.visible("setup").await);
        chrome.assert_clean();
        drop(page);
        drop(chrome);
        server.stop().await;
    })
    .await;
}
