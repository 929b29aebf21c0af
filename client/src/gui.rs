//! Starts the desktop window: settings from eframe storage, command-line overrides, the
//! engine on a background tokio runtime, the built-in server when no server is set.

use peer_stream::app::embedded::EmbeddedServer;
use peer_stream::app::handle::{EngineHandle, LiveEngine};
use peer_stream::app::settings::{Settings, STORAGE_KEY};
use peer_stream::app::PeerStreamApp;
use peer_stream::check::devices::DeviceChoices;
use peer_stream::check::job::CheckSetup;
use peer_stream::check::CheckOptions;
use peer_stream::engine::stats::Counters;
use peer_stream::engine::{Engine, EngineConfig};
use peer_stream::headless::summarize_counters;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub struct GuiOptions {
    pub server: Option<String>,
    pub fake_media: bool,
    pub interests: Vec<String>,
    pub start: bool,
    pub duration: Option<Duration>,
    pub screenshot: Option<PathBuf>,
    pub screenshot_undo: Option<PathBuf>,
    pub screenshot_reconnecting: Option<PathBuf>,
    pub screenshot_gave_up: Option<PathBuf>,
    /// Open the "Check my setup" screen at start (`--check-screen`).
    pub check_screen: bool,
}

const APP_ID: &str = "peer-stream";

fn icon() -> Option<egui::IconData> {
    let img = image::load_from_memory(include_bytes!("../../assets/icon.png")).ok()?;
    let rgba = img.to_rgba8();
    Some(egui::IconData {
        width: rgba.width(),
        height: rgba.height(),
        rgba: rgba.into_raw(),
    })
}

pub fn run(opts: GuiOptions, base: EngineConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("peer-stream-engine")
        .build()?;
    let handle = runtime.handle().clone();
    let counters_slot: Arc<Mutex<Option<Arc<Counters>>>> = Arc::new(Mutex::new(None));
    let counters_for_exit = Arc::clone(&counters_slot);

    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Peer Stream")
        .with_app_id(APP_ID)
        .with_inner_size([1120.0, 720.0])
        .with_min_inner_size([760.0, 480.0]);
    if let Some(icon) = icon() {
        viewport = viewport.with_icon(icon);
    }
    let native = eframe::NativeOptions {
        viewport,
        persist_window: true,
        ..Default::default()
    };
    let data_dir = eframe::storage_dir(APP_ID).unwrap_or_else(std::env::temp_dir);

    eframe::run_native(
        "Peer Stream",
        native,
        Box::new(move |cc| {
            let mut settings: Settings = cc
                .storage
                .and_then(|s| eframe::get_value(s, STORAGE_KEY))
                .unwrap_or_default();
            if let Some(server) = &opts.server {
                settings.server_url = server.clone();
            }
            if opts.fake_media {
                settings.use_test_pattern = true;
            }
            if !opts.interests.is_empty() {
                settings.interests = opts.interests.clone();
            }
            peer_stream::app::install_fonts(&cc.egui_ctx);
            let ctx = cc.egui_ctx.clone();
            let repaint: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx.request_repaint());
            let hosting_note: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
            let note = Arc::clone(&hosting_note);
            let mut embedded: Option<EmbeddedServer> = None;
            let slot = Arc::clone(&counters_slot);
            let fake_media = opts.fake_media;
            let mut factory = move |s: &Settings| -> Box<dyn EngineHandle> {
                // The built-in server runs when no server is set, or to host for the LAN.
                let want_embedded = s.server_url.is_empty() || s.host_on_lan;
                if !want_embedded || embedded.as_ref().is_some_and(|e| e.on_lan != s.host_on_lan) {
                    embedded = None;
                }
                if want_embedded && embedded.is_none() {
                    match EmbeddedServer::start(
                        &handle,
                        s.host_on_lan,
                        data_dir.join("server.sqlite3"),
                    ) {
                        Ok(server) => embedded = Some(server),
                        Err(e) => tracing::error!("cannot start the built-in server: {e:#}"),
                    }
                }
                *note.lock().unwrap_or_else(PoisonError::into_inner) = embedded
                    .as_ref()
                    .and_then(|e| e.lan_url.clone())
                    .map(|url| {
                        format!("Others on your network can join with server address {url}")
                    });
                let mut config = base.clone();
                config.server_url = if s.server_url.is_empty() {
                    embedded
                        .as_ref()
                        .map(|e| e.local_url.clone())
                        .unwrap_or_else(|| base.server_url.clone())
                } else {
                    s.server_url.clone()
                };
                config.video = s.video_choice();
                config.audio_in = s.audio_choice();
                config.audio_out = if fake_media {
                    base.audio_out.clone()
                } else {
                    s.sink_choice()
                };
                config.auto_requeue = s.auto_requeue;
                // "Check my setup" checks what a call would use: this server, these
                // addresses and devices.
                let check = CheckSetup {
                    runtime: handle.clone(),
                    options: CheckOptions {
                        server_url: config.server_url.clone(),
                        udp_addrs: config.udp_addrs.clone(),
                        ice_policy: config.ice_policy,
                        devices: DeviceChoices {
                            camera: s.camera,
                            microphone: s.microphone,
                            speaker: s.speaker,
                        },
                    },
                    speaker: config.audio_out.clone(),
                };
                let engine = Engine::start(config, &handle, Arc::clone(&repaint));
                *slot.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&engine.counters));
                Box::new(LiveEngine::new(engine).with_setup_check(check))
            };
            let engine = factory(&settings);
            let mut app = PeerStreamApp::new(settings, engine, Some(Box::new(factory)));
            app.hosting_note = hosting_note;
            app.automation.exit_at = opts.duration.map(|d| Instant::now() + d);
            app.automation.screenshot = opts.screenshot.clone();
            app.automation.screenshot_undo = opts.screenshot_undo.clone();
            app.automation.screenshot_reconnecting = opts.screenshot_reconnecting.clone();
            app.automation.screenshot_gave_up = opts.screenshot_gave_up.clone();
            app.automation.screenshot_after_frames = 30;
            app.automation.frames_decoded = counters_slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if opts.check_screen {
                app.open_setup_check();
            }
            if opts.start {
                app.start_now();
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))?;

    // Like the headless bot, report what happened (used by the window smoke test).
    if let Some(counters) = counters_for_exit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        let summary = summarize_counters(&counters, String::new(), String::new(), Vec::new());
        if let Ok(json) = serde_json::to_string(&summary) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{json}");
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
