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
//!
//! Memory (an idle connection is mostly this task, so it is kept small, #11): the task's
//! future holds only what every pass of the loop needs. Work that is rare or only runs
//! for a moment (the hello, error replies, writes, closing) is boxed while it runs, so its
//! state does not widen the future for the connection's whole life. Reads go through
//! [`ReadAhead`], which holds no buffer between reads, with a small tungstenite read
//! buffer on top. The outbox is created by the `hello` that needs it.

use crate::limits::{ConnectionSlot, TokenBucket};
use crate::matchmaker::{random_id, Command, Registered};
use crate::outbox::OutboxReceiver;
use crate::Shared;
use futures_util::{SinkExt, StreamExt};
use peer_stream_shared::{
    parse_client_frame, ClientFrame, ClientMessage, ErrorCode, ServerMessage, SessionId,
    PROTOCOL_VERSION,
};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
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
/// Most bytes [`ReadAhead`] takes from the socket in one read.
const READ_AHEAD_BYTES: usize = 8 * 1024;

/// Numbers connections, so the matchmaker can tell a resumed session's new connection
/// from its old one.
static NEXT_CONN: AtomicU64 = AtomicU64::new(0);

/// The socket under a WebSocket: reads up to [`READ_AHEAD_BYTES`] per system call into
/// a buffer on the stack and keeps on the heap only what the reader did not take yet,
/// freed once taken. tungstenite's own read buffer can then stay small
/// ([`crate::http`] sets it) without a system call per few hundred bytes, and an idle
/// connection holds no read buffer beyond it.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    pending: Vec<u8>,
    taken: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            taken: 0,
        }
    }

    /// Bytes read from the socket that the reader has not taken yet.
    pub fn pending(&self) -> usize {
        self.pending.len() - self.taken
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.pending.len() {
            let n = buf.remaining().min(this.pending.len() - this.taken);
            buf.put_slice(&this.pending[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.pending.len() {
                this.pending = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 || buf.remaining() >= READ_AHEAD_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_AHEAD_BYTES];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
        let got = chunk.filled();
        let n = got.len().min(buf.remaining());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.pending = got[n..].to_vec();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why the loop ended; decides the close frame and what the partner is told.
#[derive(Clone, Copy)]
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
    /// Frames the matchmaker queued for this connection; made by the `hello`.
    outbox: Option<OutboxReceiver>,
    conn: u64,
    bucket: TokenBucket,
    last_seen: Instant,
}

/// Serves one upgraded WebSocket until it ends. `slot` holds the connection's place in
/// the per-address cap and is released when this returns.
///
/// Not an `async fn`: one keeps its arguments for its whole life, so the WebSocket would
/// be held twice in the task, as the argument and inside the session.
pub fn serve<S>(
    ws: WebSocketStream<S>,
    ip: IpAddr,
    shared: Arc<Shared>,
    slot: Option<ConnectionSlot>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let cfg = &shared.config;
    let now = Instant::now();
    let mut s = Session {
        bucket: TokenBucket::new(cfg.rate_per_sec, cfg.rate_burst, now),
        ws,
        ip,
        id: None,
        outbox: None,
        conn: NEXT_CONN.fetch_add(1, Relaxed),
        last_seen: now,
        shared,
    };
    async move {
        let _slot = slot;
        let metrics = Arc::clone(&s.shared.metrics);
        metrics.connections.fetch_add(1, Relaxed);
        metrics.connections_total.fetch_add(1, Relaxed);
        let end = s.run().await;
        if let Some(session) = s.id.take() {
            let conn = s.conn;
            let cmd = match (end, s.outbox.take()) {
                // A stopping cluster node (1012) keeps the session for a resume on another
                // node.
                (End::Lost | End::Close(CloseCode::Restart, _), Some(outbox)) => Command::Detach {
                    session,
                    conn,
                    outbox,
                },
                _ => Command::Disconnect { session, conn },
            };
            Box::pin(s.shared.matchmaker.send(cmd)).await;
        }
        if let End::Close(code, reason) = end {
            Box::pin(s.close(code, reason)).await;
        }
        metrics.connections.fetch_sub(1, Relaxed);
    }
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

/// Hands a command to the matchmaker; `Some` (shutting down) when it is gone.
async fn command(shared: &Shared, cmd: Command) -> Option<End> {
    if shared.matchmaker.send(cmd).await {
        None
    } else {
        Some(shutting_down(shared))
    }
}

/// Why the kick token fired: shutdown (its parent) or a kick of this connection.
fn stopped(shared: &Shared) -> End {
    if shared.shutdown.is_cancelled() {
        shutting_down(shared)
    } else {
        End::Drop
    }
}

/// The next frame from the matchmaker; never before the `hello` made the outbox.
async fn recv_opt(outbox: &mut Option<OutboxReceiver>) -> Option<Message> {
    match outbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(&mut self) -> End {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        if shared.moderation.is_banned(self.ip) {
            Box::pin(self.reply_error(ErrorCode::Banned, "this address is banned")).await;
            return End::Close(CloseCode::Policy, "banned");
        }
        // A child of the shutdown token: one future wakes this loop for a kick (slow
        // reader, ban, resume elsewhere) and for shutdown. It is made once and kept across
        // passes: made anew on every pass of `select!`, it registered with the token's
        // waiter list and unregistered again each time (a lock each way).
        let kick = shared.shutdown.child_token();
        let kicked = kick.cancelled();
        tokio::pin!(kicked);
        // One timer serves the hello deadline and the heartbeat.
        let start = Instant::now();
        let mut hello_by = Some(start + cfg.hello_timeout());
        let mut next_ping = start + cfg.heartbeat_interval();
        let wake_at = |hello_by: Option<Instant>, next_ping: Instant| {
            tokio::time::Instant::from_std(hello_by.map_or(next_ping, |h| h.min(next_ping)))
        };
        let timer = tokio::time::sleep_until(wake_at(hello_by, next_ping));
        tokio::pin!(timer);

        loop {
            tokio::select! {
                biased;
                () = &mut kicked => return stopped(&shared),
                Some(msg) = recv_opt(&mut self.outbox) => {
                    let written = tokio::select! {
                        biased;
                        r = Box::pin(self.write_batch(msg)) => r,
                        // A kick (slow reader) must not wait for a write that is stuck.
                        () = &mut kicked => None,
                    };
                    match written {
                        None if kick.is_cancelled() => return stopped(&shared),
                        None => return End::Lost,
                        Some(true) => {
                            // The matchmaker closed this connection (a ban).
                            Box::pin(self.drain_after_close()).await;
                            return End::Drop;
                        }
                        Some(false) => {}
                    }
                }
                frame = self.ws.next() => {
                    let now = Instant::now();
                    self.last_seen = now;
                    if let Some(end) = Box::pin(self.on_frame(frame, now, &kick)).await {
                        return end;
                    }
                    if hello_by.is_some() && self.id.is_some() {
                        hello_by = None;
                        timer.as_mut().reset(wake_at(hello_by, next_ping));
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if hello_by.is_some_and(|t| now >= t) {
                        Box::pin(self.reply_error(
                            ErrorCode::HelloRequired,
                            "no hello within the hello timeout; closing",
                        ))
                        .await;
                        return End::Close(CloseCode::Policy, "hello timeout");
                    }
                    if now >= next_ping {
                        if now.saturating_duration_since(self.last_seen) >= cfg.heartbeat_timeout() {
                            tracing::debug!(ip = %self.ip, "heartbeat timeout");
                            shared.metrics.heartbeat_timeouts_total.fetch_add(1, Relaxed);
                            return End::Lost;
                        }
                        if !Box::pin(self.write(Message::Ping(Default::default()))).await {
                            return End::Lost;
                        }
                        next_ping = Instant::now() + cfg.heartbeat_interval();
                    }
                    timer.as_mut().reset(wake_at(hello_by, next_ping));
                }
            }
        }
    }

    /// Handles what the socket gave; `Some` ends the connection.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        now: Instant,
        kick: &CancellationToken,
    ) -> Option<End> {
        match frame {
            None => Some(End::Lost),
            Some(Ok(Message::Text(text))) => self.on_text(text, now, kick).await,
            Some(Ok(Message::Binary(_))) => {
                if self.rate_ok(now).await {
                    Box::pin(self.reply_error(
                        ErrorCode::BadJson,
                        "binary frames are not supported; send JSON text frames",
                    ))
                    .await;
                }
                None
            }
            Some(Ok(Message::Close(_))) => Some(End::Drop),
            Some(Ok(_)) => None, // ping (answered by tungstenite), pong, raw frame
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                let msg =
                    format!("message of {size} bytes is over the {max_size}-byte limit; closing");
                Box::pin(self.reply_error(ErrorCode::TooLarge, &msg)).await;
                Some(End::Close(CloseCode::Size, "message too large"))
            }
            Some(Err(e)) => {
                tracing::debug!(ip = %self.ip, "websocket error: {e}");
                Some(End::Lost)
            }
        }
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(
        &mut self,
        text: Utf8Bytes,
        now: Instant,
        kick: &CancellationToken,
    ) -> Option<End> {
        if !self.rate_ok(now).await {
            return None;
        }
        let parsed = parse_client_frame(text.as_str());
        // The text shares tungstenite's read buffer; let it go before anything waits.
        drop(text);
        let frame = match parsed {
            Ok(f) => f,
            Err(e) => {
                Box::pin(self.reply_error(e.code, &e.message)).await;
                return None;
            }
        };
        let Some(session) = self.id.clone() else {
            return Box::pin(self.on_hello(frame, kick)).await;
        };
        let msg = match frame {
            ClientFrame::Relay { match_id, frame } => {
                let cmd = Command::Relay {
                    session,
                    match_id,
                    frame: frame.into(),
                };
                return command(&self.shared, cmd).await;
            }
            ClientFrame::Message(msg) => msg,
        };
        let cmd = match msg {
            ClientMessage::Hello { .. } => {
                Box::pin(self.reply_error(ErrorCode::Invalid, "hello was already received")).await;
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
            // parse_client_frame hands these out as ClientFrame::Relay.
            ClientMessage::Signal { .. }
            | ClientMessage::Chat { .. }
            | ClientMessage::Typing { .. } => {
                tracing::error!("a relayed message outside ClientFrame::Relay");
                return None;
            }
        };
        command(&self.shared, cmd).await
    }

    /// The first message must be a `hello`: registers the session and writes `welcome`.
    async fn on_hello(&mut self, frame: ClientFrame, kick: &CancellationToken) -> Option<End> {
        let ClientFrame::Message(ClientMessage::Hello {
            version,
            client,
            counts,
            resume,
        }) = frame
        else {
            self.reply_error(ErrorCode::HelloRequired, "send hello first")
                .await;
            return None;
        };
        if version != PROTOCOL_VERSION {
            self.reply_error(
                ErrorCode::VersionUnsupported,
                &format!(
                    "this server speaks protocol version {PROTOCOL_VERSION}; you sent {version}"
                ),
            )
            .await;
            return None;
        }
        let shared = Arc::clone(&self.shared);
        let (reply_tx, reply_rx) = oneshot::channel();
        let (outbox_tx, outbox) = crate::outbox::channel(shared.config.outbox_capacity);
        self.outbox = Some(outbox);
        let asked_resume = resume.is_some();
        let registered = shared
            .matchmaker
            .send(Command::Register {
                session: SessionId(random_id()),
                ip: self.ip,
                outbox: outbox_tx,
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
        (!self.write_all(frames).await).then_some(End::Lost)
    }

    /// Takes a token from the bucket; when empty, replies `rate_limited` and returns false.
    async fn rate_ok(&mut self, now: Instant) -> bool {
        if self.bucket.try_take(now) {
            return true;
        }
        let cfg = &self.shared.config;
        let msg = format!(
            "too many messages: at most {} per second (burst {}); this one was dropped",
            cfg.rate_per_sec, cfg.rate_burst
        );
        Box::pin(self.reply_error(ErrorCode::RateLimited, &msg)).await;
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
    async fn write_batch(&mut self, first: Message) -> Option<bool> {
        let ws = &mut self.ws;
        let outbox = &mut self.outbox;
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
                next = outbox.as_mut().and_then(|rx| rx.try_recv().ok());
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn returned_size<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection is mostly its task (#11: ≤ 4.8 KiB per idle connection in
    /// all). Rare work is boxed in `Session`'s methods so it does not widen this future;
    /// a change that puts it back inline shows up here, not only in the benchmark. The
    /// future is 1,016 bytes in a release build of #11 item 5 (1,384 while `serve` was an
    /// `async fn`).
    #[test]
    fn the_connection_future_stays_small() {
        let size = returned_size(serve::<ReadAhead<tokio::net::TcpStream>>);
        assert!(
            size <= 1152,
            "the connection future grew to {size} bytes; box the new rare work"
        );
    }

    #[tokio::test]
    async fn read_ahead_hands_out_every_byte_in_order_and_keeps_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.expect("write");
        drop(client);
        let mut reader = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
            // A read of 100 bytes took up to READ_AHEAD_BYTES from the socket.
            assert!(reader.pending() < READ_AHEAD_BYTES);
        }
        assert_eq!(got, data);
        assert_eq!(reader.pending(), 0);
        assert_eq!(
            reader.pending.capacity(),
            0,
            "the read-ahead buffer is freed"
        );
    }
}
