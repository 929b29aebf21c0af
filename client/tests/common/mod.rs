//! What the client's end-to-end tests share: the real signaling server, in-process on
//! 127.0.0.1, so a test controls its lifetime (stop, restart on the same port); the
//! headless peer and the desktop window under Xvfb, and waiting for them; coturn
//! (`coturn.rs`), Chromium over the DevTools Protocol (`cdp.rs`), Firefox over WebDriver
//! BiDi (`bidi.rs`) and one page API over both (`page.rs`).

#![allow(dead_code, clippy::unwrap_used)]

#[cfg(target_os = "linux")]
pub mod bidi;
#[cfg(target_os = "linux")]
pub mod cdp;
pub mod coturn;
#[cfg(target_os = "linux")]
pub mod page;
pub mod proxy;

use peer_stream_server::{run, Config};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub port: u16,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
}

/// A server on `port` (0: any free port) with a short heartbeat, keeping its database in
/// `dir` (a fresh one when `None`). The bind is retried for a while, so a restarted
/// server gets its old port back.
pub async fn start_server(
    port: u16,
    dir: Option<tempfile::TempDir>,
    rematch_cooldown_secs: u64,
) -> Server {
    start_server_with(port, dir, |cfg| {
        cfg.rematch_cooldown_secs = rematch_cooldown_secs;
    })
    .await
}

/// [`start_server`] with `tweak` applied to the configuration (e.g. TURN settings).
pub async fn start_server_with(
    port: u16,
    dir: Option<tempfile::TempDir>,
    tweak: impl FnOnce(&mut Config),
) -> Server {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let mut cfg = Config {
        db_path: dir.path().join("test.sqlite3"),
        heartbeat_interval_ms: 500,
        heartbeat_timeout_ms: 3000,
        ..Config::default()
    };
    tweak(&mut cfg);
    let mut listener = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let listener = listener.expect("bind the server port");
    let port = listener.local_addr().unwrap().port();
    let token = CancellationToken::new();
    let handle = tokio::spawn(run(listener, cfg, token.clone().cancelled_owned()));
    Server {
        port,
        token,
        handle,
        dir,
    }
}

impl Server {
    /// Stops the server (clients get close 1001) and hands back its database folder.
    pub async fn stop(self) -> tempfile::TempDir {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
        self.dir
    }
}

/// The headless bot (`--fake-media`, loopback ICE) pointed at a server on `port`, with
/// this log filter; callers add their own flags and pipes.
pub fn headless_peer(port: u16, log: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_peer-stream"));
    cmd.args(["--headless", "--fake-media", "--udp-addr", "127.0.0.1:0"])
        .args(["--server", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--log", log]);
    cmd
}

/// The desktop app in a virtual X display (`xvfb-run`, 1280x800, software GL) with
/// `--start --fake-media` against the signaling server at `url`, keeping its data and
/// home in `home`; callers add their own flags and pipes.
pub fn desktop_in_xvfb(url: &str, home: &Path) -> Command {
    let mut cmd = Command::new("xvfb-run");
    cmd.args([
        "-a",
        "-s",
        "-screen 0 1280x800x24",
        env!("CARGO_BIN_EXE_peer-stream"),
    ])
    .args([
        "--start",
        "--fake-media",
        "--server",
        url,
        "--udp-addr",
        "127.0.0.1:0",
    ])
    .env("LIBGL_ALWAYS_SOFTWARE", "1")
    .env("XDG_DATA_HOME", home)
    .env("HOME", home);
    cmd
}

/// Waits (blocking) for a process to exit by itself and returns its output; kills it
/// and fails after `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Waits (blocking) for a headless peer to exit by itself and returns its JSON summary
/// (its last stdout line); kills it and fails after `limit`.
pub fn summary(mut child: Child, limit: Duration) -> Value {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a headless peer did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad summary {line:?}: {e}"))
}

/// [`wait_output`] for two processes at once (off the async runtime).
pub async fn wait_outputs(a: Child, b: Child, limit: Duration) -> (Output, Output) {
    tokio::task::spawn_blocking(move || (wait_output(a, limit), wait_output(b, limit)))
        .await
        .unwrap()
}

/// [`summary`] of two headless peers at once (off the async runtime).
pub async fn summaries(a: Child, b: Child, limit: Duration) -> (Value, Value) {
    tokio::task::spawn_blocking(move || (summary(a, limit), summary(b, limit)))
        .await
        .unwrap()
}

/// A count in a summary; fails when it is missing.
pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The server's `/metrics` text (a plain HTTP/1.0 GET on its port).
pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("GET /metrics in time")
        .expect("GET /metrics")
}
