//! Peer Stream signaling server as a library: [`run`] serves one listener until a
//! shutdown future resolves. The `peer-stream-server` binary, the integration tests
//! (on port 0) and the desktop app's "host a server" mode all call it.
//!
//! Map: [`http`] reads each request and upgrades `/ws`; [`connection`] runs one task per
//! WebSocket; [`matchmaker`] owns the queue and the matches; [`moderation`] keeps reports
//! and bans in SQLite; [`ice`] builds STUN/TURN lists; [`limits`] and [`metrics`] are
//! what their names say.

pub mod config;
pub mod connection;
pub mod http;
pub mod ice;
pub mod limits;
pub mod matchmaker;
pub mod metrics;
pub mod moderation;
pub mod outbox;
pub mod shutdown;
pub mod tls;
pub mod web;

pub use config::Config;

use anyhow::Context;
use ice::IceConfig;
use limits::ConnectionLimiter;
use matchmaker::cluster::local::LocalCluster;
use matchmaker::cluster::redis::RedisCluster;
use matchmaker::queue::MatchQueue;
use matchmaker::{Backend, MatchmakerHandle};
use metrics::Metrics;
use moderation::Moderation;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every connection task shares.
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub matchmaker: MatchmakerHandle,
    pub moderation: Moderation,
    pub limiter: Arc<ConnectionLimiter>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// False while the cluster's Redis cannot be reached (`/readyz` answers 503); always
    /// true for a single node.
    pub ready: Arc<AtomicBool>,
}

/// Serves HTTP and WebSocket clients on `listener` until `shutdown` resolves; then stops
/// accepting, sends every client a close frame (1001) and returns once they are gone or
/// after `config.shutdown_grace_ms`, whichever comes first.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = tls::acceptor(&config)?;
    let moderation = Moderation::open(
        &config.db_path,
        config.ban_threshold,
        Duration::from_secs(config.ban_window_secs),
        Duration::from_secs(config.ban_duration_secs),
    )?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = Arc::new(Metrics::default());
    let ice = IceConfig {
        stun_urls: config.stun_urls.clone(),
        turn_urls: config.turn_urls.clone(),
        turn_secret: config.turn_secret.clone(),
        turn_ttl: Duration::from_secs(config.turn_ttl_secs),
    };
    if !ice.turn_urls.is_empty() && ice.turn_secret.is_none() {
        tracing::warn!("--turn given without --turn-secret: TURN URLs are not handed out");
    }
    let (backend, ready) = match &config.redis {
        None => {
            let queue = MatchQueue::new(config.interest_fallback(), config.rematch_cooldown());
            (
                Backend::Local(LocalCluster::new(queue)),
                Arc::new(AtomicBool::new(true)),
            )
        }
        Some(url) => {
            let cluster = RedisCluster::connect(
                url,
                config.interest_fallback(),
                config.rematch_cooldown(),
                &token,
                &tracker,
            )
            .await?;
            let ready = cluster.health().ready;
            (Backend::Redis(cluster), ready)
        }
    };
    let matchmaker = matchmaker::spawn(
        backend,
        ice,
        Arc::clone(&metrics),
        moderation.clone(),
        config.resume_window(),
        drain_time(&config),
        token.clone(),
        &tracker,
    );
    // Bans added or removed by the operator's CLI (another process) apply within seconds.
    tracker.spawn(moderation.clone().watch(
        moderation::BAN_POLL_INTERVAL,
        matchmaker.clone(),
        token.clone(),
    ));
    let shared = Arc::new(Shared {
        limiter: ConnectionLimiter::new(config.max_conns_per_ip, config.max_connections),
        config,
        metrics,
        matchmaker,
        moderation,
        shutdown: token.clone(),
        tracker: tracker.clone(),
        ready,
    });
    let local = listener.local_addr().context("listener address")?;
    tracing::info!(
        address = %local,
        tls = tls.is_some(),
        "peer-stream-server listening (WebSocket at /ws, /healthz, /metrics)"
    );

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let tls = tls.clone();
                tracker.spawn(async move {
                    match tls {
                        None => http::handle(tcp, peer, shared).await,
                        Some(acceptor) => {
                            let timeout = shared.config.hello_timeout();
                            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => http::handle(stream, peer, shared).await,
                                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
        }
    }

    tracing::info!("shutting down: closing client connections");
    drop(listener);
    token.cancel();
    tracker.close();
    let grace = shared.config.shutdown_grace();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            "shutdown grace period over; dropping the remaining connections"
        );
    }
    tracing::info!("server stopped");
    Ok(())
}

/// How long a stopping cluster node keeps handing its sessions over to the nodes their
/// clients reconnect to: the shutdown grace less a second (for the last `partner_left`
/// messages), at most the resume window. A single node has nobody to hand them to.
fn drain_time(config: &Config) -> Duration {
    if config.redis.is_none() {
        return Duration::ZERO;
    }
    config
        .shutdown_grace()
        .saturating_sub(Duration::from_secs(1))
        .min(config.resume_window())
}
