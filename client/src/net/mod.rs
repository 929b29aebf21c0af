//! The only modules that speak to the network: the signaling WebSocket and the WebRTC
//! peer connection.

pub mod keyframe;
pub mod peer;
pub mod signaling;
