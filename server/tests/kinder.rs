//! Issue 12 on the wire, against the real server: `undo_next` (every success and refusal
//! path), `block`, opt-in live `counts`, and `ice_servers`. Clients that do not ask for
//! the new features (v1 clients) must see no new message types.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nothing arrives within this long (a correct server answers in milliseconds).
const QUIET: Duration = Duration::from_millis(400);

async fn undo(c: &mut TestClient) {
    c.send_json(&json!({"type": "undo_next"})).await;
}

fn config_without_cooldown() -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.rematch_cooldown_secs = 0;
    cfg
}

/// `/metrics` counts exactly one undo with `result`.
async fn assert_undo_counted(server: &TestServer, result: &str) {
    let text = metrics(server).await;
    assert_eq!(
        metric_with_label(
            &text,
            "peer_stream_undo_total",
            &format!("result=\"{result}\"")
        ),
        Some(1.0),
        "{text}"
    );
}

async fn metrics(server: &TestServer) -> String {
    http_get(server.addr, "/metrics").await.body
}

// ------------------------------------------------------------------------------ undo

#[tokio::test]
async fn undo_brings_back_a_skipped_partner_who_is_waiting() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    let (ma, _) = skip_requeue_and_undo(&mut a, &mut b, &first).await;
    assert!(!ma.ice_servers.is_empty(), "fresh ICE servers: {}", ma.raw);
    chat_flows(&mut a, &mut b, &ma.match_id, "welcome back").await;
    chat_flows(&mut b, &mut a, &ma.match_id, "thanks").await;

    // b left the queue: a newcomer waits alone instead of pairing with b.
    let mut c = server.named("c").await;
    let q = c.join(&[]).await;
    assert_eq!(q["waiting"], 1, "b is no longer queued: {q}");
    c.expect_no_message(QUIET).await;

    assert_undo_counted(&server, "resumed").await;
}

#[tokio::test]
async fn undo_brings_back_a_skipped_partner_who_is_idle() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    undo(&mut a).await;
    let ma = expect_resumed(&mut a).await;
    let mb = expect_resumed(&mut b).await;
    assert_eq!(ma.match_id, mb.match_id);
    chat_flows(&mut b, &mut a, &ma.match_id, "hello again").await;
    // The skipped side can skip as usual.
    b.next_partner().await;
    a.expect_partner_left(&ma.match_id, "skipped").await;
}

#[tokio::test]
async fn undo_works_once_per_next() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    undo(&mut a).await;
    let ma = expect_resumed(&mut a).await;
    expect_resumed(&mut b).await;

    undo(&mut a).await;
    let e = a.expect_error("undo_unavailable").await;
    assert!(
        e["message"].as_str().unwrap().contains("nothing to undo"),
        "{e}"
    );
    b.expect_no_message(QUIET).await;
    // a keeps its place: still in the resumed match.
    chat_flows(&mut a, &mut b, &ma.match_id, "still here").await;
}

#[tokio::test]
async fn undo_without_a_next_is_refused() {
    let server = spawn_server(test_config()).await;
    let mut idle = server.named("idle").await;
    undo(&mut idle).await;
    idle.expect_error("undo_unavailable").await;

    let (mut a, mut b, m) = matched_pair(&server).await;
    undo(&mut a).await;
    a.expect_error("undo_unavailable").await;
    chat_flows(&mut a, &mut b, &m.match_id, "the match goes on").await;
    // The partner's `next` gives b the ticket, not a.
    b.next_partner().await;
    a.expect_partner_left(&m.match_id, "skipped").await;
    undo(&mut a).await;
    a.expect_error("undo_unavailable").await;
}

#[tokio::test]
async fn undo_after_the_window_is_refused_and_keeps_the_queue_place() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    tokio::time::sleep(Duration::from_millis(5600)).await;
    undo(&mut a).await;
    let e = a.expect_error("undo_unavailable").await;
    assert!(e["message"].as_str().unwrap().contains("5 seconds"), "{e}");
    b.expect_no_message(QUIET).await;
    // a is still waiting: a newcomer is paired with it.
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let mc = c.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(mc.match_id, ma.match_id);
    assert!(
        ma.raw.get("resumed").is_none(),
        "a normal match: {}",
        ma.raw
    );

    assert_undo_counted(&server, "expired").await;
}

#[tokio::test]
async fn undo_after_leave_is_refused() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    a.send_json(&json!({"type": "leave"})).await;
    undo(&mut a).await;
    a.expect_error("undo_unavailable").await;
    b.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn undo_is_refused_when_the_skipped_partner_disconnected() {
    let server = spawn_server(test_config()).await;
    let (mut a, b, _first) = matched_pair(&server).await;
    a.next_partner().await;
    b.close().await;
    eventually(Duration::from_secs(10), "the server forgets b", || async {
        metric_sum(&metrics(&server).await, "peer_stream_sessions") == Some(1.0)
    })
    .await;
    undo(&mut a).await;
    let e = a.expect_error("undo_unavailable").await;
    assert!(e["message"].as_str().unwrap().contains("left"), "{e}");
    // a keeps its place in the queue.
    let mut c = server.named("c").await;
    c.join(&[]).await;
    assert_eq!(
        a.expect_matched().await.match_id,
        c.expect_matched().await.match_id
    );
    assert_undo_counted(&server, "gone").await;
}

#[tokio::test]
async fn undo_is_refused_when_the_skipped_partner_stopped() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    b.send_json(&json!({"type": "leave"})).await;
    b.assert_alive().await;
    undo(&mut a).await;
    let e = a.expect_error("undo_unavailable").await;
    assert!(e["message"].as_str().unwrap().contains("stopped"), "{e}");
    b.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn undo_is_refused_when_the_skipped_partner_met_someone_new() {
    let server = spawn_server(test_config()).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    // a and b share "x"; after the skip only b shares "b" with the newcomer.
    a.join(&["a", "x"]).await;
    b.join(&["x", "b"]).await;
    let first = a.expect_matched().await;
    b.expect_matched().await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    b.next_partner().await;
    let mut c = server.named("c").await;
    c.join(&["b"]).await;
    let mb = b.expect_matched().await;
    let mc = c.expect_matched().await;
    assert_eq!(mb.match_id, mc.match_id, "b met c");

    undo(&mut a).await;
    let e = a.expect_error("undo_unavailable").await;
    assert!(
        e["message"].as_str().unwrap().contains("someone new"),
        "{e}"
    );
    b.expect_no_message(QUIET).await;
    c.expect_no_message(Duration::from_millis(50)).await;
    // a keeps its place in the queue.
    let mut d = server.named("d").await;
    d.join(&["a"]).await;
    let md = d.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(md.match_id, ma.match_id);
}

#[tokio::test]
async fn undo_ends_the_skippers_new_match_and_requeues_the_third_person() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    // c waits, so a's `next` pairs a with c at once.
    let mut c = server.named("c").await;
    c.join(&[]).await;
    a.next_partner().await;
    let ac = a.expect_matched().await;
    let ca = c.expect_matched().await;
    assert_eq!(ac.match_id, ca.match_id);
    b.expect_partner_left(&first.match_id, "skipped").await;

    undo(&mut a).await;
    // c (a v1 client) sees only v1 messages: partner_left skipped, then queued.
    c.expect_partner_left(&ac.match_id, "skipped").await;
    let q = c.expect_type("queued").await;
    assert_eq!(q["waiting"], 1, "c is back in the queue, alone: {q}");
    let ma = expect_resumed(&mut a).await;
    let mb = expect_resumed(&mut b).await;
    assert_eq!(ma.match_id, mb.match_id);
    assert_ne!(ma.match_id, first.match_id);
    chat_flows(&mut a, &mut b, &ma.match_id, "sorry, wrong button").await;

    // A `join` from c while it is queued is harmless: it keeps its place.
    c.send_json(&json!({"type": "join"})).await;
    let q = c.expect_type("queued").await;
    assert_eq!(q["waiting"], 1, "{q}");
    // c is paired with the next newcomer.
    let mut d = server.named("d").await;
    d.join(&[]).await;
    let md = d.expect_matched().await;
    let mc = c.expect_matched().await;
    assert_eq!(md.match_id, mc.match_id);
    assert!(mc.raw.get("resumed").is_none(), "{}", mc.raw);
    c.expect_no_message(QUIET).await;
}

#[tokio::test]
async fn undo_never_repairs_a_blocked_pair() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    b.send_json(&json!({"type": "block", "match_id": first.match_id}))
        .await;
    b.assert_alive().await;
    undo(&mut a).await;
    a.expect_error("undo_unavailable").await;
    b.expect_no_message(QUIET).await;
}

// ------------------------------------------------------------------------------ block

#[tokio::test]
async fn without_a_block_and_cooldown_the_two_are_paired_again() {
    // The control for the block tests below: with no cooldown, two people who skip each
    // other and are alone in the queue meet again.
    let server = spawn_server(config_without_cooldown()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    b.next_partner().await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(ma.match_id, mb.match_id);
}

#[tokio::test]
async fn a_blocked_pair_is_never_paired_again() {
    let server = spawn_server(config_without_cooldown()).await;
    let (mut a, mut b, first) = matched_pair(&server).await;
    // The block needs no reply and does not end the match.
    a.send_json(&json!({"type": "block", "match_id": first.match_id}))
        .await;
    a.expect_no_message(QUIET).await;
    b.expect_no_message(Duration::from_millis(50)).await;
    chat_flows(&mut b, &mut a, &first.match_id, "still talking").await;

    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    b.next_partner().await;
    a.expect_no_message(QUIET).await;
    b.expect_no_message(Duration::from_millis(50)).await;

    // Third and fourth people are paired with them instead.
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let ac = a.expect_matched().await;
    assert_eq!(c.expect_matched().await.match_id, ac.match_id);
    let mut d = server.named("d").await;
    d.join(&[]).await;
    let bd = b.expect_matched().await;
    assert_eq!(d.expect_matched().await.match_id, bd.match_id);

    // Across more nexts: a and b wait side by side and stay apart.
    a.next_partner().await;
    c.expect_partner_left(&ac.match_id, "skipped").await;
    b.next_partner().await;
    d.expect_partner_left(&bd.match_id, "skipped").await;
    a.expect_no_message(QUIET).await;
    b.expect_no_message(Duration::from_millis(50)).await;

    let text = metrics(&server).await;
    assert_eq!(
        metric_sum(&text, "peer_stream_blocks_total"),
        Some(1.0),
        "{text}"
    );
    // Not a report: nothing reported, nobody banned.
    assert_eq!(
        metric_sum(&text, "peer_stream_reports_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "peer_stream_bans_total"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn block_takes_the_current_or_the_previous_match_only() {
    let server = spawn_server(config_without_cooldown()).await;
    let mut a = server.named("a").await;
    a.send_json(&json!({"type": "block", "match_id": "no-such-match"}))
        .await;
    a.expect_error("not_in_match").await;

    // b blocks its previous partner after a skip led straight into a new match.
    let (mut a, mut b, first) = matched_pair(&server).await;
    let mut c = server.named("c").await;
    c.join(&[]).await;
    b.next_partner().await;
    let bc = b.expect_matched().await;
    c.expect_matched().await;
    a.expect_partner_left(&first.match_id, "skipped").await;
    b.send_json(&json!({"type": "block", "match_id": first.match_id}))
        .await;
    b.expect_no_message(QUIET).await;
    // Both look for someone new: a and b are not paired.
    a.next_partner().await;
    b.next_partner().await;
    c.expect_partner_left(&bc.match_id, "skipped").await;
    // c is idle; a and b wait apart.
    a.expect_no_message(QUIET).await;
    b.expect_no_message(Duration::from_millis(50)).await;
}

// ------------------------------------------------------------------------------ counts

async fn counts_client(server: &TestServer, label: &str) -> TestClient {
    let mut c = TestClient::connect(server.addr).await.label(label);
    c.send_json(&json!({"type": "hello", "version": 1, "client": "t/1", "counts": true}))
        .await;
    let w = c.expect_type("welcome").await;
    c.session_id = Some(w["session_id"].as_str().unwrap().to_owned());
    c
}

fn numbers(v: &Value) -> (u64, u64) {
    assert_eq!(v["type"], "counts", "{v}");
    (
        v["online"].as_u64().unwrap(),
        v["waiting"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn counts_come_right_after_welcome_and_follow_changes() {
    let server = spawn_server(test_config()).await;
    let mut s = counts_client(&server, "subscriber").await;
    // The very next message after welcome.
    let first = s.expect_type("counts").await;
    assert_eq!(numbers(&first), (1, 0), "{first}");
    s.expect_no_message(Duration::from_millis(1500)).await;

    let mut a = server.named("a").await;
    a.join(&[]).await;
    let v = s.recv_until(RECV_TIMEOUT, |v| numbers(v) == (2, 1)).await;
    assert_eq!(numbers(&v), (2, 1));
    // Nothing changes: nothing more is sent.
    s.expect_no_message(Duration::from_millis(1500)).await;

    // a is paired with the subscriber itself: nobody waits any more.
    s.send_json(&json!({"type": "join"})).await;
    let v = s
        .recv_until(RECV_TIMEOUT, |v| {
            v["type"] == "counts" && numbers(v) == (2, 0)
        })
        .await;
    assert_eq!(numbers(&v), (2, 0));

    // A second subscriber gets its own first counts right after its welcome.
    let mut t = counts_client(&server, "second").await;
    assert_eq!(numbers(&t.expect_type("counts").await), (3, 0));
}

#[tokio::test]
async fn v1_clients_get_no_counts() {
    let server = spawn_server(test_config()).await;
    let mut v1 = server.named("v1").await;
    let mut explicit = TestClient::connect(server.addr).await.label("counts-false");
    explicit
        .send_json(&json!({"type": "hello", "version": 1, "client": "t/1", "counts": false}))
        .await;
    explicit.expect_type("welcome").await;
    // Churn: people come, queue, pair and go.
    for i in 0..4 {
        let mut x = server.named(&format!("x{i}")).await;
        x.join(&[]).await;
        x.close().await;
    }
    v1.expect_no_message(Duration::from_millis(2500)).await;
    explicit.expect_no_message(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn counts_are_coalesced_to_at_most_one_per_second() {
    let server = spawn_server(test_config()).await;
    let mut s = counts_client(&server, "subscriber").await;
    assert_eq!(numbers(&s.expect_type("counts").await), (1, 0));

    // Churn for about 3 s: many connections join, pair and leave.
    let addr = server.addr;
    let churn = tokio::spawn(async move {
        let mut kept = Vec::new();
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(3) {
            let mut x = TestClient::connect(addr).await.label(&format!("churn{i}"));
            x.hello().await;
            x.send_json(&json!({"type": "join"})).await;
            if i % 3 == 0 {
                kept.push(x);
            } else {
                x.close().await;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (i, kept)
    });
    // Read during the churn and until the counts are quiet for 2.5 s.
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        // Quiet means 2.5 s without counts *after* the churn ended: a shorter wait that
        // began during the churn and timed out after it proves nothing (the churn's last
        // changes are sent at a later tick).
        let finished = churn.is_finished();
        let wait = if finished {
            Duration::from_millis(2500)
        } else {
            Duration::from_millis(500)
        };
        match s.try_recv_json(wait).await {
            Some(v) => got.push(numbers(&v)),
            None if finished => break,
            None => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "counts never settle: {got:?}"
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (made, kept) = churn.await.unwrap();
    assert!(made >= 20, "the churn made only {made} connections");
    // At most one per second (plus slack for the phase of the 1 s tick).
    assert!(
        !got.is_empty() && got.len() as f64 <= elapsed.ceil() + 2.0,
        "{} counts messages in {elapsed:.1} s under churn of {made} connections: {got:?}",
        got.len()
    );
    // The newest numbers win: the last message is the final state.
    let text = metrics(&server).await;
    let last = *got.last().unwrap();
    assert_eq!(
        Some(last.0 as f64),
        metric_sum(&text, "peer_stream_sessions"),
        "online; all: {got:?}"
    );
    assert_eq!(
        Some(last.1 as f64),
        metric_sum(&text, "peer_stream_waiting"),
        "waiting; all: {got:?}"
    );
    assert_eq!(last.0, 1 + kept.len() as u64, "{got:?}");
    drop(kept);
}

// ------------------------------------------------------------------------------ ice_servers

#[tokio::test]
async fn ice_servers_without_turn_in_every_state() {
    let server = spawn_server(test_config()).await;
    let mut a = server.named("a").await;
    let only_stun = json!([{"urls": ["stun:stun.example.org:3478"]}]);

    // Idle.
    a.send_json(&json!({"type": "ice_servers"})).await;
    let v = a.expect_type("ice_servers").await;
    assert_eq!(v["ice_servers"], only_stun, "{v}");

    // Queued: stays queued.
    a.join(&[]).await;
    a.send_json(&json!({"type": "ice_servers"})).await;
    assert_eq!(a.expect_type("ice_servers").await["ice_servers"], only_stun);
    let mut b = server.named("b").await;
    b.join(&[]).await;
    let m = a.expect_matched().await;
    b.expect_matched().await;

    // In a match: the match goes on, the partner hears nothing.
    a.send_json(&json!({"type": "ice_servers"})).await;
    assert_eq!(a.expect_type("ice_servers").await["ice_servers"], only_stun);
    b.expect_no_message(QUIET).await;
    chat_flows(&mut b, &mut a, &m.match_id, "hi").await;

    // Before hello: refused like anything else.
    let mut raw = TestClient::connect(server.addr).await;
    raw.send_json(&json!({"type": "ice_servers"})).await;
    raw.expect_error("hello_required").await;
}

#[tokio::test]
async fn ice_servers_with_turn_carry_fresh_credentials() {
    let mut cfg = test_config();
    cfg.turn_urls = vec!["turn:turn.example.org:3478".to_owned()];
    cfg.turn_secret = Some("s3cret".to_owned());
    cfg.turn_ttl_secs = 600;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    a.send_json(&json!({"type": "ice_servers"})).await;
    let v = a.expect_type("ice_servers").await;
    let list = v["ice_servers"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0], json!({"urls": ["stun:stun.example.org:3478"]}));
    let turn = &list[1];
    assert_eq!(turn["urls"], json!(["turn:turn.example.org:3478"]), "{v}");
    let username = turn["username"].as_str().expect("TURN username");
    let credential = turn["credential"].as_str().expect("TURN credential");
    let (expiry, sid) = username.split_once(':').expect("<expiry>:<session>");
    assert_eq!(Some(sid), a.session_id.as_deref());
    let expiry: u64 = expiry.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + 500 && expiry < now + 700,
        "{expiry} vs {now}"
    );
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(credential, expected);
}

#[tokio::test]
async fn ice_servers_requests_are_rate_limited() {
    let mut cfg = test_config();
    cfg.rate_per_sec = 1;
    cfg.rate_burst = 3;
    let server = spawn_server(cfg).await;
    let mut a = TestClient::connect(server.addr).await.label("a");
    a.hello().await; // one token
    for _ in 0..4 {
        a.send_json(&json!({"type": "ice_servers"})).await;
    }
    let mut replies = 0;
    let mut limited = 0;
    for _ in 0..4 {
        let v = a.recv_json().await;
        match v["type"].as_str() {
            Some("ice_servers") => replies += 1,
            Some("error") if v["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(
        replies >= 1 && limited >= 1,
        "{replies} replies, {limited} rate_limited"
    );
}
