//! Transport-level policy: the Origin allow-list and TLS (wss://) served by the server itself.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

fn origin_config() -> peer_stream_server::Config {
    let mut cfg = test_config();
    cfg.allowed_origins = vec!["https://good.example".to_owned()];
    cfg
}

#[tokio::test]
async fn disallowed_origin_is_refused_with_403() {
    let server = spawn_server(origin_config()).await;
    match TestClient::try_connect_with_origin(server.addr, Some("https://evil.example")).await {
        Ok(_) => panic!("a WebSocket from a disallowed Origin was accepted"),
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403, "{resp:?}");
        }
        Err(e) => panic!("expected an HTTP 403 refusal, got {e}"),
    }
    // A near miss is not allowed either.
    match TestClient::try_connect_with_origin(server.addr, Some("https://good.example.evil.com"))
        .await
    {
        Ok(_) => panic!("an Origin that merely starts with an allowed one was accepted"),
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected an HTTP 403 refusal, got {e}"),
    }
}

#[tokio::test]
async fn allowed_origin_and_no_origin_are_accepted() {
    let server = spawn_server(origin_config()).await;
    let mut good = TestClient::try_connect_with_origin(server.addr, Some("https://good.example"))
        .await
        .unwrap_or_else(|e| panic!("allowed origin refused: {e}"));
    good.hello().await;
    let mut native = TestClient::try_connect_with_origin(server.addr, None)
        .await
        .unwrap_or_else(|e| panic!("request without Origin refused: {e}"));
    native.hello().await;
    let m = pair_up(&mut good, &mut native, &[]).await;
    good.chat(&m.match_id, "hi").await;
    assert_eq!(native.expect_type("chat").await["text"], "hi");
}

#[tokio::test]
async fn any_origin_is_accepted_without_an_allow_list() {
    let server = spawn_server(test_config()).await;
    let mut c = TestClient::try_connect_with_origin(server.addr, Some("https://whatever.example"))
        .await
        .unwrap_or_else(|e| panic!("origin refused without an allow-list: {e}"));
    c.hello().await;
}

fn tls_client_config(cert: &rcgen::Certificate) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).expect("add the test CA");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

#[tokio::test]
async fn tls_serves_wss_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();

    let mut cfg = test_config();
    cfg.tls_cert = Some(cert_path);
    cfg.tls_key = Some(key_path);
    let server = spawn_server_in(cfg, dir).await;
    let connector = TlsConnector::from(tls_client_config(&certified.cert));

    let mut clients = Vec::new();
    for label in ["tls-a", "tls-b"] {
        let tcp = tcp_from(server.addr, LOCALHOST, None).await;
        let tls = tokio::time::timeout(
            RECV_TIMEOUT,
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .expect("TLS handshake timed out")
        .unwrap_or_else(|e| panic!("TLS handshake failed: {e}"));
        let (ws, _resp) = tokio::time::timeout(
            RECV_TIMEOUT,
            tokio_tungstenite::client_async("wss://localhost/ws", tls),
        )
        .await
        .expect("WebSocket handshake over TLS timed out")
        .unwrap_or_else(|e| panic!("WebSocket handshake over TLS failed: {e}"));
        let mut c = TestClient::from_ws(ws, label);
        c.hello().await;
        clients.push(c);
    }
    let mut b = clients.pop().unwrap();
    let mut a = clients.pop().unwrap();
    let m = pair_up(&mut a, &mut b, &[]).await;
    a.chat(&m.match_id, "over tls").await;
    assert_eq!(b.expect_type("chat").await["text"], "over tls");

    // HTTPS on the same port.
    let tcp = tcp_from(server.addr, LOCALHOST, None).await;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake for /healthz");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // A peer that closes without close_notify is a read error for rustls; keep what came.
    let _ = tokio::time::timeout(RECV_TIMEOUT, tls.read_to_end(&mut buf))
        .await
        .expect("HTTPS response did not end");
    let r = parse_http_response("/healthz (https)", &buf);
    assert_eq!(r.status, 200, "{r:?}");

    // A plain-text WebSocket to the TLS port does not get a session.
    let tcp = tcp_from(server.addr, LOCALHOST, None).await;
    let plain = ws_handshake(server.addr, tcp, None).await;
    assert!(plain.is_err(), "plain ws:// accepted on a TLS port");
}
