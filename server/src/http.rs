//! The HTTP side of the one port: reads a request head, then upgrades `/ws` to a
//! WebSocket or answers `/healthz`, `/metrics`, the web client's files ([`crate::web`])
//! and 404 itself.
//!
//! Doing the upgrade by hand (instead of letting tungstenite read the request) means one
//! parser sees every request, so health checks, metrics and the WebSocket share a port
//! and a TLS setup without an HTTP framework.

use crate::connection::{self, ReadAhead};
use crate::limits::Refusal;
use crate::{web, Shared};
use peer_stream_shared::{ErrorCode, ServerMessage, WS_PATH};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// tungstenite's read buffer: allocated with the WebSocket and kept for its whole life,
/// and the most tungstenite asks of the socket per read. Small, because every idle
/// connection holds one (a larger frame grows it as needed); [`ReadAhead`] under it still
/// reads up to 8 KiB per system call.
pub const WS_READ_BUFFER_BYTES: usize = 128;

/// Largest request head we read; browsers send well under 4 KiB.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// Serves one accepted connection (plain TCP or TLS).
pub async fn handle<S>(mut stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = tokio::time::timeout(shared.config.hello_timeout(), read_head(&mut stream)).await;
    let (req, leftover) = match head {
        Ok(Ok(Some(parsed))) => parsed,
        Ok(Ok(None)) => return, // closed before sending a request
        Ok(Err(status)) => {
            let _ = respond(&mut stream, status, "text/plain", status_text(status)).await;
            return;
        }
        Err(_) => {
            let _ = respond(&mut stream, 408, "text/plain", "request timeout\n").await;
            return;
        }
    };
    let path = req.path.split('?').next().unwrap_or("/").to_owned();
    let result = match (req.method.as_str(), path.as_str()) {
        ("GET", p) if p == WS_PATH => {
            upgrade(stream, req, leftover, peer, shared).await;
            return;
        }
        ("GET" | "HEAD", "/healthz") => {
            if shared.shutdown.is_cancelled() {
                respond(&mut stream, 503, "text/plain", "shutting down\n").await
            } else {
                respond(&mut stream, 200, "text/plain", "ok\n").await
            }
        }
        ("GET" | "HEAD", "/readyz") => {
            // Readiness (for a load balancer): can this node take new users now? Not while
            // shutting down, nor while a cluster node's Redis is unreachable.
            if shared.shutdown.is_cancelled() {
                respond(&mut stream, 503, "text/plain", "shutting down\n").await
            } else if !shared.ready.load(std::sync::atomic::Ordering::Relaxed) {
                respond(&mut stream, 503, "text/plain", "redis unreachable\n").await
            } else {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            }
        }
        ("GET" | "HEAD", "/metrics") => {
            let body = shared.metrics.render();
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        (method @ ("GET" | "HEAD"), p) if web::asset(p).is_some() => {
            serve_asset(&mut stream, &req, p, method == "HEAD").await
        }
        (_, p) if matches!(p, "/healthz" | "/readyz" | "/metrics") || web::asset(p).is_some() => {
            respond(&mut stream, 405, "text/plain", "method not allowed\n").await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "http write failed: {e}");
    }
}

/// Reads until the blank line that ends the head. `Ok(None)`: the peer closed first.
/// `Err(status)`: the request is unusable and gets that status.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<(Request, Vec<u8>)>, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| 400u16)?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(400) };
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let req = Request {
                    method: parsed.method.unwrap_or("").to_owned(),
                    path: parsed.path.unwrap_or("/").to_owned(),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                return Ok(Some((req, buf[len..].to_vec())));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(431),
            Err(httparse::Error::TooManyHeaders) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        status_text(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// Serves one embedded file of the web client, with its content type and the
/// Content-Security-Policy (this origin's files, WebSocket back to the same host).
async fn serve_asset<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
    path: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let Some((content_type, body)) = web::asset(path) else {
        return respond(stream, 404, "text/plain", "not found\n").await;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {}\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len(),
        web::content_security_policy(req.header("host")),
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// The address we hold responsible for a connection: the socket's peer, or with
/// `--trust-proxy` the address our own proxy put last in X-Forwarded-For.
///
/// Only the right-most entry of the last X-Forwarded-For line is used: that is the one
/// the proxy in front of us appended (nginx's `$proxy_add_x_forwarded_for`, or a proxy
/// that adds a header line of its own). Everything left of it, and any earlier line,
/// came from the client and can be forged. An unreadable entry falls back to the
/// socket's peer (the proxy), never to a client-supplied value.
fn client_ip(req: &Request, peer: SocketAddr, trust_proxy: bool) -> IpAddr {
    if !trust_proxy {
        return peer.ip();
    }
    let last_hop = req
        .headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
        .and_then(|(_, v)| v.rsplit(',').next())
        .map(str::trim);
    match last_hop.map(parse_forwarded_ip) {
        Some(Some(ip)) => ip,
        Some(None) => {
            tracing::debug!(%peer, hop = ?last_hop, "unreadable X-Forwarded-For entry");
            peer.ip()
        }
        None => peer.ip(),
    }
}

/// `203.0.113.7`, `2001:db8::1`, and the forms with a port some proxies write
/// (`203.0.113.7:5678`, `[2001:db8::1]:443`).
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

async fn upgrade<S>(
    mut stream: S,
    req: Request,
    leftover: Vec<u8>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &shared.config;
    let key = req.header("sec-websocket-key").map(str::to_owned);
    let (true, true, Some(key)) = (
        req.header_has_token("upgrade", "websocket"),
        req.header_has_token("connection", "upgrade"),
        key,
    ) else {
        let _ = respond(
            &mut stream,
            426,
            "text/plain",
            "this endpoint speaks WebSocket only\n",
        )
        .await;
        return;
    };
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        let _ = respond(
            &mut stream,
            426,
            "text/plain",
            "WebSocket version 13 required\n",
        )
        .await;
        return;
    }
    if let Some(origin) = req.header("origin") {
        if !cfg.allowed_origins.is_empty() && !cfg.allowed_origins.iter().any(|o| o == origin) {
            tracing::info!(%peer, %origin, "refused a WebSocket from a disallowed origin");
            let _ = respond(&mut stream, 403, "text/plain", "origin not allowed\n").await;
            return;
        }
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let mut ws = WebSocketStream::from_partially_read(
        ReadAhead::new(stream),
        leftover,
        Role::Server,
        Some(ws_config(cfg.max_message_bytes)),
    )
    .await;
    let ip = client_ip(&req, peer, cfg.trust_proxy);
    let slot = match shared.limiter.try_acquire(ip) {
        Ok(slot) => slot,
        Err(refusal) => {
            let (msg, code) = match refusal {
                Refusal::PerIp(n) => (
                    format!("too many connections from your address (limit {n})"),
                    CloseCode::Policy,
                ),
                Refusal::Total(n) => (
                    format!("the server is full ({n} connections); try again later"),
                    CloseCode::Again,
                ),
            };
            shared.metrics.error(ErrorCode::RateLimited);
            let err = ServerMessage::error(ErrorCode::RateLimited, msg).to_json();
            let close = CloseFrame {
                code,
                reason: Utf8Bytes::from_static("connection limit"),
            };
            use futures_util::SinkExt;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                ws.send(Message::text(err)).await?;
                ws.send(Message::Close(Some(close))).await
            })
            .await;
            return;
        }
    };
    // The WebSocket lives on in a task of its own, so this task's HTTP-stage state
    // (request buffers, parsed headers) is freed instead of being carried for the
    // connection's whole life: a large share of the memory of an idle connection.
    let tracker = shared.tracker.clone();
    tracker.spawn(connection::serve(ws, ip, shared, Some(slot)));
}

/// The WebSocket settings of every client connection.
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        // Frames queued together go out in one system call (see connection::write_batch).
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each idle connection keeps its read buffer (#11: ≤ 4.8 KiB per idle connection).
    #[test]
    fn the_websocket_read_buffer_stays_small() {
        let c = ws_config(64 * 1024);
        assert!(c.read_buffer_size <= 512, "{}", c.read_buffer_size);
        assert_eq!(c.max_message_size, Some(64 * 1024));
        assert_eq!(c.max_frame_size, Some(64 * 1024));
    }

    fn req(xff: &[&str]) -> Request {
        Request {
            method: "GET".into(),
            path: "/ws".into(),
            headers: xff
                .iter()
                .map(|v| ("X-Forwarded-For".to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn client_ip_takes_the_last_hop_only_behind_a_trusted_proxy() {
        let proxy: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        // Not trusted: the header is ignored entirely.
        assert_eq!(
            client_ip(&req(&["203.0.113.7"]), proxy, false),
            ip("127.0.0.1")
        );
        // No header: the socket's peer.
        assert_eq!(client_ip(&req(&[]), proxy, true), ip("127.0.0.1"));
        // nginx appends the client's address to whatever the client sent: the left part
        // is forgeable, the right-most entry is what nginx saw.
        let forged = req(&["198.51.100.1, 203.0.113.7"]);
        assert_eq!(client_ip(&forged, proxy, true), ip("203.0.113.7"));
        // A proxy that adds a header line of its own after the client's forged one.
        let two_lines = req(&["198.51.100.1", "203.0.113.7"]);
        assert_eq!(client_ip(&two_lines, proxy, true), ip("203.0.113.7"));
        // Ports and IPv6.
        assert_eq!(
            client_ip(&req(&["203.0.113.7:5678"]), proxy, true),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(&req(&["[2001:db8::1]:443"]), proxy, true),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(&req(&["x, 2001:db8::2 "]), proxy, true),
            ip("2001:db8::2")
        );
        // Unreadable last hop: the proxy's address, never an earlier (client) entry.
        assert_eq!(
            client_ip(&req(&["203.0.113.7, unknown"]), proxy, true),
            ip("127.0.0.1")
        );
    }
}
