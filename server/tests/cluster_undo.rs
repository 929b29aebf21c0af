//! `undo_next` across the nodes of a cluster (PROTOCOL.md, "Undo an accidental next";
//! issue #11: the nodes act as one service): the skipper's node asks the skipped
//! partner's node, which checks the partner is still free and opens the match again. A
//! real `redis-server`, two nodes in-process, real WebSocket clients.
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use common::*;
use redis_support::RedisServer;
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(400);

async fn two_nodes() -> Option<(RedisServer, TestServer, TestServer)> {
    let redis = RedisServer::start().await?;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut cfg = test_config();
        cfg.redis = Some(redis.url());
        nodes.push(spawn_server(cfg).await);
    }
    let b = nodes.pop()?;
    let a = nodes.pop()?;
    Some((redis, a, b))
}

async fn undo(c: &mut TestClient) {
    c.send_json(&json!({"type": "undo_next"})).await;
}

/// `a` on node A and `b` on node B, matched.
async fn cross_pair(na: &TestServer, nb: &TestServer) -> (TestClient, TestClient, Matched) {
    let mut a = na.named("a@A").await;
    let mut b = nb.named("b@B").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    (a, b, m)
}

async fn undo_count(node: &TestServer, result: &str) -> Option<f64> {
    let text = http_get(node.addr, "/metrics").await.body;
    metric_with_label(
        &text,
        "peer_stream_undo_total",
        &format!("result=\"{result}\""),
    )
}

#[tokio::test]
async fn undo_brings_back_a_partner_on_another_node() {
    let Some((_redis, na, nb)) = two_nodes().await else {
        return;
    };
    let (mut a, mut b, first) = cross_pair(&na, &nb).await;
    let (ma, _) = skip_requeue_and_undo(&mut a, &mut b, &first).await;
    chat_flows(&mut a, &mut b, &ma.match_id, "wrong button, sorry").await;
    chat_flows(&mut b, &mut a, &ma.match_id, "no worries").await;
    assert_eq!(undo_count(&na, "resumed").await, Some(1.0));

    // b left the shared queue: a newcomer waits alone.
    let mut c = nb.named("c@B").await;
    c.join(&[]).await;
    c.expect_no_message(QUIET).await;
    // And the rematch ends like any match.
    b.next_partner().await;
    a.expect_partner_left(&ma.match_id, "skipped").await;
    na.stop().await;
    nb.stop().await;
}

#[tokio::test]
async fn undo_is_refused_when_the_partner_on_another_node_met_someone_new() {
    let Some((_redis, na, nb)) = two_nodes().await else {
        return;
    };
    let (mut a, mut b, first) = cross_pair(&na, &nb).await;
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    // a waits in the queue: c (on B) joins and is paired with b or a. Keep a out of it.
    a.send_json(&json!({"type": "leave"})).await;
    let mut c = nb.named("c@B").await;
    c.join(&[]).await;
    b.next_partner().await;
    let mb = b.expect_matched().await;
    assert_eq!(c.expect_matched().await.match_id, mb.match_id);

    undo(&mut a).await;
    // `leave` used up the undo ticket: refused at A without asking B.
    let e = a.expect_error("undo_unavailable").await;
    assert!(
        e["message"].as_str().unwrap().contains("nothing to undo"),
        "{e}"
    );

    // Now with a ticket: a skips d (on B) straight into a match with f (on A), d meets e
    // (on B), and a asks d back.
    let mut d = nb.named("d@B").await;
    a.join(&[]).await;
    d.join(&[]).await;
    let ad = a.expect_matched().await;
    d.expect_matched().await;
    let mut f = na.named("f@A").await;
    f.join(&[]).await;
    a.next_partner().await;
    let af = a.expect_matched().await;
    assert_eq!(f.expect_matched().await.match_id, af.match_id);
    d.expect_partner_left(&ad.match_id, "skipped").await;
    let mut e = nb.named("e@B").await;
    e.join(&[]).await;
    d.next_partner().await;
    let de = d.expect_matched().await;
    assert_eq!(e.expect_matched().await.match_id, de.match_id);
    undo(&mut a).await;
    let err = a.expect_error("undo_unavailable").await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("already talking to someone new"),
        "{err}"
    );
    assert_eq!(undo_count(&na, "busy").await, Some(1.0));
    // Both new matches are untouched.
    chat_flows(&mut d, &mut e, &de.match_id, "still here").await;
    chat_flows(&mut a, &mut f, &af.match_id, "me too").await;
    na.stop().await;
    nb.stop().await;
}

#[tokio::test]
async fn undo_across_nodes_ends_the_skippers_new_match_and_requeues_the_third_person() {
    let Some((_redis, na, nb)) = two_nodes().await else {
        return;
    };
    let (mut a, mut b, first) = cross_pair(&na, &nb).await;
    // c waits on A, so a's `next` pairs a with c at once.
    let mut c = na.named("c@A").await;
    c.join(&[]).await;
    a.next_partner().await;
    let ac = a.expect_matched().await;
    assert_eq!(c.expect_matched().await.match_id, ac.match_id);
    b.expect_partner_left(&first.match_id, "skipped").await;

    undo(&mut a).await;
    c.expect_partner_left(&ac.match_id, "skipped").await;
    c.expect_type("queued").await;
    let ma = expect_resumed(&mut a).await;
    let mb = expect_resumed(&mut b).await;
    assert_eq!(ma.match_id, mb.match_id);
    chat_flows(&mut b, &mut a, &ma.match_id, "hi again").await;
    na.stop().await;
    nb.stop().await;
}
