//! Matchmaking: pairs, many pairs, interests first, interest fallback, FIFO, rematch cooldown,
//! ICE servers and TURN credentials.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::test]
async fn two_clients_are_queued_then_matched() {
    let server = spawn_server(test_config()).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;

    let qa = a.join(&[]).await;
    assert_eq!(qa["waiting"], 1, "a is alone in the queue: {qa}");
    let qb = b.join(&[]).await;
    assert!(qb["waiting"].as_u64().unwrap() >= 1, "{qb}");

    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(ma.match_id, mb.match_id);
    let roles: HashSet<_> = [ma.role.as_str(), mb.role.as_str()].into();
    assert_eq!(
        roles,
        HashSet::from(["offerer", "answerer"]),
        "exactly one offerer and one answerer: {} / {}",
        ma.raw,
        mb.raw
    );
    assert!(ma.common_interests.is_empty(), "{}", ma.raw);
    // The configured STUN server is handed out as an RTCIceServer.
    for m in [&ma, &mb] {
        assert!(
            m.ice_servers.iter().any(|s| s["urls"]
                .as_array()
                .is_some_and(|u| u.contains(&json!("stun:stun.example.org:3478")))),
            "ice_servers must contain the configured STUN url: {}",
            m.raw
        );
    }
    // Nothing else arrives.
    a.expect_no_message(Duration::from_millis(300)).await;
    b.expect_no_message(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn twenty_clients_are_all_matched_exactly_once_with_distinct_partners() {
    const N: usize = 20;
    let server = spawn_server(test_config()).await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(server.named(&format!("c{i}")).await);
    }
    // All join at once; each must get queued, then matched, then its partner's chat.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            c.send_json(&json!({"type": "join"})).await;
            c.expect_type("queued").await;
            let m = c.expect_matched().await;
            c.chat(&m.match_id, &format!("from {i}")).await;
            let chat = c.expect_type("chat").await;
            assert_eq!(chat["match_id"], m.match_id.as_str(), "{chat}");
            let partner: usize = chat["text"]
                .as_str()
                .unwrap()
                .strip_prefix("from ")
                .unwrap()
                .parse()
                .unwrap();
            // Exactly once: no second `matched` (or anything else) follows.
            c.expect_no_message(Duration::from_millis(500)).await;
            (i, m, partner, c)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("client task"));
    }

    let mut by_match: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    let mut partner_of = HashMap::new();
    for (i, m, partner, _c) in &results {
        by_match
            .entry(m.match_id.clone())
            .or_default()
            .push((*i, m.role.clone()));
        partner_of.insert(*i, *partner);
    }
    assert_eq!(by_match.len(), N / 2, "{N} clients make {} matches", N / 2);
    for (id, members) in &by_match {
        assert_eq!(members.len(), 2, "match {id} has members {members:?}");
        assert_ne!(members[0].0, members[1].0, "self-pair in {id}");
        let roles: HashSet<_> = members.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(roles, HashSet::from(["offerer", "answerer"]), "{id}");
        // The chat proves the relay follows the match: each got the other's text.
        assert_eq!(partner_of[&members[0].0], members[1].0);
        assert_eq!(partner_of[&members[1].0], members[0].0);
    }
}

#[tokio::test]
async fn shared_interests_are_matched_first() {
    let mut cfg = test_config();
    cfg.interest_fallback_ms = 60_000;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    let mut c = server.named("c").await;

    a.join(&["music"]).await;
    b.join(&["rust"]).await;
    c.join(&["Music "]).await;

    let ma = a.expect_matched().await;
    let mc = c.expect_matched().await;
    assert_eq!(ma.match_id, mc.match_id, "a and c share `music`");
    assert_ne!(ma.role, mc.role);
    assert_eq!(ma.common_interests, vec!["music".to_owned()], "{}", ma.raw);
    assert_eq!(mc.common_interests, vec!["music".to_owned()], "{}", mc.raw);
    // b keeps waiting.
    b.expect_no_message(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn disjoint_interests_are_not_matched_before_the_fallback() {
    let mut cfg = test_config();
    cfg.interest_fallback_ms = 60_000;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    a.join(&["music"]).await;
    b.join(&["rust"]).await;
    a.expect_no_message(Duration::from_secs(1)).await;
    b.expect_no_message(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn disjoint_interests_are_matched_after_the_fallback() {
    let mut cfg = test_config();
    cfg.interest_fallback_ms = 300;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    a.join(&["music"]).await;
    b.join(&["rust"]).await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(ma.match_id, mb.match_id);
    assert_ne!(ma.role, mb.role);
    assert!(ma.common_interests.is_empty(), "{}", ma.raw);
    assert!(mb.common_interests.is_empty(), "{}", mb.raw);
}

#[tokio::test]
async fn interests_and_no_interests_are_matched_after_the_fallback() {
    let mut cfg = test_config();
    cfg.interest_fallback_ms = 300;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    a.join(&["music"]).await;
    b.join(&[]).await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(ma.match_id, mb.match_id);
    assert!(ma.common_interests.is_empty());
}

#[tokio::test]
async fn fifo_pairs_in_join_order() {
    let server = spawn_server(test_config()).await;
    let mut c: Vec<TestClient> = Vec::new();
    for i in 1..=4 {
        c.push(server.named(&format!("c{i}")).await);
    }
    for cl in c.iter_mut() {
        cl.join(&[]).await;
    }
    let mut ids = Vec::new();
    for cl in c.iter_mut() {
        ids.push(cl.expect_matched().await.match_id);
    }
    assert_eq!(ids[0], ids[1], "1 and 2 are paired");
    assert_eq!(ids[2], ids[3], "3 and 4 are paired");
    assert_ne!(ids[0], ids[2]);
}

/// With two people held in the queue by the rematch cooldown, newcomers are paired with the
/// one who waited longest first.
#[tokio::test]
async fn longest_waiting_is_paired_first() {
    let mut cfg = test_config();
    cfg.rematch_cooldown_secs = 3600;
    let server = spawn_server(cfg).await;
    let (mut one, mut two, m) = matched_pair(&server).await;
    one.next_partner().await; // `one` waits from now on
    two.expect_partner_left(&m.match_id, "skipped").await;
    two.next_partner().await; // `two` waits from now on, after `one`
    one.expect_no_message(Duration::from_millis(500)).await;

    let mut three = server.named("three").await;
    three.join(&[]).await;
    let m3 = three.expect_matched().await;
    let m1 = one.expect_matched().await;
    assert_eq!(
        m1.match_id, m3.match_id,
        "the longest waiting is paired first"
    );
    two.expect_no_message(Duration::from_millis(300)).await;

    let mut four = server.named("four").await;
    four.join(&[]).await;
    let m4 = four.expect_matched().await;
    let m2 = two.expect_matched().await;
    assert_eq!(m2.match_id, m4.match_id);
}

#[tokio::test]
async fn skipped_partners_are_not_rematched_during_cooldown() {
    let mut cfg = test_config();
    cfg.rematch_cooldown_secs = 3600;
    let server = spawn_server(cfg).await;
    let (mut a, mut b, m) = matched_pair(&server).await;

    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;
    let q = b.next_partner().await;
    assert_eq!(q["waiting"], 2, "both wait: {q}");
    // Alone together in the queue, they stay apart.
    a.expect_no_message(Duration::from_secs(1)).await;
    b.expect_no_message(Duration::from_millis(100)).await;

    // A newcomer is paired with one of them; the other keeps waiting.
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let mc = c.expect_matched().await;
    let (who, v) = tokio::select! {
        v = a.recv_json() => ("a", v),
        v = b.recv_json() => ("b", v),
    };
    let other = if who == "a" { &mut b } else { &mut a };
    assert_eq!(v["type"], "matched", "{who} got {v}");
    assert_eq!(v["match_id"], mc.match_id.as_str(), "{who} got {v}");
    other.expect_no_message(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn leave_during_match_also_starts_the_cooldown() {
    let mut cfg = test_config();
    cfg.rematch_cooldown_secs = 3600;
    let server = spawn_server(cfg).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.send_json(&json!({"type": "leave"})).await;
    b.expect_partner_left(&m.match_id, "left").await;
    a.join(&[]).await;
    b.join(&[]).await;
    a.expect_no_message(Duration::from_secs(1)).await;
    b.expect_no_message(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn turn_credentials_follow_the_rest_scheme() {
    let mut cfg = test_config();
    cfg.turn_urls = vec!["turn:turn.example.org:3478".to_owned()];
    cfg.turn_secret = Some("s3cret".to_owned());
    cfg.turn_ttl_secs = 600;
    let server = spawn_server(cfg).await;
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    let ma = pair_up(&mut a, &mut b, &[]).await;

    let sid = a.session_id.clone().unwrap();
    let turn: &Value = ma
        .ice_servers
        .iter()
        .find(|s| {
            s["urls"]
                .as_array()
                .is_some_and(|u| u.contains(&json!("turn:turn.example.org:3478")))
        })
        .unwrap_or_else(|| panic!("no TURN entry in {}", ma.raw));
    let username = turn["username"].as_str().expect("TURN username");
    let credential = turn["credential"].as_str().expect("TURN credential");
    let (expiry, user_sid) = username
        .split_once(':')
        .unwrap_or_else(|| panic!("username is <expiry>:<session_id>: {username}"));
    assert_eq!(user_sid, sid, "TURN username names the receiver's session");
    let expiry: u64 = expiry.parse().expect("expiry is a unix time");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + 500 && expiry < now + 700,
        "expiry {expiry} should be about now ({now}) + 600"
    );
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        credential, expected,
        "credential = base64(HMAC-SHA1(secret, username))"
    );
}
