//! The engine the UI and the headless bot drive: start it, send [`Command`]s, read
//! [`EngineState`] and [`EngineEvent`]s, and take decoded frames from the mailbox.
//! It never blocks its caller: commands are queued, state is a snapshot behind a
//! short lock, and the work happens on the tokio runtime and media threads.

pub mod bitrate;
pub mod call;
pub mod capture;
pub mod driver;
pub mod stats;

use crate::media::capture::{open_audio, open_video, AudioChoice, VideoChoice};
use crate::media::frame::{RgbaFrame, VideoFrame};
use crate::media::mailbox::FrameMailbox;
use crate::media::playback::{open_sink, SinkChoice};
use crate::session::machine::{Notice, Phase};
use call::VideoSettings;
use capture::CaptureHub;
use stats::{CallStats, Counters};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How to start an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Signaling server WebSocket URL, e.g. `ws://127.0.0.1:3000/ws`.
    pub server_url: String,
    /// Sent in `hello`.
    pub client_name: String,
    pub video: VideoChoice,
    pub audio_in: AudioChoice,
    pub audio_out: SinkChoice,
    /// Frequency of the synthetic tone (lets tests tell peers apart).
    pub tone_hz: f32,
    pub video_settings: VideoSettings,
    /// Local UDP addresses for ICE host candidates (empty: automatic).
    pub udp_addrs: Vec<String>,
    /// Search again by itself when a stranger leaves.
    pub auto_requeue: bool,
    /// `--ice-policy`: every candidate, or TURN relay only.
    pub ice_policy: crate::net::peer::IcePolicy,
    /// `--video-codec`: the video codecs calls may use, most preferred first.
    pub video_codecs: Vec<crate::media::codec::video::VideoCodec>,
}

impl EngineConfig {
    pub fn new(server_url: impl Into<String>) -> Self {
        Self {
            server_url: server_url.into(),
            client_name: format!("peer-stream/{}", env!("CARGO_PKG_VERSION")),
            video: VideoChoice::Default,
            audio_in: AudioChoice::Default,
            audio_out: SinkChoice::Default,
            tone_hz: 440.0,
            video_settings: VideoSettings {
                width: 640,
                height: 480,
                fps: 30,
                bitrate_bps: 1_000_000,
            },
            udp_addrs: Vec::new(),
            auto_requeue: true,
            ice_policy: crate::net::peer::IcePolicy::All,
            video_codecs: crate::media::codec::video::VideoCodecChoice::Auto.codecs(),
        }
    }
}

/// What the UI (or bot) asks of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Start {
        interests: Vec<String>,
    },
    Next,
    Stop,
    SendChat(String),
    Typing(bool),
    Report(String),
    SetMicMuted(bool),
    SetCameraOff(bool),
    SetAutoRequeue(bool),
    /// Playback gain, 0.0–2.0.
    SetVolume(f32),
    /// Bring back the stranger the last Next skipped (while `undo_until` is set).
    UndoNext,
    /// Never be matched with the current (or last) stranger again.
    Block,
    /// Hide (true) or show again (false) the stranger's chat lines for this call.
    MuteChat(bool),
}

/// What happened, in order, for chat logs and bots.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    Phase(Phase),
    Notice(Notice),
    /// The server is unreachable; the next attempt is in `retry_in`.
    ServerUnreachable {
        error: String,
        retry_in: Duration,
    },
    Stats(CallStats),
}

/// A snapshot of everything the UI draws besides video.
#[derive(Clone, Debug)]
pub struct EngineState {
    pub phase: Phase,
    /// Live counts (the server's `counts`, `welcome` and `queued`).
    pub online: Option<u64>,
    pub waiting: Option<u64>,
    /// Undo of the last Next is offered until then.
    pub undo_until: Option<std::time::Instant>,
    /// The stranger's chat lines are hidden for this call.
    pub chat_muted: bool,
    /// The current call is a resumed one (an undone Next).
    pub resumed: bool,
    /// There is a current or last stranger who can be blocked.
    pub can_block: bool,
    /// The live call lost its path to the stranger and is reconnecting.
    pub peer_lost: bool,
    pub stats: CallStats,
    pub stranger_typing: bool,
    pub video_source: String,
    pub video_synthetic: bool,
    pub audio_source: String,
    pub audio_synthetic: bool,
    pub audio_sink: String,
    pub server_error: Option<String>,
    pub mic_muted: bool,
    pub camera_off: bool,
}

/// The handle the UI holds. Dropping it stops the engine.
pub struct Engine {
    commands: mpsc::Sender<Command>,
    events: Option<mpsc::Receiver<EngineEvent>>,
    state: Arc<Mutex<EngineState>>,
    pub counters: Arc<Counters>,
    pub remote_video: Arc<FrameMailbox<RgbaFrame>>,
    local_video: tokio::sync::watch::Receiver<Option<Arc<VideoFrame>>>,
    controls: Arc<capture::CaptureControls>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Engine {
    /// Opens capture devices (falling back to synthetic sources), then starts the
    /// session driver on `runtime`. `repaint` is called whenever something new can be
    /// drawn.
    pub fn start(
        config: EngineConfig,
        runtime: &tokio::runtime::Handle,
        repaint: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let vs = config.video_settings.clone();
        let video = open_video(&config.video, vs.width, vs.height, vs.fps);
        let audio = open_audio(&config.audio_in, config.tone_hz);
        let sink = open_sink(&config.audio_out);
        let hub = CaptureHub::start(video, audio, Arc::clone(&counters));
        let local_video = hub.video.clone();
        let controls = Arc::clone(&hub.controls);
        let state = Arc::new(Mutex::new(EngineState {
            phase: Phase::Offline,
            online: None,
            waiting: None,
            undo_until: None,
            chat_muted: false,
            resumed: false,
            can_block: false,
            peer_lost: false,
            stats: CallStats::default(),
            stranger_typing: false,
            video_source: hub.video_name.clone(),
            video_synthetic: hub.video_synthetic,
            audio_source: hub.audio_name.clone(),
            audio_synthetic: hub.audio_synthetic,
            audio_sink: sink.name(),
            server_error: None,
            mic_muted: false,
            camera_off: false,
        }));
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        let cancel = CancellationToken::new();
        let remote_video = Arc::new(FrameMailbox::new());
        let driver = driver::Driver {
            config,
            commands: cmd_rx,
            events: ev_tx,
            state: Arc::clone(&state),
            counters: Arc::clone(&counters),
            remote_video: Arc::clone(&remote_video),
            sink: Arc::new(Mutex::new(sink)),
            hub,
            repaint,
            cancel: cancel.clone(),
        };
        let task = runtime.spawn(driver.run());
        Self {
            commands: cmd_tx,
            events: Some(ev_rx),
            state,
            counters,
            remote_video,
            local_video,
            controls,
            cancel,
            task: Some(task),
        }
    }

    /// The newest captured frame (own preview) as RGBA, if it is newer than `since`
    /// (a capture sequence number). Converted on demand: only a visible preview pays.
    pub fn local_frame(&self, since: Option<u64>) -> Option<(u64, RgbaFrame)> {
        let frame = self.local_video.borrow().clone()?;
        if since.is_some_and(|s| frame.seq <= s) {
            return None;
        }
        Some((frame.seq, crate::media::convert::i420_to_rgba(&frame)))
    }

    /// Microphone level 0.0–1.0 for the level meter.
    pub fn mic_level(&self) -> f32 {
        self.controls.mic_level()
    }

    /// Queues a command; false if the queue is full or the engine stopped.
    pub fn send(&self, cmd: Command) -> bool {
        self.commands.try_send(cmd).is_ok()
    }

    pub fn state(&self) -> EngineState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the event stream (once).
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<EngineEvent>> {
        self.events.take()
    }

    /// Stops the engine: leaves the call and the queue, closes the connection.
    pub async fn shutdown(mut self) {
        let _ = self.commands.send(Command::Stop).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
