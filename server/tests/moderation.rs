//! Reports and bans: distinct reporters ban an address, the ban closes the reported session,
//! refuses new connections from that address and survives a restart (SQLite).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const X_IP: [u8; 4] = [127, 0, 0, 9];
const R1_IP: [u8; 4] = [127, 0, 0, 2];
const R2_IP: [u8; 4] = [127, 0, 0, 3];
const OTHER_IP: [u8; 4] = [127, 0, 0, 4];

fn ban_config() -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.ban_threshold = 2;
    cfg
}

/// `x` (from 127.0.0.9) is matched with and reported by r1 (127.0.0.2), then matched with
/// and reported by r2 (127.0.0.3). Returns x, r2 and the second match.
async fn get_x_reported_twice(server: &TestServer) -> (TestClient, TestClient, Matched) {
    let mut x = TestClient::connect_from(server.addr, X_IP).await.label("x");
    x.hello().await;
    let mut r1 = TestClient::connect_from(server.addr, R1_IP)
        .await
        .label("r1");
    r1.hello().await;
    let m1 = pair_up(&mut x, &mut r1, &[]).await;
    r1.report(&m1.match_id, "spam").await;
    r1.expect_no_message(Duration::from_millis(300)).await; // a valid report has no reply
    r1.send_json(&json!({"type": "leave"})).await;
    x.expect_partner_left(&m1.match_id, "left").await;

    let mut r2 = TestClient::connect_from(server.addr, R2_IP)
        .await
        .label("r2");
    r2.hello().await;
    let m2 = pair_up(&mut x, &mut r2, &[]).await;
    r2.report(&m2.match_id, "abuse").await;
    (x, r2, m2)
}

/// Outcome of connecting from `ip` (see [`ban_probe`]): `Ok(true)` banned (error banned +
/// close 1008), `Ok(false)` welcomed, `Err` anything else.
async fn try_banned(addr: SocketAddr, ip: [u8; 4]) -> Result<bool, String> {
    ban_probe(addr, ip, Duration::from_secs(2)).await
}

async fn assert_banned(addr: SocketAddr, ip: [u8; 4]) {
    match try_banned(addr, ip).await {
        Ok(true) => {}
        Ok(false) => panic!("{ip:?} should be banned but got a welcome"),
        Err(e) => panic!("{ip:?}: {e}"),
    }
}

async fn assert_welcome(addr: SocketAddr, ip: [u8; 4]) {
    let mut c = TestClient::connect_from(addr, ip).await;
    c.hello().await;
    c.join(&[]).await;
}

#[tokio::test]
async fn reported_user_is_banned_and_disconnected() {
    let server = spawn_server(ban_config()).await;
    let (mut x, mut r2, m2) = get_x_reported_twice(&server).await;
    let closed = x.recv_until_close(RECV_TIMEOUT).await;
    assert!(
        closed.has_error("banned"),
        "x should get error banned once banned: {closed:?}"
    );
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
    r2.expect_partner_left(&m2.match_id, "disconnected").await;
}

#[tokio::test]
async fn banned_address_is_refused_and_the_ban_survives_a_restart() {
    let cfg = ban_config();
    let server = spawn_server(cfg.clone()).await;
    let (x, _r2, _m2) = get_x_reported_twice(&server).await;
    drop(x);

    // The ban may be recorded asynchronously: poll until a new connection is refused.
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match try_banned(server.addr, X_IP).await {
            Ok(true) => break,
            Ok(false) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(false) => panic!("127.0.0.9 was reported by two sessions but is not banned"),
            Err(e) => panic!("127.0.0.9 after two reports: {e}"),
        }
    }
    // Other addresses (including the reporters) are fine.
    assert_welcome(server.addr, OTHER_IP).await;
    assert_welcome(server.addr, R1_IP).await;

    // Restart on the same database.
    let dir = server.stop().await;
    let server2 = spawn_server_in(cfg, dir).await;
    assert_banned(server2.addr, X_IP).await;
    assert_welcome(server2.addr, OTHER_IP).await;
    assert_welcome(server2.addr, R2_IP).await;
}

#[tokio::test]
async fn one_report_does_not_ban_and_one_session_counts_once() {
    let server = spawn_server(ban_config()).await;
    let mut x = TestClient::connect_from(server.addr, X_IP).await.label("x");
    x.hello().await;
    let mut r1 = TestClient::connect_from(server.addr, R1_IP)
        .await
        .label("r1");
    r1.hello().await;
    let m = pair_up(&mut x, &mut r1, &[]).await;
    r1.report(&m.match_id, "spam").await;
    r1.report(&m.match_id, "spam again").await;
    r1.report(&m.match_id, "and again").await;
    r1.expect_no_message(Duration::from_millis(500)).await;
    // x is not banned: still connected, still matched, and its address may connect.
    x.expect_no_message(Duration::from_millis(500)).await;
    x.chat(&m.match_id, "hi").await;
    assert_eq!(r1.expect_type("chat").await["text"], "hi");
    assert_welcome(server.addr, X_IP).await;
}

#[tokio::test]
async fn report_with_a_match_id_that_was_never_yours_is_not_in_match() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m1) = matched_pair(&server).await;
    let mut c = server.named("c").await;
    let mut d = server.named("d").await;
    let m2 = pair_up(&mut c, &mut d, &[]).await;

    a.report(&m2.match_id, "not my match").await;
    a.expect_error("not_in_match").await;
    a.report("made-up-match", "never existed").await;
    a.expect_error("not_in_match").await;
    // The current match is reportable (no reply), nobody else is told.
    a.report(&m1.match_id, "rude").await;
    a.expect_no_message(Duration::from_millis(500)).await;
    b.expect_no_message(Duration::from_millis(50)).await;
    c.expect_no_message(Duration::from_millis(50)).await;
    d.expect_no_message(Duration::from_millis(50)).await;
    a.assert_alive().await;
}

#[tokio::test]
async fn a_match_that_just_ended_is_reportable_by_both() {
    let server = spawn_server(test_config()).await; // cooldown 60 s keeps a and b apart
    let (mut a, mut b, m1) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m1.match_id, "skipped").await;
    // b is idle, a is queued: both may report the match that just ended.
    b.report(&m1.match_id, "after the fact").await;
    b.expect_no_message(Duration::from_millis(300)).await;
    a.report(&m1.match_id, "after the fact").await;
    a.expect_no_message(Duration::from_millis(300)).await;
    b.assert_alive().await;
}

/// PROTOCOL.md: `report` is `not_in_match` only when the match_id "is neither the current
/// nor the last one". Right after `next` the client is usually matched again at once, so
/// the partner just skipped (the last match) must stay reportable during the new match.
#[tokio::test]
async fn the_previous_partner_is_reportable_during_a_new_match() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m1) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m1.match_id, "skipped").await;
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let m2 = a.expect_matched().await;
    c.expect_matched().await;
    a.report(&m1.match_id, "the one I just skipped").await;
    a.expect_no_message(Duration::from_millis(300)).await;
    a.report(&m2.match_id, "and the current one").await;
    a.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn older_matches_are_not_reportable() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m1) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m1.match_id, "skipped").await;
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let m2 = a.expect_matched().await;
    c.expect_matched().await;
    a.next_partner().await;
    c.expect_partner_left(&m2.match_id, "skipped").await;
    let mut d = server.named("d").await;
    d.join(&[]).await;
    let m3 = a.expect_matched().await;
    d.expect_matched().await;
    // m3 is current, m2 at most the last one: m1 is too old whichever way "last" is read.
    a.report(&m1.match_id, "too old").await;
    a.expect_error("not_in_match").await;
    a.report(&m3.match_id, "current").await;
    a.expect_no_message(Duration::from_millis(300)).await;
}
