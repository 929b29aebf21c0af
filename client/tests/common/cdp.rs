//! Chromium driven over the Chrome DevTools Protocol, shared by the browser suites
//! (`browser.rs`, `browser_kinder.rs`): Chromium launched headless in its own process
//! group with a fake or refused camera and microphone, a minimal CDP client (one
//! WebSocket, flattened target sessions), pages to evaluate, wait on, click and
//! screenshot, and the guard that kills the process group when a test ends.

#![allow(clippy::print_stderr)]

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

pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Where the suites save screenshots (`PEER_STREAM_SCREENSHOT_DIR`), if anywhere.
pub fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("PEER_STREAM_SCREENSHOT_DIR").map(PathBuf::from)
}

impl super::Server {
    /// The web client's page on this server, with `query` (e.g. `autostart=1`).
    pub fn page_url(&self, query: &str) -> String {
        format!("http://127.0.0.1:{}/?{query}", self.port)
    }
}

// ------------------------------------------------------------------------- processes

/// Kills a child process (and with `group`, its whole process group) when dropped.
pub struct ProcessGuard {
    pub child: Option<Child>,
    pub group: bool,
}

impl ProcessGuard {
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
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

/// A minimal Chrome DevTools Protocol client: one WebSocket to the browser, pages
/// reached through flattened target sessions.
pub struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next_id: AtomicU64,
    /// Console messages and uncaught exceptions of every page, for failure reports.
    pub console: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
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

    pub async fn call(
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

    pub fn console_dump(&self) -> String {
        self.console.lock().unwrap().join("\n")
    }

    /// Uncaught exceptions, console errors and Content-Security-Policy violations.
    pub fn problems(&self) -> Vec<String> {
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

pub struct Chromium {
    pub cdp: Cdp,
    /// Kills Chromium's process group when dropped (after the DevTools connection).
    _proc: ProcessGuard,
    _profile: tempfile::TempDir,
}

/// What getUserMedia gets in a browser.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// Chromium's fake camera (a green frame with a moving pie) and fake microphone (beeps).
    Fake,
    /// The user said no to the camera and microphone.
    Denied,
}

impl Chromium {
    pub async fn launch(media: Media) -> Chromium {
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
    pub async fn open(&self, name: &'static str, url: &str) -> Page<'_> {
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
    pub fn assert_clean(&self) {
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

pub struct Page<'a> {
    pub cdp: &'a Cdp,
    pub session: String,
    pub name: &'static str,
}

/// What a failure report shows of a page.
pub const SNAPSHOT: &str =
    "({ state: peerStream.state, role: peerStream.role, matchId: peerStream.matchId, \
    connection: peerStream.connectionState, media: peerStream.media, chat: peerStream.chat, \
    system: peerStream.system, banner: document.getElementById('banner').hidden ? null : \
    document.getElementById('banner-text').textContent })";

impl Page<'_> {
    pub async fn cmd(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
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

    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr).await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn snapshot(&self) -> String {
        match self.try_eval(SNAPSHOT).await {
            Ok(v) => v.to_string(),
            Err(e) => e,
        }
    }

    /// Polls `expr` until it is truthy and returns its value; fails with the page's
    /// state and console after `limit`.
    pub async fn wait_for(&self, what: &str, expr: &str, limit: Duration) -> Value {
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
    pub async fn click(&self, selector: &str) {
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
    pub async fn press_escape(&self) {
        self.cmd("Page.bringToFront", json!({})).await;
        for ty in ["keyDown", "keyUp"] {
            self.cmd(
                "Input.dispatchKeyEvent",
                json!({ "type": ty, "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27, "nativeVirtualKeyCode": 27 }),
            )
            .await;
        }
    }

    pub async fn visible(&self, id: &str) -> bool {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id}); return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0; }})()",
            id = json!(id)
        ))
        .await
            == json!(true)
    }

    pub async fn chat(&self) -> Vec<String> {
        serde_json::from_value(self.eval("peerStream.chat").await).unwrap()
    }

    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .cmd("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    /// Waits until the page decoded more than `frames` video frames and received audio;
    /// returns the page's stats.
    pub async fn wait_for_media(&self, frames: u64, limit: Duration) -> Value {
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

pub fn base64_decode(text: &str) -> Vec<u8> {
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
