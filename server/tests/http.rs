//! Plain HTTP on the WebSocket port: /healthz, /metrics (Prometheus text), the web client and 404s.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn healthz_is_200() {
    let server = spawn_server(test_config()).await;
    let r = http_get(server.addr, "/healthz").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = spawn_server(test_config()).await;
    for path in ["/nope", "/ws/extra", "/healthz/x", "/metrics2"] {
        let r = http_get(server.addr, path).await;
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
    }
    // /ws without an upgrade is not a successful page either.
    let r = http_get(server.addr, "/ws").await;
    assert!(
        r.status >= 400,
        "GET /ws without upgrade must be refused: {r:?}"
    );
    // A query string does not change the route.
    assert_eq!(http_get(server.addr, "/healthz?probe=1").await.status, 200);
    // The server still serves afterwards.
    let mut c = server.client().await;
    c.join(&[]).await;
}

/// PROTOCOL.md: `/` serves the web client (HTML), its script and style sheet from the
/// binary, each with its content type and a Content-Security-Policy.
#[tokio::test]
async fn root_path_serves_the_web_client() {
    let server = spawn_server(test_config()).await;
    let r = http_get(server.addr, "/").await;
    assert_eq!(r.status, 200, "GET /: {r:?}");
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{}", r.head);
    assert!(head.contains("content-security-policy: "), "{}", r.head);
    assert!(
        r.body.to_ascii_lowercase().starts_with("<!doctype html>"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("/app.js") && r.body.contains("/style.css"),
        "{}",
        r.body
    );
    for (path, content_type, needle) in [
        ("/app.js", "text/javascript", "window.peerStream"),
        ("/style.css", "text/css", "prefers-color-scheme: dark"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
        ("/?autostart=1", "text/html", "<title>"),
    ] {
        let r = http_get(server.addr, path).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        let content_type_line = format!("content-type: {content_type}");
        assert!(
            r.head.to_ascii_lowercase().contains(&content_type_line),
            "GET {path}: {}",
            r.head
        );
        assert!(r.body.contains(needle), "GET {path} lacks {needle}");
    }
}

#[tokio::test]
async fn metrics_expose_the_documented_series_and_move() {
    let mut cfg = test_config();
    cfg.interest_fallback_ms = 60_000; // `lonely` must keep waiting
    let server = spawn_server(cfg).await;
    let before = http_get(server.addr, "/metrics").await;
    assert_eq!(before.status, 200, "{before:?}");
    let text = &before.body;
    for name in [
        "peer_stream_connections",
        "peer_stream_waiting",
        "peer_stream_active_matches",
        "peer_stream_matches_total",
        "peer_stream_messages_relayed_total",
    ] {
        assert!(
            metric_sum(text, name).is_some(),
            "/metrics has no sample for {name}:\n{text}"
        );
    }
    assert_eq!(metric_sum(text, "peer_stream_matches_total"), Some(0.0));
    assert!(
        text.contains("peer_stream_time_to_match_seconds_bucket"),
        "time-to-match histogram buckets missing:\n{text}"
    );

    // Produce some activity: a bad_json error, a waiting client, a match and a relayed chat.
    let mut lonely = server.named("lonely").await;
    lonely.send_text("{not json").await;
    lonely.expect_error("bad_json").await;
    lonely.join(&["nobody-else-likes-this"]).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.chat(&m.match_id, "counted").await;
    b.expect_type("chat").await;

    // Metrics may be updated just after the messages go out; poll briefly.
    let addr = server.addr;
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    let last = loop {
        let r = http_get(addr, "/metrics").await;
        assert_eq!(r.status, 200);
        let t = r.body;
        let ok = metric_sum(&t, "peer_stream_matches_total").unwrap_or(0.0) >= 1.0
            && metric_sum(&t, "peer_stream_active_matches").unwrap_or(0.0) >= 1.0
            && metric_sum(&t, "peer_stream_connections").unwrap_or(0.0) >= 3.0
            && metric_sum(&t, "peer_stream_waiting").unwrap_or(0.0) >= 1.0
            && metric_sum(&t, "peer_stream_messages_relayed_total").unwrap_or(0.0) >= 1.0
            && metric_with_label(&t, "peer_stream_errors_total", "code=\"bad_json\"")
                .unwrap_or(0.0)
                >= 1.0
            && metric_sum(&t, "peer_stream_time_to_match_seconds_count").unwrap_or(0.0) >= 1.0;
        if ok {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics did not reflect a bad_json error, a waiting client, a match and a relayed \
             chat (matches_total >= 1, active_matches >= 1, connections >= 3, waiting >= 1, \
             messages_relayed_total >= 1, errors_total{{code=\"bad_json\"}} >= 1, \
             time_to_match_seconds_count >= 1):\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Histogram shape: cumulative buckets ending in +Inf, plus _sum and _count.
    assert!(
        last.lines().any(
            |l| l.starts_with("peer_stream_time_to_match_seconds_bucket{")
                && l.contains("le=\"+Inf\"")
        ),
        "no +Inf bucket:\n{last}"
    );
    assert!(metric_sum(&last, "peer_stream_time_to_match_seconds_sum").is_some());
    let inf = last
        .lines()
        .find(|l| {
            l.starts_with("peer_stream_time_to_match_seconds_bucket{") && l.contains("le=\"+Inf\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    let count = metric_sum(&last, "peer_stream_time_to_match_seconds_count").unwrap();
    assert_eq!(inf, count, "the +Inf bucket equals _count");
    // Series are typed (`# TYPE peer_stream_matches_total counter`, or without `_total`).
    for name in [
        "peer_stream_matches_total",
        "peer_stream_errors_total",
        "peer_stream_time_to_match_seconds",
    ] {
        let short = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            last.lines().any(|l| l.starts_with("# TYPE ")
                && matches!(l.split_whitespace().nth(2), Some(n) if n == name || n == short)),
            "no `# TYPE {name}` line:\n{last}"
        );
    }

    // Ending the match brings active matches back down.
    a.close().await;
    b.expect_partner_left(&m.match_id, "disconnected").await;
    eventually(RECV_TIMEOUT, "active_matches back to 0", || async move {
        let r = http_get(addr, "/metrics").await;
        metric_sum(&r.body, "peer_stream_active_matches") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn http_and_websocket_share_the_port() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    for _ in 0..5 {
        assert_eq!(http_get(server.addr, "/healthz").await.status, 200);
    }
    a.chat(&m.match_id, "after http").await;
    assert_eq!(b.expect_type("chat").await["text"], "after http");
}
