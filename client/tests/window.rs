//! The real desktop binary in a real window (under Xvfb), with `--fake-media`, against a
//! real server and a headless peer: it must go live and decode the stranger's video.
//! The window's screenshot is kept as an artifact (PEER_STREAM_ARTIFACT_DIR, default:
//! cargo's target tmp dir).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use peer_stream_server::{run, Config};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_window_goes_live_with_a_headless_peer() {
    assert!(
        Command::new("xvfb-run").arg("--help").output().is_ok(),
        "xvfb-run is missing: install the xvfb package (make test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        db_path: dir.path().join("t.sqlite3"),
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = CancellationToken::new();
    let server = tokio::spawn(run(listener, cfg, token.clone().cancelled_owned()));
    let url = format!("ws://127.0.0.1:{port}/ws");

    let artifacts = std::env::var_os("PEER_STREAM_ARTIFACT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("desktop-call.png");
    let _ = std::fs::remove_file(&shot);

    let bin = env!("CARGO_BIN_EXE_peer-stream");
    let bot = Command::new(bin)
        .args([
            "--headless",
            "--fake-media",
            "--server",
            &url,
            "--udp-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--duration",
            "25",
            "--tone-hz",
            "660",
            "--say",
            "hello from the bot",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let window = common::desktop_in_xvfb(&url, dir.path())
        .args(["--duration", "15", "--screenshot"])
        .arg(&shot)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (window, bot) = common::wait_outputs(window, bot, Duration::from_secs(90)).await;
    token.cancel();
    let _ = server.await;

    let text = String::from_utf8_lossy(&window.stdout);
    eprintln!("window summary: {text}");
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the window printed no summary ({e}): {text:?}"));
    assert!(summary["matches"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        summary["frames_decoded"].as_u64().unwrap() >= 60,
        "{summary}"
    );
    assert_eq!(summary["per_match"][0]["seq_regressions"], 0, "{summary}");
    let bot: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&bot.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
    )
    .unwrap();
    assert!(
        bot["frames_decoded"].as_u64().unwrap() >= 60,
        "the bot saw the window's video: {bot}"
    );

    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    let img = image::load_from_memory(&png).unwrap().to_rgba8();
    assert!(
        img.width() >= 760 && img.height() >= 480,
        "{}x{}",
        img.width(),
        img.height()
    );
    eprintln!("screenshot: {}", shot.display());
}
