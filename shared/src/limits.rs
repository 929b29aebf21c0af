//! Bounds both sides agree on. The server rejects anything outside them with `invalid`
//! (or `too_large` for a signal payload); clients check them before sending so a person
//! gets a clear message instead of a server error.

/// At most this many interests in one `join`.
pub const MAX_INTERESTS: usize = 10;
/// Each interest is 1..=this many characters after trimming.
pub const MAX_INTEREST_CHARS: usize = 32;
/// Chat text is 1..=this many characters (Unicode scalar values, not bytes).
pub const MAX_CHAT_CHARS: usize = 2000;
/// A signal payload serializes to at most this many bytes.
pub const MAX_SIGNAL_PAYLOAD_BYTES: usize = 64 * 1024;
/// A report reason is at most this many characters.
pub const MAX_REPORT_REASON_CHARS: usize = 500;
/// The `client` string in `hello` is at most this many characters.
pub const MAX_CLIENT_NAME_CHARS: usize = 128;
/// Ids sent by clients longer than this are rejected without a lookup.
pub const MAX_ID_CHARS: usize = 64;
/// Default largest WebSocket message the server accepts (a larger one closes the connection).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// A `call_report`'s `setup_ms` is at most this (10 minutes); larger is `invalid`.
pub const MAX_CALL_SETUP_MS: u64 = 600_000;
