//! The signaling WebSocket: connects, forwards server messages, sends client messages,
//! and when the server goes away reconnects with exponential backoff and jitter.
//! The session machine re-sends hello (with its resume token) after each `Connected`.
//!
//! A connection can die without a reset (a laptop waking up, a network switch): the task
//! pings the server and counts the connection lost when nothing at all (not even the
//! pong) came for [`Liveness::silence`], so the session can resume on a new one.

use futures_util::{SinkExt, StreamExt};
use peer_stream_shared::{ClientMessage, ServerMessage};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What the signaling task reports.
#[derive(Debug)]
pub enum SignalingEvent {
    Connected,
    Message(ServerMessage),
    /// The connection dropped (or could not be made); `retry_in` is the wait before the
    /// next attempt, so the UI can show a countdown.
    Lost {
        error: String,
        retry_in: Duration,
    },
}

/// How the task notices a connection that died silently.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// A WebSocket ping goes to the server this often (the server answers with a pong).
    pub ping_every: Duration,
    /// No frame from the server for this long: the connection is lost.
    pub silence: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(10),
            silence: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with jitter: 0.5 s, 1 s, 2 s … capped at 10 s, each ±25 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempt: 0,
            base: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay; `jitter` in [0, 1) picks where in the ±25 % band it lands.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let capped = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        capped.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Runs until `cancel`; outgoing messages queued while disconnected are dropped (the
/// session re-sends what matters after `Connected`).
pub async fn run(
    url: String,
    outgoing: mpsc::Receiver<ClientMessage>,
    events: mpsc::Sender<SignalingEvent>,
    cancel: CancellationToken,
) {
    run_with(url, outgoing, events, cancel, Liveness::default()).await;
}

/// [`run`] with its own [`Liveness`] settings.
pub async fn run_with(
    url: String,
    mut outgoing: mpsc::Receiver<ClientMessage>,
    events: mpsc::Sender<SignalingEvent>,
    cancel: CancellationToken,
    liveness: Liveness,
) {
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url.as_str())) => r,
        };
        let error = match attempt {
            Ok(Ok((mut ws, _))) => {
                backoff.reset();
                while outgoing.try_recv().is_ok() {}
                if events.send(SignalingEvent::Connected).await.is_err() {
                    return;
                }
                let mut last_frame = tokio::time::Instant::now();
                let mut ping = tokio::time::interval(liveness.ping_every);
                ping.reset();
                let error = loop {
                    tokio::select! {
                        _ = ping.tick() => {
                            if last_frame.elapsed() >= liveness.silence {
                                break format!("no answer from the server for {:?}", liveness.silence);
                            }
                            if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                                break e.to_string();
                            }
                        }
                        _ = cancel.cancelled() => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                            return;
                        }
                        msg = outgoing.recv() => {
                            let Some(msg) = msg else { return };
                            if let Err(e) = ws.send(Message::text(msg.to_json())).await {
                                break e.to_string();
                            }
                        }
                        frame = ws.next() => {
                            last_frame = tokio::time::Instant::now();
                            match frame {
                                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(text.as_str()) {
                                    Ok(msg) => {
                                        if events.send(SignalingEvent::Message(msg)).await.is_err() {
                                            return;
                                        }
                                    }
                                    Err(e) => tracing::warn!("unreadable server message ({e}): {}", text.as_str().chars().take(200).collect::<String>()),
                                },
                                Some(Ok(Message::Close(frame))) => {
                                    break frame.map(|f| format!("server closed the connection: {}", f.reason)).unwrap_or_else(|| "server closed the connection".into());
                                }
                                Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                                Some(Err(e)) => break e.to_string(),
                                None => break "connection closed".into(),
                            }
                        }
                    }
                };
                error
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connection attempt timed out".into(),
        };
        let retry_in = backoff.next_delay(rand::random::<f64>());
        tracing::info!("signaling server unreachable ({error}); retrying in {retry_in:?}");
        if events
            .send(SignalingEvent::Lost { error, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retry_in) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that completes the WebSocket handshake and then never reads or writes
    /// (a connection that died without a reset) is given up after `silence`, and the
    /// task connects again.
    #[tokio::test]
    async fn a_silent_server_counts_as_lost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::spawn({
            let accepted = std::sync::Arc::clone(&accepted);
            async move {
                let mut held = Vec::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        held.push(ws); // never polled again: no pong, nothing
                    }
                }
            }
        });
        let (_out_tx, out_rx) = mpsc::channel(8);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let liveness = Liveness {
            ping_every: Duration::from_millis(100),
            silence: Duration::from_millis(500),
        };
        let task = tokio::spawn(run_with(
            format!("ws://127.0.0.1:{port}/ws"),
            out_rx,
            ev_tx,
            cancel.clone(),
            liveness,
        ));
        let mut seen = Vec::new();
        let result = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ev_rx.recv().await {
                    Some(SignalingEvent::Lost { error, .. }) if error.contains("no answer") => {
                        return Some(error);
                    }
                    Some(other) => seen.push(format!("{other:?}")),
                    None => return None,
                }
            }
        })
        .await;
        // And it connects again (the backoff's first wait is ~0.5 s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while accepted.load(std::sync::atomic::Ordering::Relaxed) < 2
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        server.abort();
        let _ = task.await;
        assert!(
            matches!(result, Ok(Some(_))),
            "expected a Lost for silence; got {result:?} after {seen:?}"
        );
        assert_eq!(seen.first().map(String::as_str), Some("Connected"));
        assert!(
            accepted.load(std::sync::atomic::Ordering::Relaxed) >= 2,
            "no second connection after the silent one"
        );
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::default();
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(d[0], Duration::from_millis(500));
        assert_eq!(d[1], Duration::from_secs(1));
        assert_eq!(d[7], Duration::from_secs(10));
        assert!(b.next_delay(0.0) >= Duration::from_millis(7500));
        assert!(b.next_delay(0.999) <= Duration::from_millis(12_500));
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_millis(500));
    }
}
