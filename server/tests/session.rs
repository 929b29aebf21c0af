//! The `hello` handshake: welcome, hello_required, version_unsupported, second hello.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn hello_gets_welcome_with_session_and_online_count() {
    let server = spawn_server(test_config()).await;
    let mut a = TestClient::connect(server.addr).await.label("a");
    a.send_json(&json!({"type": "hello", "version": 1, "client": "peer-stream-tests/1"}))
        .await;
    let w = a.expect_type("welcome").await;
    assert_eq!(w["version"], 1, "{w}");
    let sid_a = w["session_id"]
        .as_str()
        .expect("session_id string")
        .to_owned();
    assert!(!sid_a.is_empty(), "{w}");
    assert!(w["online"].as_u64().expect("online number") >= 1, "{w}");

    // A second session is counted and gets a different id.
    let mut b = TestClient::connect(server.addr).await.label("b");
    b.send_json(&hello_msg()).await;
    let w2 = b.expect_type("welcome").await;
    let sid_b = w2["session_id"].as_str().expect("session_id string");
    assert_ne!(sid_a, sid_b, "session ids must be unique");
    assert!(
        w2["online"].as_u64().expect("online number") >= 2,
        "online must count both connected sessions: {w2}"
    );
}

#[tokio::test]
async fn messages_before_hello_get_hello_required_and_connection_survives() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::connect(server.addr).await;
    c.send_json(&json!({"type": "join"})).await;
    c.expect_error("hello_required").await;
    c.send_json(&json!({"type": "chat", "match_id": "m1", "text": "hi"}))
        .await;
    c.expect_error("hello_required").await;
    c.send_json(&json!({"type": "next"})).await;
    c.expect_error("hello_required").await;
    // The session is not started: a join still needs a hello ...
    c.send_json(&json!({"type": "leave"})).await;
    c.expect_error("hello_required").await;
    // ... and a hello now works.
    c.hello().await;
    c.join(&[]).await;
}

#[tokio::test]
async fn hello_with_other_version_is_version_unsupported_then_v1_works() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::connect(server.addr).await;
    c.send_json(&json!({"type": "hello", "version": 2, "client": "future/9"}))
        .await;
    c.expect_error("version_unsupported").await;
    c.send_json(&json!({"type": "hello", "version": 0, "client": "past/0"}))
        .await;
    c.expect_error("version_unsupported").await;
    // Still not in a session.
    c.send_json(&json!({"type": "join"})).await;
    c.expect_error("hello_required").await;
    c.hello().await;
    c.join(&[]).await;
}

#[tokio::test]
async fn second_hello_is_invalid_and_session_continues() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::connect(server.addr).await;
    let sid = c.hello().await;
    c.send_json(&hello_msg()).await;
    c.expect_error("invalid").await;
    // The session is unchanged and usable.
    assert_eq!(c.session_id.as_deref(), Some(sid.as_str()));
    c.join(&[]).await;
    c.expect_no_message(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::connect(server.addr).await;
    c.send_json(&json!({
        "type": "hello", "version": 1, "client": "t/1", "future_field": {"x": [1, 2]}
    }))
    .await;
    c.expect_type("welcome").await;
    c.send_json(&json!({"type": "join", "interests": [], "colour": "blue"}))
        .await;
    c.expect_type("queued").await;
}
