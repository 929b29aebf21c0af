//! What the app remembers between runs (eframe storage): devices, interests, server,
//! volume, auto-requeue, whether the stranger's video starts blurred, and whether the
//! first-run notice was accepted.

use crate::media::capture::{AudioChoice, VideoChoice};
use crate::media::playback::SinkChoice;
use serde::{Deserialize, Serialize};

pub const STORAGE_KEY: &str = "peer-stream-settings";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Signaling server URL; empty means "the server built into this app".
    pub server_url: String,
    pub interests: Vec<String>,
    /// Index into the camera list; None = default device; `use_test_pattern` overrides.
    pub camera: Option<usize>,
    pub microphone: Option<usize>,
    pub speaker: Option<usize>,
    pub use_test_pattern: bool,
    pub volume: f32,
    pub auto_requeue: bool,
    pub accepted_notice: bool,
    /// Host the embedded server on all interfaces so others on the LAN can join.
    pub host_on_lan: bool,
    /// Show the stranger's video at once. Off (the default): it starts blurred and the
    /// user reveals it per call with "Show video".
    pub always_show_video: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_url: String::new(),
            interests: Vec::new(),
            camera: None,
            microphone: None,
            speaker: None,
            use_test_pattern: false,
            volume: 1.0,
            auto_requeue: true,
            accepted_notice: false,
            host_on_lan: false,
            always_show_video: false,
        }
    }
}

impl Settings {
    pub fn video_choice(&self) -> VideoChoice {
        match (self.use_test_pattern, self.camera) {
            (true, _) => VideoChoice::Synthetic,
            (false, Some(i)) => VideoChoice::Device(i),
            (false, None) => VideoChoice::Default,
        }
    }

    pub fn audio_choice(&self) -> AudioChoice {
        match (self.use_test_pattern, self.microphone) {
            (true, _) => AudioChoice::Synthetic,
            (false, Some(i)) => AudioChoice::Device(i),
            (false, None) => AudioChoice::Default,
        }
    }

    pub fn sink_choice(&self) -> SinkChoice {
        match self.speaker {
            Some(i) => SinkChoice::Device(i),
            None => SinkChoice::Default,
        }
    }

    /// Parses "music, Rust ,chess" into clean interests (the server normalizes too).
    pub fn parse_interests(text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for part in text.split(',') {
            let tag = part.trim().to_lowercase();
            if !tag.is_empty() && tag.chars().count() <= 32 && !out.contains(&tag) {
                out.push(tag);
            }
        }
        out.truncate(peer_stream_shared::limits::MAX_INTERESTS);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interests_are_cleaned() {
        assert_eq!(
            Settings::parse_interests(" Music, rust,,music , "),
            vec!["music".to_string(), "rust".to_string()]
        );
        let many = (0..20)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(Settings::parse_interests(&many).len(), 10);
    }

    #[test]
    fn settings_survive_a_round_trip_and_tolerate_old_files() {
        let s = Settings {
            interests: vec!["go".into()],
            volume: 0.5,
            ..Default::default()
        };
        let text = serde_json::to_string(&s).expect("serialize");
        assert_eq!(serde_json::from_str::<Settings>(&text).expect("parse"), s);
        let old: Settings = serde_json::from_str(r#"{"volume":0.2}"#).expect("partial");
        assert!(old.auto_requeue);
        assert!(!old.always_show_video, "video starts blurred for new users");
    }
}
