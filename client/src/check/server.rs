//! The server step of the setup check: one short WebSocket session (hello → welcome →
//! `ice_servers` → reply → close), separate from the engine's signaling connection so
//! the check neither queues nor disturbs a session in progress.

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use peer_stream_shared::{ClientMessage, ErrorCode, IceServer, ServerMessage, PROTOCOL_VERSION};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// What the server step found.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerProbe {
    /// Round trip of the `ice_servers` request (sent → answered), in ms.
    pub rtt_ms: f64,
    /// The server's STUN/TURN list (empty when it has none, or predates `ice_servers`).
    pub ice_servers: Vec<IceServer>,
    /// The server answered `ice_servers` (false: an older server that does not know it).
    pub ice_servers_supported: bool,
    /// The server's address is loopback or on a private/link-local network.
    pub local: bool,
}

/// Loopback, RFC 1918 private, link-local, CGNAT-free: the addresses a LAN service has.
pub fn is_local_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                // fc00::/7 unique local, fe80::/10 link-local
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Connects to `url`, says hello, asks for the ICE servers, and closes; all within `limit`.
pub async fn probe(url: &str, limit: Duration) -> anyhow::Result<ServerProbe> {
    match tokio::time::timeout(limit, probe_inner(url)).await {
        Ok(r) => r,
        Err(_) => bail!("the server did not answer within {} s", limit.as_secs_f32()),
    }
}

async fn probe_inner(url: &str) -> anyhow::Result<ServerProbe> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let local = match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.peer_addr().map(|a| is_local_address(a.ip())),
        _ => Ok(false),
    }
    .unwrap_or(false);

    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        client: format!("peer-stream/{} setup-check", env!("CARGO_PKG_VERSION")),
        counts: false,
        resume: None,
    };
    ws.send(Message::text(hello.to_json())).await?;
    loop {
        match next_message(&mut ws).await? {
            ServerMessage::Welcome { .. } => break,
            ServerMessage::Error { code, message } => {
                bail!("the server refused the connection: {code:?}: {message}")
            }
            _ => {}
        }
    }

    let sent = Instant::now();
    ws.send(Message::text(ClientMessage::IceServers.to_json()))
        .await?;
    let (ice_servers, supported) = loop {
        match next_message(&mut ws).await? {
            ServerMessage::IceServers { ice_servers } => break (ice_servers, true),
            // A server older than `ice_servers` answers `invalid`/`unknown_type`: it is
            // reachable, it just has no list to give (calls get theirs in `matched`).
            ServerMessage::Error {
                code: ErrorCode::Invalid | ErrorCode::UnknownType,
                message,
            } => {
                tracing::info!("the server does not answer ice_servers ({message})");
                break (Vec::new(), false);
            }
            ServerMessage::Error { code, message } => {
                bail!("the server refused ice_servers: {code:?}: {message}")
            }
            _ => {}
        }
    };
    let rtt_ms = (sent.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    Ok(ServerProbe {
        rtt_ms,
        ice_servers,
        ice_servers_supported: supported,
        local,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_message(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .with_context(|| format!("unreadable server message {:?}", text.as_str()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(anyhow!(
                    "the server closed the connection{}",
                    frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the server closed the connection"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.20",
            "169.254.3.4",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.0.1",
        ] {
            assert!(is_local_address(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:1.1.1.1"] {
            assert!(!is_local_address(ip.parse().expect("ip")), "{ip}");
        }
    }
}
