//! Codecs: H.264 through Cisco's openh264 (what every browser can decode in WebRTC) and
//! Opus (WebRTC's mandatory audio codec).

pub mod h264;
pub mod opus;
