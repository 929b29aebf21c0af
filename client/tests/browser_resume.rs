//! The web client keeps its call when its WebSocket to the server dies: a TCP proxy
//! between Chromium and the real server cuts the page's connection mid-call (no close
//! frame), the page reconnects with `hello` + `resume` within the window, and the same
//! match goes on — video keeps decoding in the page, the desktop peer never notices.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::cdp::{Chromium, Media};
use common::proxy::Proxy;
use common::u;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

async fn frames_decoded(page: &common::cdp::Page<'_>) -> u64 {
    let stats = page
        .eval("(async () => (await peerStream.stats()) || {})()")
        .await;
    stats["framesDecoded"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_its_call_when_its_websocket_is_cut() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let server = common::start_server_with(0, None, |cfg| {
            cfg.rematch_cooldown_secs = 600;
            cfg.resume_window_secs = 10;
        })
        .await;
        let proxy = Proxy::start(server.port).await;
        let chrome = Chromium::launch(Media::Fake).await;
        // The page reaches the server only through the proxy (page, then WebSocket).
        let page = chrome
            .open(
                "browser",
                &format!("http://127.0.0.1:{}/?autostart=1", proxy.port),
            )
            .await;
        page.wait_for(
            "the page to queue",
            "peerStream.queued",
            Duration::from_secs(20),
        )
        .await;
        let desktop = common::headless_peer(server.port, "warn,webrtc=error,rtc=error")
            .args(["--duration", "24"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a headless peer");
        page.wait_for_media(30, Duration::from_secs(40)).await;
        let match_id = page.eval("peerStream.matchId").await;
        assert!(match_id.is_string(), "matched: {match_id}");
        let accepted = proxy.accepted();

        proxy.cut();
        page.wait_for(
            "the page to notice the lost connection",
            "peerStream.system.some((l) => l.includes('reconnecting; the call goes on'))",
            Duration::from_secs(20),
        )
        .await;
        page.wait_for(
            "the page to resume its session",
            "peerStream.welcomed && peerStream.system.includes('Reconnected to the server.')",
            Duration::from_secs(20),
        )
        .await;
        assert!(
            proxy.accepted() > accepted,
            "the page reconnected through the proxy"
        );
        assert_eq!(page.eval("peerStream.state").await, Value::from("chatting"));
        assert_eq!(
            page.eval("peerStream.matchId").await,
            match_id,
            "the same match"
        );
        // Video keeps coming after the resume.
        let after = frames_decoded(&page).await;
        page.wait_for(
            "more video after the resume",
            &format!(
                "(async () => ((await peerStream.stats()) || {{}}).framesDecoded > {} )()",
                after + 30
            ),
            Duration::from_secs(20),
        )
        .await;
        let summary =
            tokio::task::spawn_blocking(move || common::summary(desktop, Duration::from_secs(60)))
                .await
                .unwrap();
        eprintln!("desktop summary: {summary}");
        assert_eq!(
            u(&summary, "matches"),
            1,
            "one match that went on: {summary}"
        );
        assert!(u(&summary, "frames_decoded") >= 100, "{summary}");
        let text = common::metrics_text(server.port).await;
        assert!(
            text.lines()
                .any(|l| l == "peer_stream_sessions_resumed_total 1"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "peer_stream_matches_total 1"),
            "{text}"
        );
        // Both sides reported the call's path once: the page as well as the desktop.
        assert!(
            text.lines()
                .any(|l| l == "peer_stream_calls_total{path=\"host\"} 2"),
            "{text}"
        );
        drop(chrome);
        drop(proxy);
        server.stop().await;
    })
    .await
    .expect("the test took too long");
}
