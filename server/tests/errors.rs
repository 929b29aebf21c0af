//! Every error code of PROTOCOL.md and that the connection survives the recoverable ones;
//! plus a property test that throws arbitrary text frames at one live connection.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peer_stream_shared::{parse_client_message, ClientMessage};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_json_for_malformed_text_arrays_scalars_and_binary_frames() {
    let server = spawn_server(test_config()).await;
    let mut c = server.client().await;
    for bad in [
        "not json",
        "{\"type\":\"join\"",
        "",
        "[1,2]",
        "[{\"type\":\"join\"}]",
        "42",
        "\"join\"",
        "null",
    ] {
        c.send_text(bad).await;
        let e = c.expect_error("bad_json").await;
        assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    }
    c.send_msg(Message::binary(b"{\"type\":\"join\"}".to_vec()))
        .await;
    c.expect_error("bad_json").await;
    // Still open and usable.
    c.join(&[]).await;
}

#[tokio::test]
async fn bad_json_before_hello_keeps_connection() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::connect(server.addr).await;
    c.send_text("garbage").await;
    let e = c.recv_json().await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(
        e["code"] == "bad_json" || e["code"] == "hello_required",
        "garbage before hello: {e}"
    );
    c.hello().await;
}

#[tokio::test]
async fn unknown_type_for_missing_non_string_or_unknown_type() {
    let server = spawn_server(test_config()).await;
    let mut c = server.client().await;
    for bad in [
        json!({"type": "dance"}),
        json!({"kind": "hello"}),
        json!({}),
        json!({"type": 7}),
        json!({"type": null}),
        json!({"type": ["join"]}),
        json!({"type": "JOIN"}),
        json!({"type": "welcome", "version": 1, "session_id": "x", "online": 1}),
    ] {
        c.send_json(&bad).await;
        c.expect_error("unknown_type").await;
    }
    c.join(&[]).await;
}

#[tokio::test]
async fn invalid_for_out_of_bounds_and_missing_fields() {
    let server = spawn_server(test_config()).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    let mid = m.match_id.as_str();
    let too_long_chat = "x".repeat(2001);
    let cases: Vec<(&str, Value)> = vec![
        (
            "chat of 2001 chars",
            json!({"type": "chat", "match_id": mid, "text": too_long_chat}),
        ),
        (
            "empty chat",
            json!({"type": "chat", "match_id": mid, "text": ""}),
        ),
        (
            "chat without text",
            json!({"type": "chat", "match_id": mid}),
        ),
        (
            "chat without match_id",
            json!({"type": "chat", "text": "hi"}),
        ),
        (
            "chat text not a string",
            json!({"type": "chat", "match_id": mid, "text": 5}),
        ),
        (
            "typing without active",
            json!({"type": "typing", "match_id": mid}),
        ),
        (
            "typing active not a bool",
            json!({"type": "typing", "match_id": mid, "active": "yes"}),
        ),
        (
            "signal without payload",
            json!({"type": "signal", "match_id": mid}),
        ),
        (
            "report without reason",
            json!({"type": "report", "match_id": mid}),
        ),
        (
            "report reason of 501 chars",
            json!({"type": "report", "match_id": mid, "reason": "r".repeat(501)}),
        ),
        ("join during a match", json!({"type": "join"})),
        ("second hello", hello_msg()),
    ];
    for (what, msg) in cases {
        a.send_json(&msg).await;
        let e = a.recv_json().await;
        assert!(
            e["type"] == "error" && e["code"] == "invalid",
            "{what}: expected error invalid, got {e}"
        );
    }
    // Nothing was relayed, and the match still works.
    b.expect_no_message(Duration::from_millis(300)).await;
    a.chat(mid, &"y".repeat(2000)).await;
    assert_eq!(b.expect_type("chat").await["text"], "y".repeat(2000));
}

#[tokio::test]
async fn invalid_interests_and_hello_fields() {
    let server = spawn_server(test_config()).await;
    let mut fresh = TestClient::connect(server.addr).await;
    for (what, msg) in [
        (
            "hello without version",
            json!({"type": "hello", "client": "x"}),
        ),
        (
            "hello with string version",
            json!({"type": "hello", "version": "1", "client": "x"}),
        ),
        (
            "hello with 129-char client",
            json!({"type": "hello", "version": 1, "client": "c".repeat(129)}),
        ),
    ] {
        fresh.send_json(&msg).await;
        let e = fresh.recv_json().await;
        assert!(
            e["type"] == "error" && e["code"] == "invalid",
            "{what}: expected error invalid, got {e}"
        );
    }
    fresh.hello().await;

    let eleven: Vec<String> = (0..11).map(|i| format!("i{i}")).collect();
    for (what, msg) in [
        ("11 interests", json!({"type": "join", "interests": eleven})),
        (
            "interest of 33 chars",
            json!({"type": "join", "interests": ["a".repeat(33)]}),
        ),
        (
            "blank interest",
            json!({"type": "join", "interests": ["   "]}),
        ),
        (
            "interests not a list",
            json!({"type": "join", "interests": "music"}),
        ),
        (
            "interest not a string",
            json!({"type": "join", "interests": [1]}),
        ),
    ] {
        fresh.send_json(&msg).await;
        let e = fresh.recv_json().await;
        assert!(
            e["type"] == "error" && e["code"] == "invalid",
            "{what}: expected error invalid, got {e}"
        );
    }
    // Bounds that are allowed: 10 interests, 32 chars after trimming.
    let ten: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    fresh
        .join(&ten.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    fresh.send_json(&json!({"type": "leave"})).await;
    let padded = format!("  {}  ", "b".repeat(32));
    fresh.join(&[padded.as_str()]).await;
}

#[tokio::test]
async fn hello_required_and_version_unsupported() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::connect(server.addr).await;
    c.send_json(&json!({"type": "signal", "match_id": "m", "payload": {}}))
        .await;
    c.expect_error("hello_required").await;
    c.send_json(&json!({"type": "hello", "version": 2, "client": "x"}))
        .await;
    c.expect_error("version_unsupported").await;
    c.hello().await;
}

#[tokio::test]
async fn not_in_match_for_foreign_match_ids() {
    let server = spawn_server(test_config()).await;
    let mut c = server.client().await;
    c.chat("not-mine", "hi").await;
    c.expect_error("not_in_match").await;
    c.report("not-mine", "spam").await;
    c.expect_error("not_in_match").await;
    c.join(&[]).await;
}

#[tokio::test]
async fn oversized_frame_gets_too_large_and_close_1009() {
    let server = spawn_server(test_config()).await; // default max_message_bytes = 64 KiB
    let (mut a, mut b, m) = matched_pair(&server).await;
    let big = json!({"type": "chat", "match_id": m.match_id, "text": "z".repeat(70 * 1024)});
    // The server may close while we are still writing; a failed send is fine.
    let _ = a.try_send(Message::text(big.to_string())).await;
    let closed = a.recv_until_close(RECV_TIMEOUT).await;
    assert!(
        closed.has_error("too_large"),
        "expected an error too_large before the close: {closed:?}"
    );
    assert_eq!(
        closed.close_code,
        Some(1009),
        "expected close code 1009 (message too big): {closed:?}"
    );
    // The partner is told, and gets nothing of the oversized frame.
    b.expect_partner_left(&m.match_id, "disconnected").await;
}

#[tokio::test]
async fn oversized_signal_payload_is_too_large_and_connection_survives() {
    let mut cfg = test_config();
    cfg.max_message_bytes = 256 * 1024;
    let server = spawn_server(cfg).await;
    let (mut a, mut b, m) = matched_pair(&server).await;
    a.signal(
        &m.match_id,
        json!({"kind": "offer", "sdp": "s".repeat(70 * 1024)}),
    )
    .await;
    a.expect_error("too_large").await;
    b.expect_no_message(Duration::from_millis(300)).await;
    // A payload just under the limit is fine, and the connection survives.
    let ok = json!({"kind": "offer", "sdp": "s".repeat(60 * 1024)});
    a.signal(&m.match_id, ok.clone()).await;
    let got = b.expect_type("signal").await;
    assert_eq!(got["payload"], ok);
    // And other messages still flow.
    a.chat(&m.match_id, "after").await;
    assert_eq!(b.expect_type("chat").await["text"], "after");
}

#[tokio::test]
async fn rate_limited_when_exceeding_the_token_bucket() {
    let mut cfg = test_config();
    cfg.rate_per_sec = 1;
    cfg.rate_burst = 5;
    let server = spawn_server(cfg).await;
    let mut c = TestClient::connect(server.addr).await;
    c.hello().await;
    for _ in 0..20 {
        c.typing("fake-match", true).await;
    }
    // Each of the 20 gets at most one reply: not_in_match if it was let through,
    // rate_limited if it was dropped. Read until a rate_limited error.
    let mut replies = Vec::new();
    loop {
        match c.try_recv_json(RECV_TIMEOUT).await {
            None => panic!("no rate_limited error after 20 quick messages: {replies:?}"),
            Some(v) => {
                assert_eq!(v["type"], "error", "{v}");
                let code = v["code"].as_str().unwrap().to_owned();
                assert!(
                    code == "not_in_match" || code == "rate_limited",
                    "unexpected reply {v}"
                );
                replies.push(code.clone());
                if code == "rate_limited" {
                    break;
                }
            }
        }
    }
    let let_through = replies.iter().filter(|c| *c == "not_in_match").count();
    assert!(
        let_through <= 8,
        "burst 5 at 1/s should not let {let_through} of 20 through: {replies:?}"
    );
    // After waiting for the bucket to refill, the connection works again. Replies to the
    // burst that are still in flight are skipped.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.send_json(&json!({"type": "join"})).await;
    let q = c.recv_until(RECV_TIMEOUT, |v| v["type"] != "error").await;
    assert_eq!(q["type"], "queued", "{q}");
}

// ---------------------------------------------------------------------------------------
// Property test: arbitrary text frames against one live connection
// ---------------------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_frame() -> impl Strategy<Value = String> {
    let types = prop::sample::select(vec![
        "hello", "join", "signal", "chat", "typing", "next", "leave", "report", "welcome", "x", "",
    ]);
    prop_oneof![
        ".{0,200}",
        arb_json().prop_map(|v| v.to_string()),
        (types, "[a-z_]{1,12}", arb_json())
            .prop_map(|(t, k, v)| { json!({"type": t, k: v, "match_id": "m"}).to_string() }),
        "[\\[\\]{}\",:0-9a-z ]{0,60}",
    ]
}

#[test]
fn arbitrary_text_frames_get_an_error_or_a_valid_reply_and_never_kill_the_connection() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = test_config();
    cfg.rate_per_sec = 0; // shrinking may send many frames quickly
    let server = rt.block_on(spawn_server(cfg));
    let client = rt.block_on(async {
        let mut c = TestClient::connect(server.addr).await.label("fuzz");
        c.hello().await;
        Arc::new(tokio::sync::Mutex::new(c))
    });

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    });
    let result = runner.run(&arb_frame(), |frame| {
        let client = client.clone();
        rt.block_on(async move {
            let mut c = client.lock().await;
            c.send_text(frame.clone()).await;
            // The shared parser is the oracle for which errors are due. This session is
            // past hello and never in a match (it is alone on the server).
            match parse_client_message(&frame) {
                Err(e) => {
                    let v = c.recv_json().await;
                    if !(v["type"] == "error" && v["code"] == e.code.as_str()) {
                        return Err(TestCaseError::fail(format!(
                            "frame {frame:?}: expected error {}, got {v}",
                            e.code
                        )));
                    }
                }
                Ok(ClientMessage::Leave) => {}
                Ok(ClientMessage::Join { .. } | ClientMessage::Next { .. }) => {
                    let v = c.recv_json().await;
                    if !(v["type"] == "queued" || v["type"] == "error") {
                        return Err(TestCaseError::fail(format!(
                            "frame {frame:?}: expected queued or an error, got {v}"
                        )));
                    }
                }
                Ok(_) => {
                    // hello (a second one), signal/chat/typing/report outside a match.
                    let v = c.recv_json().await;
                    if v["type"] != "error" {
                        return Err(TestCaseError::fail(format!(
                            "frame {frame:?}: expected an error, got {v}"
                        )));
                    }
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("property failed: {e}");
    }
    // The connection survived everything: leave (silently) and join again.
    rt.block_on(async {
        let mut c = client.lock().await;
        c.send_json(&json!({"type": "leave"})).await;
        let q = c.join(&[]).await;
        assert_eq!(q["waiting"], 1, "{q}");
        c.expect_no_message(Duration::from_millis(200)).await;
    });
    drop(server);
    drop(rt);
}
