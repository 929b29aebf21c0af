//! Connection lifecycle: heartbeats, the hello timeout and graceful shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn heartbeat_config() -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.heartbeat_interval_ms = 200;
    cfg.heartbeat_timeout_ms = 1000;
    cfg
}

#[tokio::test]
async fn silent_partner_is_dropped_by_the_heartbeat() {
    // The heartbeat notices the silence; the session then waits out its resume window
    // (1 s here) before the partner is told.
    let mut cfg = heartbeat_config();
    cfg.resume_window_secs = 1;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    // From here on `a` is never polled: it never answers a ping, like a vanished peer.
    b.expect_partner_left(&m.match_id, "disconnected").await;
    drop(a);
}

#[tokio::test]
async fn idle_client_that_answers_pings_stays_connected() {
    let server = spawn_server(heartbeat_config()).await;
    let mut c = server.named("c").await;
    // Reading keeps answering the server's pings; the client sends nothing itself.
    c.expect_no_message(Duration::from_millis(3500)).await;
    c.join(&[]).await;
    // A matched pair that only reads also stays together.
    let mut d = server.named("d").await;
    d.join(&[]).await;
    let mc = c.expect_matched().await;
    d.expect_matched().await;
    tokio::join!(
        c.expect_no_message(Duration::from_millis(3000)),
        d.expect_no_message(Duration::from_millis(3000))
    );
    c.chat(&mc.match_id, "still here").await;
    assert_eq!(d.expect_type("chat").await["text"], "still here");
}

#[tokio::test]
async fn hello_timeout_closes_a_silent_connection() {
    let mut cfg = test_config();
    cfg.hello_timeout_ms = 300;
    let server = spawn_server(cfg).await;
    let mut c = TestClient::connect(server.addr).await.label("no-hello");
    let closed = c.recv_until_close(RECV_TIMEOUT).await;
    if closed.close_frame {
        assert_eq!(
            closed.close_code,
            Some(1008),
            "hello timeout closes with 1008: {closed:?}"
        );
    }
    assert!(
        !closed.messages.iter().any(|m| m["type"] == "welcome"),
        "{closed:?}"
    );
}

#[tokio::test]
async fn hello_in_time_is_not_closed_by_the_hello_timeout() {
    let mut cfg = test_config();
    cfg.hello_timeout_ms = 300;
    let server = spawn_server(cfg).await;
    let mut c = server.named("quick").await;
    c.expect_no_message(Duration::from_millis(1000)).await;
    c.join(&[]).await;
}

#[tokio::test]
async fn connection_without_http_request_is_closed() {
    let mut cfg = test_config();
    cfg.hello_timeout_ms = 300;
    let server = spawn_server(cfg).await;
    let mut tcp = tcp_from(server.addr, LOCALHOST, None).await;
    let mut buf = [0u8; 64];
    // Never send a request: the server must hang up (EOF or reset) rather than wait forever.
    // (An error response before hanging up is fine.)
    let hung_up = tokio::time::timeout(RECV_TIMEOUT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        hung_up.is_ok(),
        "a connection that never sent its HTTP request was kept open for {RECV_TIMEOUT:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001_and_returns() {
    let server = spawn_server(test_config()).await; // shutdown_grace_ms = 1000
    let addr = server.addr;
    let (mut a, mut b, _m) = matched_pair(&server).await;
    let mut waiting = server.named("waiting").await;
    waiting.join(&[]).await;
    let mut fresh = TestClient::connect(addr).await.label("no-hello-yet");
    // A client that never reads must not hold up the shutdown beyond the grace period.
    let stuck = server.named("stuck").await;

    let started = Instant::now();
    server.token.cancel();
    for c in [&mut a, &mut b, &mut waiting, &mut fresh] {
        let closed = c.recv_until_close(RECV_TIMEOUT).await;
        assert_eq!(
            closed.close_code,
            Some(1001),
            "[{}] expected close 1001 (going away) on shutdown: {closed:?}",
            c.label
        );
    }
    match tokio::time::timeout(STOP_TIMEOUT, server.handle).await {
        Err(_) => panic!("run() did not return within {STOP_TIMEOUT:?} of cancellation"),
        Ok(Err(e)) => panic!("server task failed: {e}"),
        Ok(Ok(Err(e))) => panic!("run() returned an error: {e:#}"),
        Ok(Ok(Ok(()))) => {}
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "run() took {:?} to return with a 1 s grace period",
        started.elapsed()
    );
    drop(stuck);

    // New connections are refused once run() has returned.
    match tokio::net::TcpStream::connect(addr).await {
        Err(_) => {}
        Ok(tcp) => {
            let ws = ws_handshake(addr, tcp, None).await;
            panic!(
                "TCP connection accepted after run() returned: the listener is still open \
                 (WebSocket handshake: {})",
                if ws.is_ok() { "succeeded" } else { "failed" }
            );
        }
    }
}

#[tokio::test]
async fn shutdown_with_no_clients_is_quick() {
    let server = spawn_server(test_config()).await;
    let h = http_get(server.addr, "/healthz").await;
    assert_eq!(h.status, 200);
    let started = Instant::now();
    let _dir = server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle shutdown took {:?}",
        started.elapsed()
    );
}
