//! Two nodes, one service (`--redis`, issue #11): a real `redis-server` on a free port and
//! two servers in-process (`run` on port 0), each with `--redis` to it, driven by real
//! WebSocket clients: pairing across nodes, relaying both ways, `next` and disconnects
//! reaching the partner's node, counts for the whole service, and a Redis outage
//! (`join` answers `unavailable`, `/readyz` 503) and its end (service resumes by itself).
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use common::*;
use redis_support::RedisServer;
use serde_json::{json, Value};
use std::time::Duration;

/// How long cluster-wide effects (counts ticks, health checks) may take: generous.
const CLUSTER_WAIT: Duration = Duration::from_secs(15);

fn node_config(redis: &RedisServer) -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.redis = Some(redis.url());
    // Someone with interests is open to anyone after half a second: the test's waits
    // below are longer, so who pairs with whom does not depend on timing.
    cfg.interest_fallback_ms = 500;
    cfg
}

/// Two nodes on one Redis; `None` (skip) without redis-server.
async fn two_nodes() -> Option<(RedisServer, TestServer, TestServer)> {
    let redis = RedisServer::start().await?;
    let a = spawn_server(node_config(&redis)).await;
    let b = spawn_server(node_config(&redis)).await;
    Some((redis, a, b))
}

async fn status(server: &TestServer, path: &str) -> u16 {
    http_get(server.addr, path).await.status
}

#[tokio::test]
async fn strangers_on_two_nodes_are_paired_and_relay_both_ways() {
    let Some((_redis, node_a, node_b)) = two_nodes().await else {
        return;
    };
    let mut a = node_a.named("a@A").await;
    let mut b = node_b.named("b@B").await;
    a.join(&["music"]).await;
    b.join(&["music", "rust"]).await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(
        ma.match_id, mb.match_id,
        "one match: {} / {}",
        ma.raw, mb.raw
    );
    assert_eq!(
        (ma.role.as_str(), mb.role.as_str()),
        ("offerer", "answerer"),
        "the longer waiter offers"
    );
    assert_eq!(ma.common_interests, vec!["music".to_owned()]);
    assert_eq!(mb.common_interests, vec!["music".to_owned()]);
    assert!(!mb.ice_servers.is_empty(), "ICE servers on both nodes");

    // Relay, both ways, in order, untouched.
    let offer = json!({"kind": "offer", "sdp": "v=0 from a"});
    a.signal(&ma.match_id, offer.clone()).await;
    a.chat(&ma.match_id, "hello from node A").await;
    let got = b.expect_type("signal").await;
    assert_eq!(got["payload"], offer);
    assert_eq!(got["match_id"], ma.match_id.as_str());
    let got = b.expect_type("chat").await;
    assert_eq!(got["text"], "hello from node A");
    b.typing(&mb.match_id, true).await;
    b.chat(&mb.match_id, "hi from node B").await;
    let got = a.expect_type("typing").await;
    assert_eq!(got["active"], true);
    let got = a.expect_type("chat").await;
    assert_eq!(got["text"], "hi from node B");
    // A match id that is not yours is still refused on the sender's node.
    a.chat("not-a-match", "x").await;
    a.expect_error("not_in_match").await;

    // `next` on A: B's client hears `skipped`; both wait again, not re-paired (cooldown).
    a.next_partner().await;
    b.expect_partner_left(&mb.match_id, "skipped").await;
    b.next_partner().await;
    a.expect_no_message(Duration::from_millis(1500)).await;
    b.expect_no_message(Duration::from_millis(100)).await;

    // A newcomer on B takes the longest waiter, on A.
    let mut c = node_b.named("c@B").await;
    c.join(&[]).await;
    let mc = c.expect_matched().await;
    let ma2 = a.expect_matched().await;
    assert_eq!(mc.match_id, ma2.match_id, "c is paired with a across nodes");
    b.expect_no_message(Duration::from_millis(300)).await;

    // c quits (close frame): a hears `disconnected` from the other node.
    c.close().await;
    a.expect_partner_left(&ma2.match_id, "disconnected").await;

    // a `leave`s: b is the one waiter left, and a newcomer on A gets b.
    a.send_json(&json!({"type": "leave"})).await;
    let mut d = node_a.named("d@A").await;
    d.join(&[]).await;
    let md = d.expect_matched().await;
    let mb2 = b.expect_matched().await;
    assert_eq!(md.match_id, mb2.match_id, "d is paired with b across nodes");
    // b disconnects without a close frame and without resuming: partner_left after the
    // resume window (default 15 s would slow the test; the close-frame path is above).
    d.send_json(&json!({"type": "leave"})).await;
    b.expect_partner_left(&mb2.match_id, "left").await;

    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn counts_cover_every_node() {
    let Some((_redis, node_a, node_b)) = two_nodes().await else {
        return;
    };
    let mut watcher = TestClient::connect(node_a.addr).await.label("watcher@A");
    let mut hello = hello_msg();
    hello["counts"] = json!(true);
    watcher.send_json(&hello).await;
    watcher.expect_type("welcome").await;
    let mut x = node_b.named("x@B").await;
    let _y = node_b.named("y@B").await;
    let seen = watcher
        .recv_until(CLUSTER_WAIT, |v: &Value| {
            v["type"] == "counts" && v["online"] == 3
        })
        .await;
    assert_eq!(seen["waiting"], 0, "{seen}");
    x.join(&["chess"]).await;
    let seen = watcher
        .recv_until(CLUSTER_WAIT, |v: &Value| {
            v["type"] == "counts" && v["waiting"] == 1
        })
        .await;
    assert_eq!(seen["online"], 3, "{seen}");
    // A new client on A is welcomed with the service-wide number.
    let mut z = TestClient::connect(node_a.addr).await.label("z@A");
    z.send_json(&hello_msg()).await;
    let w = z.expect_type("welcome").await;
    assert_eq!(w["online"], 4, "welcome counts every node: {w}");
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn redis_outage_answers_unavailable_and_service_resumes() {
    let Some((mut redis, node_a, node_b)) = two_nodes().await else {
        return;
    };
    assert_eq!(status(&node_a, "/readyz").await, 200);
    // A call across the two nodes, made before the outage.
    let mut a = node_a.named("a@A").await;
    let mut b = node_b.named("b@B").await;
    a.join(&[]).await;
    b.join(&[]).await;
    let m = a.expect_matched().await;
    b.expect_matched().await;
    let mut c = node_a.named("c@A").await;
    // And someone waiting on node A.
    let mut w = node_a.named("w@A").await;
    w.join(&[]).await;

    redis.stop();
    let mut unready = false;
    for _ in 0..100 {
        if status(&node_a, "/readyz").await == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready, "/readyz must answer 503 while Redis is down");
    assert_eq!(
        status(&node_a, "/healthz").await,
        200,
        "liveness is not readiness"
    );
    c.send_json(&json!({"type": "join"})).await;
    c.expect_error("unavailable").await;
    c.send_json(&json!({"type": "next"})).await;
    c.expect_error("unavailable").await;
    // Idle, not queued: nothing else arrives, and the connection still works.
    c.expect_no_message(Duration::from_millis(300)).await;
    c.assert_alive().await;
    // A relay to the partner on the other node cannot go: its sender is told.
    a.chat(&m.match_id, "lost in the outage").await;
    a.expect_error("unavailable").await;

    redis.restart().await;
    eventually(CLUSTER_WAIT, "node A ready again", || async {
        status(&node_a, "/readyz").await == 200
    })
    .await;
    eventually(CLUSTER_WAIT, "node B ready again", || async {
        status(&node_b, "/readyz").await == 200
    })
    .await;
    // The call outlived the outage (a restarted Redis forgot every node's liveness key
    // for a moment: that is not a dead node). Give the nodes a few ticks to misjudge it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.chat(&m.match_id, "still here").await;
    assert_eq!(b.expect_type("chat").await["text"], "still here");
    b.chat(&m.match_id, "me too").await;
    assert_eq!(a.expect_type("chat").await["text"], "me too");

    // The restarted Redis forgot the queue; node A wrote its waiter back: a newcomer on
    // node B meets the one who waited through the outage.
    let mut d = node_b.named("d@B").await;
    d.join(&[]).await;
    let md = d.expect_matched().await;
    let mw = w.expect_matched().await;
    assert_eq!(
        md.match_id, mw.match_id,
        "the waiter kept its place through the restart"
    );
    // And new users pair across nodes again.
    let mut e = node_b.named("e@B").await;
    c.join(&[]).await;
    e.join(&[]).await;
    let mc = c.expect_matched().await;
    let me = e.expect_matched().await;
    assert_eq!(
        mc.match_id, me.match_id,
        "paired across nodes after the outage"
    );
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn a_single_node_is_always_ready() {
    let server = spawn_server(test_config()).await;
    let r = http_get(server.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, "ready\n");
    server.stop().await;
}
