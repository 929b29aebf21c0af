//! Shared helpers for the integration tests: start a server on a random loopback port and
//! talk to it like an independent client would, following PROTOCOL.md.
//!
//! Every helper fails the test with a clear message instead of hanging: receives are bounded
//! by [`RECV_TIMEOUT`] and every server message is checked against the shared protocol types.
#![allow(dead_code, clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use peer_stream_server::Config;
use peer_stream_shared::ServerMessage;
use serde_json::{json, Value};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub use tokio_tungstenite::tungstenite::Error as WsError;

/// How long any single expected message may take. Generous on purpose: the suite runs on a
/// busy 2-core machine, and a correct server answers in milliseconds.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to stop after its shutdown token is cancelled.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The loopback address tests connect from by default.
pub const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Defaults from `Config::default()` with a few test-friendly changes. Tests that need small
/// timeouts or limits change the returned value before [`spawn_server`].
pub fn test_config() -> Config {
    Config {
        // Many tests open lots of connections from 127.0.0.1; the per-IP cap has its own test.
        max_conns_per_ip: 0,
        shutdown_grace_ms: 1000,
        stun_urls: vec!["stun:stun.example.org:3478".to_owned()],
        log: "warn".to_owned(),
        ..Config::default()
    }
}

/// A server running on `127.0.0.1:<random port>` in a task of the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub db_path: PathBuf,
    pub _dir: TempDir,
}

/// Starts a server with `cfg`, its SQLite file in a fresh temporary directory.
pub async fn spawn_server(cfg: Config) -> TestServer {
    let dir = tempfile::tempdir().expect("create a temp dir for the server database");
    spawn_server_in(cfg, dir).await
}

/// Starts a server with `cfg`, its SQLite file (`peer-stream.sqlite3`) in `dir`; starting a
/// second server with the directory of a stopped one reuses its database.
pub async fn spawn_server_in(mut cfg: Config, dir: TempDir) -> TestServer {
    let db_path = dir.path().join("peer-stream.sqlite3");
    cfg.db_path = db_path.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a listener on 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    cfg.listen = addr;
    let token = CancellationToken::new();
    let handle = tokio::spawn(peer_stream_server::run(
        listener,
        cfg,
        token.clone().cancelled_owned(),
    ));
    TestServer {
        addr,
        token,
        handle,
        db_path,
        _dir: dir,
    }
}

impl TestServer {
    /// Cancels the shutdown token, waits for `run` to return `Ok` and hands back the temp
    /// directory (with the database) so another server can be started on it.
    pub async fn stop(self) -> TempDir {
        self.token.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, self.handle).await {
            Err(_) => panic!("server did not stop within {STOP_TIMEOUT:?} after cancellation"),
            Ok(Err(join)) => panic!("server task panicked or was cancelled: {join}"),
            Ok(Ok(Err(e))) => panic!("server run() returned an error on shutdown: {e:#}"),
            Ok(Ok(Ok(()))) => {}
        }
        self._dir
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A fresh client from 127.0.0.1 that already said `hello`.
    pub async fn client(&self) -> TestClient {
        let mut c = TestClient::connect(self.addr).await;
        c.hello().await;
        c
    }

    /// A fresh client from 127.0.0.1 that said `hello`, labelled for failure messages.
    pub async fn named(&self, label: &str) -> TestClient {
        let mut c = TestClient::connect(self.addr).await.label(label);
        c.hello().await;
        c
    }
}

// ---------------------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------------------

/// Opens a TCP connection to `addr` from the loopback address `ip` (any 127.0.0.0/8 address
/// works on Linux), optionally with a small receive buffer.
pub async fn tcp_from(addr: SocketAddr, ip: [u8; 4], recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("create a TCP socket");
    if let Some(size) = recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .expect("set the socket receive buffer size");
    }
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 0))
        .unwrap_or_else(|e| panic!("bind a client socket to {ip:?}: {e}"));
    tokio::time::timeout(RECV_TIMEOUT, socket.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("TCP connect to {addr} from {ip:?} failed: {e}"))
}

/// A WebSocket handshake on `stream` for `ws://<addr>/ws` with an optional Origin header.
pub async fn ws_handshake<S>(
    addr: SocketAddr,
    stream: S,
    origin: Option<&str>,
) -> Result<WebSocketStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("build the WebSocket request");
    if let Some(origin) = origin {
        request.headers_mut().insert(
            "Origin",
            HeaderValue::from_str(origin).expect("origin header value"),
        );
    }
    match tokio::time::timeout(
        RECV_TIMEOUT,
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    {
        Err(_) => panic!("WebSocket handshake with {addr} timed out"),
        Ok(r) => r.map(|(ws, _response)| ws),
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// One thing read from the socket (pings and pongs are skipped; tungstenite answers pings
/// on its own whenever the stream is polled).
#[derive(Debug)]
pub enum Frame {
    /// A text frame holding a JSON value.
    Json(Value),
    /// A binary frame (the server never sends one).
    Binary(usize),
    /// A close frame and its code (`None` for a close frame without a code).
    Close(Option<u16>),
    /// The stream ended (or failed) without a close frame.
    End(String),
}

/// How a connection ended.
#[derive(Debug)]
pub struct Closed {
    /// Every JSON message received before the end.
    pub messages: Vec<Value>,
    /// `Some(code)` when a close frame arrived; `None` when the stream just ended.
    pub close_code: Option<u16>,
    /// Whether a close frame arrived at all.
    pub close_frame: bool,
}

impl Closed {
    pub fn has_error(&self, code: &str) -> bool {
        self.messages
            .iter()
            .any(|m| m["type"] == "error" && m["code"] == code)
    }
}

/// The fields of a `matched` message.
#[derive(Debug, Clone)]
pub struct Matched {
    pub match_id: String,
    pub role: String,
    pub common_interests: Vec<String>,
    pub ice_servers: Vec<Value>,
    pub raw: Value,
}

pub struct TestClient<S = TcpStream> {
    pub ws: WebSocketStream<S>,
    pub label: String,
    pub session_id: Option<String>,
}

impl TestClient<TcpStream> {
    /// Connects to `ws://addr/ws` from 127.0.0.1 (no `hello` yet).
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_from(addr, LOCALHOST).await
    }

    /// Connects from the loopback address `ip`, panicking if the handshake fails.
    pub async fn connect_from(addr: SocketAddr, ip: [u8; 4]) -> Self {
        Self::try_connect_from(addr, ip)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {addr} from {ip:?} failed: {e}"))
    }

    /// Connects from the loopback address `ip`, returning the handshake error if any.
    pub async fn try_connect_from(addr: SocketAddr, ip: [u8; 4]) -> Result<Self, WsError> {
        let tcp = tcp_from(addr, ip, None).await;
        let label = format!("client@{}", Ipv4Addr::from(ip));
        ws_handshake(addr, tcp, None)
            .await
            .map(|ws| Self::from_ws(ws, &label))
    }

    /// Connects from 127.0.0.1 with an optional `Origin` header.
    pub async fn try_connect_with_origin(
        addr: SocketAddr,
        origin: Option<&str>,
    ) -> Result<Self, WsError> {
        let tcp = tcp_from(addr, LOCALHOST, None).await;
        ws_handshake(addr, tcp, origin)
            .await
            .map(|ws| Self::from_ws(ws, &format!("client(origin={origin:?})")))
    }

    /// Connects from 127.0.0.1 with a small socket receive buffer, so that a client that
    /// stops reading fills up quickly.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Self {
        let tcp = tcp_from(addr, LOCALHOST, Some(4096)).await;
        let ws = ws_handshake(addr, tcp, None)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {addr} failed: {e}"));
        Self::from_ws(ws, "small-buffer-client")
    }
}

impl<S> TestClient<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub fn from_ws(ws: WebSocketStream<S>, label: &str) -> Self {
        TestClient {
            ws,
            label: label.to_owned(),
            session_id: None,
        }
    }

    /// Renames the client in failure messages.
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_owned();
        self
    }

    // ---- sending ----------------------------------------------------------------------

    pub async fn try_send(&mut self, msg: Message) -> Result<(), WsError> {
        match tokio::time::timeout(RECV_TIMEOUT, self.ws.send(msg)).await {
            Ok(r) => r,
            Err(_) => panic!(
                "[{}] sending a frame blocked for {RECV_TIMEOUT:?}",
                self.label
            ),
        }
    }

    pub async fn send_msg(&mut self, msg: Message) {
        let label = self.label.clone();
        self.try_send(msg)
            .await
            .unwrap_or_else(|e| panic!("[{label}] send failed: {e}"));
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.send_msg(Message::text(text.into())).await;
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    // ---- receiving --------------------------------------------------------------------

    /// The next frame that is not a ping/pong, or `None` after `wait`. Every text frame must
    /// be a JSON object that deserializes as a protocol `ServerMessage`.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(item) => item,
            };
            let msg = match item {
                None => return Some(Frame::End("stream ended".to_owned())),
                Some(Err(e)) => return Some(Frame::End(format!("read error: {e}"))),
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!(
                            "[{}] server sent a text frame that is not JSON ({e}): {}",
                            self.label,
                            text.as_str()
                        )
                    });
                    assert!(
                        value.is_object() && value["type"].is_string(),
                        "[{}] server message is not an object with a string \"type\": {value}",
                        self.label
                    );
                    if let Err(e) = serde_json::from_value::<ServerMessage>(value.clone()) {
                        panic!(
                            "[{}] server message does not match the protocol ({e}): {value}",
                            self.label
                        );
                    }
                    return Some(Frame::Json(value));
                }
                Message::Binary(b) => return Some(Frame::Binary(b.len())),
                Message::Close(frame) => {
                    return Some(Frame::Close(frame.map(|f| u16::from(f.code))));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// The next JSON message within `wait`, `None` if nothing came. Panics if the connection
    /// closes or a binary frame arrives.
    pub async fn try_recv_json(&mut self, wait: Duration) -> Option<Value> {
        match self.next_frame(wait).await {
            None => None,
            Some(Frame::Json(v)) => Some(v),
            Some(other) => panic!(
                "[{}] expected a JSON message, got {other:?} (connection should be open)",
                self.label
            ),
        }
    }

    /// The next JSON message; fails the test after [`RECV_TIMEOUT`].
    pub async fn recv_json(&mut self) -> Value {
        match self.try_recv_json(RECV_TIMEOUT).await {
            Some(v) => v,
            None => panic!(
                "[{}] no message from the server within {RECV_TIMEOUT:?}",
                self.label
            ),
        }
    }

    /// The next message, which must have type `ty`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        let v = self.recv_json().await;
        assert_eq!(
            v["type"], ty,
            "[{}] expected a `{ty}` message, got {v}",
            self.label
        );
        v
    }

    /// The next message, which must be an `error` with `code` (and a string `message`).
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv_json().await;
        assert!(
            v["type"] == "error" && v["code"] == code,
            "[{}] expected error `{code}`, got {v}",
            self.label
        );
        assert!(
            v["message"].is_string(),
            "[{}] error without a string message: {v}",
            self.label
        );
        v
    }

    /// Reads for `wait` and fails if any message (or a close) arrives.
    pub async fn expect_no_message(&mut self, wait: Duration) {
        if let Some(frame) = self.next_frame(wait).await {
            panic!(
                "[{}] expected nothing for {wait:?}, got {frame:?}",
                self.label
            );
        }
    }

    /// Reads messages until the connection closes (close frame or end of stream); fails if
    /// it is still open after `wait`.
    pub async fn recv_until_close(&mut self, wait: Duration) -> Closed {
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                None => panic!(
                    "[{}] connection still open after {wait:?}; messages so far: {messages:?}",
                    self.label
                ),
                Some(Frame::Json(v)) => messages.push(v),
                Some(Frame::Binary(n)) => {
                    panic!("[{}] unexpected binary frame of {n} bytes", self.label)
                }
                Some(Frame::Close(code)) => {
                    return Closed {
                        messages,
                        close_code: code,
                        close_frame: true,
                    }
                }
                Some(Frame::End(_)) => {
                    return Closed {
                        messages,
                        close_code: None,
                        close_frame: false,
                    }
                }
            }
        }
    }

    /// Reads messages until one satisfies `pred`, skipping the others; panics after `wait`.
    pub async fn recv_until(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + wait;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_recv_json(left).await {
                Some(v) if pred(&v) => return v,
                Some(v) => skipped.push(v),
                None => panic!(
                    "[{}] the expected message did not come within {wait:?}; got instead: {skipped:?}",
                    self.label
                ),
            }
        }
    }

    // ---- protocol helpers ---------------------------------------------------------------

    /// Says `hello` and checks the `welcome`; returns the session id.
    pub async fn hello(&mut self) -> String {
        self.send_json(&hello_msg()).await;
        let w = self.expect_type("welcome").await;
        assert_eq!(w["version"], 1, "[{}] welcome version: {w}", self.label);
        let sid = w["session_id"]
            .as_str()
            .unwrap_or_else(|| panic!("[{}] welcome without session_id: {w}", self.label))
            .to_owned();
        assert!(!sid.is_empty(), "[{}] empty session_id: {w}", self.label);
        let online = w["online"]
            .as_u64()
            .unwrap_or_else(|| panic!("[{}] welcome without numeric online: {w}", self.label));
        assert!(
            online >= 1,
            "[{}] online must count this session: {w}",
            self.label
        );
        self.session_id = Some(sid.clone());
        sid
    }

    /// Sends `join` with `interests` and expects `queued`; returns the `queued` message.
    pub async fn join(&mut self, interests: &[&str]) -> Value {
        self.send_json(&json!({"type": "join", "interests": interests}))
            .await;
        let q = self.expect_type("queued").await;
        let waiting = q["waiting"]
            .as_u64()
            .unwrap_or_else(|| panic!("[{}] queued without numeric waiting: {q}", self.label));
        assert!(
            waiting >= 1,
            "[{}] waiting must count this client: {q}",
            self.label
        );
        q
    }

    /// Sends `next` and expects `queued`.
    pub async fn next_partner(&mut self) -> Value {
        self.send_json(&json!({"type": "next"})).await;
        self.expect_type("queued").await
    }

    /// Expects a `matched` message and checks its shape.
    pub async fn expect_matched(&mut self) -> Matched {
        let m = self.expect_type("matched").await;
        parse_matched(&self.label, m)
    }

    pub async fn chat(&mut self, match_id: &str, text: &str) {
        self.send_json(&json!({"type": "chat", "match_id": match_id, "text": text}))
            .await;
    }

    pub async fn signal(&mut self, match_id: &str, payload: Value) {
        self.send_json(&json!({"type": "signal", "match_id": match_id, "payload": payload}))
            .await;
    }

    pub async fn typing(&mut self, match_id: &str, active: bool) {
        self.send_json(&json!({"type": "typing", "match_id": match_id, "active": active}))
            .await;
    }

    pub async fn report(&mut self, match_id: &str, reason: &str) {
        self.send_json(&json!({"type": "report", "match_id": match_id, "reason": reason}))
            .await;
    }

    /// Expects a `partner_left` for `match_id` with `reason`.
    pub async fn expect_partner_left(&mut self, match_id: &str, reason: &str) {
        let v = self.expect_type("partner_left").await;
        assert_eq!(
            v["match_id"], match_id,
            "[{}] partner_left: {v}",
            self.label
        );
        assert_eq!(v["reason"], reason, "[{}] partner_left: {v}", self.label);
    }

    /// Proves the connection is alive and the session usable: an unknown type must be
    /// answered with `unknown_type`.
    pub async fn assert_alive(&mut self) {
        self.send_json(&json!({"type": "are_you_there"})).await;
        self.expect_error("unknown_type").await;
    }

    /// Sends a close frame and waits (briefly) for the server's reply.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

pub fn hello_msg() -> Value {
    json!({"type": "hello", "version": 1, "client": "peer-stream-tests/1"})
}

pub fn parse_matched(label: &str, m: Value) -> Matched {
    let match_id = m["match_id"]
        .as_str()
        .unwrap_or_else(|| panic!("[{label}] matched without match_id: {m}"))
        .to_owned();
    assert!(!match_id.is_empty(), "[{label}] empty match_id: {m}");
    let role = m["role"]
        .as_str()
        .unwrap_or_else(|| panic!("[{label}] matched without role: {m}"))
        .to_owned();
    assert!(
        role == "offerer" || role == "answerer",
        "[{label}] bad role: {m}"
    );
    let common_interests = m["common_interests"]
        .as_array()
        .unwrap_or_else(|| panic!("[{label}] matched without common_interests array: {m}"))
        .iter()
        .map(|v| v.as_str().expect("interest is a string").to_owned())
        .collect();
    let ice_servers = m["ice_servers"]
        .as_array()
        .unwrap_or_else(|| panic!("[{label}] matched without ice_servers array: {m}"))
        .clone();
    Matched {
        match_id,
        role,
        common_interests,
        ice_servers,
        raw: m,
    }
}

/// Two fresh clients (labelled `a` and `b`, from 127.0.0.1) that said hello, joined without
/// interests (a first) and were matched with each other. Returns them and the match.
pub async fn matched_pair(server: &TestServer) -> (TestClient, TestClient, Matched) {
    let mut a = server.named("a").await;
    let mut b = server.named("b").await;
    let m = pair_up(&mut a, &mut b, &[]).await;
    (a, b, m)
}

/// `a` joins, then `b` joins (both with `interests`); both must be matched with each other.
pub async fn pair_up<S: AsyncRead + AsyncWrite + Unpin>(
    a: &mut TestClient<S>,
    b: &mut TestClient<S>,
    interests: &[&str],
) -> Matched {
    a.join(interests).await;
    b.join(interests).await;
    let ma = a.expect_matched().await;
    let mb = b.expect_matched().await;
    assert_eq!(
        ma.match_id, mb.match_id,
        "partners must get the same match_id: {} vs {}",
        ma.raw, mb.raw
    );
    assert_ne!(
        ma.role, mb.role,
        "exactly one offerer and one answerer: {} vs {}",
        ma.raw, mb.raw
    );
    ma
}

/// Polls `cond` every 100 ms until it returns true; panics with `what` after `wait`.
pub async fn eventually<F, Fut>(wait: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {wait:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` over a raw TCP connection with `Connection: close`, read to the end.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut tcp = tcp_from(addr, LOCALHOST, None).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    match tokio::time::timeout(RECV_TIMEOUT, tcp.read_to_end(&mut buf)).await {
        Err(_) => panic!("GET {path}: the response did not end within {RECV_TIMEOUT:?}"),
        Ok(Err(e)) => panic!("GET {path}: read failed: {e}"),
        Ok(Ok(_)) => {}
    }
    parse_http_response(path, &buf)
}

pub fn parse_http_response(path: &str, buf: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in response: {text:?}"));
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        head: head.to_owned(),
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// The sum of the samples of metric `name` (any labels) in Prometheus text, or `None` when
/// there is no sample line for it.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = sample_value(line)?;
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

/// The value of the sample of `name` whose label set contains `label` (e.g. `code="bad_json"`).
pub fn metric_with_label(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            l.split_once('}')
                .map(|(labels, _)| labels.contains(label))
                .unwrap_or(false)
        })
        .find_map(sample_value)
}

fn sample_value(line: &str) -> Option<f64> {
    // `name{labels} value [timestamp]`: the value follows the label set (labels may hold spaces).
    let after_labels = match line.rfind('}') {
        Some(i) => &line[i + 1..],
        None => line.split_once(' ').map(|(_, r)| r).unwrap_or(""),
    };
    let token = after_labels.split_whitespace().next()?;
    match token {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

/// What becomes of a connection from `ip`: `Ok(true)` refused as banned (error `banned`,
/// then close 1008), `Ok(false)` welcomed, `Err` anything else. The probe first only
/// listens for `quiet` (a banned address is refused right after the upgrade: with no
/// hello in flight when the server closes, the close cannot turn into a reset), then says
/// hello and waits up to [`RECV_TIMEOUT`].
pub async fn ban_probe(addr: SocketAddr, ip: [u8; 4], quiet: Duration) -> Result<bool, String> {
    let mut c = TestClient::try_connect_from(addr, ip)
        .await
        .map_err(|e| format!("handshake failed (expected an upgrade, then error banned): {e}"))?
        .label("probe");
    let mut messages: Vec<Value> = Vec::new();
    let mut said_hello = false;
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let wait = if said_hello {
            deadline.saturating_duration_since(Instant::now())
        } else {
            quiet
        };
        match c.next_frame(wait).await {
            None if !said_hello => {
                said_hello = true;
                let _ = c.try_send(Message::text(hello_msg().to_string())).await;
            }
            None => return Err(format!("no welcome and no close; got {messages:?}")),
            Some(Frame::Json(v)) => {
                if v["type"] == "welcome" {
                    return Ok(false);
                }
                messages.push(v);
            }
            Some(Frame::Close(code)) => {
                let banned = messages
                    .iter()
                    .any(|m| m["type"] == "error" && m["code"] == "banned");
                return if banned && code == Some(1008) {
                    Ok(true)
                } else {
                    Err(format!(
                        "closed with {code:?} after {messages:?}; expected error banned + 1008"
                    ))
                };
            }
            Some(other) => {
                return Err(format!(
                    "connection ended ({other:?}) after {messages:?}; expected error banned \
                     then close 1008"
                ))
            }
        }
    }
}

// ---- resuming (PROTOCOL.md, "Resuming a session") ------------------------------------

/// A session as the client sees it: its id and its latest resume token.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub session_id: String,
    pub token: String,
}

/// Sends `hello` (with `resume` when given) and returns the whole `welcome`.
pub async fn hello_with(c: &mut TestClient, resume: Option<&str>) -> Value {
    let mut hello = hello_msg();
    if let Some(token) = resume {
        hello["resume"] = json!(token);
    }
    c.send_json(&hello).await;
    c.expect_type("welcome").await
}

pub fn ticket(label: &str, w: &Value) -> Ticket {
    let session_id = w["session_id"].as_str().unwrap().to_owned();
    let token = w["resume_token"]
        .as_str()
        .unwrap_or_else(|| panic!("[{label}] welcome without resume_token: {w}"))
        .to_owned();
    // 128 random bits, hex: unguessable and inside the 64-character id bound.
    assert!(
        token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "[{label}] resume_token should be at least 128 random bits in hex: {w}"
    );
    Ticket { session_id, token }
}

/// A new client that said hello; returns it with its ticket.
pub async fn connect_ticket(server: &TestServer, label: &str) -> (TestClient, Ticket) {
    let mut c = TestClient::connect(server.addr).await.label(label);
    let w = hello_with(&mut c, None).await;
    assert!(w.get("resumed").is_none(), "[{label}] a new session: {w}");
    let t = ticket(label, &w);
    c.session_id = Some(t.session_id.clone());
    (c, t)
}

/// Reconnects with `hello` + `resume`; the session must come back: same session id,
/// `resumed: true`, a fresh token. Returns the client and its new ticket.
pub async fn resume_session(
    server: &TestServer,
    label: &str,
    old: &Ticket,
) -> (TestClient, Ticket) {
    let mut c = TestClient::connect(server.addr).await.label(label);
    let w = hello_with(&mut c, Some(&old.token)).await;
    assert_eq!(
        w["resumed"], true,
        "[{label}] expected a resumed session: {w}"
    );
    let t = ticket(label, &w);
    assert_eq!(t.session_id, old.session_id, "[{label}] same session: {w}");
    assert_ne!(
        t.token, old.token,
        "[{label}] every welcome brings a new token"
    );
    (c, t)
}

/// Reconnects with `hello` + `resume` and expects a new session instead.
pub async fn resume_refused(server: &TestServer, label: &str, token: &str) -> (TestClient, Ticket) {
    let mut c = TestClient::connect(server.addr).await.label(label);
    let w = hello_with(&mut c, Some(token)).await;
    assert!(
        w.get("resumed").is_none(),
        "[{label}] the token should not resume anything: {w}"
    );
    let t = ticket(label, &w);
    (c, t)
}

// ---- undo (PROTOCOL.md, "Undo an accidental next") ------------------------------------

/// Expects `matched` with `resumed: true` and returns it.
pub async fn expect_resumed(c: &mut TestClient) -> Matched {
    let m = c.expect_matched().await;
    assert_eq!(
        m.raw["resumed"], true,
        "[{}] resumed match: {}",
        c.label, m.raw
    );
    m
}

/// Chat from `from` reaches `to` in `match_id`: both are in that match.
pub async fn chat_flows(from: &mut TestClient, to: &mut TestClient, match_id: &str, text: &str) {
    from.chat(match_id, text).await;
    let v = to.expect_type("chat").await;
    assert_eq!(v["match_id"], match_id, "[{}] {v}", to.label);
    assert_eq!(v["text"], text, "[{}] {v}", to.label);
}

/// `a` skips `b` (matched in `first`), `b` goes back to the queue (the rematch cooldown keeps
/// the two apart there), then `a` sends `undo_next`: both get the resumed match, with a new
/// id, one offerer and one answerer. Returns `(a's, b's)`.
pub async fn skip_requeue_and_undo(
    a: &mut TestClient,
    b: &mut TestClient,
    first: &Matched,
) -> (Matched, Matched) {
    a.next_partner().await;
    b.expect_partner_left(&first.match_id, "skipped").await;
    b.next_partner().await;
    a.expect_no_message(Duration::from_millis(400)).await;
    a.send_json(&json!({"type": "undo_next"})).await;
    let ma = expect_resumed(a).await;
    let mb = expect_resumed(b).await;
    assert_eq!(ma.match_id, mb.match_id);
    assert_ne!(ma.match_id, first.match_id, "a resumed match has a new id");
    assert_ne!(ma.role, mb.role, "one offerer, one answerer");
    (ma, mb)
}
