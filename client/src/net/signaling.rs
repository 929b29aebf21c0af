//! The signaling WebSocket: connects, forwards server messages, sends client messages,
//! and when the server goes away reconnects with exponential backoff and jitter.
//! The session machine re-sends hello/join after each `Connected`.

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
    mut outgoing: mpsc::Receiver<ClientMessage>,
    events: mpsc::Sender<SignalingEvent>,
    cancel: CancellationToken,
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
                let error = loop {
                    tokio::select! {
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
                        frame = ws.next() => match frame {
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
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break e.to_string(),
                            None => break "connection closed".into(),
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
