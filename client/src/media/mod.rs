//! Media stages that know nothing about the network: capture (real devices or
//! synthetic stand-ins), codecs, playback, and the latest-frame mailbox the UI reads.

pub mod audio_device;
pub mod blur;
pub mod capture;
pub mod clock;
pub mod codec;
pub mod convert;
pub mod device;
pub mod frame;
pub mod jitter;
pub mod mailbox;
pub mod pattern;
pub mod playback;
pub mod resample;
pub mod tone;
