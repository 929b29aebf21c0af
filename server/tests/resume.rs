//! Resuming a session (PROTOCOL.md, "Resuming a session"): a connection lost without a
//! close frame leaves its session waiting for the resume window; `hello` with `resume`
//! brings it back (match, queue place, what was held for it), the partner hears nothing.
//! Every test uses real WebSockets against `run` on port 0 and a short window.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The resume window of most tests: short, so the ones that wait it out stay quick.
const WINDOW_SECS: u64 = 2;

fn resume_config(window_secs: u64) -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.resume_window_secs = window_secs;
    cfg
}

/// The connection is lost without a close frame: the socket is dropped (the kernel
/// sends FIN), as when a client crashes.
fn lose(c: TestClient<TcpStream>) {
    drop(c);
}

async fn metrics(server: &TestServer) -> String {
    http_get(server.addr, "/metrics").await.body
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    metric_sum(&metrics(server).await, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// Waits until the server has noticed the lost connection(s): `n` detached sessions.
async fn detached(server: &TestServer, n: f64) {
    eventually(
        RECV_TIMEOUT,
        &format!("{n} detached session(s)"),
        || async { metric(server, "peer_stream_sessions_detached").await == n },
    )
    .await;
}

/// Two clients matched with each other (a joined first); their tickets and the match.
async fn pair(server: &TestServer) -> (TestClient, Ticket, TestClient, Ticket, Matched) {
    let (mut a, ta) = connect_ticket(server, "a").await;
    let (mut b, tb) = connect_ticket(server, "b").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    (a, ta, b, tb, m)
}

#[tokio::test]
async fn resume_within_the_window_keeps_the_match_and_the_partner_hears_nothing() {
    let server = spawn_server(resume_config(WINDOW_SECS)).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    lose(a);
    detached(&server, 1.0).await;
    let (mut a, _) = resume_session(&server, "a2", &ta).await;
    // Nothing follows the welcome (no match was touched), and the partner hears nothing,
    // not even after the window would have ended.
    a.expect_no_message(Duration::from_millis(300)).await;
    b.expect_no_message(Duration::from_secs(WINDOW_SECS + 1))
        .await;
    // The match goes on both ways, under the same match_id.
    a.chat(&m.match_id, "back again").await;
    assert_eq!(b.expect_type("chat").await["text"], "back again");
    b.chat(&m.match_id, "welcome back").await;
    let chat = a.expect_type("chat").await;
    assert_eq!(chat["text"], "welcome back");
    assert_eq!(chat["match_id"], m.match_id.as_str());
    a.signal(&m.match_id, json!({"kind": "candidate", "candidate": "c"}))
        .await;
    assert_eq!(
        b.expect_type("signal").await["match_id"],
        m.match_id.as_str()
    );

    let text = metrics(&server).await;
    assert_eq!(
        metric_sum(&text, "peer_stream_sessions_resumed_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "peer_stream_sessions_detached"),
        Some(0.0)
    );
    assert_eq!(
        metric_sum(&text, "peer_stream_resume_expired_total"),
        Some(0.0)
    );
    assert_eq!(metric_sum(&text, "peer_stream_active_matches"), Some(1.0));
    assert_eq!(metric_sum(&text, "peer_stream_sessions"), Some(2.0));
}

#[tokio::test]
async fn what_the_partner_sends_meanwhile_is_delivered_after_the_resume() {
    let server = spawn_server(resume_config(WINDOW_SECS)).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    lose(a);
    detached(&server, 1.0).await;
    b.typing(&m.match_id, true).await;
    b.chat(&m.match_id, "are you there?").await;
    b.signal(
        &m.match_id,
        json!({"kind": "candidate", "candidate": "late"}),
    )
    .await;
    b.typing(&m.match_id, false).await;
    // Held, not refused: the sender gets no error.
    b.expect_no_message(Duration::from_millis(300)).await;

    let (mut a, _) = resume_session(&server, "a2", &ta).await;
    let got: Vec<Value> = [
        a.recv_json().await,
        a.recv_json().await,
        a.recv_json().await,
        a.recv_json().await,
    ]
    .into();
    let kinds: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["typing", "chat", "signal", "typing"], "{got:?}");
    assert_eq!(got[0]["active"], true);
    assert_eq!(got[1]["text"], "are you there?");
    assert_eq!(got[2]["payload"]["candidate"], "late");
    assert_eq!(got[3]["active"], false);
    for v in &got {
        assert_eq!(v["match_id"], m.match_id.as_str(), "{v}");
    }
    a.expect_no_message(Duration::from_millis(300)).await;
    b.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn after_the_window_the_session_ends_and_the_partner_hears_disconnected() {
    let server = spawn_server(resume_config(1)).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    let lost_at = Instant::now();
    lose(a);
    b.expect_partner_left(&m.match_id, "disconnected").await;
    assert!(
        lost_at.elapsed() >= Duration::from_millis(950),
        "partner_left came before the 1 s window was over: {:?}",
        lost_at.elapsed()
    );
    // Too late: the token is gone, the client gets a new session.
    let (mut a2, t2) = resume_refused(&server, "a2", &ta.token).await;
    assert_ne!(t2.session_id, ta.session_id);
    a2.chat(&m.match_id, "hello?").await;
    a2.expect_error("not_in_match").await;
    // The partner is idle, as after any disconnect, and can go on.
    b.chat(&m.match_id, "gone?").await;
    b.expect_error("not_in_match").await;
    let m2 = pair_up(&mut b, &mut a2, &[]).await;
    assert_ne!(m2.match_id, m.match_id);

    let text = metrics(&server).await;
    assert_eq!(
        metric_sum(&text, "peer_stream_resume_expired_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_sum(&text, "peer_stream_sessions_resumed_total"),
        Some(0.0)
    );
    assert_eq!(
        metric_sum(&text, "peer_stream_sessions_detached"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_clean_close_ends_the_session_at_once() {
    // The default 15 s window: the partner must hear long before it would end.
    let server = spawn_server(test_config()).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    let closed_at = Instant::now();
    a.close().await;
    b.expect_partner_left(&m.match_id, "disconnected").await;
    assert!(
        closed_at.elapsed() < Duration::from_secs(10),
        "a close frame must not wait for the resume window"
    );
    // The session is over: its token resumes nothing.
    let (_a2, t2) = resume_refused(&server, "a2", &ta.token).await;
    assert_ne!(t2.session_id, ta.session_id);
    assert_eq!(metric(&server, "peer_stream_sessions_detached").await, 0.0);
}

#[tokio::test]
async fn a_token_is_single_use() {
    let server = spawn_server(resume_config(5)).await;
    let (a, t1, mut b, _tb, m) = pair(&server).await;
    lose(a);
    detached(&server, 1.0).await;
    let (a, t2) = resume_session(&server, "a2", &t1).await;
    lose(a);
    detached(&server, 1.0).await;
    // The used token starts a new session and leaves the detached one alone…
    let (c, tc) = resume_refused(&server, "used-token", &t1.token).await;
    assert_ne!(tc.session_id, t1.session_id);
    c.close().await;
    // … which the newest token still brings back.
    let (mut a, t3) = resume_session(&server, "a3", &t2).await;
    b.chat(&m.match_id, "still here").await;
    assert_eq!(a.expect_type("chat").await["text"], "still here");
    b.expect_no_message(Duration::from_millis(300)).await;
    // t2 is used up too.
    let (_d, td) = resume_refused(&server, "t2-again", &t2.token).await;
    assert_ne!(td.session_id, t3.session_id);
    a.assert_alive().await;
    assert_eq!(
        metric(&server, "peer_stream_sessions_resumed_total").await,
        2.0
    );
}

#[tokio::test]
async fn a_waiting_user_keeps_its_place_in_the_queue() {
    let mut cfg = resume_config(5);
    // Nobody falls back to "anyone" during the test: only shared interests pair.
    cfg.interest_fallback_ms = 60_000;
    let server = spawn_server(cfg).await;
    let (mut a, ta) = connect_ticket(&server, "a").await;
    a.join(&["cats"]).await;
    let (mut b, _) = connect_ticket(&server, "b").await;
    b.join(&["dogs"]).await;
    lose(a);
    detached(&server, 1.0).await;
    // Away: out of the queue's count, and nobody is paired with it.
    assert_eq!(metric(&server, "peer_stream_waiting").await, 1.0);
    let (mut c, _) = connect_ticket(&server, "c").await;
    c.join(&["cats"]).await;
    c.expect_no_message(Duration::from_millis(500)).await;
    // Back: paired at once with the cat person who came while it was away.
    let (mut a, _) = resume_session(&server, "a2", &ta).await;
    let ma = a.expect_matched().await;
    let mc = c.expect_matched().await;
    assert_eq!(ma.match_id, mc.match_id);
    assert_eq!(ma.common_interests, ["cats"]);
    b.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_resumed_waiter_is_still_ahead_of_those_who_came_later() {
    let mut cfg = resume_config(5);
    cfg.interest_fallback_ms = 60_000;
    let server = spawn_server(cfg).await;
    let (mut a, ta) = connect_ticket(&server, "a").await;
    a.join(&["cats"]).await;
    let (mut b, _) = connect_ticket(&server, "b").await;
    b.join(&["dogs"]).await;
    lose(a);
    detached(&server, 1.0).await;
    let (mut a, _) = resume_session(&server, "a2", &ta).await;
    a.expect_no_message(Duration::from_millis(300)).await;
    assert_eq!(metric(&server, "peer_stream_waiting").await, 2.0);
    // Someone who likes both takes the longest waiter sharing one: a, not b.
    let (mut d, _) = connect_ticket(&server, "d").await;
    d.join(&["dogs", "cats"]).await;
    let md = d.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(md.match_id, ma.match_id);
    assert_eq!(md.common_interests, ["cats"]);
    b.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn garbage_tokens_get_a_new_session_or_invalid() {
    let server = spawn_server(resume_config(WINDOW_SECS)).await;
    // Well-formed but unknown: a new session, with its own token.
    for garbage in ["nonsense", "00000000000000000000000000000000", "🙂"] {
        let (mut c, t) = resume_refused(&server, "garbage", garbage).await;
        assert_ne!(t.token, garbage);
        c.join(&[]).await;
        c.close().await;
    }
    // Malformed: `invalid`, and no session yet (a plain hello still works).
    let mut c = TestClient::connect(server.addr).await.label("malformed");
    for bad in [json!(""), json!(42), json!("x".repeat(65)), json!({"t": 1})] {
        let mut hello = hello_msg();
        hello["resume"] = bad;
        c.send_json(&hello).await;
        c.expect_error("invalid").await;
    }
    c.send_json(&json!({"type": "join"})).await;
    c.expect_error("hello_required").await;
    let w = hello_with(&mut c, None).await;
    ticket("malformed", &w);
    // A `resume` of null is no resume at all.
    let mut d = TestClient::connect(server.addr).await.label("null");
    let mut hello = hello_msg();
    hello["resume"] = Value::Null;
    d.send_json(&hello).await;
    let w = d.expect_type("welcome").await;
    assert!(w.get("resumed").is_none(), "{w}");
    assert_eq!(
        metric(&server, "peer_stream_sessions_resumed_total").await,
        0.0
    );
}

#[tokio::test]
async fn the_backlog_holds_at_most_128_relayed_messages() {
    let mut cfg = resume_config(10);
    cfg.rate_per_sec = 0; // b sends 130 messages at once
    let server = spawn_server(cfg).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    lose(a);
    detached(&server, 1.0).await;
    for i in 0..130 {
        b.chat(&m.match_id, &format!("m{i}")).await;
    }
    // The 129th and 130th are refused, with a reason; the first 128 are held.
    for _ in 0..2 {
        let e = b.expect_error("rate_limited").await;
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("128") && msg.contains("not delivered"), "{e}");
    }
    b.expect_no_message(Duration::from_millis(300)).await;
    let (mut a, _) = resume_session(&server, "a2", &ta).await;
    for i in 0..128 {
        let chat = a.expect_type("chat").await;
        assert_eq!(chat["text"], format!("m{i}"), "in order");
    }
    a.expect_no_message(Duration::from_millis(500)).await;
    // Live again: nothing is held or refused any more.
    b.chat(&m.match_id, "after").await;
    assert_eq!(a.expect_type("chat").await["text"], "after");
    b.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_backlog_holds_at_most_one_mebibyte() {
    let mut cfg = resume_config(10);
    cfg.rate_per_sec = 0;
    let server = spawn_server(cfg).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    lose(a);
    detached(&server, 1.0).await;
    // Each relayed signal is just over 62 KiB: 16 fit in 1 MiB, the 17th does not.
    let pad = "p".repeat(62 * 1024);
    for i in 0..17 {
        b.signal(&m.match_id, json!({"kind": "x", "n": i, "pad": pad}))
            .await;
    }
    let e = b.expect_error("rate_limited").await;
    assert!(e["message"].as_str().unwrap().contains("1024 KiB"), "{e}");
    b.expect_no_message(Duration::from_millis(300)).await;
    let (mut a, _) = resume_session(&server, "a2", &ta).await;
    for i in 0..16 {
        let s = a.expect_type("signal").await;
        assert_eq!(s["payload"]["n"], i);
    }
    a.expect_no_message(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn resuming_while_the_old_connection_looks_alive_takes_it_over() {
    // The client noticed the loss first (the server would only see it at the heartbeat
    // timeout): its resume replaces the old connection, which the server drops.
    let server = spawn_server(resume_config(5)).await;
    let (mut a1, ta, mut b, _tb, m) = pair(&server).await;
    let (mut a2, _) = resume_session(&server, "a2", &ta).await;
    let closed = a1.recv_until_close(RECV_TIMEOUT).await;
    assert!(closed.messages.is_empty(), "{closed:?}");
    b.expect_no_message(Duration::from_millis(500)).await;
    b.chat(&m.match_id, "to the new connection").await;
    assert_eq!(
        a2.expect_type("chat").await["text"],
        "to the new connection"
    );
    a2.chat(&m.match_id, "from the new connection").await;
    assert_eq!(
        b.expect_type("chat").await["text"],
        "from the new connection"
    );
    // The old connection's end did not end the session.
    b.expect_no_message(Duration::from_millis(500)).await;
    assert_eq!(metric(&server, "peer_stream_sessions").await, 2.0);
}

#[tokio::test]
async fn a_heartbeat_timeout_waits_for_the_window_too() {
    let mut cfg = resume_config(3);
    cfg.heartbeat_interval_ms = 200;
    cfg.heartbeat_timeout_ms = 1000;
    let server = spawn_server(cfg).await;
    let (a, ta, mut b, _tb, m) = pair(&server).await;
    // `a` is never polled again: it answers no ping, like a peer behind a dead network.
    // `b` keeps reading (and so answering pings) and hears nothing.
    let deadline = Instant::now() + RECV_TIMEOUT;
    while metric(&server, "peer_stream_sessions_detached").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "a was not detached by the heartbeat"
        );
        b.expect_no_message(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&server, "peer_stream_heartbeat_timeouts_total").await,
        1.0
    );
    let (mut a2, _) = resume_session(&server, "a2", &ta).await;
    drop(a);
    // Both keep reading (short heartbeat here); nobody hears anything past the window.
    tokio::join!(
        b.expect_no_message(Duration::from_secs(4)),
        a2.expect_no_message(Duration::from_secs(4))
    );
    b.chat(&m.match_id, "hi again").await;
    assert_eq!(a2.expect_type("chat").await["text"], "hi again");
}

#[tokio::test]
async fn a_detached_session_whose_address_is_banned_ends_and_cannot_come_back() {
    const X_IP: [u8; 4] = [127, 0, 0, 7];
    let mut cfg = resume_config(10);
    cfg.ban_threshold = 1;
    let server = spawn_server(cfg).await;
    let mut x = TestClient::connect_from(server.addr, X_IP).await.label("x");
    let tx = ticket("x", &hello_with(&mut x, None).await);
    let (mut r, _) = connect_ticket(&server, "reporter").await;
    let m = pair_up(&mut x, &mut r, &[]).await;
    lose(x);
    detached(&server, 1.0).await;
    // One report bans 127.0.0.7: the detached session ends at once, like a disconnect.
    r.report(&m.match_id, "abuse").await;
    r.expect_partner_left(&m.match_id, "disconnected").await;
    assert_eq!(metric(&server, "peer_stream_sessions_detached").await, 0.0);
    // Coming back from the banned address: refused as banned, as usual.
    assert_eq!(
        ban_probe(server.addr, X_IP, Duration::from_secs(1)).await,
        Ok(true)
    );
    // From elsewhere the token resumes nothing.
    let (_y, ty) = resume_refused(&server, "elsewhere", &tx.token).await;
    assert_ne!(ty.session_id, tx.session_id);
}

#[tokio::test]
async fn without_a_window_a_lost_connection_ends_at_once_and_no_token_is_given() {
    let server = spawn_server(resume_config(0)).await;
    let mut a = TestClient::connect(server.addr).await.label("a");
    let w = hello_with(&mut a, None).await;
    assert!(w.get("resume_token").is_none(), "{w}");
    let (mut b, _) = connect_plain(&server, "b").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    lose(a);
    b.expect_partner_left(&m.match_id, "disconnected").await;
}

/// [`connect`] for a server without resuming (no token in `welcome`).
async fn connect_plain(server: &TestServer, label: &str) -> (TestClient, String) {
    let mut c = TestClient::connect(server.addr).await.label(label);
    let sid = c.hello().await;
    (c, sid)
}
