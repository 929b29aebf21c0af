//! One task per WebSocket: the hello handshake, then a loop that reads client frames,
//! writes queued frames, pings, and watches for shutdown or a kick.
//!
//! Recoverable problems (bad JSON, a field out of bounds, a rate-limited message) get an
//! `error` reply and the loop goes on; fatal ones (socket errors, an oversize frame, a
//! silent peer, shutdown) end it. A connection lost without a close frame (reset, EOF, a
//! silent peer, a failed write) tells the matchmaker `Detach`: the session waits for a
//! `hello` with `resume` within the resume window. Every other end (the client's close
//! frame, a slow reader, an oversize frame, a ban, shutdown) is a `Disconnect`, so the
//! partner learns within a second.

use crate::limits::{ConnectionSlot, TokenBucket};
use crate::matchmaker::{random_id, Command, Registered};
use crate::Shared;
use futures_util::{SinkExt, StreamExt};
use peer_stream_shared::{
    parse_client_message, ClientMessage, ErrorCode, ServerMessage, SessionId, PROTOCOL_VERSION,
};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// A write that cannot finish in this long means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the client's answer to our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames written per flush when the outbox has a backlog.
const WRITE_BATCH: usize = 64;

/// Numbers connections, so the matchmaker can tell a resumed session's new connection
/// from its old one.
static NEXT_CONN: AtomicU64 = AtomicU64::new(0);

/// Why the loop ended; decides the close frame and what the partner is told.
enum End {
    /// Send this close frame, then wait briefly for the client's. The session ends.
    Close(CloseCode, &'static str),
    /// Drop the socket; the session ends (the client's close frame, a kick, a ban).
    Drop,
    /// The connection was lost without a close frame: drop the socket, and the session
    /// waits for a resume.
    Lost,
}

struct Session<S> {
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    ip: IpAddr,
    id: Option<SessionId>,
    conn: u64,
    bucket: TokenBucket,
    last_seen: Instant,
}

/// Serves one upgraded WebSocket until it ends. `slot` holds the connection's place in
/// the per-address cap and is released when this returns.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    ip: IpAddr,
    shared: Arc<Shared>,
    slot: Option<ConnectionSlot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _slot = slot;
    let cfg = &shared.config;
    let now = Instant::now();
    let mut s = Session {
        bucket: TokenBucket::new(cfg.rate_per_sec, cfg.rate_burst, now),
        ws,
        ip,
        id: None,
        conn: NEXT_CONN.fetch_add(1, Relaxed),
        last_seen: now,
        shared: Arc::clone(&shared),
    };
    shared.metrics.connections.fetch_add(1, Relaxed);
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    let (outbox_tx, mut outbox) = mpsc::channel::<Message>(cfg.outbox_capacity.max(1));
    let end = s.run(outbox_tx, &mut outbox).await;
    if let Some(session) = s.id.take() {
        let conn = s.conn;
        let cmd = match end {
            // A stopping cluster node (1012) keeps the session for a resume on another node.
            End::Lost | End::Close(CloseCode::Restart, _) => Command::Detach {
                session,
                conn,
                outbox,
            },
            End::Close(..) | End::Drop => Command::Disconnect { session, conn },
        };
        shared.matchmaker.send(cmd).await;
    }
    if let End::Close(code, reason) = end {
        s.close(code, reason).await;
    }
    shared.metrics.connections.fetch_sub(1, Relaxed);
}

/// How a connection ends when the server stops: 1001 (going away) for a single server; a
/// cluster node (`--redis`) sends 1012 (service restart): the service goes on at other
/// nodes, so the client reconnects at once (through the load balancer) instead of
/// treating the server as gone.
fn shutting_down(shared: &Shared) -> End {
    if shared.config.redis.is_some() {
        End::Close(CloseCode::Restart, "node shutting down")
    } else {
        End::Close(CloseCode::Away, "server shutting down")
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(
        &mut self,
        outbox_tx: mpsc::Sender<Message>,
        outbox: &mut mpsc::Receiver<Message>,
    ) -> End {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        if shared.moderation.is_banned(self.ip) {
            self.reply_error(ErrorCode::Banned, "this address is banned")
                .await;
            return End::Close(CloseCode::Policy, "banned");
        }
        let kick = CancellationToken::new();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let hello_deadline = tokio::time::sleep(cfg.hello_timeout());
        tokio::pin!(hello_deadline);
        let mut outbox_tx = Some(outbox_tx);

        loop {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return shutting_down(&shared),
                _ = kick.cancelled() => return End::Drop,
                Some(msg) = outbox.recv() => match tokio::select! {
                    // A kick (slow reader) must not wait for a write that is stuck.
                    r = self.write_batch(msg, outbox) => r,
                    _ = kick.cancelled() => None,
                } {
                    None if kick.is_cancelled() => return End::Drop,
                    None => return End::Lost,
                    Some(true) => {
                        // The matchmaker closed this connection (a ban).
                        self.drain_after_close().await;
                        return End::Drop;
                    }
                    Some(false) => {}
                },
                frame = self.ws.next() => {
                    self.last_seen = Instant::now();
                    match frame {
                        None => return End::Lost,
                        Some(Ok(Message::Text(text))) => {
                            if let Some(end) = self.on_text(text, &mut outbox_tx, &kick).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if self.rate_ok().await {
                                self.reply_error(ErrorCode::BadJson, "binary frames are not supported; send JSON text frames").await;
                            }
                        }
                        Some(Ok(Message::Close(_))) => return End::Drop,
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            self.reply_error(ErrorCode::TooLarge, &format!("message of {size} bytes is over the {max_size}-byte limit; closing")).await;
                            return End::Close(CloseCode::Size, "message too large");
                        }
                        Some(Err(e)) => {
                            tracing::debug!(ip = %self.ip, "websocket error: {e}");
                            return End::Lost;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() >= cfg.heartbeat_timeout() {
                        tracing::debug!(ip = %self.ip, "heartbeat timeout");
                        shared.metrics.heartbeat_timeouts_total.fetch_add(1, Relaxed);
                        return End::Lost;
                    }
                    if !self.write(Message::Ping(Default::default())).await {
                        return End::Lost;
                    }
                }
                _ = &mut hello_deadline, if self.id.is_none() => {
                    self.reply_error(ErrorCode::HelloRequired, "no hello within the hello timeout; closing").await;
                    return End::Close(CloseCode::Policy, "hello timeout");
                }
            }
        }
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(
        &mut self,
        text: Utf8Bytes,
        outbox_tx: &mut Option<mpsc::Sender<Message>>,
        kick: &CancellationToken,
    ) -> Option<End> {
        if !self.rate_ok().await {
            return None;
        }
        let msg = match parse_client_message(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.reply_error(e.code, &e.message).await;
                return None;
            }
        };
        let shared = Arc::clone(&self.shared);
        let Some(session) = self.id.clone() else {
            let ClientMessage::Hello {
                version,
                client,
                counts,
                resume,
            } = msg
            else {
                self.reply_error(ErrorCode::HelloRequired, "send hello first")
                    .await;
                return None;
            };
            if version != PROTOCOL_VERSION {
                self.reply_error(
                    ErrorCode::VersionUnsupported,
                    &format!("this server speaks protocol version {PROTOCOL_VERSION}; you sent {version}"),
                )
                .await;
                return None;
            }
            let (reply_tx, reply_rx) = oneshot::channel();
            let outbox = outbox_tx.take()?;
            let asked_resume = resume.is_some();
            let registered = shared
                .matchmaker
                .send(Command::Register {
                    session: SessionId(random_id()),
                    ip: self.ip,
                    outbox,
                    kick: kick.clone(),
                    conn: self.conn,
                    reply: reply_tx,
                    counts,
                    resume,
                })
                .await;
            let Ok(Registered {
                session,
                online,
                resume_token,
                resumed,
                backlog,
            }) = reply_rx.await
            else {
                return Some(shutting_down(&shared));
            };
            if !registered {
                return Some(shutting_down(&shared));
            }
            tracing::debug!(%session, ip = %self.ip, %client, asked_resume, resumed, "hello");
            self.id = Some(session.clone());
            let welcome = ServerMessage::Welcome {
                version: PROTOCOL_VERSION,
                session_id: session,
                online,
                resume_token,
                resumed,
            };
            // What was held while the session was away follows `welcome` before anything
            // from the outbox, so it keeps its order.
            let frames = std::iter::once(Message::text(welcome.to_json())).chain(backlog);
            return (!self.write_all(frames).await).then_some(End::Lost);
        };
        let cmd = match msg {
            ClientMessage::Hello { .. } => {
                self.reply_error(ErrorCode::Invalid, "hello was already received")
                    .await;
                return None;
            }
            ClientMessage::Join { interests } => Command::Join { session, interests },
            ClientMessage::Next { reason } => Command::Next { session, reason },
            ClientMessage::Leave => Command::Leave { session },
            ClientMessage::Report { match_id, reason } => Command::Report {
                session,
                match_id,
                reason,
            },
            ClientMessage::Signal { match_id, payload } => {
                let frame = ServerMessage::Signal {
                    match_id: match_id.clone(),
                    payload,
                };
                Command::Relay {
                    session,
                    match_id,
                    frame: frame.to_json().into(),
                }
            }
            ClientMessage::Chat { match_id, text } => {
                let frame = ServerMessage::Chat {
                    match_id: match_id.clone(),
                    text,
                };
                Command::Relay {
                    session,
                    match_id,
                    frame: frame.to_json().into(),
                }
            }
            ClientMessage::UndoNext => Command::UndoNext { session },
            ClientMessage::IceServers => Command::IceServers { session },
            ClientMessage::Block { match_id } => Command::Block { session, match_id },
            ClientMessage::CallReport {
                match_id,
                path,
                setup_ms,
            } => Command::CallReport {
                session,
                match_id,
                path,
                setup_ms,
            },
            ClientMessage::Typing { match_id, active } => {
                let frame = ServerMessage::Typing {
                    match_id: match_id.clone(),
                    active,
                };
                Command::Relay {
                    session,
                    match_id,
                    frame: frame.to_json().into(),
                }
            }
        };
        if !shared.matchmaker.send(cmd).await {
            return Some(shutting_down(&shared));
        }
        None
    }

    /// Takes a token from the bucket; when empty, replies `rate_limited` and returns false.
    async fn rate_ok(&mut self) -> bool {
        if self.bucket.try_take(Instant::now()) {
            return true;
        }
        let cfg = &self.shared.config;
        let msg = format!(
            "too many messages: at most {} per second (burst {}); this one was dropped",
            cfg.rate_per_sec, cfg.rate_burst
        );
        self.reply_error(ErrorCode::RateLimited, &msg).await;
        false
    }

    async fn reply_error(&mut self, code: ErrorCode, message: &str) {
        self.shared.metrics.error(code);
        let _ = self
            .write(Message::text(ServerMessage::error(code, message).to_json()))
            .await;
    }

    async fn write(&mut self, msg: Message) -> bool {
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(msg)).await,
            Ok(Ok(()))
        )
    }

    /// Writes `frames` in order with one flush; false when that failed or timed out.
    async fn write_all(&mut self, frames: impl Iterator<Item = Message>) -> bool {
        let ws = &mut self.ws;
        let work = async {
            for msg in frames {
                ws.feed(msg).await?;
            }
            ws.flush().await
        };
        matches!(tokio::time::timeout(WRITE_TIMEOUT, work).await, Ok(Ok(())))
    }

    /// Writes `first` and whatever else is already queued, with one flush. Returns
    /// `None` when the write failed or timed out, else whether a close frame was written.
    async fn write_batch(
        &mut self,
        first: Message,
        outbox: &mut mpsc::Receiver<Message>,
    ) -> Option<bool> {
        let ws = &mut self.ws;
        let work = async {
            let mut next = Some(first);
            let mut n = 0;
            let mut closing = false;
            while let Some(msg) = next.take() {
                closing = matches!(msg, Message::Close(_));
                ws.feed(msg).await?;
                n += 1;
                if closing || n >= WRITE_BATCH {
                    break;
                }
                next = outbox.try_recv().ok();
            }
            ws.flush().await.map(|()| closing)
        };
        tokio::time::timeout(WRITE_TIMEOUT, work).await.ok()?.ok()
    }

    /// After we sent a close frame: read until the client's close (or a short timeout),
    /// so the TCP connection ends cleanly.
    async fn drain_after_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    async fn close(&mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if self.write(Message::Close(Some(frame))).await {
            self.drain_after_close().await;
        }
    }
}
