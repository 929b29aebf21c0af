//! Browser peers: the web client the server serves at `/`, driven in Debian's Chromium
//! (headless, fake camera and microphone) over the Chrome DevTools Protocol, talking to
//! our own headless desktop peer (both role orders), to another browser, and through
//! its own Next / Stop / Report flow.
//!
//! The server runs in-process on 127.0.0.1:0; the page is loaded from it, so
//! http://127.0.0.1 is a secure context and getUserMedia works. Chromium is a child
//! process in its own process group, killed by a guard when a test ends, even on failure.
//! Chromium is required: without it these tests fail (install Debian's `chromium`;
//! `scripts/deps.sh --test` does). `PEER_STREAM_CHROMIUM` points at another binary;
//! `PEER_STREAM_CHROMIUM_LOG=1` shows Chromium's own log; `PEER_STREAM_SCREENSHOT_DIR`
//! makes the browser/desktop call save screenshots (light and dark) there;
//! `PEER_STREAM_BROWSER_CONSOLE=1` prints what the pages logged.
//!
//! The browser and the desktop peer are CPU-heavy, so the tests run one at a time.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
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
const TEST_LIMIT: Duration = Duration::from_secs(100);
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

// ------------------------------------------------------------------------- server

use common::Server;

async fn start_server(rematch_cooldown_secs: u64) -> Server {
    common::start_server(0, None, rematch_cooldown_secs).await
}

async fn start_server_on(port: u16, rematch_cooldown_secs: u64) -> Server {
    common::start_server(port, None, rematch_cooldown_secs).await
}

impl Server {
    fn page_url(&self, query: &str) -> String {
        format!("http://127.0.0.1:{}/?{query}", self.port)
    }
}

// ------------------------------------------------------------------------- processes

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

/// A headless desktop peer (`peer-stream --headless --fake-media`), its log echoed to
/// stderr and kept to read the role it was given.
struct RustPeer {
    proc: ProcessGuard,
    log: Arc<Mutex<Vec<String>>>,
}

impl RustPeer {
    fn spawn(port: u16, extra: &[&str]) -> Self {
        let mut cmd = common::headless_peer(port, "info,webrtc=error,rtc=error");
        cmd.args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start a headless peer");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[desktop peer] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        RustPeer {
            proc: ProcessGuard {
                child: Some(child),
                group: false,
            },
            log,
        }
    }

    /// The role the server gave it, from its `session phase=Connecting {…}` log line.
    fn role(&self) -> Option<&'static str> {
        let log = self.log.lock().unwrap();
        log.iter().find_map(|l| {
            if !l.contains("Connecting") {
                None
            } else if l.contains("role: Offerer") {
                Some("offerer")
            } else if l.contains("role: Answerer") {
                Some("answerer")
            } else {
                None
            }
        })
    }

    /// Waits (blocking) for the peer to exit by itself and returns its JSON summary.
    fn summary(mut self, limit: Duration) -> Value {
        let start = Instant::now();
        while self.proc.exited().is_none() {
            assert!(
                start.elapsed() < limit,
                "the headless peer did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let child = self.proc.child.take().unwrap();
        let out = child.wait_with_output().expect("peer output");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad summary {line:?}: {e}"))
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

// ------------------------------------------------------------------------- checks

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn lines(v: &Value) -> Vec<String> {
    serde_json::from_value(v["chat_lines"].clone()).unwrap()
}

/// The browser received H.264 (constrained baseline, packetization-mode 1) and Opus
/// from the desktop peer, and sends it H.264 (the only video codec the desktop has).
fn assert_desktop_codecs(stats: &Value) {
    let video = &stats["inboundVideo"]["codec"];
    assert_eq!(
        video["mimeType"], "video/H264",
        "inbound video codec: {stats}"
    );
    let fmtp = video["sdpFmtpLine"].as_str().unwrap_or_default();
    assert!(
        fmtp.contains("packetization-mode=1") && fmtp.contains("profile-level-id=42e01f"),
        "inbound H.264 parameters: {fmtp}"
    );
    assert_eq!(
        stats["inboundAudio"]["codec"]["mimeType"], "audio/opus",
        "{stats}"
    );
    assert_eq!(
        stats["outboundVideo"]["codec"]["mimeType"], "video/H264",
        "{stats}"
    );
    assert_eq!(
        stats["outboundAudio"]["codec"]["mimeType"], "audio/opus",
        "{stats}"
    );
}

fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("PEER_STREAM_SCREENSHOT_DIR").map(PathBuf::from)
}

/// One call between the page and a desktop peer, checked from both ends: the roles,
/// media both ways, the codecs, chat both ways, and the end of the call.
async fn browser_meets_desktop(browser_offers: bool) {
    let started = Instant::now();
    let server = start_server(600).await;
    let chrome = Chromium::launch(Media::Fake).await;
    let url = server.page_url("autostart=1&say=hi%20from%20the%20browser&echo=1");
    let (page, desktop) = if browser_offers {
        // The longest waiter offers: the page queues first.
        let page = chrome.open("browser", &url).await;
        page.wait_for(
            "the page to queue",
            "peerStream.queued",
            Duration::from_secs(20),
        )
        .await;
        let desktop = RustPeer::spawn(server.port, &["--duration", "10", "--say", "hi from rust"]);
        (page, desktop)
    } else {
        let desktop = RustPeer::spawn(server.port, &["--duration", "12", "--say", "hi from rust"]);
        // Give the desktop peer time to connect and queue before the page does.
        let queued = Instant::now();
        while !desktop
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Searching"))
        {
            assert!(
                queued.elapsed() < Duration::from_secs(20),
                "the desktop peer never queued"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (chrome.open("browser", &url).await, desktop)
    };

    let want = if browser_offers {
        "offerer"
    } else {
        "answerer"
    };
    let role = page
        .wait_for("a match", "peerStream.role", Duration::from_secs(20))
        .await;
    assert_eq!(role, json!(want), "the browser's role");
    let stats = page.wait_for_media(60, Duration::from_secs(40)).await;
    eprintln!("browser stats: {stats}");
    assert_desktop_codecs(&stats);
    let sdp = if browser_offers { "offer" } else { "answer" };
    assert_eq!(
        stats["localDescriptionType"], sdp,
        "the browser created the {sdp}"
    );
    page.wait_for(
        "the desktop's greeting and the echo of ours",
        "peerStream.chat.includes('stranger: hi from rust') && \
         peerStream.chat.includes('stranger: echo: hi from the browser')",
        Duration::from_secs(20),
    )
    .await;

    if let (true, Some(dir)) = (browser_offers, screenshot_dir()) {
        std::fs::create_dir_all(&dir).unwrap();
        page.wait_for(
            "the remote video on screen",
            "document.body.classList.contains('has-remote-video')",
            Duration::from_secs(10),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        page.screenshot(&dir.join("web-client-call.png")).await;
        page.cmd(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        page.screenshot(&dir.join("web-client-call-dark.png")).await;
        page.cmd("Emulation.setEmulatedMedia", json!({ "features": [] }))
            .await;
    }

    let desktop_role = desktop.role();
    let summary = tokio::task::spawn_blocking(move || desktop.summary(Duration::from_secs(40)))
        .await
        .unwrap();
    eprintln!("desktop summary: {summary}");
    let other = if browser_offers {
        "answerer"
    } else {
        "offerer"
    };
    assert_eq!(desktop_role, Some(other), "the desktop peer's role");
    assert_eq!(u(&summary, "matches"), 1, "{summary}");
    assert!(
        u(&summary, "frames_decoded") >= 60,
        "desktop decoded Chromium's camera: {summary}"
    );
    assert!(
        u(&summary, "audio_frames_decoded") > 0,
        "desktop decoded Chromium's audio: {summary}"
    );
    let chat = lines(&summary);
    assert!(
        chat.contains(&"stranger: hi from the browser".to_owned()),
        "{chat:?}"
    );
    assert!(
        chat.contains(&"stranger: echo: hi from rust".to_owned()),
        "{chat:?}"
    );
    assert!(
        !chat.iter().any(|l| l.contains("echo: echo:")),
        "an echo was echoed: {chat:?}"
    );

    // The desktop peer exited: the page shows that the stranger left.
    page.wait_for(
        "the page to see the stranger leave",
        "peerStream.state === 'ended' && peerStream.system.includes('Stranger has disconnected.')",
        Duration::from_secs(10),
    )
    .await;
    let browser_chat = page.chat().await;
    assert!(
        !browser_chat.iter().any(|l| l.contains("echo: echo:")),
        "{browser_chat:?}"
    );
    chrome.assert_clean();
    drop(chrome);
    server.stop().await;
    eprintln!(
        "browser ({want}) <-> desktop: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn limited(fut: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("the test took longer than {TEST_LIMIT:?}"));
}

// ------------------------------------------------------------------------- tests

/// The page waits first, so the server makes it the offerer: Chromium offers, our
/// engine answers (the rtc#213 payload-type trap would show here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_offers_to_a_desktop_peer() {
    let _serial = SERIAL.lock().await;
    limited(browser_meets_desktop(true)).await;
}

/// The desktop peer waits first: our engine offers, Chromium answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_offers_to_a_browser() {
    let _serial = SERIAL.lock().await;
    limited(browser_meets_desktop(false)).await;
}

/// Two browser pages (two windows of one Chromium) meet through our server and see,
/// hear and chat with each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_meet_through_the_server() {
    let _serial = SERIAL.lock().await;
    limited(async {
        let started = Instant::now();
        let server = start_server(600).await;
        let chrome = Chromium::launch(Media::Fake).await;
        let a = chrome
            .open(
                "A",
                &server.page_url("autostart=1&say=hi%20from%20A&echo=1"),
            )
            .await;
        a.wait_for("A to queue", "peerStream.queued", Duration::from_secs(20))
            .await;
        let b = chrome
            .open(
                "B",
                &server.page_url("autostart=1&say=hi%20from%20B&echo=1"),
            )
            .await;
        assert_eq!(
            a.wait_for("A's match", "peerStream.role", Duration::from_secs(20))
                .await,
            "offerer"
        );
        assert_eq!(
            b.wait_for("B's match", "peerStream.role", Duration::from_secs(20))
                .await,
            "answerer"
        );
        assert_eq!(
            a.eval("peerStream.matchId").await,
            b.eval("peerStream.matchId").await
        );
        for (page, me, them) in [(&a, "A", "B"), (&b, "B", "A")] {
            let stats = page.wait_for_media(60, Duration::from_secs(40)).await;
            eprintln!("{me} stats: {stats}");
            let codec = stats["inboundVideo"]["codec"]["mimeType"]
                .as_str()
                .unwrap_or_default();
            assert!(
                codec == "video/H264" || codec == "video/VP8",
                "{me}: {stats}"
            );
            page.wait_for(
                "the other's greeting and the echo of ours",
                &format!(
                    "peerStream.chat.includes('stranger: hi from {them}') && \
                     peerStream.chat.includes('stranger: echo: hi from {me}')"
                ),
                Duration::from_secs(20),
            )
            .await;
            let chat = page.chat().await;
            assert!(
                !chat.iter().any(|l| l.contains("echo: echo:")),
                "{me}: {chat:?}"
            );
        }
        chrome.assert_clean();
        drop(chrome);
        server.stop().await;
        eprintln!(
            "browser <-> browser: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    })
    .await;
}

/// The page's own controls: typing indicator and Enter to send, Next (pressed twice to
/// confirm), New stranger (Esc), Stop during a call and while searching, Report (which
/// also skips), and what the partner sees each time. A's browser refuses camera and
/// microphone: A says so in plain words, still meets people, and sees and hears them
/// (receive-only). At the end the server restarts and a waiting page finds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_stop_and_report_in_the_page() {
    let _serial = SERIAL.lock().await;
    limited(async {
        let started = Instant::now();
        // No cooldown: the same two pages may meet again after a skip.
        let server = start_server(0).await;
        let chrome = Chromium::launch(Media::Fake).await;
        let no_camera = Chromium::launch(Media::Denied).await;
        let a = no_camera.open("A", &server.page_url("autostart=1")).await;
        a.wait_for("A to queue", "peerStream.queued", Duration::from_secs(20))
            .await;
        assert_eq!(a.eval("peerStream.media.problem").await, "denied");
        assert!(a.visible("local-off").await, "A's preview says the camera is off");
        let b = chrome.open("B", &server.page_url("autostart=1")).await;

        // The page runs under its Content-Security-Policy (an inline script is refused),
        // and the violation reaches the log that `assert_clean` checks at the end.
        let inline = "(() => { const s = document.createElement('script'); \
                      s.textContent = 'window.inlineRan = true'; document.head.append(s); \
                      return window.inlineRan === true ? 'ran' : 'blocked'; })()";
        assert_eq!(b.eval(inline).await, "blocked");
        let start = Instant::now();
        while chrome.cdp.problems().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "no CSP report logged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        chrome.cdp.console.lock().unwrap().clear();

        let both_chatting = "peerStream.state === 'chatting' && peerStream.matchId";
        let m1 = a.wait_for("a match", both_chatting, Duration::from_secs(20)).await;
        assert_eq!(b.wait_for("a match", both_chatting, Duration::from_secs(20)).await, m1);
        assert!(a.visible("remote-video").await && a.visible("local-video").await);
        assert!(!a.visible("home").await, "the home panel is hidden during a chat");
        let system = a.eval("peerStream.system").await;
        for line in [
            "You're now chatting with a random stranger. Say hi!",
            "Your camera is off: the stranger can't see you.",
        ] {
            assert!(system.as_array().unwrap().contains(&json!(line)), "{system}");
        }
        // Receive-only: A sees and hears B and sends nothing; B is told A has no camera.
        let stats = a.wait_for_media(10, Duration::from_secs(30)).await;
        assert!(stats["outboundVideo"].is_null(), "A has nothing to send: {stats}");
        b.wait_for(
            "B to say that A has no camera",
            "document.getElementById('remote-status').textContent === 'The stranger has no camera.'",
            Duration::from_secs(20),
        )
        .await;

        // Typing shows "Stranger is typing…" on the other side; Enter sends.
        a.eval("document.getElementById('message').focus()").await;
        a.cmd("Page.bringToFront", json!({})).await;
        a.cmd("Input.insertText", json!({ "text": "hello there" })).await;
        b.wait_for("the typing indicator", "!document.getElementById('typing').hidden", Duration::from_secs(10))
            .await;
        a.cmd(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyDown", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r" }),
        )
        .await;
        a.cmd("Input.dispatchKeyEvent", json!({ "type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13 }))
            .await;
        b.wait_for(
            "A's line, typing indicator gone",
            "peerStream.chat.includes('stranger: hello there') && document.getElementById('typing').hidden",
            Duration::from_secs(10),
        )
        .await;
        assert!(a.chat().await.contains(&"me: hello there".to_owned()));
        assert_eq!(a.eval("document.getElementById('message').value").await, "");

        // Next: the first press only asks "Really?", the second skips.
        a.click("#next").await;
        assert_eq!(a.eval("document.getElementById('next-label').textContent").await, "Really?");
        assert_eq!(a.eval("peerStream.state").await, "chatting");
        a.click("#next").await;
        assert_eq!(a.eval("peerStream.state").await, "searching");
        b.wait_for(
            "B to see A skip",
            "peerStream.state === 'ended' && peerStream.system.includes('Stranger skipped to someone new.')",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(b.eval("document.getElementById('next-label').textContent").await, "New stranger");
        assert_eq!(b.eval("document.getElementById('report').disabled").await, false);

        // Esc on the "stranger left" screen searches again (one press is enough there).
        b.press_escape().await;
        let m2 = b.wait_for("a second match", both_chatting, Duration::from_secs(20)).await;
        assert_ne!(m2, m1);
        assert_eq!(a.wait_for("a second match", both_chatting, Duration::from_secs(20)).await, m2);

        // Esc twice skips, like the button.
        b.press_escape().await;
        assert_eq!(b.eval("peerStream.state").await, "chatting", "one Esc only arms Next");
        b.press_escape().await;
        assert_eq!(b.eval("peerStream.state").await, "searching");
        a.wait_for("A to see B skip", "peerStream.state === 'ended'", Duration::from_secs(10))
            .await;
        a.click("#next").await; // New stranger
        let m3 = a.wait_for("a third match", both_chatting, Duration::from_secs(20)).await;
        assert_eq!(b.wait_for("a third match", both_chatting, Duration::from_secs(20)).await, m3);

        // Stop during a call: back home; the partner sees the stranger disconnect.
        a.click("#stop").await;
        assert_eq!(a.eval("peerStream.state").await, "idle");
        assert!(a.visible("start").await && a.visible("interests").await, "home screen");
        assert!(!a.visible("controls").await);
        b.wait_for(
            "B to see A stop",
            "peerStream.state === 'ended' && peerStream.system.includes('Stranger has disconnected.')",
            Duration::from_secs(10),
        )
        .await;

        // Start again; B reports A through the dialog, which also skips.
        a.click("#start").await;
        b.click("#next").await;
        let m4 = a.wait_for("a fourth match", both_chatting, Duration::from_secs(20)).await;
        assert_eq!(b.wait_for("a fourth match", both_chatting, Duration::from_secs(20)).await, m4);
        b.click("#report").await;
        assert_eq!(b.eval("document.getElementById('report-dialog').open").await, true);
        b.click("input[name=reason][value='harassment or hate']").await;
        b.click("#report-submit").await;
        assert_eq!(b.eval("document.getElementById('report-dialog').open").await, false);
        assert_eq!(b.eval("peerStream.state").await, "searching", "reporting skips");
        assert_eq!(b.eval("peerStream.lastMatchId").await, m4);
        a.wait_for(
            "A to see B skip after the report",
            "peerStream.state === 'ended'",
            Duration::from_secs(10),
        )
        .await;

        // Stop while searching and on the "stranger left" screen: both back home.
        b.click("#stop").await;
        a.click("#stop").await;
        for page in [&a, &b] {
            assert_eq!(page.eval("peerStream.state").await, "idle");
            assert!(page.visible("start").await, "{}: the Start button is back", page.name);
        }
        // Nobody is left in the queue: a third page waits alone.
        let c = chrome.open("C", &server.page_url("autostart=1")).await;
        c.wait_for("C to queue", "peerStream.queued", Duration::from_secs(20))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.eval("peerStream.state").await, "searching");
        let status = c.eval("document.getElementById('remote-status').textContent").await;
        assert!(
            status.as_str().unwrap_or_default().starts_with("Looking for a stranger… ("),
            "{status}"
        );

        // The server goes away: C says so in plain words, reconnects by itself when the
        // server is back, and is searching again.
        let port = server.port;
        server.stop().await;
        c.wait_for(
            "C to report the lost server",
            "!document.getElementById('banner').hidden && \
             document.getElementById('banner-text').textContent.includes('Reconnecting')",
            Duration::from_secs(10),
        )
        .await;
        let server = start_server_on(port, 0).await;
        c.wait_for(
            "C to reconnect and queue again",
            "peerStream.welcomed && peerStream.queued && document.getElementById('banner').hidden",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(c.eval("peerStream.state").await, "searching");
        chrome.assert_clean();
        no_camera.assert_clean();
        drop((chrome, no_camera));
        server.stop().await;
        eprintln!("page flow: {:.1} s", started.elapsed().as_secs_f64());
    })
    .await;
}
