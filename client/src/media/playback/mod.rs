//! Where incoming sound goes: the speaker when there is one, otherwise a null sink that
//! only counts (and keeps the last samples, so a headless bot or a test can check
//! which tone it is hearing).

pub mod null;
pub mod speaker;

pub use super::capture::list_speakers;
pub use super::device::{DeviceChoice, DeviceInfo, SinkChoice};
pub use null::{NullSink, NullTap};

/// Receives 20 ms mono 48 kHz frames. `play` never blocks: real sinks queue into a
/// bounded buffer that the device drains at its own pace.
pub trait AudioSink: Send {
    fn play(&mut self, frame: &[i16]);
    fn name(&self) -> String;
    fn is_null(&self) -> bool;
    /// Linear gain applied from now on (1.0 = unchanged, 0.0 = mute; clamped to 0‥4).
    fn set_volume(&mut self, gain: f32);
    /// Audio queued but not yet played, in milliseconds (0 for the null sink).
    fn queued_ms(&self) -> u32 {
        0
    }
}

/// Opens the chosen speaker, or a [`NullSink`] if asked for (`Null`) or if the device
/// is missing or fails to open.
pub fn open_sink(choice: &SinkChoice) -> Box<dyn AudioSink> {
    if *choice == SinkChoice::Null {
        return Box::new(NullSink::default());
    }
    match speaker::SpeakerSink::open(choice) {
        Ok(s) => {
            tracing::info!(speaker = %s.name(), "speaker opened");
            Box::new(s)
        }
        Err(e) => {
            tracing::warn!(?choice, error = %format!("{e:#}"), "speaker unavailable, audio goes to a null sink");
            Box::new(NullSink::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_sink_falls_back_to_null() {
        let mut s = open_sink(&SinkChoice::Device(999));
        assert!(s.is_null(), "{}", s.name());
        s.play(&[0; 960]);
        assert!(open_sink(&SinkChoice::Null).is_null());
        if list_speakers().is_empty() {
            assert!(open_sink(&SinkChoice::Default).is_null());
        } else {
            // Must not panic whatever the machine has.
            let mut s = open_sink(&SinkChoice::Default);
            s.set_volume(0.0);
            s.play(&[0; 960]);
        }
    }
}
