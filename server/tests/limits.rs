//! Resource limits: the per-IP connection cap and slow readers.
//! (The message rate limit and the frame size limit are in errors.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn per_ip_connection_cap_refuses_the_third_connection() {
    let mut cfg = test_config();
    cfg.max_conns_per_ip = 2;
    let server = spawn_server(cfg).await;
    let mut c1 = TestClient::connect_from(server.addr, LOCALHOST)
        .await
        .label("c1");
    c1.hello().await;
    let mut c2 = TestClient::connect_from(server.addr, LOCALHOST)
        .await
        .label("c2");
    c2.hello().await;

    let mut c3 = match TestClient::try_connect_from(server.addr, LOCALHOST).await {
        Ok(c) => c.label("c3"),
        Err(e) => panic!(
            "the third connection should be upgraded and then get error rate_limited + close \
             1008 (PROTOCOL.md), but the handshake failed: {e}"
        ),
    };
    let closed = c3.recv_until_close(RECV_TIMEOUT).await;
    assert!(
        closed.has_error("rate_limited"),
        "third connection from one IP: expected error rate_limited, got {closed:?}"
    );
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
    assert!(
        !closed.messages.iter().any(|m| m["type"] == "welcome"),
        "{closed:?}"
    );

    // Another address is not affected.
    let mut other = TestClient::connect_from(server.addr, [127, 0, 0, 2])
        .await
        .label("other-ip");
    other.hello().await;
    other.join(&[]).await;

    // The first two still work.
    c1.assert_alive().await;
    c2.assert_alive().await;

    // The cap counts concurrent connections: once one closes, the address may connect again.
    c1.close().await;
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let mut c = TestClient::connect_from(server.addr, LOCALHOST)
            .await
            .label("c4");
        c.send_json(&hello_msg()).await;
        match c.next_frame(RECV_TIMEOUT).await {
            Some(Frame::Json(v)) if v["type"] == "welcome" => break,
            Some(Frame::Json(v)) if v["code"] == "rate_limited" => {}
            Some(Frame::Close(_)) | Some(Frame::End(_)) => {}
            other => panic!("unexpected reply to a hello after the cap freed up: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the cap did not free up after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn slow_reader_is_dropped_and_partner_told_disconnected() {
    let mut cfg = test_config();
    cfg.outbox_capacity = 4;
    cfg.rate_per_sec = 0;
    let server = spawn_server(cfg).await;

    // `slow` has a tiny socket receive buffer and, once matched, is never polled again.
    let mut slow = TestClient::connect_small_buffer(server.addr)
        .await
        .label("slow");
    slow.hello().await;
    let mut b = server.named("b").await;
    let m = pair_up(&mut slow, &mut b, &[]).await;

    let left = flood_until_partner_left(&mut b, &m.match_id, 20_000).await;
    assert_eq!(left["match_id"], m.match_id.as_str(), "{left}");
    assert_eq!(left["reason"], "disconnected", "{left}");

    drop(slow);

    // b is fine: it can meet someone new. Replies to chats that were still in flight when
    // the match ended (not_in_match) may arrive first and are skipped.
    b.send_json(&json!({"type": "join"})).await;
    let q = b
        .recv_until(RECV_TIMEOUT, |v| {
            !(v["type"] == "error" && v["code"] == "not_in_match")
        })
        .await;
    assert_eq!(q["type"], "queued", "{q}");
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let mb = b.expect_matched().await;
    let mc = c.expect_matched().await;
    assert_eq!(mb.match_id, mc.match_id);
    c.chat(&mc.match_id, "hello").await;
    assert_eq!(b.expect_type("chat").await["text"], "hello");

    // And a brand-new pair too.
    let mut d = server.named("d").await;
    let mut e = server.named("e").await;
    let m3 = pair_up(&mut d, &mut e, &[]).await;
    d.chat(&m3.match_id, "hi").await;
    assert_eq!(e.expect_type("chat").await["text"], "hi");
    let h = http_get(server.addr, "/healthz").await;
    assert_eq!(h.status, 200);
}

/// `b` sends 2000-char chats to its (non-reading) partner in batches of 50 until it gets
/// `partner_left` or has sent `max` messages; then waits up to 30 s for `partner_left`
/// (a server drops a writer blocked for 10 s at the latest). Returns the `partner_left`.
async fn flood_until_partner_left(b: &mut TestClient, match_id: &str, max: usize) -> Value {
    match flood(b, match_id, max).await {
        Some(v) => v,
        None => wait_partner_left(b).await,
    }
}

async fn wait_partner_left(b: &mut TestClient) -> Value {
    b.recv_until(Duration::from_secs(30), |v| v["type"] == "partner_left")
        .await
}

/// Sends up to `max` 2000-char chats; returns early with a `partner_left` if one arrives.
async fn flood(b: &mut TestClient, match_id: &str, max: usize) -> Option<Value> {
    let text = "x".repeat(2000);
    let frame = json!({"type": "chat", "match_id": match_id, "text": text}).to_string();
    let mut sent = 0usize;
    while sent < max {
        let batch = async {
            for _ in 0..50 {
                b.ws.feed(Message::text(frame.clone())).await?;
            }
            b.ws.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(20), batch).await {
            Err(_) => panic!(
                "b's writes blocked for 20 s after {sent} messages: the server must not let a \
                 slow reader hold up its partner"
            ),
            Ok(Err(e)) => panic!("b's connection failed after {sent} messages: {e}"),
            Ok(Ok(())) => sent += 50,
        }
        // Nothing but the partner_left may arrive while b sends.
        if let Some(v) = b.try_recv_json(Duration::from_millis(1)).await {
            assert_eq!(
                v["type"], "partner_left",
                "b got an unexpected message: {v}"
            );
            return Some(v);
        }
    }
    None
}

/// With the default outbox (256) the socket itself fills up first: the server must still
/// drop the reader that stopped reading (queue overflow or a write blocked for 10 s), keep
/// serving everyone else meanwhile, and tell the partner.
#[tokio::test]
async fn slow_reader_with_default_outbox_is_dropped() {
    let mut cfg = test_config();
    cfg.rate_per_sec = 0;
    let server = spawn_server(cfg).await;
    let mut slow = TestClient::connect_small_buffer(server.addr)
        .await
        .label("slow");
    slow.hello().await;
    let mut b = server.named("b").await;
    let m = pair_up(&mut slow, &mut b, &[]).await;

    // Meanwhile another pair is served normally.
    let mut c = server.named("c").await;
    let mut d = server.named("d").await;
    let m2 = pair_up(&mut c, &mut d, &[]).await;

    let early = flood(&mut b, &m.match_id, 8_000).await;
    // While the server may still be stuck writing to `slow`, others are served.
    c.chat(&m2.match_id, "unaffected").await;
    assert_eq!(d.expect_type("chat").await["text"], "unaffected");
    let left = match early {
        Some(v) => v,
        None => wait_partner_left(&mut b).await,
    };
    assert_eq!(left["match_id"], m.match_id.as_str(), "{left}");
    assert_eq!(left["reason"], "disconnected", "{left}");
    drop(slow);
}
