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

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One test at a time (an async mutex: the guard is held across awaits).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every test is cut off after this long (the guards then kill what it started).
const TEST_LIMIT: Duration = Duration::from_secs(100);

// ------------------------------------------------------------------------- server

use common::cdp::{screenshot_dir, Chromium, Media, ProcessGuard};
use common::{u, Server};

async fn start_server(rematch_cooldown_secs: u64) -> Server {
    common::start_server(0, None, rematch_cooldown_secs).await
}

async fn start_server_on(port: u16, rematch_cooldown_secs: u64) -> Server {
    common::start_server(port, None, rematch_cooldown_secs).await
}

// ------------------------------------------------------------------------- processes

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

// ------------------------------------------------------------------------- checks

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
