//! Where outgoing pictures and sound come from: a camera and a microphone when there
//! are any, otherwise (or when asked) the synthetic test pattern and tone.
//!
//! The rest of the pipeline only sees the two traits below, so a machine without
//! devices (CI, the headless bot, a server) runs exactly the same code path as a
//! laptop. `open_*` never fails: a missing or broken device logs a warning and the
//! synthetic stand-in takes its place; `is_synthetic()` tells the UI which one it got.

pub mod camera;
pub mod microphone;
pub mod synthetic;

use super::audio_device::{self, Direction};
pub use super::device::{AudioChoice, DeviceChoice, DeviceInfo, VideoChoice};
use super::frame::VideoFrame;
use super::tone::ToneGenerator;
use anyhow::Result;

/// A blocking source of I420 pictures that paces itself to its frame rate.
pub trait VideoSource: Send {
    /// Waits for and returns the next picture.
    fn next_frame(&mut self) -> Result<VideoFrame>;
    /// Human-readable device name, e.g. "Synthetic test pattern".
    fn name(&self) -> String;
    fn is_synthetic(&self) -> bool;
}

/// A blocking source of 20 ms mono 48 kHz frames, paced in real time.
pub trait AudioSource: Send {
    /// Waits for and returns the next 960 samples (~20 ms).
    fn next_frame(&mut self) -> Result<Vec<i16>>;
    fn name(&self) -> String;
    fn is_synthetic(&self) -> bool;
}

/// Opens the chosen camera at (about) `width`×`height` and `fps`, or the synthetic
/// pattern if asked for, or if the camera is missing or fails.
pub fn open_video(choice: &VideoChoice, width: u32, height: u32, fps: u32) -> Box<dyn VideoSource> {
    let index = match choice {
        DeviceChoice::Synthetic => {
            return Box::new(synthetic::SyntheticVideo::new(width, height, fps))
        }
        DeviceChoice::Default => 0,
        DeviceChoice::Device(i) => *i,
    };
    match camera::CameraSource::open(index, width, height, fps) {
        Ok(cam) => {
            tracing::info!(camera = %cam.name(), "camera opened");
            Box::new(cam)
        }
        Err(e) => {
            tracing::warn!(?choice, error = %format!("{e:#}"), "camera unavailable, sending the synthetic test pattern");
            Box::new(synthetic::SyntheticVideo::new(width, height, fps))
        }
    }
}

/// Opens the chosen microphone, or the synthetic tone at `tone_hz` if asked for, or if
/// the microphone is missing, fails, or stays silent (delivers no buffers).
pub fn open_audio(choice: &AudioChoice, tone_hz: f32) -> Box<dyn AudioSource> {
    let synthetic = || Box::new(synthetic::SyntheticAudio::new(ToneGenerator::new(tone_hz)));
    if *choice == DeviceChoice::Synthetic {
        return synthetic();
    }
    match microphone::MicrophoneSource::open(choice) {
        Ok(mic) => {
            tracing::info!(microphone = %mic.name(), "microphone opened");
            Box::new(mic)
        }
        Err(e) => {
            tracing::warn!(?choice, error = %format!("{e:#}"), "microphone unavailable, sending a synthetic tone");
            synthetic()
        }
    }
}

/// Cameras present now (empty when none, never panics).
pub fn list_cameras() -> Vec<DeviceInfo> {
    camera::list()
}

/// Microphones present now (empty when none, never panics).
pub fn list_microphones() -> Vec<DeviceInfo> {
    audio_device::list(Direction::Input)
}

/// Speakers present now (empty when none, never panics).
pub fn list_speakers() -> Vec<DeviceInfo> {
    audio_device::list(Direction::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_does_not_panic() {
        let cams = list_cameras();
        let mics = list_microphones();
        let spk = list_speakers();
        tracing::debug!(?cams, ?mics, ?spk);
    }

    #[test]
    fn open_falls_back_to_synthetic() {
        let v = open_video(&DeviceChoice::Device(999), 320, 240, 30);
        assert!(v.is_synthetic(), "{}", v.name());
        let a = open_audio(&DeviceChoice::Device(999), 440.0);
        assert!(a.is_synthetic(), "{}", a.name());
        let v = open_video(&DeviceChoice::Synthetic, 320, 240, 30);
        assert!(v.is_synthetic());
        if list_cameras().is_empty() {
            assert!(open_video(&DeviceChoice::Default, 320, 240, 30).is_synthetic());
        }
        // The default microphone may exist; either way opening must not panic, and on
        // a machine without a sound card it must fall back.
        let mut a = open_audio(&DeviceChoice::Default, 440.0);
        if a.is_synthetic() {
            assert_eq!(a.next_frame().map(|f| f.len()).ok(), Some(960));
        }
    }
}

/// Real-device paths, for machines with audio hardware or an ALSA null device:
/// `ALSA_CONFIG_PATH=<alsa.conf with "pcm.!default { type null }" appended>
/// cargo test -p peer-stream --lib real_audio -- --ignored`.
#[cfg(test)]
mod device_tests {
    use super::*;
    use crate::media::playback::{open_sink, SinkChoice};
    use std::time::{Duration, Instant};

    #[test]
    #[ignore = "needs an audio device (a null ALSA device works)"]
    fn real_audio_devices_open_and_flow() {
        let mut mic = open_audio(&DeviceChoice::Default, 440.0);
        assert!(!mic.is_synthetic(), "no microphone opened");
        let start = Instant::now();
        for _ in 0..25 {
            assert_eq!(mic.next_frame().map(|f| f.len()).ok(), Some(960));
        }
        tracing::info!(elapsed = ?start.elapsed(), name = %mic.name(), "25 microphone frames");
        let mut sink = open_sink(&SinkChoice::Default);
        assert!(!sink.is_null(), "no speaker opened");
        sink.set_volume(0.5);
        for _ in 0..25 {
            sink.play(&[1000; 960]);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(sink.queued_ms() <= 200);
    }
}
