//! The desktop app (eframe/egui). The UI reads a snapshot of the engine's state and
//! sends it commands; it never blocks or awaits. Frames arrive through the engine's
//! latest-frame mailbox and become textures, one copy per new frame.
//!
//! One screen per file under `ui/`; [`PeerStreamApp::ui`] picks the screen.

pub mod automation;
pub mod build_info;
pub mod chatlog;
pub mod embedded;
pub mod handle;
pub mod settings;
mod ui;
mod video;

use crate::engine::{Command, EngineEvent, EngineState};
use crate::media::capture::DeviceInfo;
use crate::session::machine::{Notice, Phase};
use chatlog::ChatLog;
use handle::EngineHandle;
use settings::Settings;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Builds an engine for the given settings (the app re-creates it when the server or
/// the devices change). Tests use a fixed fake instead.
pub type EngineFactory = Box<dyn FnMut(&Settings) -> Box<dyn EngineHandle>>;

/// The chat line of a call that starts blurred.
pub const VIDEO_HIDDEN_LINE: &str = "Video hidden until you show it.";

/// How long the first press of Next waits for the confirming second press.
pub const NEXT_CONFIRM_WINDOW: Duration = Duration::from_secs(3);

/// Reasons offered in the report dialog.
pub const REPORT_REASONS: [&str; 5] = [
    "Nudity or sexual content",
    "Harassment or hate",
    "Spam or advertising",
    "Appears to be under 18",
    "Something else",
];

/// Which screen is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Home,
    /// Searching, connecting, in a call, or just after one (the chat stays readable).
    Session,
    /// The server refused us (banned, version too old).
    Refused,
    /// "Check my setup" (opened from the home screen).
    Check,
}

/// UI-only state: what is typed, which dialog is open.
#[derive(Default)]
struct UiState {
    at_home: bool,
    interests_text: String,
    server_text: String,
    chat_input: String,
    next_armed_until: Option<Instant>,
    report_open: bool,
    report_reason: usize,
    show_stats: bool,
    typing_sent: bool,
    last_keystroke: Option<Instant>,
    retry_at: Option<Instant>,
    /// The "Check my setup" screen is open (over the home screen).
    check_open: bool,
    /// The user clicked "Show video" in this call.
    revealed: bool,
    /// A call just began blurred: say so in the chat after the engine's opening lines.
    hidden_line_due: bool,
    /// "Don't match me with this person again", ticked in the report dialog.
    report_block: bool,
    /// The About box (opened from the home screen).
    about_open: bool,
}

pub struct PeerStreamApp {
    pub settings: Settings,
    engine: Box<dyn EngineHandle>,
    factory: Option<EngineFactory>,
    /// The settings the running engine was built with.
    engine_settings: Settings,
    pub chat: ChatLog,
    state: EngineState,
    ui: UiState,
    video: video::Textures,
    /// Cameras, microphones, speakers: listed once (listing can be slow), not per frame.
    devices: Option<(Vec<DeviceInfo>, Vec<DeviceInfo>, Vec<DeviceInfo>)>,
    /// Shown on the home screen when the built-in server is reachable from the LAN
    /// (written by the engine factory, which starts that server).
    pub hosting_note: Arc<Mutex<Option<String>>>,
    /// Kiosk/test automation (`--duration`, `--screenshot`).
    pub automation: automation::Automation,
}

impl PeerStreamApp {
    pub fn new(
        settings: Settings,
        engine: Box<dyn EngineHandle>,
        factory: Option<EngineFactory>,
    ) -> Self {
        let state = engine.state();
        let ui = UiState {
            at_home: true,
            interests_text: settings.interests.join(", "),
            server_text: settings.server_url.clone(),
            ..Default::default()
        };
        Self {
            engine_settings: settings.clone(),
            settings,
            engine,
            factory,
            chat: ChatLog::default(),
            state,
            ui,
            video: video::Textures::default(),
            devices: None,
            hosting_note: Arc::new(Mutex::new(None)),
            automation: automation::Automation::default(),
        }
    }

    /// Leaves the home screen and starts searching at once (`--start`).
    pub fn start_now(&mut self) {
        self.settings.accepted_notice = true;
        self.start();
    }

    pub fn screen(&self) -> Screen {
        if matches!(self.state.phase, Phase::Refused { .. }) {
            Screen::Refused
        } else if self.ui.at_home && self.ui.check_open {
            Screen::Check
        } else if self.ui.at_home {
            Screen::Home
        } else {
            Screen::Session
        }
    }

    pub fn engine_state(&self) -> &EngineState {
        &self.state
    }

    fn send(&mut self, cmd: Command) {
        self.engine.send(cmd);
    }

    /// The stranger's video is still blurred in this call.
    pub fn video_hidden(&self) -> bool {
        !self.settings.always_show_video && !self.ui.revealed
    }

    /// The stranger's picture on screen is the blurred one (for tests).
    pub fn remote_video_blurred(&self) -> bool {
        self.video.remote_blurred()
    }

    /// A stranger's picture is on screen (blurred or not).
    pub fn remote_video_shown(&self) -> bool {
        self.video.remote.is_some()
    }

    /// "Show video": unblur the stranger for the rest of this call.
    fn reveal(&mut self) {
        self.ui.revealed = true;
    }

    /// Seconds left to undo the last Next (rounded up), if it can still be undone.
    pub fn undo_seconds_left(&self, now: Instant) -> Option<u64> {
        let until = self.state.undo_until?;
        let left = until.checked_duration_since(now)?;
        Some(left.as_millis().div_ceil(1000).max(1) as u64)
    }

    fn undo(&mut self) {
        self.send(Command::UndoNext);
        // Shown until the engine confirms (the server answers within a round trip).
        self.state.undo_until = None;
    }

    fn block(&mut self) {
        self.send(Command::Block);
        self.state.can_block = false;
    }

    fn set_chat_muted(&mut self, on: bool) {
        self.send(Command::MuteChat(on));
    }

    /// Start (or New stranger): apply home-screen settings, rebuild the engine if the
    /// server or devices changed, then search.
    fn start(&mut self) {
        self.settings.interests = Settings::parse_interests(&self.ui.interests_text);
        self.settings.server_url = self.ui.server_text.trim().to_owned();
        let needs_new_engine = self.settings.server_url != self.engine_settings.server_url
            || self.settings.video_choice() != self.engine_settings.video_choice()
            || self.settings.audio_choice() != self.engine_settings.audio_choice()
            || self.settings.sink_choice() != self.engine_settings.sink_choice()
            || self.settings.host_on_lan != self.engine_settings.host_on_lan;
        if needs_new_engine {
            if let Some(factory) = self.factory.as_mut() {
                self.engine = factory(&self.settings);
                self.engine_settings = self.settings.clone();
                self.video = video::Textures::default();
            }
        }
        self.send(Command::SetAutoRequeue(self.settings.auto_requeue));
        self.send(Command::SetVolume(self.settings.volume));
        self.send(Command::Start {
            interests: self.settings.interests.clone(),
        });
        self.ui.at_home = false;
        self.ui.next_armed_until = None;
    }

    fn stop(&mut self) {
        self.send(Command::Stop);
        self.stop_typing();
        self.ui.at_home = true;
        self.ui.next_armed_until = None;
        self.ui.report_open = false;
    }

    /// Next with confirm-by-pressing-twice: the first press arms, the second skips.
    fn press_next(&mut self, now: Instant) {
        let in_call = matches!(
            self.state.phase,
            Phase::Connecting { .. } | Phase::Live { .. }
        );
        if !in_call {
            // Nothing to lose: searching again needs no confirmation.
            self.skip();
            return;
        }
        match self.ui.next_armed_until {
            Some(until) if now <= until => self.skip(),
            _ => self.ui.next_armed_until = Some(now + NEXT_CONFIRM_WINDOW),
        }
    }

    fn skip(&mut self) {
        self.stop_typing();
        self.ui.next_armed_until = None;
        self.ui.at_home = false;
        self.send(Command::Next);
    }

    fn send_chat(&mut self) {
        let text = self.ui.chat_input.trim().to_owned();
        if text.is_empty() {
            return;
        }
        self.send(Command::SendChat(text));
        self.ui.chat_input.clear();
        self.stop_typing();
    }

    fn stop_typing(&mut self) {
        if self.ui.typing_sent {
            self.ui.typing_sent = false;
            self.send(Command::Typing(false));
        }
    }

    /// Typing indicator: "started" on the first keystroke, "stopped" after 3 s idle.
    fn typing_tick(&mut self, changed: bool, now: Instant) {
        if changed && !self.ui.chat_input.is_empty() {
            self.ui.last_keystroke = Some(now);
            if !self.ui.typing_sent {
                self.ui.typing_sent = true;
                self.send(Command::Typing(true));
            }
        }
        let idle = self
            .ui
            .last_keystroke
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(3));
        if self.ui.typing_sent && (idle || self.ui.chat_input.is_empty()) {
            self.stop_typing();
        }
    }

    /// Pulls engine events and state; called once per frame before drawing.
    pub fn refresh(&mut self) {
        let muted = self.engine.state().chat_muted;
        for ev in self.engine.drain_events() {
            match ev {
                // Muted: the engine drops the stranger's lines already; so does the UI.
                EngineEvent::Notice(Notice::Chat { from_me: false, .. }) if muted => {}
                EngineEvent::Notice(n) => {
                    if self.chat.apply(&n) {
                        // A new stranger: fresh transcript, no picture of the last one,
                        // blurred again until shown.
                        self.chat.new_call();
                        self.video.clear_remote();
                        self.ui.next_armed_until = None;
                        self.ui.revealed = false;
                        self.ui.hidden_line_due = !self.settings.always_show_video;
                    } else if matches!(n, Notice::System(_))
                        && std::mem::take(&mut self.ui.hidden_line_due)
                    {
                        // Right after the engine's opening line.
                        self.chat
                            .apply(&Notice::System(VIDEO_HIDDEN_LINE.to_owned()));
                    }
                }
                EngineEvent::ServerUnreachable { retry_in, .. } => {
                    self.ui.retry_at = Some(Instant::now() + retry_in);
                }
                EngineEvent::Phase(_) | EngineEvent::Stats(_) => {}
            }
        }
        // (Or at once, should the opening line come later.)
        if std::mem::take(&mut self.ui.hidden_line_due) {
            self.chat
                .apply(&Notice::System(VIDEO_HIDDEN_LINE.to_owned()));
        }
        self.state = self.engine.state();
        if self.state.server_error.is_none() {
            self.ui.retry_at = None;
        }
    }

    /// Draws one frame. Everything the user sees goes through here (tests call it too).
    pub fn ui(&mut self, ctx: &egui::Context) {
        self.refresh();
        let now = Instant::now();
        if ctx.input(|i| i.key_pressed(egui::Key::Escape)) && self.screen() == Screen::Session {
            self.press_next(now);
        }
        // Alt+U: undo the last Next. Taken out of the input before any widget runs, with
        // the text it may have produced, so it never types into the chat box.
        if self.screen() == Screen::Session {
            let pressed = ctx.input_mut(|i| {
                let hit = i.consume_key(egui::Modifiers::ALT, egui::Key::U);
                if hit {
                    i.events.retain(|e| !matches!(e, egui::Event::Text(_)));
                }
                hit
            });
            if pressed && self.undo_seconds_left(now).is_some() {
                self.undo();
            }
        }
        ui::top_bar(self, ctx);
        match self.screen() {
            Screen::Home => ui::home::show(self, ctx),
            Screen::Session => ui::call::show(self, ctx, now),
            Screen::Refused => ui::refused::show(self, ctx),
            Screen::Check => ui::check::show(self, ctx),
        }
        if self.ui.about_open {
            ui::about::show(self, ctx);
        }
        if !self.settings.accepted_notice {
            ui::notice::show(self, ctx);
        }
        automation::tick(self, ctx, now);
        // Countdowns and the typing timeout need a clock even when nothing arrives.
        ctx.request_repaint_after(Duration::from_millis(250));
    }
}

/// Adds the fonts shipped in `assets/` as fallbacks to egui's own, so symbols and
/// non-Latin chat text render.
pub fn install_fonts(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "dejavu-sans".to_owned(),
        std::sync::Arc::new(egui::FontData::from_static(include_bytes!(
            "../../../assets/fonts/DejaVuSans.ttf"
        ))),
    );
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts
            .families
            .entry(family)
            .or_default()
            .push("dejavu-sans".to_owned());
    }
    ctx.set_fonts(fonts);
}

impl eframe::App for PeerStreamApp {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.ui(ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, settings::STORAGE_KEY, &self.settings);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.send(Command::Stop);
    }
}
