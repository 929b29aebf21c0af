//! The pairing rules over two `--redis` nodes (issue #11): in cluster mode the partner is
//! chosen inside Redis, by the Lua script that also claims both waiters, so these check
//! that it follows the same rules as the in-memory queue (`pairing.rs`): shared interests
//! before arrival order, someone with interests open to anyone only after the fallback
//! delay (paired then by the once-a-second pass), and a block kept across nodes. A real
//! `redis-server`; the sides of each pair sit on different nodes.
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use common::*;
use redis_support::RedisServer;
use std::time::Duration;

/// Someone with interests is open to anyone after this: long enough that the steps
/// below happen well before it, short enough for a fast test.
const FALLBACK_MS: u64 = 3000;

async fn two_nodes(cooldown_secs: u64) -> Option<(RedisServer, TestServer, TestServer)> {
    let redis = RedisServer::start().await?;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut cfg = test_config();
        cfg.redis = Some(redis.url());
        cfg.interest_fallback_ms = FALLBACK_MS;
        cfg.rematch_cooldown_secs = cooldown_secs;
        nodes.push(spawn_server(cfg).await);
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    Some((redis, a, b))
}

#[tokio::test]
async fn shared_interests_first_then_anyone_after_the_fallback() {
    let Some((_redis, node_a, node_b)) = two_nodes(60).await else {
        return;
    };
    // The longest waiter has no interests: open to anyone.
    let mut early = node_a.named("early@A").await;
    early.join(&[]).await;
    // A newcomer with an interest is not open to anyone yet: it waits.
    let mut fan = node_b.named("fan@B").await;
    fan.join(&["jazz"]).await;
    fan.expect_no_message(Duration::from_millis(300)).await;
    // Someone sharing the interest is paired with it, not with the longest waiter.
    let mut other_fan = node_a.named("other_fan@A").await;
    other_fan.join(&["chess", "jazz"]).await;
    let m1 = fan.expect_matched().await;
    let m2 = other_fan.expect_matched().await;
    assert_eq!(m1.match_id, m2.match_id, "{} / {}", m1.raw, m2.raw);
    assert_eq!(m1.common_interests, vec!["jazz".to_owned()]);
    early.expect_no_message(Duration::from_millis(200)).await;

    // Interests nobody shares: the waiter is paired with the longest waiter (on the other
    // node) once its fallback delay is over, by the periodic pass, not before.
    let mut loner = node_b.named("loner@B").await;
    loner.join(&["tuba"]).await;
    loner
        .expect_no_message(Duration::from_millis(FALLBACK_MS / 2))
        .await;
    let ml = loner.expect_matched().await;
    let me = early.expect_matched().await;
    assert_eq!(ml.match_id, me.match_id, "{} / {}", ml.raw, me.raw);
    assert!(ml.common_interests.is_empty(), "{}", ml.raw);
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn a_block_keeps_two_apart_across_nodes() {
    // No rematch cooldown: only the block keeps the two apart.
    let Some((_redis, node_a, node_b)) = two_nodes(0).await else {
        return;
    };
    let mut a = node_a.named("a@A").await;
    let mut b = node_b.named("b@B").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    a.send_json(&serde_json::json!({"type": "block", "match_id": m.match_id}))
        .await;
    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;
    b.next_partner().await;
    // Both wait, compatible in every other way, and are never paired.
    a.expect_no_message(Duration::from_millis(2500)).await;
    b.expect_no_message(Duration::from_millis(100)).await;
    // A newcomer takes the longest waiter; the other still waits.
    let mut c = node_b.named("c@B").await;
    c.join(&[]).await;
    let mc = c.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(mc.match_id, ma.match_id, "{} / {}", mc.raw, ma.raw);
    b.expect_no_message(Duration::from_millis(300)).await;
    node_a.stop().await;
    node_b.stop().await;
}
