//! Peer Stream client engine: everything the desktop app and the headless bot share.
//!
//! The UI (and the headless bot) never touch webrtc, codecs or sockets: they start an
//! [`engine::Engine`], send it commands and read its state. Inside, media is a pipeline
//! of small stages (capture → encode → send; receive → decode → render/play) joined by
//! bounded channels, and only `net::peer` speaks webrtc.

pub mod app;
pub mod check;
pub mod engine;
pub mod headless;
pub mod media;
pub mod net;
pub mod session;
