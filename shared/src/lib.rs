//! Peer Stream wire protocol, version 1.
//!
//! Clients and the signaling server exchange JSON text frames over a WebSocket at `/ws`.
//! Every frame is one object with a `"type"` field. A client says [`ClientMessage::Hello`]
//! first, then [`ClientMessage::Join`]s the queue; the server answers with
//! [`ServerMessage::Matched`] once it found a stranger, and from then on relays
//! `signal`, `chat` and `typing` messages between the two partners of that match only.
//!
//! This crate has no I/O: it holds the message types, the limits both sides agree on and
//! [`parse_client_message`], the one place where untrusted client input becomes a typed,
//! validated message (or a [`ProtocolError`] carrying the error code to reply with).
//! `PROTOCOL.md` at the repository root is the human-readable form of the same contract.

mod error;
mod ids;
pub mod limits;
mod message;
mod parse;

pub use error::{ErrorCode, ProtocolError};
pub use ids::{MatchId, SessionId};
pub use message::{
    CallPath, ClientMessage, IceServer, NextReason, PartnerLeftReason, Role, ServerMessage,
    SignalPayload,
};
pub use parse::{normalize_interests, parse_client_frame, parse_client_message, ClientFrame};

/// The protocol version this build speaks; sent in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The HTTP path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
