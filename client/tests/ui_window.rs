//! The real desktop window (under Xvfb) with a headless peer through a real server, for
//! the "kinder" features: the stranger's video is blurred until shown (checked on the
//! window's own pixels), and after Next the Undo button counts down; the automation
//! then presses Undo. The two PNGs are the README's docs/desktop-blurred.png and
//! docs/desktop-undo.png: `PEER_STREAM_SCREENSHOT_DIR=$PWD/docs cargo test -p peer-stream
//! --test ui_window` writes them there (default: cargo's target tmp dir).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

/// Mean absolute difference of horizontally adjacent pixels (all channels) in a box:
/// high for the sharp test pattern, near zero once blurred.
fn sharpness(img: &image::RgbaImage, x0: u32, y0: u32, w: u32, h: u32) -> f64 {
    let mut sum = 0u64;
    let mut n = 0u64;
    for y in y0..y0 + h {
        for x in x0 + 1..x0 + w {
            let a = img.get_pixel(x - 1, y).0;
            let b = img.get_pixel(x, y).0;
            sum += (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>();
            n += 3;
        }
    }
    sum as f64 / n.max(1) as f64
}

fn last_json(out: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blurred_until_shown_and_undo_after_next_in_the_real_window() {
    if Command::new("xvfb-run").arg("--help").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "xvfb-run is missing: install the xvfb package"
        );
        eprintln!("skipped: xvfb-run is missing (install the xvfb package)");
        return;
    }
    // The default rematch cooldown keeps the two apart after Next, so only Undo can
    // bring them back together.
    let server = common::start_server(0, None, 30).await;
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let dir = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("PEER_STREAM_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&shots).unwrap();
    let blurred = shots.join("desktop-blurred.png");
    let undo = shots.join("desktop-undo.png");
    let _ = std::fs::remove_file(&blurred);
    let _ = std::fs::remove_file(&undo);

    let bot = common::headless_peer(server.port, "warn")
        .args(["--duration", "35", "--tone-hz", "660"])
        .args(["--say", "hi, nice to meet you"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let window = common::desktop_in_xvfb(&url, dir.path())
        .args(["--duration", "25", "--screenshot"])
        .arg(&blurred)
        .arg("--screenshot-undo")
        .arg(&undo)
        .env("PEER_STREAM_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (window, bot) = common::wait_outputs(window, bot, Duration::from_secs(120)).await;
    server.stop().await;

    let log = String::from_utf8_lossy(&window.stderr);
    let summary = last_json(&window.stdout);
    let bot = last_json(&bot.stdout);
    eprintln!("window: {summary}\nbot: {bot}");
    for line in log
        .lines()
        .filter(|l| l.contains("automation") || l.contains("screenshot"))
    {
        eprintln!("window log: {line}");
    }
    assert!(
        summary["frames_decoded"].as_u64().unwrap() >= 30,
        "{summary}"
    );
    assert!(log.contains("automation: pressing Next"), "{log}");
    assert!(log.contains("automation: pressing Undo"), "{log}");

    // Both calls went live: the first, and the one Undo brought back (a resumed match
    // on both sides, despite the rematch cooldown).
    assert_eq!(summary["matches"], 2, "window: {summary}");
    assert_eq!(bot["matches"], 2, "bot: {bot}");

    let img = image::open(&blurred)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", blurred.display()))
        .to_rgba8();
    assert!(img.width() >= 760 && img.height() >= 480);
    // A box in the stranger's video, left of the "Show video" button and above our own
    // picture in picture: smooth when blurred (the test pattern has sharp edges).
    let s = sharpness(&img, img.width() / 16, img.height() / 4, 140, 120);
    assert!(
        s < 3.0,
        "the stranger's video is blurred (sharpness {s:.2})"
    );
    let img = image::open(&undo)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", undo.display()))
        .to_rgba8();
    assert!(img.width() >= 760 && img.height() >= 480);
    eprintln!("screenshots: {} {}", blurred.display(), undo.display());
}
