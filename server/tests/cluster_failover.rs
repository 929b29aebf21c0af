//! Nodes of a `--redis` cluster that go away (issue #11): a node killed with SIGKILL is
//! noticed through its expiring liveness key (its partners on other nodes get
//! `partner_left` `disconnected`, its waiters leave the queue), and a node stopped
//! gracefully closes its clients with 1012 and tells its partners on other nodes at once.
//! A real `redis-server`; the killed node is the real binary in its own process.
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use common::*;
use redis_support::{ProcessNode, RedisServer};
use serde_json::json;
use std::time::Duration;

/// A node's liveness key lives 10 s; its death is seen at the next tick (1 s) after that.
/// Generous on a busy machine.
const DEATH_NOTICED: Duration = Duration::from_secs(30);

fn node_config(redis: &RedisServer) -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.redis = Some(redis.url());
    // A partner of a dead node's session waits a resume window past the node's death
    // (the session may resume elsewhere): a short one keeps the test quick.
    cfg.resume_window_secs = 5;
    cfg
}

#[tokio::test]
async fn a_killed_node_is_noticed_by_its_liveness_key() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let node_a = spawn_server(node_config(&redis)).await;
    let mut node_b = ProcessNode::start(&redis).await;
    let mut a = node_a.named("a@A").await;
    let mut b = node_b.client("b@B").await;
    a.join(&[]).await;
    b.join(&[]).await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(ma.match_id, mb.match_id);
    // A waiter on B, older than anyone who joins later on A.
    let mut c = node_b.client("c@B").await;
    c.join(&[]).await;

    node_b.kill();
    let left = a
        .recv_until(DEATH_NOTICED, |v| v["type"] == "partner_left")
        .await;
    assert_eq!(left["match_id"], ma.match_id.as_str(), "{left}");
    assert_eq!(left["reason"], "disconnected", "{left}");

    // c left the queue with its node: a newcomer is not paired with the dead waiter.
    let mut d = node_a.named("d@A").await;
    d.join(&[]).await;
    d.expect_no_message(Duration::from_millis(1500)).await;
    a.join(&[]).await;
    let md = d.expect_matched().await;
    let ma2 = a.expect_matched().await;
    assert_eq!(md.match_id, ma2.match_id, "the two live waiters pair");
    node_a.stop().await;
}

#[tokio::test]
async fn a_node_stopped_gracefully_closes_with_1012_and_tells_other_nodes() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let node_a = spawn_server(node_config(&redis)).await;
    let node_b = spawn_server(node_config(&redis)).await;
    let mut a = node_a.named("a@A").await;
    let mut b = node_b.named("b@B").await;
    a.join(&[]).await;
    b.join(&[]).await;
    let ma = a.expect_matched().await;
    b.expect_matched().await;
    let mut w = node_a.named("w@A").await;
    w.join(&[]).await;

    // The graceful path SIGTERM takes.
    node_a.stop().await;
    let closed = a.recv_until_close(RECV_TIMEOUT).await;
    assert_eq!(
        closed.close_code,
        Some(1012),
        "a cluster node closes with 1012 (service restart): {closed:?}"
    );
    let closed = w.recv_until_close(RECV_TIMEOUT).await;
    assert_eq!(closed.close_code, Some(1012), "{closed:?}");
    b.expect_partner_left(&ma.match_id, "disconnected").await;

    // w's place in the queue went with its node: a newcomer on B waits.
    let mut x = node_b.named("x@B").await;
    x.join(&[]).await;
    x.expect_no_message(Duration::from_millis(1500)).await;
    b.send_json(&json!({"type": "join"})).await;
    b.expect_type("queued").await;
    let mx = x.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(mx.match_id, mb.match_id);
    node_b.stop().await;
}
