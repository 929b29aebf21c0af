use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `error` message. Clients should treat a code they do not know like
/// a generic error (it deserializes to [`ErrorCode::Other`]), so the server may add codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON object (or was a binary frame). The connection stays open.
    BadJson,
    /// The `type` is missing or not one the server knows. The connection stays open.
    UnknownType,
    /// Anything but `hello` was sent before `hello`.
    HelloRequired,
    /// `hello` named a protocol version the server does not speak.
    VersionUnsupported,
    /// A `signal`/`chat`/`typing`/`report` named a match that is not (or no longer) yours.
    /// Nothing was relayed.
    NotInMatch,
    /// A signal payload or a whole frame was larger than allowed.
    TooLarge,
    /// Too many messages too fast (the message was dropped), or too many connections
    /// from one address (the connection is then closed).
    RateLimited,
    /// A field is missing, has the wrong type, or is out of bounds; or the message does not
    /// fit the current state (for example a second `hello`).
    Invalid,
    /// This address is banned; the connection is closed.
    Banned,
    /// `undo_next` could not bring the skipped partner back (window over, already undone,
    /// or the partner is gone or in a new match). Only ever sent in reply to `undo_next`;
    /// the sender keeps its place.
    UndoUnavailable,
    /// The service cannot take the request right now (a server run as a cluster node lost
    /// its shared store): only in reply to `join`/`next` (the session stays idle, not
    /// queued) or to a relay to a partner on another node. Retry later, with backoff. Added
    /// after v1's first release: older clients read it as [`ErrorCode::Other`].
    Unavailable,
    /// A code this build does not know (only ever produced when deserializing).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// Every code the server can send, for metrics and documentation.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::HelloRequired,
        ErrorCode::VersionUnsupported,
        ErrorCode::NotInMatch,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Invalid,
        ErrorCode::Banned,
        ErrorCode::UndoUnavailable,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::VersionUnsupported => "version_unsupported",
            ErrorCode::NotInMatch => "not_in_match",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Banned => "banned",
            ErrorCode::UndoUnavailable => "undo_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Other => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client message was refused: the code to send back and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }
}
