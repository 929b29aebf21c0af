//! "Service busy — retrying" (issue #11): a cluster node (`--redis`) whose Redis is down
//! answers `join` with `error` `unavailable` and keeps the session idle. The headless app
//! (its real engine, driver and session machine) says so and re-sends `join` with
//! backoff; once Redis is back (restarted on the same port) the node serves again and
//! the app is queued and matched with a second peer, with nothing done by hand.
//!
//! Real parts only: Debian's `redis-server` (skipped with a message when it is not
//! installed, failing under `CI=true`), the signaling server in-process with `redis`
//! set (what `--redis` sets), the `peer-stream --headless` process, and a plain
//! WebSocket client as the second peer.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A real `redis-server` on a free loopback port, no persistence, its files in a
/// temporary directory, stopped by its process id (also on a failed test: [`Drop`]).
/// The server's tests have their own (server/tests/redis_support), tied to their helpers.
struct RedisServer {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server, or `None` (skip) when it is not installed.
    async fn start() -> Option<RedisServer> {
        let Some(bin) = ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
            .iter()
            .map(|d| PathBuf::from(d).join("redis-server"))
            .find(|p| p.is_file())
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed; scripts/deps.sh --test installs it"
            );
            eprintln!("SKIPPED: redis-server is not installed (scripts/deps.sh --test)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut redis = RedisServer {
            bin,
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.launch().await;
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        self.child = Some(
            Command::new(&self.bin)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start redis-server"),
        );
        let port = self.port;
        eventually("redis-server answers PING", || async move {
            let ping = async {
                let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.write_all(b"PING\r\n").await?;
                let mut buf = [0u8; 16];
                let n = tcp.read(&mut buf).await?;
                Ok::<_, std::io::Error>(buf[..n].starts_with(b"+PONG"))
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(1), ping).await,
                Ok(Ok(true))
            )
        })
        .await;
    }

    /// Kills it (by its process id) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Generous bound for anything the node or the app does on its own (health checks, a
/// backoff step of at most 15 s × 1.25).
const WAIT: Duration = Duration::from_secs(30);

/// The status code of `GET path` on the node (0 if it does not answer).
async fn http_status(port: u16, path: &str) -> u16 {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut head = String::new();
        s.read_to_string(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(Duration::from_secs(5), get).await {
        Ok(Ok(head)) => head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `error` replies with code `unavailable` the node has sent so far (its `/metrics`).
async fn unavailable_sent(port: u16) -> u64 {
    let text = common::metrics_text(port).await;
    text.lines()
        .find_map(|l| l.strip_prefix("peer_stream_errors_total{code=\"unavailable\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no unavailable counter in /metrics:\n{text}"))
}

/// Kills the headless peer (by its PID) if the test ends before it exits.
struct Peer(Option<Child>);

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Peer {
    /// SIGTERM (the headless peer then prints its JSON summary and exits) and the summary.
    async fn stop(mut self) -> Value {
        let child = self.0.take().unwrap();
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success(), "kill -TERM the headless peer");
        tokio::task::spawn_blocking(move || common::summary(child, WAIT))
            .await
            .unwrap()
    }
}

/// A real redis-server and a node (`--redis`) that was ready, then Redis stopped: the node
/// answers `unavailable` until Redis is started again (`None`: skip, no redis-server).
async fn node_with_redis_down() -> Option<(RedisServer, common::Server)> {
    let mut redis = RedisServer::start().await?;
    let url = redis.url();
    let server = common::start_server_with(0, None, |cfg| cfg.redis = Some(url)).await;
    let port = server.port;
    eventually("the node is ready", || async {
        http_status(port, "/readyz").await == 200
    })
    .await;
    redis.stop();
    eventually("the node is not ready without Redis", || async {
        http_status(port, "/readyz").await == 503
    })
    .await;
    Some((redis, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_retries_join_while_redis_is_down_and_is_matched_once_it_is_back() {
    let Some((mut redis, server)) = node_with_redis_down().await else {
        return;
    };
    let port = server.port;
    let before = unavailable_sent(port).await;

    let logs = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(logs.path().join("peer-a.log")).unwrap();
    let peer = Peer(Some(
        common::headless_peer(port, "info")
            // A bound in case SIGTERM never comes (the guard kills it anyway).
            .args(["--duration", "120"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the headless peer"),
    ));
    // Its first join and two re-sent ones (after ~1 s and ~2 s) are turned away.
    eventually("three joins answered unavailable", || async {
        unavailable_sent(port).await >= before + 3
    })
    .await;

    redis.restart().await;
    eventually("the node is ready again", || async {
        http_status(port, "/readyz").await == 200
    })
    .await;

    // The second peer: a plain protocol client. It waits in the queue until the app's
    // next re-sent join arrives (at most one backoff step later) and pairs with it.
    let (mut b, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    for msg in [
        json!({"type": "hello", "version": 1, "client": "service-busy-test/1"}),
        json!({"type": "join"}),
    ] {
        b.send(Message::text(msg.to_string())).await.unwrap();
    }
    let matched = tokio::time::timeout(WAIT, async {
        loop {
            let text = match b.next().await {
                Some(Ok(Message::Text(text))) => text,
                // The server's heartbeat pings (tungstenite answers them).
                Some(Ok(_)) => continue,
                end => panic!("the second peer's connection ended: {end:?}"),
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("matched") => return v,
                Some("error") => panic!("the second peer was refused: {v}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the app and the second peer are matched once Redis is back");
    assert!(matched["match_id"].is_string(), "{matched}");

    let unavailable = unavailable_sent(port).await - before;
    let summary = peer.stop().await;
    let log = std::fs::read_to_string(logs.path().join("peer-a.log")).unwrap_or_default();
    let retries = common::u(&summary, "service_busy_retries");
    // One join re-sent per `unavailable`: the first join and every failed retry were
    // turned away, the last retry was queued.
    assert_eq!(
        retries, unavailable,
        "re-sent joins vs unavailable answers; summary {summary}\nlog:\n{log}"
    );
    assert!(retries >= 3, "{summary}");
    assert_eq!(common::u(&summary, "matches"), 1, "{summary}");
    let lines: Vec<&str> = summary["system_lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "Service busy — retrying")
            .count(),
        1,
        "said once for the one busy spell: {lines:?}"
    );
    server.stop().await;
}

/// The web page does the same: "Service busy — retrying" while the node cannot reach
/// Redis, `join` again with backoff, Stop ends the retrying, and once Redis is back a
/// search that is still retrying ends up queued by itself.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_retries_join_while_redis_is_down_and_stop_cancels_it() {
    use common::cdp::{Chromium, Media};
    const BUSY: &str = "peerStream.serviceBusy && peerStream.state === 'searching' \
        && document.getElementById('remote-status').textContent === 'Service busy — retrying'";

    let Some((mut redis, server)) = node_with_redis_down().await else {
        return;
    };
    let port = server.port;

    let chrome = Chromium::launch(Media::Fake).await;
    let page = chrome
        .open("browser", &format!("http://127.0.0.1:{port}/?autostart=1"))
        .await;
    page.wait_for(
        "the page to say service busy and join again twice",
        &format!("{BUSY} && peerStream.busyRetries >= 2"),
        WAIT,
    )
    .await;
    assert_eq!(
        page.eval("peerStream.system.filter((l) => l === 'Service busy — retrying').length")
            .await,
        json!(1),
        "said once for the spell"
    );

    // Stop: no join goes out any more (the server counts every `unavailable` it sends).
    page.click("#stop").await;
    let retries = page.eval("peerStream.busyRetries").await.as_u64().unwrap();
    let sent = unavailable_sent(port).await;
    assert_eq!(page.eval("peerStream.state").await, json!("idle"));
    assert_eq!(page.eval("peerStream.serviceBusy").await, json!(false));
    // Longer than the retry that was due: the (retries + 1)-th wait, at most 15 s × 1.25.
    let due = Duration::from_millis((1000u64 << retries.min(4)).min(15_000) * 5 / 4);
    tokio::time::sleep(due + Duration::from_millis(500)).await;
    assert_eq!(
        unavailable_sent(port).await,
        sent,
        "no join after Stop (within {due:?})"
    );
    assert_eq!(page.eval("peerStream.busyRetries").await, json!(retries));

    // Start again while Redis is still down, then bring Redis back: queued by itself.
    page.click("#start").await;
    page.wait_for("busy again", BUSY, WAIT).await;
    redis.restart().await;
    page.wait_for(
        "the page to be queued once Redis is back",
        "peerStream.queued && !peerStream.serviceBusy && peerStream.state === 'searching'",
        WAIT,
    )
    .await;
    chrome.assert_clean();
    drop(chrome);
    server.stop().await;
}

/// The window's session screen while the service is busy: the line where "Looking for a
/// stranger…" would be, and Cancel stops (the engine then drops the due retry).
#[test]
fn the_window_says_service_busy_and_cancel_stops() {
    use egui_kittest::kittest::Queryable;
    use peer_stream::app::handle::FakeEngine;
    use peer_stream::app::settings::Settings;
    use peer_stream::app::PeerStreamApp;
    use peer_stream::engine::Command;
    use peer_stream::session::machine::{Phase, SERVICE_BUSY_LINE};

    let fake = FakeEngine::default();
    let settings = Settings {
        accepted_notice: true,
        ..Default::default()
    };
    let app = PeerStreamApp::new(settings, Box::new(fake.clone()), None);
    let mut h = egui_kittest::Harness::builder()
        .with_size([1100.0, 720.0])
        .build_state(|ctx, app: &mut PeerStreamApp| app.ui(ctx), app);
    h.run_steps(3);
    h.get_by_label("Start").click();
    h.run_steps(2);
    fake.take_sent();
    fake.set_phase(Phase::ServiceBusy { retries: 2 });
    h.run_steps(2);
    h.get_by_label(SERVICE_BUSY_LINE);
    assert!(
        h.query_by_label_contains("Looking for a stranger")
            .is_none(),
        "not searching as far as the user can tell"
    );
    h.get_by_label("Cancel").click();
    h.run_steps(2);
    assert!(fake.take_sent().contains(&Command::Stop));
}
