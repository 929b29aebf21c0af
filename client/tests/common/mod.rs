//! What the client's end-to-end tests share: the real signaling server, in-process on
//! 127.0.0.1, so a test controls its lifetime (stop, restart on the same port).

#![allow(dead_code, clippy::unwrap_used)]

use peer_stream_server::{run, Config};
use std::time::Duration;
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
