//! "Check my setup": is the signaling server reachable (and how fast), which camera,
//! microphone and speaker are there, and what the network allows — direct calls, calls
//! through the server's TURN relay, or none. Sans-UI and bounded in time: the desktop
//! screen (`app/ui/check.rs`) and `peer-stream --check` (`cli.rs`) both call [`run`].
//!
//! The steps: a one-shot WebSocket to the server (`server.rs`: hello → welcome →
//! `ice_servers` → reply), the device lists (`devices.rs`, in parallel), then ICE
//! gathering against the server's STUN/TURN list (`net::gather`). [`verdict`] turns
//! the numbers into `can_call`.

pub mod cli;
pub mod devices;
pub mod job;
pub mod saved;
pub mod server;

use crate::net::gather::{self, GatherCounts};
use crate::net::peer::IcePolicy;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The server step (connect, hello, `ice_servers`) gives up after this long.
pub const SERVER_LIMIT: Duration = Duration::from_secs(4);
/// ICE gathering stops after this long (a dead TURN server would take ~8 s to fail).
pub const GATHER_LIMIT: Duration = Duration::from_millis(4500);
/// The whole check: devices that take longer to list are reported as missing.
pub const TOTAL_LIMIT: Duration = Duration::from_secs(10);

/// What the network allows, from the gathered candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanCall {
    /// Peer-to-peer: a server-reflexive candidate (this machine's public address, seen by
    /// the server's STUN), or host candidates while the server itself is on this machine
    /// or the local network.
    Direct,
    /// Only through the server's TURN relay (an allocation with its credentials worked).
    Relay,
    /// Neither (or the server is unreachable).
    None,
}

impl CanCall {
    /// Whether calls can connect at all (`--check` exits 0).
    pub fn works(self) -> bool {
        self != CanCall::None
    }
}

/// Local ICE candidates gathered, by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    pub host: u32,
    pub srflx: u32,
    pub relay: u32,
}

/// The result: one JSON line of `peer-stream --check`, and what the screen shows.
/// The first nine fields are the stable contract (README "Check my setup").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub server_ok: bool,
    /// Round trip of the `ice_servers` request on the open WebSocket, in ms.
    pub server_rtt_ms: Option<f64>,
    pub camera: Option<String>,
    pub microphone: Option<String>,
    pub speaker: Option<String>,
    pub stun_ok: bool,
    pub turn_ok: bool,
    pub candidates: Candidates,
    pub can_call: CanCall,
    /// The server checked.
    pub server: String,
    /// Why the server step failed, when it did.
    pub server_error: Option<String>,
    /// The server's address is loopback or a private/link-local LAN address.
    pub server_local: bool,
    /// The server offered a STUN / a TURN server.
    pub stun_offered: bool,
    pub turn_offered: bool,
    /// How long the check took.
    pub elapsed_ms: u64,
}

/// The rule behind `can_call` (README "Check my setup"):
/// - `none` when the server is unreachable (no server, no call);
/// - `direct` when at least one server-reflexive candidate was gathered, or when at
///   least one host candidate was gathered and the server is on loopback or a private
///   LAN address (everyone using that server can then reach this machine's host
///   addresses, as on a LAN);
/// - else `relay` when a TURN allocation succeeded (`turn_ok`);
/// - else `none`.
pub fn verdict(server_ok: bool, server_local: bool, c: &Candidates, turn_ok: bool) -> CanCall {
    if !server_ok {
        CanCall::None
    } else if c.srflx > 0 || (c.host > 0 && server_local) {
        CanCall::Direct
    } else if turn_ok {
        CanCall::Relay
    } else {
        CanCall::None
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Signaling server WebSocket URL.
    pub server_url: String,
    /// Local UDP addresses for host candidates (empty: the same as a call's).
    pub udp_addrs: Vec<String>,
    pub ice_policy: IcePolicy,
    /// Which devices the user picked (settings), to name the ones a call would use.
    pub devices: devices::DeviceChoices,
}

fn has_scheme(servers: &[peer_stream_shared::IceServer], schemes: &[&str]) -> bool {
    servers
        .iter()
        .flat_map(|s| s.urls.iter())
        .any(|u| schemes.iter().any(|p| u.starts_with(p)))
}

/// Runs the whole check; never fails and never takes much more than [`TOTAL_LIMIT`].
pub async fn run(opts: CheckOptions) -> CheckReport {
    let start = Instant::now();
    let choices = opts.devices.clone();
    let devices = tokio::task::spawn_blocking(move || devices::find(&choices));

    let probe = server::probe(&opts.server_url, SERVER_LIMIT).await;
    let (server_ok, rtt, ice_servers, server_local, server_error) = match &probe {
        Ok(p) => (true, Some(p.rtt_ms), p.ice_servers.clone(), p.local, None),
        Err(e) => {
            tracing::info!("setup check: server unreachable: {e:#}");
            (false, None, Vec::new(), false, Some(format!("{e:#}")))
        }
    };
    let stun_offered = has_scheme(&ice_servers, &["stun:"]);
    let turn_offered = has_scheme(&ice_servers, &["turn:", "turns:"]);

    // Even without a server, host candidates show whether this machine has a network.
    let counts =
        match gather::gather(&ice_servers, &opts.udp_addrs, opts.ice_policy, GATHER_LIMIT).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("setup check: ICE gathering failed: {e:#}");
                GatherCounts::default()
            }
        };
    let candidates = Candidates {
        host: counts.host,
        srflx: counts.srflx,
        relay: counts.relay,
    };

    let left = TOTAL_LIMIT
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(500));
    let found = match tokio::time::timeout(left, devices).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::warn!("setup check: listing devices failed: {e}");
            devices::DeviceReport::default()
        }
        Err(_) => {
            tracing::warn!("setup check: listing devices took too long");
            devices::DeviceReport::default()
        }
    };

    let stun_ok = stun_offered && candidates.srflx > 0;
    let turn_ok = turn_offered && candidates.relay > 0;
    CheckReport {
        server_ok,
        server_rtt_ms: rtt,
        camera: found.camera,
        microphone: found.microphone,
        speaker: found.speaker,
        stun_ok,
        turn_ok,
        candidates,
        can_call: verdict(server_ok, server_local, &candidates, turn_ok),
        server: opts.server_url,
        server_error,
        server_local,
        stun_offered,
        turn_offered,
        elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(host: u32, srflx: u32, relay: u32) -> Candidates {
        Candidates { host, srflx, relay }
    }

    #[test]
    fn srflx_means_direct_anywhere() {
        assert_eq!(verdict(true, false, &c(2, 1, 0), false), CanCall::Direct);
        assert_eq!(verdict(true, false, &c(0, 1, 1), true), CanCall::Direct);
        assert_eq!(verdict(true, true, &c(2, 1, 1), true), CanCall::Direct);
    }

    #[test]
    fn host_candidates_are_direct_only_with_a_local_server() {
        assert_eq!(verdict(true, true, &c(1, 0, 0), false), CanCall::Direct);
        assert_eq!(verdict(true, false, &c(3, 0, 0), false), CanCall::None);
        assert_eq!(verdict(true, true, &c(0, 0, 0), false), CanCall::None);
    }

    #[test]
    fn relay_when_only_turn_works() {
        assert_eq!(verdict(true, false, &c(2, 0, 1), true), CanCall::Relay);
        assert_eq!(verdict(true, false, &c(0, 0, 1), true), CanCall::Relay);
        // A relay-only policy gathers no host candidates, even with a local server.
        assert_eq!(verdict(true, true, &c(0, 0, 1), true), CanCall::Relay);
    }

    #[test]
    fn nothing_works_without_the_server() {
        assert_eq!(verdict(false, true, &c(2, 1, 1), true), CanCall::None);
        assert_eq!(verdict(false, false, &c(0, 0, 0), false), CanCall::None);
        assert!(!CanCall::None.works());
        assert!(CanCall::Direct.works() && CanCall::Relay.works());
    }

    #[test]
    fn report_json_has_the_contract_fields() {
        let report = CheckReport {
            server_ok: true,
            server_rtt_ms: Some(1.5),
            camera: None,
            microphone: Some("Built-in".into()),
            speaker: None,
            stun_ok: false,
            turn_ok: false,
            candidates: c(1, 0, 0),
            can_call: CanCall::Direct,
            server: "ws://127.0.0.1:1/ws".into(),
            server_error: None,
            server_local: true,
            stun_offered: false,
            turn_offered: false,
            elapsed_ms: 12,
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).expect("json")).expect("parse");
        assert_eq!(v["server_ok"], true);
        assert_eq!(v["server_rtt_ms"], 1.5);
        assert!(v["camera"].is_null());
        assert_eq!(v["microphone"], "Built-in");
        assert_eq!(
            v["candidates"],
            serde_json::json!({"host":1,"srflx":0,"relay":0})
        );
        assert_eq!(v["can_call"], "direct");
        assert_eq!(
            serde_json::to_value(CanCall::None).expect("json"),
            serde_json::json!("none")
        );
    }
}
