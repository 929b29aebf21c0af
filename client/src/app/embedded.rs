//! The signaling server built into the app (the `server` crate as a library), so the app
//! works on a fresh machine with no setup, and so one person can host for their LAN.

use anyhow::Context;
use peer_stream_server::{run, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The port the LAN host tries first (the standalone server's default too).
pub const LAN_PORT: u16 = 3000;

pub struct EmbeddedServer {
    /// Where this app connects: `ws://127.0.0.1:PORT/ws`.
    pub local_url: String,
    /// What others on the network enter, when hosting on the LAN.
    pub lan_url: Option<String>,
    pub on_lan: bool,
    token: CancellationToken,
}

impl EmbeddedServer {
    /// Starts the server on `runtime`: loopback only, or all interfaces (`on_lan`).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        on_lan: bool,
        db_path: PathBuf,
    ) -> anyhow::Result<Self> {
        let std_listener = if on_lan {
            std::net::TcpListener::bind(("0.0.0.0", LAN_PORT))
                .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))
        } else {
            std::net::TcpListener::bind(("127.0.0.1", 0))
        }
        .context("cannot open a port for the built-in server")?;
        std_listener.set_nonblocking(true)?;
        let addr: SocketAddr = std_listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let config = Config {
            listen: addr,
            db_path,
            // Never a standalone server's settings (`PEER_STREAM_*`), e.g. its --redis.
            ..Config::defaults_ignoring_env()
        };
        let token = CancellationToken::new();
        runtime.spawn({
            let token = token.clone();
            async move {
                if let Err(e) = run(listener, config, token.cancelled_owned()).await {
                    tracing::error!("built-in server stopped: {e:#}");
                }
            }
        });
        let lan_url = on_lan
            .then(crate::net::lan_ip)
            .flatten()
            .map(|ip| format!("ws://{ip}:{}/ws", addr.port()));
        tracing::info!(%addr, ?lan_url, "built-in signaling server started");
        Ok(Self {
            local_url: format!("ws://127.0.0.1:{}/ws", addr.port()),
            lan_url,
            on_lan,
            token,
        })
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
