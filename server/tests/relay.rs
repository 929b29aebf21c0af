//! Relaying between partners (signal, chat, typing), `not_in_match`, and how matches end:
//! `next`, `leave`, closing or dropping the socket.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn signal_chat_and_typing_are_relayed_to_the_partner_only() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    let mut c = server.named("c").await;
    let mut d = server.named("d").await;
    let m2 = pair_up(&mut c, &mut d, &[]).await;
    assert_ne!(m.match_id, m2.match_id);

    let payload = json!({
        "kind": "offer",
        "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\n",
        "nested": {"deep": [1, 2.5, null, true, {"x": "ü€😀"}], "empty": {}, "list": []},
        "n": -12345678901_i64,
    });
    a.signal(&m.match_id, payload.clone()).await;
    let got = b.expect_type("signal").await;
    assert_eq!(got["match_id"], m.match_id.as_str(), "{got}");
    assert_eq!(got["payload"], payload, "payload relayed verbatim");

    // Non-object payloads are relayed as is too.
    b.signal(&m.match_id, json!("just a string")).await;
    let got = a.expect_type("signal").await;
    assert_eq!(got["payload"], "just a string");

    b.signal(
        &m.match_id,
        json!({"kind": "candidate", "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host", "sdp_mid": "0", "sdp_mline_index": 0}),
    )
    .await;
    let got = a.expect_type("signal").await;
    assert_eq!(got["payload"]["sdp_mline_index"], 0);

    a.chat(&m.match_id, "héllo 👋 \"quoted\" \n newline").await;
    let got = b.expect_type("chat").await;
    assert_eq!(got["match_id"], m.match_id.as_str());
    assert_eq!(got["text"], "héllo 👋 \"quoted\" \n newline");

    b.chat(&m.match_id, "reply").await;
    let got = a.expect_type("chat").await;
    assert_eq!(got["text"], "reply");

    a.typing(&m.match_id, true).await;
    let got = b.expect_type("typing").await;
    assert_eq!(got["match_id"], m.match_id.as_str());
    assert_eq!(got["active"], true);
    a.typing(&m.match_id, false).await;
    let got = b.expect_type("typing").await;
    assert_eq!(got["active"], false);

    // The maximum chat length is relayed.
    let long = "é".repeat(2000);
    b.chat(&m.match_id, &long).await;
    let got = a.expect_type("chat").await;
    assert_eq!(got["text"], long.as_str());

    // No echo to the senders, nothing to the other pair.
    a.expect_no_message(QUIET).await;
    b.expect_no_message(Duration::from_millis(50)).await;
    c.expect_no_message(Duration::from_millis(50)).await;
    d.expect_no_message(Duration::from_millis(50)).await;

    // The other pair relays independently.
    c.chat(&m2.match_id, "pair two").await;
    assert_eq!(d.expect_type("chat").await["text"], "pair two");
    a.expect_no_message(Duration::from_millis(200)).await;
    b.expect_no_message(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn relay_preserves_order() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    for i in 0..40 {
        a.chat(&m.match_id, &format!("#{i}")).await;
    }
    for i in 0..40 {
        let got = b.expect_type("chat").await;
        assert_eq!(got["text"], format!("#{i}"));
    }
}

#[tokio::test]
async fn made_up_match_id_is_not_in_match_and_nothing_is_relayed() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    let fake = "no-such-match";
    a.signal(fake, json!({"kind": "offer", "sdp": "x"})).await;
    a.expect_error("not_in_match").await;
    a.chat(fake, "hi").await;
    a.expect_error("not_in_match").await;
    a.typing(fake, true).await;
    a.expect_error("not_in_match").await;
    b.expect_no_message(QUIET).await;
    // The connection and the match survive.
    a.chat(&m.match_id, "still here").await;
    assert_eq!(b.expect_type("chat").await["text"], "still here");
}

#[tokio::test]
async fn another_pairs_match_id_is_not_in_match() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m1) = matched_pair(&server).await;
    let mut c = server.named("c").await;
    let mut d = server.named("d").await;
    let m2 = pair_up(&mut c, &mut d, &[]).await;

    a.signal(&m2.match_id, json!({"kind": "offer", "sdp": "hijack"}))
        .await;
    a.expect_error("not_in_match").await;
    a.chat(&m2.match_id, "hijack").await;
    a.expect_error("not_in_match").await;
    a.typing(&m2.match_id, true).await;
    a.expect_error("not_in_match").await;

    c.expect_no_message(QUIET).await;
    d.expect_no_message(Duration::from_millis(50)).await;
    b.expect_no_message(Duration::from_millis(50)).await;

    // Everyone still works.
    a.chat(&m1.match_id, "ok").await;
    assert_eq!(b.expect_type("chat").await["text"], "ok");
    d.chat(&m2.match_id, "ok2").await;
    assert_eq!(c.expect_type("chat").await["text"], "ok2");
}

#[tokio::test]
async fn idle_and_queued_clients_are_not_in_match() {
    let server = spawn_server(test_config()).await;
    let mut idle = server.named("idle").await;
    idle.chat("anything", "hi").await;
    idle.expect_error("not_in_match").await;
    idle.join(&[]).await;
    idle.typing("anything", true).await;
    idle.expect_error("not_in_match").await;
}

#[tokio::test]
async fn old_match_id_is_not_in_match_after_next() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;

    b.chat(&m.match_id, "are you there?").await;
    b.expect_error("not_in_match").await;
    a.signal(&m.match_id, json!({"kind": "offer", "sdp": "x"}))
        .await;
    a.expect_error("not_in_match").await;
    a.expect_no_message(Duration::from_millis(200)).await;
    b.expect_no_message(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn old_match_id_does_not_reach_a_new_partner() {
    let mut cfg = test_config();
    cfg.rematch_cooldown_secs = 3600;
    let server = spawn_server(cfg).await;
    let (mut a, mut b, m1) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m1.match_id, "skipped").await;
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let m2 = c.expect_matched().await;
    let ma2 = a.expect_matched().await;
    assert_eq!(m2.match_id, ma2.match_id);
    assert_ne!(m1.match_id, m2.match_id, "a new match gets a new id");
    // a's new partner c must not get a message addressed to the old match.
    a.chat(&m1.match_id, "old").await;
    a.expect_error("not_in_match").await;
    c.expect_no_message(QUIET).await;
    b.expect_no_message(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn next_tells_the_partner_skipped_and_requeues_the_skipper() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    let q = a.next_partner().await;
    assert_eq!(q["waiting"], 1, "only the skipper waits: {q}");
    b.expect_partner_left(&m.match_id, "skipped").await;
    // b is idle, not queued: a newcomer is matched with a, not with b... (cooldown keeps
    // a and b apart anyway), and b gets nothing more.
    b.expect_no_message(QUIET).await;
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let mc = c.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(mc.match_id, ma.match_id);
    b.expect_no_message(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn next_while_queued_or_idle_queues() {
    let server = spawn_server(test_config()).await;
    let mut a = server.named("a").await;
    // `next` when idle enters the queue.
    a.next_partner().await;
    let mut b = server.named("b").await;
    b.join(&[]).await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(ma.match_id, mb.match_id);
}

#[tokio::test]
async fn next_reuses_the_interests_of_the_last_join() {
    let mut cfg = test_config();
    cfg.interest_fallback_ms = 60_000;
    cfg.rematch_cooldown_secs = 3600;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    let m = pair_up(&mut a, &mut b, &["chess"]).await;
    assert_eq!(m.common_interests, vec!["chess".to_owned()]);
    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;
    // Someone without a shared interest is not taken before the fallback ...
    let mut c = server.named("c").await;
    c.join(&["poetry"]).await;
    a.expect_no_message(Duration::from_millis(700)).await;
    // ... someone with one is.
    let mut d = server.named("d").await;
    d.join(&["Chess"]).await;
    let md = d.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(md.match_id, ma.match_id);
    assert_eq!(ma.common_interests, vec!["chess".to_owned()]);
    c.expect_no_message(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn leave_tells_the_partner_left_and_does_not_requeue() {
    let mut cfg = test_config();
    cfg.rematch_cooldown_secs = 3600;
    let server = spawn_server(cfg).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.send_json(&json!({"type": "leave"})).await;
    b.expect_partner_left(&m.match_id, "left").await;
    a.expect_no_message(QUIET).await;

    // Neither a (left) nor b (idle after partner_left) is waiting: a newcomer stays alone.
    let mut c = server.named("c").await;
    let q = c.join(&[]).await;
    assert_eq!(q["waiting"], 1, "nobody else waits: {q}");
    c.expect_no_message(Duration::from_secs(1)).await;
    a.expect_no_message(Duration::from_millis(50)).await;

    // The leaver's socket stays open and it can join again.
    a.join(&[]).await;
    let ma = a.expect_matched().await;
    let mc = c.expect_matched().await;
    assert_eq!(ma.match_id, mc.match_id);
}

#[tokio::test]
async fn leave_while_queued_leaves_the_queue() {
    let server = spawn_server(test_config()).await;
    let mut a = server.named("a").await;
    a.join(&[]).await;
    a.send_json(&json!({"type": "leave"})).await;
    a.expect_no_message(Duration::from_millis(300)).await;
    let mut b = server.named("b").await;
    let q = b.join(&[]).await;
    assert_eq!(q["waiting"], 1, "a left the queue: {q}");
    b.expect_no_message(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn join_during_a_match_is_invalid() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.send_json(&json!({"type": "join"})).await;
    a.expect_error("invalid").await;
    b.expect_no_message(Duration::from_millis(300)).await;
    // Still matched.
    a.chat(&m.match_id, "still matched").await;
    assert_eq!(b.expect_type("chat").await["text"], "still matched");
}

#[tokio::test]
async fn closing_the_socket_tells_the_partner_disconnected() {
    let server = spawn_server(test_config()).await;
    let (a, mut b, m) = matched_pair(&server).await;
    a.close().await;
    b.expect_partner_left(&m.match_id, "disconnected").await;
    b.chat(&m.match_id, "gone?").await;
    b.expect_error("not_in_match").await;
}

#[tokio::test]
async fn dropping_the_socket_tells_the_partner_disconnected() {
    // No close frame: the partner is told once the resume window (1 s here) is over.
    let mut cfg = test_config();
    cfg.resume_window_secs = 1;
    let server = spawn_server(cfg).await;
    let (a, mut b, m) = matched_pair(&server).await;
    drop(a);
    b.expect_partner_left(&m.match_id, "disconnected").await;
}

#[tokio::test]
async fn disconnected_waiting_client_leaves_the_queue() {
    let server = spawn_server(test_config()).await;
    let mut a = server.named("a").await;
    a.join(&[]).await;
    a.close().await;
    // Give the server a moment to notice, then make sure nobody is matched with a ghost.
    let mut b = server.named("b").await;
    eventually(
        Duration::from_secs(10),
        "queue to be empty after a's close",
        || {
            let addr = server.addr;
            async move {
                let r = http_get(addr, "/metrics").await;
                metric_sum(&r.body, "peer_stream_waiting") == Some(0.0)
            }
        },
    )
    .await;
    let q = b.join(&[]).await;
    assert_eq!(q["waiting"], 1, "{q}");
    b.expect_no_message(Duration::from_millis(500)).await;
}
