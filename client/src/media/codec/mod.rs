//! Codecs: H.264 through Cisco's openh264 (what every browser can decode in WebRTC),
//! VP8 through libvpx for partners without H.264 (feature `vp8`, on by default), and Opus
//! (WebRTC's mandatory audio codec). `video` picks between the video codecs.

pub mod h264;
pub mod opus;
pub mod video;
#[cfg(feature = "vp8")]
pub mod vp8;
