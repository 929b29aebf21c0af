//! End to end: real headless peer processes talking through a real signaling server
//! (the server library on 127.0.0.1:0, so the test controls its restarts), with real
//! WebRTC over loopback, real H.264 and Opus.
//!
//! The peers are CPU-heavy (encode + decode 640x480@30 each), so the tests in this file
//! run one at a time, and assert on counts and content, never on timings.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::{summary, u};
use serde_json::Value;
use std::process::{Child, Stdio};
use std::time::Duration;

/// One call at a time: the peers are CPU-heavy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(port: u16, dir: Option<tempfile::TempDir>) -> common::Server {
    common::start_server_with(port, dir, |cfg| {
        cfg.rematch_cooldown_secs = 600;
        // A killed peer (no close frame) keeps its session this long for a resume
        // before its partner is told (client/tests/resume.rs tests the resume itself).
        cfg.resume_window_secs = 3;
    })
    .await
}

fn peer(port: u16, extra: &[&str]) -> Child {
    let mut cmd = common::headless_peer(port, "warn,rtc=error,webrtc=error");
    cmd.args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().expect("start a headless peer")
}

fn lines(v: &Value) -> Vec<String> {
    v["chat_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

/// Every match that decoded video saw a moving picture: increasing frame numbers.
fn assert_moving_video(v: &Value) {
    for m in v["per_match"].as_array().unwrap() {
        assert_eq!(m["seq_regressions"], 0, "frame numbers went backwards: {m}");
        if m["frames_decoded"].as_u64().unwrap() > 10 {
            let first = m["first_seq"].as_u64().unwrap();
            let last = m["last_seq"].as_u64().unwrap();
            assert!(last > first, "frozen picture: {m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_see_hear_and_chat() {
    let _serial = SERIAL.lock().await;
    let server = start(0, None).await;
    let a = peer(
        server.port,
        &["--duration", "9", "--tone-hz", "440", "--say", "hi from A"],
    );
    let b = peer(
        server.port,
        &["--duration", "9", "--tone-hz", "660", "--say", "hi from B"],
    );
    let (a, b) = common::summaries(a, b, Duration::from_secs(60)).await;
    let text = common::metrics_text(server.port).await;
    server.stop().await;
    eprintln!("A: {a}\nB: {b}");
    // Each side sent its call_report once (on loopback the path is host).
    assert!(
        text.lines()
            .any(|l| l == "peer_stream_calls_total{path=\"host\"} 2"),
        "{text}"
    );
    for (me, other_tone, them) in [(&a, 660.0, "B"), (&b, 440.0, "A")] {
        assert_eq!(u(me, "matches"), 1);
        assert!(u(me, "frames_decoded") >= 100, "{me}");
        assert_moving_video(me);
        let last = me["per_match"][0]["last_seq"].as_u64().unwrap();
        let first = me["per_match"][0]["first_seq"].as_u64().unwrap();
        assert!(
            last >= first + 60,
            "the partner's frame numbers advance: {me}"
        );
        assert!(u(me, "audio_frames_decoded") >= 100, "{me}");
        let hz = me["audio_dominant_hz"].as_f64().expect("received audio");
        assert!(
            (hz - other_tone).abs() <= 20.0,
            "heard {hz} Hz, partner plays {other_tone}"
        );
        let chat = lines(me);
        assert!(
            chat.contains(&format!("stranger: hi from {them}")),
            "{chat:?}"
        );
        let mine = if them == "A" {
            "hi from B"
        } else {
            "hi from A"
        };
        assert!(
            chat.contains(&format!("stranger: echo: {mine}")),
            "{chat:?}"
        );
        assert!(
            !chat.iter().any(|l| l.contains("echo: echo:")),
            "an echo was echoed: {chat:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_rematches_everyone_with_fresh_media() {
    let _serial = SERIAL.lock().await;
    let server = start(0, None).await;
    let a = peer(server.port, &["--duration", "16", "--next-after", "4"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = peer(server.port, &["--duration", "16"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = peer(server.port, &["--duration", "16"]);
    let results =
        tokio::task::spawn_blocking(move || [a, b, c].map(|p| summary(p, Duration::from_secs(90))))
            .await
            .unwrap();
    server.stop().await;
    for r in &results {
        eprintln!("{r}");
    }
    let [a, b, c] = &results;
    assert!(u(a, "matches") >= 2, "A skipped and met someone new: {a}");
    assert!(u(b, "matches") + u(c, "matches") >= 3, "B and C: {b} {c}");
    for r in &results {
        assert_moving_video(r);
    }
    // A's second match carried media too (not only the first).
    let second = &a["per_match"][1];
    assert!(
        second["frames_decoded"].as_u64().unwrap() > 30,
        "media flows in the new match: {a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_killed_then_a_newcomer_is_matched() {
    let _serial = SERIAL.lock().await;
    let server = start(0, None).await;
    let a = peer(server.port, &["--duration", "16"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = peer(server.port, &["--duration", "60"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.kill().expect("kill B");
    let _ = b.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = peer(server.port, &["--duration", "9"]);
    let (a, c) = common::summaries(a, c, Duration::from_secs(60)).await;
    server.stop().await;
    eprintln!("A: {a}\nC: {c}");
    assert_eq!(u(&a, "matches"), 2, "A met B, then C: {a}");
    assert!(
        a["per_match"][1]["frames_decoded"].as_u64().unwrap() > 30,
        "{a}"
    );
    assert!(u(&c, "frames_decoded") > 30, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_reconnect_and_requeue_after_a_server_restart() {
    let _serial = SERIAL.lock().await;
    let server = start(0, None).await;
    let port = server.port;
    let a = peer(port, &["--duration", "20"]);
    let b = peer(port, &["--duration", "20"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dir = server.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server = start(port, Some(dir)).await;
    let (a, b) = common::summaries(a, b, Duration::from_secs(60)).await;
    server.stop().await;
    eprintln!("A: {a}\nB: {b}");
    for r in [&a, &b] {
        assert_eq!(u(r, "matches"), 2, "matched again after the restart: {r}");
        assert!(
            r["per_match"][1]["frames_decoded"].as_u64().unwrap() > 30,
            "{r}"
        );
        assert_moving_video(r);
    }
}
