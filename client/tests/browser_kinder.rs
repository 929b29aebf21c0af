//! The web client's kinder-chat features (issue 12) in Debian's Chromium, driven over
//! the Chrome DevTools Protocol like `browser.rs` (both use the CDP helpers in
//! `common/cdp.rs`): the stranger's video blurred until
//! "Show video", live counts, Mute chat, Next then Undo (button and Alt+U) bringing the
//! same stranger back (`resumed`), Block keeping two pages apart while a third is paired,
//! and the "Check my setup" panel with its verdict.
//!
//! `PEER_STREAM_SCREENSHOT_DIR` saves web-client-blurred.png, web-client-undo.png and
//! web-client-setup-check.png there. Chromium is required (see browser.rs).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use serde_json::json;
use std::time::{Duration, Instant};

/// One test at a time (an async mutex: the guard is held across awaits).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every test is cut off after this long (the guards then kill what it started).
const TEST_LIMIT: Duration = Duration::from_secs(150);

use common::cdp::{screenshot_dir, Chromium, Media, Page};

// ------------------------------------------------------------------------- helpers

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
