//! The chat session: a pure state machine ([`machine`]) and the task that drives it
//! with a real WebSocket and peer connection ([`driver`]).

pub mod driver;
pub mod machine;
