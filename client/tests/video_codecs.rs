//! Video codec negotiation between two real headless peers through the real server:
//! VP8 when one side lacks H.264, and an audio-only call (not a failed one) when the
//! two sides share no video codec at all. Assertions on counts and content only.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use serde_json::Value;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

/// One call at a time: the peers are CPU-heavy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn peer(port: u16, extra: &[&str]) -> Child {
    let mut cmd = common::headless_peer(port, "warn,rtc=error,webrtc=error");
    cmd.args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().expect("start a headless peer")
}

fn parse(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary JSON ({e}): {text}"))
}

async fn call(a_flags: &[&str], b_flags: &[&str]) -> [(Output, Value); 2] {
    let server = common::start_server(0, None, 600).await;
    let a = peer(server.port, &[&["--duration", "8"], a_flags].concat());
    let b = peer(server.port, &[&["--duration", "8"], b_flags].concat());
    let (a, b) = common::wait_outputs(a, b, Duration::from_secs(60)).await;
    server.stop().await;
    let (va, vb) = (parse(&a), parse(&b));
    eprintln!("A: {va}\nB: {vb}");
    [(a, va), (b, vb)]
}

#[cfg(feature = "vp8")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_h264_gets_vp8_both_ways() {
    let _serial = SERIAL.lock().await;
    // A speaks only VP8; B prefers H.264 but has VP8 too, so both send VP8.
    for (out, v) in call(&["--video-codec", "vp8"], &[]).await {
        assert!(out.status.success(), "exit status {:?}: {v}", out.status);
        assert_eq!(v["matches"], 1, "{v}");
        assert_eq!(v["per_match"][0]["video_codec"], "VP8", "{v}");
        assert!(common::u(&v, "frames_decoded") >= 100, "{v}");
        assert_eq!(v["per_match"][0]["seq_regressions"], 0, "{v}");
        assert!(common::u(&v, "audio_frames_decoded") >= 100, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_peers_agree_on_h264() {
    let _serial = SERIAL.lock().await;
    for (out, v) in call(&[], &[]).await {
        assert!(out.status.success(), "exit status {:?}: {v}", out.status);
        assert_eq!(v["per_match"][0]["video_codec"], "H264", "{v}");
        assert!(common::u(&v, "frames_decoded") >= 100, "{v}");
    }
}

#[cfg(feature = "vp8")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shared_video_codec_is_an_audio_call_not_a_failure() {
    let _serial = SERIAL.lock().await;
    // Whoever answers finds no common video codec and rejects only the video m-line.
    for (out, v) in call(
        &["--video-codec", "h264", "--say", "hello"],
        &["--video-codec", "vp8"],
    )
    .await
    {
        assert!(
            out.status.success(),
            "audio-only is a success: {:?}: {v}",
            out.status
        );
        assert_eq!(v["matches"], 1, "{v}");
        assert_eq!(v["per_match"][0]["video_codec"], Value::Null, "{v}");
        assert_eq!(common::u(&v, "frames_decoded"), 0, "{v}");
        assert!(common::u(&v, "audio_frames_decoded") >= 100, "{v}");
        assert!(v["candidate_type"].is_string(), "the call connected: {v}");
    }
}
