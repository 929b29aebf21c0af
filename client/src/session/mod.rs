//! The chat session as a pure, sans-I/O state machine ([`machine`]). The task that
//! drives it with a real WebSocket and peer connection is `engine::driver`: the engine
//! owns and spawns it, so `engine` depends on `session` and never the other way round.

pub mod machine;
