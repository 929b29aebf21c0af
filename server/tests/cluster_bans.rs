//! Bans shared by a `--redis` cluster (issue #11): a ban made on one node (automatic, after
//! reports about a partner served by another node, or by the operator's `bans add --redis`)
//! closes the banned address's sessions and refuses its new connections on every node, and
//! lands in every node's SQLite file; `bans remove --redis` lifts it everywhere. A real
//! `redis-server`, two nodes in-process, clients from distinct loopback addresses.
#![allow(clippy::unwrap_used)]

mod cli_support;
mod common;
mod redis_support;

use common::*;
use peer_stream_server::moderation::ModerationDb;
use redis_support::RedisServer;
use std::path::Path;
use std::time::Duration;

/// A ban reaches the other nodes at their next tick (1 s); generous on a busy machine.
const SHARED_WITHIN: Duration = Duration::from_secs(10);

fn node_config(redis: &RedisServer) -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.redis = Some(redis.url());
    // One report bans: the test is about sharing the ban, not the threshold.
    cfg.ban_threshold = 1;
    cfg
}

fn banned_in_file(db: &Path, address: &str) -> bool {
    ModerationDb::open_existing(db)
        .and_then(|db| db.bans(false))
        .unwrap()
        .iter()
        .any(|b| b.address == address)
}

#[tokio::test]
async fn a_ban_after_reports_on_one_node_applies_on_every_node() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let node_a = spawn_server(node_config(&redis)).await;
    let node_b = spawn_server(node_config(&redis)).await;
    let mut reporter = node_a.named("reporter@A").await;
    let mut troll = TestClient::connect_from(node_b.addr, [127, 0, 0, 7])
        .await
        .label("troll@B");
    troll.hello().await;
    reporter.join(&[]).await;
    troll.join(&[]).await;
    let m = reporter.expect_matched().await;
    troll.expect_matched().await;

    // Node A takes the report (the troll's address came with the match from node B) and bans.
    reporter.report(&m.match_id, "abusive").await;
    let closed = troll.recv_until_close(SHARED_WITHIN).await;
    assert!(closed.has_error("banned"), "{closed:?}");
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
    reporter
        .expect_partner_left(&m.match_id, "disconnected")
        .await;
    // Refused by both nodes from now on, and kept in both nodes' files.
    for node in [&node_a, &node_b] {
        let refused = ban_probe(node.addr, [127, 0, 0, 7], Duration::from_millis(300)).await;
        assert_eq!(
            refused,
            Ok(true),
            "the banned address is refused on {}",
            node.addr
        );
    }
    assert!(banned_in_file(&node_a.db_path, "127.0.0.7"));
    eventually(SHARED_WITHIN, "node B's file holds the ban", || async {
        banned_in_file(&node_b.db_path, "127.0.0.7")
    })
    .await;
    // Others are not affected.
    assert_eq!(
        ban_probe(node_b.addr, [127, 0, 0, 8], Duration::from_millis(300)).await,
        Ok(false)
    );
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn the_operators_ban_with_redis_applies_on_every_node_and_lifts_everywhere() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let node_a = spawn_server(node_config(&redis)).await;
    let node_b = spawn_server(node_config(&redis)).await;
    let mut victim = TestClient::connect_from(node_b.addr, [127, 0, 0, 9])
        .await
        .label("victim@B");
    victim.hello().await;

    // The operator bans through node A's file and the cluster's Redis.
    let db_a = node_a.db_path.to_str().unwrap().to_owned();
    let url = redis.url();
    cli_support::run_args(&[
        "bans",
        "add",
        "127.0.0.9",
        "--for",
        "1h",
        "--db",
        &db_a,
        "--redis",
        &url,
    ])
    .ok();
    let closed = victim.recv_until_close(SHARED_WITHIN).await;
    assert!(closed.has_error("banned"), "{closed:?}");
    assert!(banned_in_file(&node_b.db_path, "127.0.0.9"));

    cli_support::run_args(&[
        "bans",
        "remove",
        "127.0.0.9",
        "--db",
        &db_a,
        "--redis",
        &url,
    ])
    .ok();
    eventually(SHARED_WITHIN, "node B lifts the ban", || async {
        !banned_in_file(&node_b.db_path, "127.0.0.9")
    })
    .await;
    assert_eq!(
        ban_probe(node_b.addr, [127, 0, 0, 9], Duration::from_millis(300)).await,
        Ok(false),
        "welcome again on node B"
    );
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn reports_taken_by_different_nodes_add_up_to_the_ban() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let config = || {
        let mut cfg = node_config(&redis);
        cfg.ban_threshold = 2;
        cfg
    };
    let node_a = spawn_server(config()).await;
    let node_b = spawn_server(config()).await;
    let mut troll = TestClient::connect_from(node_b.addr, [127, 0, 0, 11])
        .await
        .label("troll@B");
    troll.hello().await;

    // First reporter on node A.
    let mut r1 = node_a.named("r1@A").await;
    r1.join(&[]).await;
    troll.join(&[]).await;
    let m1 = r1.expect_matched().await;
    troll.expect_matched().await;
    r1.report(&m1.match_id, "rude").await;
    r1.send_json(&serde_json::json!({"type": "leave"})).await;
    troll.expect_partner_left(&m1.match_id, "left").await;

    // Second reporter on node B: node B's own file holds one report, the cluster two.
    let mut r2 = node_b.named("r2@B").await;
    troll.join(&[]).await;
    r2.join(&[]).await;
    let m2 = r2.expect_matched().await;
    troll.expect_matched().await;
    r2.report(&m2.match_id, "rude again").await;
    let closed = troll.recv_until_close(SHARED_WITHIN).await;
    assert!(closed.has_error("banned"), "{closed:?}");
    assert!(banned_in_file(&node_b.db_path, "127.0.0.11"));
    eventually(SHARED_WITHIN, "node A's file holds the ban", || async {
        banned_in_file(&node_a.db_path, "127.0.0.11")
    })
    .await;
    node_a.stop().await;
    node_b.stop().await;
}
