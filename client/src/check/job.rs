//! The setup check and the speaker test tone as background jobs the UI polls: started
//! on the engine's tokio runtime (the check) or a thread (the tone), their state in a
//! slot behind a short lock, so drawing never waits for them.

use super::{CheckOptions, CheckReport};
use crate::media::device::SinkChoice;
use crate::media::frame::AUDIO_FRAME_SAMPLES;
use crate::media::playback::open_sink;
use crate::media::tone::ToneGenerator;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where a setup check is.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum CheckStatus {
    #[default]
    NotStarted,
    Running,
    Done(CheckReport),
}

/// Where the speaker test tone is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToneState {
    #[default]
    Idle,
    /// Playing on this speaker.
    Playing(String),
    /// Played on this speaker.
    Played(String),
    /// No speaker could be opened: nothing was heard.
    NoSpeaker,
}

/// How long the test tone plays.
pub const TONE_LENGTH: Duration = Duration::from_millis(1200);

/// What a live engine needs to run checks: the runtime, what to check, which speaker.
#[derive(Clone)]
pub struct CheckSetup {
    pub runtime: tokio::runtime::Handle,
    pub options: CheckOptions,
    pub speaker: SinkChoice,
}

/// The check and tone state of one engine (see `app::handle::LiveEngine`).
#[derive(Default)]
pub struct CheckJobs {
    setup: Option<CheckSetup>,
    status: Arc<Mutex<CheckStatus>>,
    task: Option<tokio::task::JoinHandle<()>>,
    tone: Arc<Mutex<ToneState>>,
}

impl CheckJobs {
    pub fn new(setup: CheckSetup) -> Self {
        let mut jobs = Self::default();
        jobs.setup = Some(setup);
        jobs
    }

    /// Starts a check (a running one is abandoned). Without a setup, does nothing.
    pub fn start(&mut self) {
        let Some(setup) = self.setup.clone() else {
            tracing::warn!("no setup check available for this engine");
            return;
        };
        if let Some(task) = self.task.take() {
            task.abort();
        }
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = CheckStatus::Running;
        let slot = Arc::clone(&self.status);
        self.task = Some(setup.runtime.spawn(async move {
            let report = super::run(setup.options).await;
            tracing::info!(?report, "setup check done");
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = CheckStatus::Done(report);
        }));
    }

    pub fn status(&self) -> CheckStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Plays [`TONE_LENGTH`] of a 440 Hz tone on the speaker calls use (unless one is
    /// playing). The speaker is opened for the tone alone and closed after.
    pub fn play_tone(&mut self, volume: f32) {
        let choice = match &self.setup {
            Some(s) => s.speaker.clone(),
            None => SinkChoice::Default,
        };
        {
            let mut state = self.tone.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*state, ToneState::Playing(_)) {
                return;
            }
            *state = ToneState::Playing(String::new());
        }
        let slot = Arc::clone(&self.tone);
        let spawned = std::thread::Builder::new()
            .name("test-tone".into())
            .spawn(move || {
                let mut sink = open_sink(&choice);
                if sink.is_null() {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = ToneState::NoSpeaker;
                    return;
                }
                let name = sink.name();
                *slot.lock().unwrap_or_else(PoisonError::into_inner) =
                    ToneState::Playing(name.clone());
                sink.set_volume(volume);
                let mut tone = ToneGenerator::new(440.0);
                let frame = Duration::from_millis(20);
                let frames = TONE_LENGTH.as_millis() / frame.as_millis();
                let start = Instant::now();
                for i in 0..frames {
                    let mut samples = tone.next_frame();
                    debug_assert_eq!(samples.len(), AUDIO_FRAME_SAMPLES);
                    // 20 ms fades at both ends: no clicks.
                    if i == 0 || i + 1 == frames {
                        let n = samples.len() as f32;
                        for (k, s) in samples.iter_mut().enumerate() {
                            let ramp = if i == 0 {
                                k as f32 / n
                            } else {
                                1.0 - k as f32 / n
                            };
                            *s = (f32::from(*s) * ramp) as i16;
                        }
                    }
                    sink.play(&samples);
                    // Paced in real time: the sink's ring holds only 200 ms.
                    let next = frame * u32::try_from(i + 1).unwrap_or(u32::MAX);
                    std::thread::sleep(next.saturating_sub(start.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(u64::from(sink.queued_ms())));
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = ToneState::Played(name);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the test tone: {e}");
            *self.tone.lock().unwrap_or_else(PoisonError::into_inner) = ToneState::NoSpeaker;
        }
    }

    pub fn tone(&self) -> ToneState {
        self.tone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for CheckJobs {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
