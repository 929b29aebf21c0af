//! What the UI needs from the engine, as a trait: the real [`Engine`] in the app, a
//! [`FakeEngine`] in UI tests (state in, commands out), so every screen is tested
//! without a network, a camera or a clock.

use crate::check::job::{CheckJobs, CheckSetup, CheckStatus, ToneState};
use crate::check::CheckReport;
use crate::engine::stats::CallStats;
use crate::engine::{Command, Engine, EngineEvent, EngineState};
use crate::media::frame::RgbaFrame;
use crate::session::machine::{Notice, Phase};
use std::sync::{Arc, Mutex, PoisonError};

pub trait EngineHandle {
    /// Queues a command; never blocks.
    fn send(&mut self, cmd: Command);
    fn state(&self) -> EngineState;
    /// Events since the last call, in order.
    fn drain_events(&mut self) -> Vec<EngineEvent>;
    /// The partner's newest decoded frame, if newer than `since`.
    fn remote_frame(&self, since: u64) -> Option<(u64, RgbaFrame)>;
    /// Our own newest captured frame, if newer than `since`.
    fn local_frame(&self, since: Option<u64>) -> Option<(u64, RgbaFrame)>;
    fn mic_level(&self) -> f32;
    /// Starts the setup check ("Check my setup") in the background; a running one is
    /// replaced. Poll [`EngineHandle::check_status`].
    fn start_check(&mut self) {}
    fn check_status(&self) -> CheckStatus {
        CheckStatus::NotStarted
    }
    /// Plays a short test tone on the speaker calls use, at `volume`.
    fn play_test_tone(&mut self, _volume: f32) {}
    fn test_tone(&self) -> ToneState {
        ToneState::Idle
    }
}

/// The real engine behind the trait.
pub struct LiveEngine {
    pub engine: Engine,
    events: Option<tokio::sync::mpsc::Receiver<EngineEvent>>,
    checks: CheckJobs,
}

impl LiveEngine {
    pub fn new(mut engine: Engine) -> Self {
        let events = engine.take_events();
        Self {
            engine,
            events,
            checks: CheckJobs::default(),
        }
    }

    /// Lets the setup check run on `setup.runtime` against this engine's server.
    pub fn with_setup_check(mut self, setup: CheckSetup) -> Self {
        self.checks = CheckJobs::new(setup);
        self
    }
}

impl EngineHandle for LiveEngine {
    fn send(&mut self, cmd: Command) {
        if !self.engine.send(cmd) {
            tracing::warn!("engine command queue full; a command was dropped");
        }
    }

    fn state(&self) -> EngineState {
        self.engine.state()
    }

    fn drain_events(&mut self) -> Vec<EngineEvent> {
        let mut out = Vec::new();
        if let Some(rx) = self.events.as_mut() {
            while let Ok(ev) = rx.try_recv() {
                out.push(ev);
            }
        }
        out
    }

    fn remote_frame(&self, since: u64) -> Option<(u64, RgbaFrame)> {
        self.engine.remote_video.take_if_newer(since)
    }

    fn local_frame(&self, since: Option<u64>) -> Option<(u64, RgbaFrame)> {
        self.engine.local_frame(since)
    }

    fn mic_level(&self) -> f32 {
        self.engine.mic_level()
    }

    fn start_check(&mut self) {
        self.checks.start();
    }

    fn check_status(&self) -> CheckStatus {
        self.checks.status()
    }

    fn play_test_tone(&mut self, volume: f32) {
        self.checks.play_tone(volume);
    }

    fn test_tone(&self) -> ToneState {
        self.checks.tone()
    }
}

/// A scriptable engine for UI tests: clone it, give one clone to the app, and use the
/// other to set the state, push events and read the commands the UI sent.
#[derive(Clone, Default)]
pub struct FakeEngine {
    inner: Arc<Mutex<FakeInner>>,
}

pub struct FakeInner {
    pub state: EngineState,
    pub events: Vec<EngineEvent>,
    pub sent: Vec<Command>,
    pub remote: Option<(u64, RgbaFrame)>,
    pub local: Option<(u64, RgbaFrame)>,
    pub level: f32,
    /// What `start_check` finishes with at once (`None`: the check stays running).
    pub check_result: Option<CheckReport>,
    pub check: CheckStatus,
    pub checks_started: u32,
    pub tone: ToneState,
    pub tones_played: u32,
}

impl Default for FakeInner {
    fn default() -> Self {
        Self {
            state: EngineState {
                phase: Phase::Idle,
                online: Some(42),
                waiting: Some(3),
                undo_until: None,
                chat_muted: false,
                resumed: false,
                can_block: false,
                peer_lost: false,
                stats: CallStats::default(),
                stranger_typing: false,
                video_source: "Synthetic test pattern 640x480".into(),
                video_synthetic: true,
                audio_source: "Synthetic tone 440 Hz".into(),
                audio_synthetic: true,
                audio_sink: "Null sink".into(),
                server_error: None,
                mic_muted: false,
                camera_off: false,
            },
            events: Vec::new(),
            sent: Vec::new(),
            remote: None,
            local: None,
            level: 0.3,
            check_result: None,
            check: CheckStatus::NotStarted,
            checks_started: 0,
            tone: ToneState::Idle,
            tones_played: 0,
        }
    }
}

impl FakeEngine {
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Moves to `phase` and emits the phase event, as the real engine does.
    pub fn set_phase(&self, phase: Phase) {
        self.with(|i| {
            i.state.phase = phase.clone();
            i.events.push(EngineEvent::Phase(phase));
        });
    }

    pub fn notice(&self, notice: Notice) {
        self.with(|i| i.events.push(EngineEvent::Notice(notice)));
    }

    /// The commands sent so far (and forgets them).
    pub fn take_sent(&self) -> Vec<Command> {
        self.with(|i| std::mem::take(&mut i.sent))
    }
}

impl EngineHandle for FakeEngine {
    fn send(&mut self, cmd: Command) {
        self.with(|i| {
            match &cmd {
                Command::SetMicMuted(on) => i.state.mic_muted = *on,
                Command::SetCameraOff(on) => i.state.camera_off = *on,
                // As the session machine does: one undo, one block; mute per call.
                Command::UndoNext => i.state.undo_until = None,
                Command::Block => i.state.can_block = false,
                Command::MuteChat(on) => i.state.chat_muted = *on,
                _ => {}
            }
            i.sent.push(cmd);
        });
    }

    fn state(&self) -> EngineState {
        self.with(|i| i.state.clone())
    }

    fn drain_events(&mut self) -> Vec<EngineEvent> {
        self.with(|i| std::mem::take(&mut i.events))
    }

    fn remote_frame(&self, since: u64) -> Option<(u64, RgbaFrame)> {
        self.with(|i| i.remote.clone().filter(|(v, _)| *v > since))
    }

    fn local_frame(&self, since: Option<u64>) -> Option<(u64, RgbaFrame)> {
        self.with(|i| {
            i.local
                .clone()
                .filter(|(v, _)| since.is_none_or(|s| *v > s))
        })
    }

    fn mic_level(&self) -> f32 {
        self.with(|i| i.level)
    }

    fn start_check(&mut self) {
        self.with(|i| {
            i.checks_started += 1;
            i.check = match &i.check_result {
                Some(r) => CheckStatus::Done(r.clone()),
                None => CheckStatus::Running,
            };
        });
    }

    fn check_status(&self) -> CheckStatus {
        self.with(|i| i.check.clone())
    }

    fn play_test_tone(&mut self, _volume: f32) {
        self.with(|i| {
            i.tones_played += 1;
            i.tone = ToneState::Played("Fake speaker".into());
        });
    }

    fn test_tone(&self) -> ToneState {
        self.with(|i| i.tone.clone())
    }
}
