//! "Check my setup", for real: the `peer-stream --check` binary against the real server
//! (in-process on loopback), a closed port, the server saved in the app's settings, the
//! app's built-in server, and Debian's coturn for STUN and TURN (right and wrong
//! secret, `--ice-policy relay`). Plus the screen, driven through egui_kittest with
//! FakeEngine's canned result.
//!
//! Without coturn the TURN test skips with a message, and fails under `CI=true`
//! (`scripts/deps.sh --test` installs it).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::coturn::Coturn;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use peer_stream::app::handle::FakeEngine;
use peer_stream::app::settings::Settings;
use peer_stream::app::{PeerStreamApp, Screen};
use peer_stream::check::job::{CheckStatus, ToneState};
use peer_stream::check::{CanCall, Candidates, CheckReport};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The whole check is bounded by ~10 s; the process gets generous slack on a busy box.
const PROCESS_LIMIT: Duration = Duration::from_secs(40);

struct Outcome {
    json: Value,
    code: Option<i32>,
    elapsed: Duration,
    stderr: String,
}

/// Runs `peer-stream --check` with `args`, its app data in `data_home` (no saved
/// settings unless the test wrote some).
async fn run_check(args: &[&str], data_home: &Path) -> Outcome {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_peer-stream"));
    cmd.arg("--check")
        .args(args)
        .args(["--log", "warn,rtc=error,webrtc=error"])
        .env("XDG_DATA_HOME", data_home)
        .env_remove("PEER_STREAM_SERVER")
        .env_remove("PEER_STREAM_ICE_POLICY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let out = tokio::time::timeout(PROCESS_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("peer-stream --check did not exit within {PROCESS_LIMIT:?}"))
        .expect("run peer-stream --check");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON line on stdout, got {stdout:?}\nstderr:\n{stderr}"
    );
    let json: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr:\n{stderr}", lines[0]));
    check_shape(&json);
    eprintln!("check {args:?} -> {json} in {elapsed:?}");
    Outcome {
        json,
        code: out.status.code(),
        elapsed,
        stderr,
    }
}

/// The contract: these fields with these types, whatever the outcome.
fn check_shape(v: &Value) {
    assert!(v["server_ok"].is_boolean(), "server_ok: {v}");
    assert!(
        v["server_rtt_ms"].is_number() || v["server_rtt_ms"].is_null(),
        "server_rtt_ms: {v}"
    );
    for key in ["camera", "microphone", "speaker"] {
        assert!(v[key].is_string() || v[key].is_null(), "{key}: {v}");
    }
    assert!(v["stun_ok"].is_boolean(), "stun_ok: {v}");
    assert!(v["turn_ok"].is_boolean(), "turn_ok: {v}");
    let c = v["candidates"].as_object().expect("candidates object");
    assert_eq!(c.len(), 3, "candidates has host, srflx, relay: {v}");
    for key in ["host", "srflx", "relay"] {
        assert!(c[key].is_u64(), "candidates.{key}: {v}");
    }
    let can_call = v["can_call"].as_str().expect("can_call string");
    assert!(
        ["direct", "relay", "none"].contains(&can_call),
        "can_call: {v}"
    );
    // Exit status and verdict agree in every test; the rule itself is unit-tested.
}

fn n(v: &Value, key: &str) -> u64 {
    v["candidates"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key}: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_server_allows_direct_calls() {
    let server = common::start_server(0, None, 0).await;
    let data = tempfile::tempdir().unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let out = run_check(
        &["--server", &url, "--udp-addr", "127.0.0.1:0"],
        data.path(),
    )
    .await;
    let v = &out.json;
    assert_eq!(v["server_ok"], true, "{}", out.stderr);
    assert!(v["server_rtt_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["server"], url.as_str());
    assert!(n(v, "host") > 0, "host candidates on 127.0.0.1: {v}");
    assert_eq!(n(v, "srflx"), 0, "no STUN offered: {v}");
    assert_eq!(n(v, "relay"), 0, "no TURN offered: {v}");
    assert_eq!(v["stun_ok"], false);
    assert_eq!(v["turn_ok"], false);
    assert_eq!(
        v["can_call"], "direct",
        "a loopback server: host candidates reach"
    );
    assert_eq!(out.code, Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_prints_the_line_and_exits_1() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let data = tempfile::tempdir().unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let out = run_check(
        &["--server", &url, "--udp-addr", "127.0.0.1:0"],
        data.path(),
    )
    .await;
    let v = &out.json;
    assert_eq!(v["server_ok"], false);
    assert!(v["server_rtt_ms"].is_null());
    assert!(v["server_error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(v["can_call"], "none");
    assert_eq!(v["turn_ok"], false);
    assert_eq!(out.code, Some(1));
    assert!(
        out.elapsed < Duration::from_secs(20),
        "bounded: {:?}",
        out.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_flag_the_saved_server_is_checked() {
    let server = common::start_server(0, None, 0).await;
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let data = tempfile::tempdir().unwrap();
    // What eframe writes: a RON map of RON strings, our settings under their key.
    let settings = Settings {
        server_url: url.clone(),
        ..Default::default()
    };
    let inner = ron::ser::to_string(&settings).unwrap();
    let mut kv = std::collections::HashMap::new();
    kv.insert(peer_stream::app::settings::STORAGE_KEY.to_owned(), inner);
    let dir = data.path().join("peer-stream");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.ron"),
        ron::ser::to_string_pretty(&kv, ron::ser::PrettyConfig::default()).unwrap(),
    )
    .unwrap();
    let out = run_check(&["--udp-addr", "127.0.0.1:0"], data.path()).await;
    assert_eq!(out.json["server"], url.as_str(), "{}", out.stderr);
    assert_eq!(out.json["server_ok"], true);
    assert_eq!(out.json["can_call"], "direct");
    assert_eq!(out.code, Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_server_the_built_in_one_is_checked() {
    let data = tempfile::tempdir().unwrap();
    let out = run_check(&["--udp-addr", "127.0.0.1:0"], data.path()).await;
    let v = &out.json;
    let server = v["server"].as_str().unwrap();
    assert!(
        server.starts_with("ws://127.0.0.1:") && server.ends_with("/ws"),
        "the built-in server on loopback: {v}"
    );
    assert_eq!(v["server_ok"], true, "{}", out.stderr);
    assert_eq!(v["can_call"], "direct");
    assert_eq!(out.code, Some(0));
    // It kept its database where the app keeps it.
    assert!(data.path().join("peer-stream/server.sqlite3").exists());
}

// ---------------------------------------------------------------------------------
// coturn

const TURN_SECRET: &str = "setup-check-secret-81c3";

/// coturn for the setup check: STUN and TURN on one port with [`TURN_SECRET`], its own
/// log in `turn.log`.
fn start_coturn() -> Option<Coturn> {
    Coturn::start(|cmd, port, dir| {
        cmd.args([
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["--listening-port", &port.to_string()])
        .args(["--use-auth-secret", "--static-auth-secret", TURN_SECRET])
        .args(["--realm", "check.test", "--no-tls", "--no-dtls", "--no-cli"])
        .args(["--allow-loopback-peers", "--verbose"])
        .arg("--pidfile")
        .arg(dir.join("turnserver.pid"))
        .arg("--userdb")
        .arg(dir.join("turndb"))
        .arg("--log-file")
        .arg(dir.join("turn.log"));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_stun_and_turn_with_right_and_wrong_secret() {
    let Some(coturn) = start_coturn() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let stun = format!("stun:127.0.0.1:{}", coturn.port);
    let turn = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let good = common::start_server_with(0, None, |cfg| {
        cfg.stun_urls = vec![stun.clone()];
        cfg.turn_urls = vec![turn.clone()];
        cfg.turn_secret = Some(TURN_SECRET.to_owned());
    })
    .await;
    let good_url = format!("ws://127.0.0.1:{}/ws", good.port);

    // Everything offered and working.
    let out = run_check(
        &["--server", &good_url, "--udp-addr", "127.0.0.1:0"],
        data.path(),
    )
    .await;
    let v = &out.json;
    assert_eq!(v["server_ok"], true, "{}", out.stderr);
    assert_eq!(v["stun_ok"], true, "{v}\ncoturn:\n{}", coturn.log());
    assert!(n(v, "srflx") >= 1, "{v}");
    assert_eq!(v["turn_ok"], true, "{v}\ncoturn:\n{}", coturn.log());
    assert!(n(v, "relay") >= 1, "{v}");
    assert!(n(v, "host") >= 1, "{v}");
    assert_eq!(v["can_call"], "direct");
    assert_eq!(out.code, Some(0));

    // Relay only, as `--ice-policy relay` calls would: no host or srflx candidates.
    let out = run_check(
        &[
            "--server",
            &good_url,
            "--udp-addr",
            "127.0.0.1:0",
            "--ice-policy",
            "relay",
        ],
        data.path(),
    )
    .await;
    let v = &out.json;
    assert_eq!(n(v, "host"), 0, "{v}");
    assert_eq!(n(v, "srflx"), 0, "{v}");
    assert!(n(v, "relay") >= 1, "{v}\ncoturn:\n{}", coturn.log());
    assert_eq!(v["turn_ok"], true);
    assert_eq!(v["can_call"], "relay");
    assert_eq!(out.code, Some(0));
    assert!(
        coturn.log().contains("ALLOCATE"),
        "coturn saw the allocations:\n{}",
        coturn.log()
    );
    good.stop().await;

    // A server whose secret coturn does not share: the allocation is refused.
    let wrong = common::start_server_with(0, None, |cfg| {
        cfg.turn_urls = vec![turn.clone()];
        cfg.turn_secret = Some("not-the-secret".to_owned());
    })
    .await;
    let wrong_url = format!("ws://127.0.0.1:{}/ws", wrong.port);
    let out = run_check(
        &["--server", &wrong_url, "--udp-addr", "127.0.0.1:0"],
        data.path(),
    )
    .await;
    let v = &out.json;
    assert_eq!(v["server_ok"], true);
    assert_eq!(v["turn_ok"], false, "{v}");
    assert_eq!(n(v, "relay"), 0, "{v}");
    assert_eq!(v["stun_ok"], false, "no STUN offered by this server");
    assert_eq!(v["can_call"], "direct", "still a loopback server");
    // …and relay-only with a refused allocation cannot call at all.
    let out = run_check(
        &[
            "--server",
            &wrong_url,
            "--udp-addr",
            "127.0.0.1:0",
            "--ice-policy",
            "relay",
        ],
        data.path(),
    )
    .await;
    assert_eq!(out.json["turn_ok"], false);
    assert_eq!(out.json["can_call"], "none");
    assert_eq!(out.code, Some(1));
    wrong.stop().await;
    drop(coturn);
}

// ---------------------------------------------------------------------------------
// The screen

fn canned(can_call: CanCall) -> CheckReport {
    CheckReport {
        server_ok: true,
        server_rtt_ms: Some(23.4),
        camera: None,
        microphone: Some("USB Microphone".into()),
        speaker: Some("Built-in Audio".into()),
        stun_ok: false,
        turn_ok: can_call == CanCall::Relay,
        candidates: Candidates {
            host: 2,
            srflx: 0,
            relay: u32::from(can_call == CanCall::Relay),
        },
        can_call,
        server: "wss://chat.example.org/ws".into(),
        server_error: None,
        server_local: false,
        stun_offered: true,
        turn_offered: true,
        elapsed_ms: 4100,
    }
}

fn app(fake: &FakeEngine) -> Harness<'static, PeerStreamApp> {
    let settings = Settings {
        accepted_notice: true,
        ..Default::default()
    };
    let app = PeerStreamApp::new(settings, Box::new(fake.clone()), None);
    let mut h = Harness::builder()
        .with_size([1100.0, 760.0])
        .build_state(|ctx, app: &mut PeerStreamApp| app.ui(ctx), app);
    h.run_steps(3);
    h
}

#[test]
fn screen_shows_the_verdict_in_plain_words() {
    let fake = FakeEngine::default();
    fake.with(|i| i.check_result = Some(canned(CanCall::Relay)));
    let mut h = app(&fake);
    h.get_by_label("Check my setup").click();
    h.run_steps(3);
    assert_eq!(h.state().screen(), Screen::Check);
    assert_eq!(fake.with(|i| i.checks_started), 1);
    h.get_by_label("Server reachable — round trip 23 ms");
    h.get_by_label("No camera found — calls send a moving test pattern instead");
    h.get_by_label("Microphone found: USB Microphone");
    h.get_by_label("Speaker found: Built-in Audio");
    h.get_by_label("Calls will go through a relay (TURN)");
    h.get_by_label("Candidates: 2 host, 0 server-reflexive, 1 relay · STUN failed · TURN works");

    h.get_by_label("Play test tone").click();
    h.run_steps(2);
    assert_eq!(fake.with(|i| i.tones_played), 1);
    h.get_by_label("Played a beep on Fake speaker. Did you hear it?");

    // Run again, now with a network that blocks everything.
    fake.with(|i| i.check_result = Some(canned(CanCall::None)));
    h.get_by_label("Run again").click();
    h.run_steps(3);
    assert_eq!(fake.with(|i| i.checks_started), 2);
    h.get_by_label("Your network blocks calls");
    assert!(h
        .query_by_label("Calls will go through a relay (TURN)")
        .is_none());

    fake.with(|i| i.check_result = Some(canned(CanCall::Direct)));
    h.get_by_label("Run again").click();
    h.run_steps(3);
    h.get_by_label("Direct calls work");

    h.get_by_label("Back").click();
    h.run_steps(2);
    assert_eq!(h.state().screen(), Screen::Home);
}

#[test]
fn screen_while_the_check_runs() {
    let fake = FakeEngine::default();
    let mut h = app(&fake);
    h.get_by_label("Check my setup").click();
    h.run_steps(3);
    assert_eq!(fake.with(|i| i.check.clone()), CheckStatus::Running);
    h.get_by_label("Checking… (this takes up to 10 seconds)");
    h.get_by_label("Testing what your network allows…");
    // "Run again" waits for the running check.
    h.get_by_label("Run again").click();
    h.run_steps(2);
    assert_eq!(fake.with(|i| i.checks_started), 1);
    assert_eq!(fake.with(|i| i.tone.clone()), ToneState::Idle);
}

/// `--check-screen` in the real window (under Xvfb): the check runs in the background
/// of a drawing window and finishes (the app logs the report).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_screen_runs_the_check_in_a_real_window() {
    if std::process::Command::new("xvfb-run")
        .arg("--help")
        .output()
        .is_err()
    {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("xvfb-run is missing: install the xvfb package (scripts/deps.sh --test)");
        }
        eprintln!("SKIPPED: xvfb-run is not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("xvfb-run");
    cmd.args(["-a", "-s", "-screen 0 1120x720x24"])
        .arg(env!("CARGO_BIN_EXE_peer-stream"))
        .args(["--fake-media", "--check-screen", "--duration", "12"])
        .args(["--udp-addr", "127.0.0.1:0"])
        .args(["--log", "warn,peer_stream::check=info"])
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("XDG_DATA_HOME", data.path())
        .env("HOME", data.path())
        .env_remove("PEER_STREAM_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the window exits after --duration")
        .expect("run the window");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "window failed:\n{stderr}");
    let done = stderr
        .lines()
        .find(|l| l.contains("setup check done"))
        .unwrap_or_else(|| panic!("the check never finished:\n{stderr}"));
    assert!(done.contains("server_ok: true"), "{done}");
    assert!(done.contains("can_call: Direct"), "{done}");
}
