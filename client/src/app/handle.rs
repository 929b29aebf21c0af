//! What the UI needs from the engine, as a trait: the real [`Engine`] in the app, a
//! [`FakeEngine`] in UI tests (state in, commands out), so every screen is tested
//! without a network, a camera or a clock.

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
}

/// The real engine behind the trait.
pub struct LiveEngine {
    pub engine: Engine,
    events: Option<tokio::sync::mpsc::Receiver<EngineEvent>>,
}

impl LiveEngine {
    pub fn new(mut engine: Engine) -> Self {
        let events = engine.take_events();
        Self { engine, events }
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
}

impl Default for FakeInner {
    fn default() -> Self {
        Self {
            state: EngineState {
                phase: Phase::Idle,
                online: Some(42),
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
}
