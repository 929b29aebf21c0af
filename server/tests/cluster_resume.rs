//! Calls outlive the signaling connection across a cluster (issue #11 item 4, PROTOCOL.md
//! "Resuming a session"): a client whose connection was lost resumes its session on
//! whichever node the load balancer sends it to. A real `redis-server`, three nodes
//! in-process (`run` on port 0), real WebSocket clients.
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use common::*;
use redis_support::{ProcessNode, RedisServer};
use serde_json::json;
use std::time::Duration;
use tokio::net::TcpStream;

/// The resume window of these tests: long enough for a reconnect on a busy machine,
/// short enough that waiting it out (to show the partner hears nothing) stays quick.
const WINDOW_SECS: u64 = 4;

fn node_config(redis: &RedisServer, shutdown_grace_ms: u64) -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.redis = Some(redis.url());
    cfg.resume_window_secs = WINDOW_SECS;
    cfg.shutdown_grace_ms = shutdown_grace_ms;
    cfg
}

async fn nodes(n: usize, shutdown_grace_ms: u64) -> Option<(RedisServer, Vec<TestServer>)> {
    let redis = RedisServer::start().await?;
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(spawn_server(node_config(&redis, shutdown_grace_ms)).await);
    }
    Some((redis, nodes))
}

async fn metric(node: &TestServer, name: &str) -> f64 {
    metric_sum(&http_get(node.addr, "/metrics").await.body, name).unwrap_or(0.0)
}

/// Waits until `node` has noticed `n` lost connections.
async fn detached(node: &TestServer, n: f64) {
    eventually(
        RECV_TIMEOUT,
        &format!("{n} detached session(s)"),
        || async { metric(node, "peer_stream_sessions_detached").await == n },
    )
    .await;
}

/// The connection is lost without a close frame (as when the client's network drops).
fn lose(c: TestClient<TcpStream>) {
    drop(c);
}

/// `a` on `on` and `b` on `other`, matched with each other.
async fn cross_pair(
    on: &TestServer,
    other: &TestServer,
) -> (TestClient, Ticket, TestClient, Ticket, Matched) {
    let (mut a, ta) = connect_ticket(on, "a").await;
    let (mut b, tb) = connect_ticket(other, "b").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    (a, ta, b, tb, m)
}

#[tokio::test]
async fn a_lost_connection_resumes_on_a_third_node_and_the_call_goes_on() {
    let Some((_redis, n)) = nodes(3, 1000).await else {
        return;
    };
    let (a, ta, mut b, _, m) = cross_pair(&n[0], &n[1]).await;
    lose(a);
    detached(&n[0], 1.0).await;
    // Held for a on its old node while it is away.
    b.chat(&m.match_id, "are you there?").await;
    let (mut a, _) = resume_session(&n[2], "a@C", &ta).await;
    assert_eq!(a.expect_type("chat").await["text"], "are you there?");
    // Both ways, under the same match id: a on C, b on B.
    a.chat(&m.match_id, "back, on another server").await;
    assert_eq!(
        b.expect_type("chat").await["text"],
        "back, on another server"
    );
    b.signal(&m.match_id, json!({"candidate": "x"})).await;
    assert_eq!(a.expect_type("signal").await["payload"]["candidate"], "x");
    // The partner heard nothing, not even after the window would have ended.
    b.expect_no_message(Duration::from_secs(WINDOW_SECS + 1))
        .await;
    assert_eq!(
        metric(&n[0], "peer_stream_sessions_handed_over_total").await,
        1.0
    );
    assert_eq!(
        metric(&n[2], "peer_stream_sessions_resumed_total").await,
        1.0
    );
    assert_eq!(metric(&n[0], "peer_stream_sessions").await, 0.0);
    // The match ends as any other: a's `next` reaches b.
    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;
    for node in n {
        node.stop().await;
    }
}

#[tokio::test]
async fn resuming_on_the_partners_node_and_back_keeps_the_match() {
    let Some((_redis, n)) = nodes(2, 1000).await else {
        return;
    };
    let (a, ta, mut b, _, m) = cross_pair(&n[0], &n[1]).await;
    lose(a);
    detached(&n[0], 1.0).await;
    // Now both sides are on B.
    let (mut a, ta2) = resume_session(&n[1], "a@B", &ta).await;
    a.chat(&m.match_id, "same server now").await;
    assert_eq!(b.expect_type("chat").await["text"], "same server now");
    b.chat(&m.match_id, "hi").await;
    assert_eq!(a.expect_type("chat").await["text"], "hi");
    // And back to A with the token B gave.
    lose(a);
    detached(&n[1], 1.0).await;
    let (mut a, _) = resume_session(&n[0], "a@A", &ta2).await;
    b.chat(&m.match_id, "still here").await;
    assert_eq!(a.expect_type("chat").await["text"], "still here");
    a.chat(&m.match_id, "me too").await;
    assert_eq!(b.expect_type("chat").await["text"], "me too");
    b.send_json(&json!({"type": "leave"})).await;
    a.expect_partner_left(&m.match_id, "left").await;
    for node in n {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_waiter_resumes_on_another_node_and_is_paired_there() {
    let Some((_redis, n)) = nodes(2, 1000).await else {
        return;
    };
    let (mut w, tw) = connect_ticket(&n[0], "w").await;
    w.join(&["chess"]).await;
    lose(w);
    detached(&n[0], 1.0).await;
    let (mut w, _) = resume_session(&n[1], "w@B", &tw).await;
    let (mut x, _) = connect_ticket(&n[0], "x").await;
    x.join(&["chess"]).await;
    let mx = x.expect_matched().await;
    let mw = w.expect_matched().await;
    assert_eq!(
        mx.match_id, mw.match_id,
        "the resumed waiter is still in the queue"
    );
    assert_eq!(mw.common_interests, vec!["chess".to_owned()]);
    for node in n {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_stopping_node_hands_its_sessions_to_the_nodes_they_reconnect_to() {
    // A 4 s grace: the stopping node drains for 3 s.
    let Some((_redis, mut n)) = nodes(2, 4000).await else {
        return;
    };
    let (mut a, ta, mut b, _, m) = cross_pair(&n[0], &n[1]).await;
    let (mut w, tw) = connect_ticket(&n[0], "w").await;
    w.join(&[]).await;

    let node_a = n.remove(0);
    let stopping = tokio::spawn(node_a.stop());
    let closed = a.recv_until_close(RECV_TIMEOUT).await;
    assert_eq!(closed.close_code, Some(1012), "{closed:?}");
    let closed = w.recv_until_close(RECV_TIMEOUT).await;
    assert_eq!(closed.close_code, Some(1012), "{closed:?}");
    // Both reconnect through "the load balancer" to B and resume there.
    let (mut a, _) = resume_session(&n[0], "a@B", &ta).await;
    let (mut w, _) = resume_session(&n[0], "w@B", &tw).await;
    a.chat(&m.match_id, "the server restarted").await;
    assert_eq!(b.expect_type("chat").await["text"], "the server restarted");
    // The waiter kept its place: the next stranger is paired with it.
    let (mut x, _) = connect_ticket(&n[0], "x").await;
    x.join(&[]).await;
    let mx = x.expect_matched().await;
    assert_eq!(w.expect_matched().await.match_id, mx.match_id);
    stopping.await.expect("node A stops");
    // b never heard that a's node went away.
    b.expect_no_message(Duration::from_millis(500)).await;
    n.remove(0).stop().await;
}

#[tokio::test]
async fn a_token_from_a_node_that_is_gone_starts_a_new_session() {
    let Some((_redis, mut n)) = nodes(2, 1000).await else {
        return;
    };
    let (_a, ta) = connect_ticket(&n[0], "a").await;
    n.remove(0).stop().await;
    let (mut a, t) = resume_refused(&n[0], "a@B", &ta.token).await;
    assert_ne!(t.session_id, ta.session_id);
    a.assert_alive().await;
    n.remove(0).stop().await;
}

#[tokio::test]
async fn a_session_of_a_killed_node_resumes_elsewhere_from_its_record() {
    let Some((redis, n)) = nodes(2, 1000).await else {
        return;
    };
    // The node that dies is the real binary in its own process (SIGKILL: no goodbye).
    let window = WINDOW_SECS.to_string();
    let mut dying = ProcessNode::start_with(&redis, &["--resume-window-secs", &window]).await;
    let mut a = TestClient::connect(dying.addr).await.label("a@dying");
    let ta = ticket("a", &hello_with(&mut a, None).await);
    a.session_id = Some(ta.session_id.clone());
    let (mut b, _) = connect_ticket(&n[0], "b").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    // The dying node writes its sessions' resume records once a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    dying.kill();
    drop(a);
    // The client reconnects to a third node at once; the dead node's liveness key has not
    // expired yet, so that node asks it first and falls back to the record.
    let (mut a, _) = resume_session(&n[1], "a@C", &ta).await;
    a.chat(&m.match_id, "my server died").await;
    assert_eq!(b.expect_type("chat").await["text"], "my server died");
    b.chat(&m.match_id, "I noticed nothing").await;
    assert_eq!(a.expect_type("chat").await["text"], "I noticed nothing");
    // Not even once the dead node is noticed (10 s key + the window): b's match now
    // points at the node a resumed on.
    b.expect_no_message(Duration::from_secs(10 + WINDOW_SECS + 2))
        .await;
    for node in n {
        node.stop().await;
    }
}
