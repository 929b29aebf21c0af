//! ICE telemetry and `next` reasons (PROTOCOL.md): `call_report` is counted once per side
//! and match in `/metrics` (`peer_stream_calls_total{path=…}`, the setup-time histogram),
//! refused for a foreign match or a bad field; `next` with `reason: connection_failed`
//! tells the partner `disconnected`, re-queues the sender and opens no undo window.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

async fn metrics(server: &TestServer) -> String {
    let r = http_get(server.addr, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.head);
    r.body
}

fn calls(text: &str, path: &str) -> Option<f64> {
    metric_with_label(text, "peer_stream_calls_total", &format!("path=\"{path}\""))
}

fn setup_bucket(text: &str, le: &str) -> Option<f64> {
    metric_with_label(
        text,
        "peer_stream_call_setup_seconds_bucket",
        &format!("le=\"{le}\""),
    )
}

async fn call_report(c: &mut TestClient, match_id: &str, path: &str, setup_ms: Option<u64>) {
    c.send_json(&json!({
        "type": "call_report",
        "match_id": match_id,
        "path": path,
        "setup_ms": setup_ms,
    }))
    .await;
}

#[tokio::test]
async fn call_reports_are_counted_per_path_once_per_side() {
    let server = spawn_server(test_config()).await;
    let before = metrics(&server).await;
    for path in ["host", "srflx", "prflx", "relay", "failed"] {
        assert_eq!(calls(&before, path), Some(0.0), "{path}:\n{before}");
    }
    assert_eq!(
        metric_sum(&before, "peer_stream_call_setup_seconds_count"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(setup_bucket(&before, "+Inf"), Some(0.0), "{before}");

    let (mut a, mut b, m) = matched_pair(&server).await;
    call_report(&mut a, &m.match_id, "relay", Some(800)).await;
    call_report(&mut b, &m.match_id, "host", Some(120)).await;
    // A second report from the same side for the same match is ignored, without a reply.
    call_report(&mut a, &m.match_id, "failed", None).await;
    // No reply on success, nothing relayed to the partner.
    a.expect_no_message(QUIET).await;
    b.expect_no_message(QUIET).await;
    a.assert_alive().await;
    b.assert_alive().await;

    let text = metrics(&server).await;
    assert_eq!(calls(&text, "relay"), Some(1.0), "{text}");
    assert_eq!(calls(&text, "host"), Some(1.0), "{text}");
    assert_eq!(calls(&text, "failed"), Some(0.0), "{text}");
    assert_eq!(calls(&text, "srflx"), Some(0.0), "{text}");
    assert_eq!(
        metric_sum(&text, "peer_stream_calls_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "peer_stream_call_setup_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(setup_bucket(&text, "0.1"), Some(0.0), "{text}");
    assert_eq!(setup_bucket(&text, "0.25"), Some(1.0), "{text}");
    assert_eq!(setup_bucket(&text, "0.5"), Some(1.0), "{text}");
    assert_eq!(setup_bucket(&text, "1"), Some(2.0), "{text}");
    assert_eq!(setup_bucket(&text, "+Inf"), Some(2.0), "{text}");
    let sum = metric_sum(&text, "peer_stream_call_setup_seconds_sum").unwrap();
    assert!((sum - 0.92).abs() < 1e-9, "setup sum {sum}:\n{text}");
    assert!(
        text.contains("# TYPE peer_stream_call_setup_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE peer_stream_calls_total counter"),
        "{text}"
    );
}

#[tokio::test]
async fn a_report_for_the_last_match_counts_without_a_setup_time() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;
    // b gave up on the call it just lost: the last match is still reportable.
    call_report(&mut b, &m.match_id, "failed", None).await;
    b.expect_no_message(QUIET).await;
    a.expect_no_message(QUIET).await;
    let text = metrics(&server).await;
    assert_eq!(calls(&text, "failed"), Some(1.0), "{text}");
    assert_eq!(
        metric_sum(&text, "peer_stream_call_setup_seconds_count"),
        Some(0.0),
        "a report without setup_ms stays out of the histogram:\n{text}"
    );
}

#[tokio::test]
async fn a_report_for_a_foreign_match_is_not_in_match() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, _ours) = matched_pair(&server).await;
    let mut c = server.named("c").await;
    let mut d = server.named("d").await;
    let theirs = pair_up(&mut c, &mut d, &[]).await;

    call_report(&mut a, &theirs.match_id, "host", Some(100)).await;
    a.expect_error("not_in_match").await;
    call_report(&mut a, "no-such-match", "relay", None).await;
    a.expect_error("not_in_match").await;
    // A session that was never matched has nothing to report.
    let mut e = server.named("e").await;
    call_report(&mut e, &theirs.match_id, "host", None).await;
    e.expect_error("not_in_match").await;
    b.expect_no_message(QUIET).await;
    c.expect_no_message(QUIET).await;
    d.expect_no_message(QUIET).await;

    let text = metrics(&server).await;
    assert_eq!(
        metric_sum(&text, "peer_stream_calls_total"),
        Some(0.0),
        "refused reports are not counted:\n{text}"
    );
    // The foreign match's own sides can still report it.
    call_report(&mut c, &theirs.match_id, "srflx", Some(300)).await;
    c.expect_no_message(QUIET).await;
    let text = metrics(&server).await;
    assert_eq!(calls(&text, "srflx"), Some(1.0), "{text}");
}

#[tokio::test]
async fn bad_call_report_fields_are_invalid() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    for bad in [
        json!({"type": "call_report", "match_id": m.match_id, "path": "turn", "setup_ms": 5}),
        json!({"type": "call_report", "match_id": m.match_id, "path": "HOST"}),
        json!({"type": "call_report", "match_id": m.match_id}),
        json!({"type": "call_report", "match_id": m.match_id, "path": "host", "setup_ms": -1}),
        json!({"type": "call_report", "match_id": m.match_id, "path": "host", "setup_ms": 600_001}),
        json!({"type": "call_report", "match_id": "", "path": "host"}),
    ] {
        a.send_json(&bad).await;
        a.expect_error("invalid").await;
    }
    b.expect_no_message(QUIET).await;
    // The connection stays usable and the match goes on; a valid report still counts.
    call_report(&mut a, &m.match_id, "prflx", Some(600_000)).await;
    a.expect_no_message(QUIET).await;
    let text = metrics(&server).await;
    assert_eq!(calls(&text, "prflx"), Some(1.0), "{text}");
    assert_eq!(
        metric_sum(&text, "peer_stream_calls_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(setup_bucket(&text, "10"), Some(0.0), "{text}");
    assert_eq!(setup_bucket(&text, "+Inf"), Some(1.0), "{text}");
}

#[tokio::test]
async fn next_with_connection_failed_tells_the_partner_disconnected() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.send_json(&json!({"type": "next", "reason": "connection_failed"}))
        .await;
    a.expect_type("queued").await;
    b.expect_partner_left(&m.match_id, "disconnected").await;

    // No undo window: the skipped partner cannot be pulled back.
    a.send_json(&json!({"type": "undo_next"})).await;
    a.expect_error("undo_unavailable").await;
    b.expect_no_message(QUIET).await;

    // The rematch cooldown holds as for a plain next: b joins and the two stay apart.
    b.join(&[]).await;
    a.expect_no_message(QUIET).await;
    b.expect_no_message(QUIET).await;

    // Both are re-queued for real: a newcomer is paired with one of them.
    let mut c = server.named("c").await;
    c.join(&[]).await;
    let mc = c.expect_matched().await;
    let ma = a.expect_matched().await;
    assert_eq!(mc.match_id, ma.match_id, "a waited longest: {}", ma.raw);
}

#[tokio::test]
async fn plain_next_and_unknown_reasons_still_skip() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.next_partner().await;
    b.expect_partner_left(&m.match_id, "skipped").await;
    // The plain next opened the undo window.
    a.send_json(&json!({"type": "undo_next"})).await;
    let ra = a.expect_matched().await;
    let rb = b.expect_matched().await;
    assert_eq!(ra.raw["resumed"], true, "{}", ra.raw);
    assert_eq!(ra.match_id, rb.match_id);

    // A reason this server does not know is a plain skip, not an error.
    b.send_json(&json!({"type": "next", "reason": "some_future_reason"}))
        .await;
    b.expect_type("queued").await;
    a.expect_partner_left(&ra.match_id, "skipped").await;
    b.send_json(&json!({"type": "undo_next"})).await;
    let rb2 = b.expect_matched().await;
    let ra2 = a.expect_matched().await;
    assert_eq!(rb2.match_id, ra2.match_id, "undo after an unknown reason");
}
