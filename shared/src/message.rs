use crate::{ErrorCode, MatchId, SessionId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Messages a client sends to the server. Unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Sent once, first, right after the WebSocket opens. Anything else before it is
    /// refused with `hello_required`. `counts: true` (optional, default false) opts in to
    /// `counts` messages: one right after `welcome`, then whenever the numbers change, at
    /// most once a second. `resume` (optional) is the `resume_token` of an earlier
    /// `welcome`: sent after a connection was lost without a close frame, to get that
    /// session back (its match, its place in the queue, its blocks) within the server's
    /// resume window. A token that is unknown, used or expired gets a new session
    /// (`welcome` without `resumed`).
    Hello {
        version: u32,
        client: String,
        #[serde(default, skip_serializing_if = "is_false")]
        counts: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// Sent to enter the waiting queue (after `hello`, when idle). Interests are optional;
    /// the server trims and lowercases them and pairs people who share one first.
    Join {
        #[serde(default)]
        interests: Vec<String>,
    },
    /// Sent during a match to pass WebRTC negotiation to the partner; the payload is
    /// opaque to the server and relayed as is (see [`SignalPayload`] for what clients put in).
    Signal { match_id: MatchId, payload: Value },
    /// Sent during a match: a line of text chat for the partner.
    Chat { match_id: MatchId, text: String },
    /// Sent during a match when the user starts (`true`) or stops (`false`) typing.
    Typing { match_id: MatchId, active: bool },
    /// Sent to skip: leaves the current match (or the queue) and re-enters the queue at once.
    /// `reason` is optional: `connection_failed` marks a skip because the call's media
    /// never connected or was lost (the partner gets `partner_left` `disconnected`, and no
    /// undo window opens). An unknown reason is a plain skip (forward compatibility).
    Next {
        #[serde(
            default,
            deserialize_with = "next_reason",
            skip_serializing_if = "Option::is_none"
        )]
        reason: Option<NextReason>,
    },
    /// Sent to stop: leaves the match and the queue; the connection stays open.
    Leave,
    /// Sent to report the current or the most recent partner.
    Report { match_id: MatchId, reason: String },
    /// Sent within 5 s after the sender's own `next` to bring the skipped partner back
    /// (once per skipped partner). Answered by `matched` with `resumed: true` on both
    /// sides, or `error` `undo_unavailable` (the sender keeps its place).
    UndoNext,
    /// Sent at any time after `hello` to get the server's STUN/TURN list without joining
    /// the queue (a setup check). Answered by `ice_servers`.
    IceServers,
    /// Sent to never be paired with the partner of `match_id` (the current or last match)
    /// again while both sessions live. Not a report; bans no one. No reply on success,
    /// `not_in_match` for an unknown match.
    Block { match_id: MatchId },
    /// Sent once per match by each side: how its call's media connected (`path`, the type
    /// of the selected local ICE candidate, or `failed`) and how long from `matched` to
    /// the first decoded remote frame (`setup_ms`, null when unknown or failed). For the
    /// operator's `/metrics`; no reply on success, nothing is relayed to the partner.
    CallReport {
        match_id: MatchId,
        path: CallPath,
        #[serde(default)]
        setup_ms: Option<u64>,
    },
}

/// Why a client sent `next` (its optional `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextReason {
    /// The call's media never connected, or was lost and did not come back.
    ConnectionFailed,
}

impl NextReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NextReason::ConnectionFailed => "connection_failed",
        }
    }
}

/// `next`'s `reason`: a known string maps to [`NextReason`]; an unknown string or null
/// is `None` (a plain skip), so newer clients never get `invalid` from an older server.
fn next_reason<'de, D>(d: D) -> Result<Option<NextReason>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Option<String> = Option::deserialize(d)?;
    Ok(match raw.as_deref() {
        Some("connection_failed") => Some(NextReason::ConnectionFailed),
        _ => None,
    })
}

/// How a call's media connected: the selected local ICE candidate type, or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPath {
    Host,
    Srflx,
    Prflx,
    Relay,
    Failed,
}

impl CallPath {
    pub const ALL: [CallPath; 5] = [
        CallPath::Host,
        CallPath::Srflx,
        CallPath::Prflx,
        CallPath::Relay,
        CallPath::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallPath::Host => "host",
            CallPath::Srflx => "srflx",
            CallPath::Prflx => "prflx",
            CallPath::Relay => "relay",
            CallPath::Failed => "failed",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ClientMessage {
    /// The `type` tags of every client message, to tell `unknown_type` from `invalid`.
    pub const TYPES: [&'static str; 12] = [
        "hello",
        "join",
        "signal",
        "chat",
        "typing",
        "next",
        "leave",
        "report",
        "undo_next",
        "ice_servers",
        "block",
        "call_report",
    ];
}

/// Which side of a match creates the WebRTC offer. The server decides, so offers never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Offerer,
    Answerer,
}

/// Why a partner is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerLeftReason {
    /// The partner pressed next.
    Skipped,
    /// The partner pressed stop (`leave`).
    Left,
    /// The partner's connection closed or stopped answering heartbeats.
    Disconnected,
}

/// One entry of the RTCIceServer list handed out in `matched`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Messages the server sends to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to a valid `hello`. `online` counts connected sessions, this one included.
    /// `resume_token` (absent when the server's resume window is 0) is a fresh, single-use
    /// secret for `hello`'s `resume` after a lost connection; every `welcome` brings a new
    /// one. `resumed: true` (only ever present as `true`) answers a `hello` whose `resume`
    /// brought the old session back: same `session_id`, same match or place in the queue;
    /// what was held for it while it was away follows.
    Welcome {
        version: u32,
        session_id: SessionId,
        online: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        resumed: bool,
    },
    /// Sent after `join` or `next`, once the client is in the queue; `waiting` counts the
    /// people in the queue, this one included.
    Queued { waiting: u64 },
    /// Sent to both partners when the server paired them. Exactly one is the offerer.
    /// `resumed: true` (only ever present as `true`) marks the rematch of an `undo_next`.
    Matched {
        match_id: MatchId,
        role: Role,
        common_interests: Vec<String>,
        ice_servers: Vec<IceServer>,
        #[serde(default, skip_serializing_if = "is_false")]
        resumed: bool,
    },
    /// The partner's `signal`, relayed.
    Signal { match_id: MatchId, payload: Value },
    /// The partner's `chat`, relayed.
    Chat { match_id: MatchId, text: String },
    /// The partner's `typing`, relayed.
    Typing { match_id: MatchId, active: bool },
    /// Sent when the partner of `match_id` skipped, left or disconnected. The match is over;
    /// the receiver is idle (not queued) until it sends `join` or `next`.
    PartnerLeft {
        match_id: MatchId,
        reason: PartnerLeftReason,
    },
    /// Sent when a message was refused (see [`ErrorCode`] for which codes close the connection).
    Error { code: ErrorCode, message: String },
    /// Only to clients that sent `hello` with `counts: true`: right after `welcome`, then
    /// whenever `online` or `waiting` change, at most once a second.
    Counts { online: u64, waiting: u64 },
    /// The reply to `ice_servers`: the same list (and credential rules) as in `matched`.
    IceServers { ice_servers: Vec<IceServer> },
}

/// What clients put in a signal payload. The server never looks inside; this type is
/// for clients. `candidate` with an empty string marks the end of candidates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalPayload {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: String,
        #[serde(default)]
        sdp_mid: Option<String>,
        #[serde(default)]
        sdp_mline_index: Option<u16>,
    },
}

impl ServerMessage {
    /// Serializes to the JSON text of a WebSocket frame.
    pub fn to_json(&self) -> String {
        // Serializing these plain enums cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"invalid","message":"serialize: {e}"}}"#)
        })
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }
}

impl ClientMessage {
    /// Serializes to the JSON text of a WebSocket frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}
