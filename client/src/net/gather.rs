//! ICE candidate gathering without a partner, for the setup check: one throwaway peer
//! connection with the signaling server's ICE servers, an offer applied locally (which
//! starts gathering), and a count of the candidates by type until gathering completes
//! or the time is up. No media, no remote side, nothing is sent but STUN/TURN requests.
//!
//! Like `peer.rs`, this file names webrtc types so nothing else has to.

use super::peer::IcePolicy;
use anyhow::anyhow;
use peer_stream_shared::IceServer;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateType, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent,
};

/// How many local candidates of each type were gathered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatherCounts {
    pub host: u32,
    pub srflx: u32,
    pub relay: u32,
    /// Peer-reflexive candidates never appear while gathering; counted for completeness.
    pub prflx: u32,
    /// Gathering finished by itself (false: the timeout cut it short).
    pub complete: bool,
}

#[derive(Default)]
struct Handler {
    counts: Mutex<GatherCounts>,
    done: Notify,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match event.candidate.typ {
            RTCIceCandidateType::Host => c.host += 1,
            RTCIceCandidateType::Srflx => c.srflx += 1,
            RTCIceCandidateType::Relay => c.relay += 1,
            RTCIceCandidateType::Prflx => c.prflx += 1,
            _ => {}
        }
        tracing::debug!(candidate = %event.candidate.address, typ = ?event.candidate.typ, url = %event.url, "gathered");
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .complete = true;
            self.done.notify_one();
        }
    }
}

/// Gathers local candidates against `ice_servers` (host candidates on `udp_addrs`, or on
/// the same automatic addresses a call uses when empty) for at most `limit`.
/// `IcePolicy::Relay` gathers relay candidates only, as a relay-only call would.
pub async fn gather(
    ice_servers: &[IceServer],
    udp_addrs: &[String],
    policy: IcePolicy,
    limit: Duration,
) -> anyhow::Result<GatherCounts> {
    let servers = ice_servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect();
    let mut config = RTCConfigurationBuilder::new().with_ice_servers(servers);
    if policy == IcePolicy::Relay {
        config = config.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
    }
    let handler = Arc::new(Handler::default());
    let udp_addrs = if udp_addrs.is_empty() {
        // The addresses a call binds by default (`peer.rs`).
        super::candidates::host_bind_addrs(super::lan_ip())
    } else {
        udp_addrs.to_vec()
    };
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config.build())
        .with_handler(Arc::clone(&handler) as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(udp_addrs)
        .build()
        .await
        .map_err(|e| anyhow!("peer connection: {e}"))?;
    let result = async {
        // Something to negotiate, so the offer has an m-line and ICE has a component.
        pc.create_data_channel("setup-check", None)
            .await
            .map_err(|e| anyhow!("data channel: {e}"))?;
        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| anyhow!("create offer: {e}"))?;
        pc.set_local_description(offer)
            .await
            .map_err(|e| anyhow!("set local offer: {e}"))?;
        // `notify_one` keeps a permit, so a completion before this await is not lost.
        let _ = tokio::time::timeout(limit, handler.done.notified()).await;
        anyhow::Ok(())
    }
    .await;
    if tokio::time::timeout(Duration::from_secs(2), pc.close())
        .await
        .is_err()
    {
        tracing::debug!("closing the setup-check peer connection timed out");
    }
    result?;
    let counts = *handler
        .counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Ok(counts)
}
