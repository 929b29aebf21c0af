//! Kiosk and test automation for the real window: exit after a while, save a screenshot
//! once a call shows the stranger's video, and (for the docs and the undo test) press
//! Next, save a screenshot of the Undo countdown, then press Undo; and (for the docs'
//! network states) save one when the path to the stranger is first lost
//! ("reconnecting…") and one a moment after the app gives up on a call ("Couldn't
//! connect to this stranger").

use super::chatlog::Speaker;
use super::PeerStreamApp;
use crate::session::machine::Phase;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

#[derive(Default)]
pub struct Automation {
    /// Close the window at this instant.
    pub exit_at: Option<Instant>,
    /// Save a PNG of the window here once live with enough decoded frames.
    pub screenshot: Option<PathBuf>,
    /// After that screenshot: press Next, save a PNG here while Undo is offered, then
    /// press Undo.
    pub screenshot_undo: Option<PathBuf>,
    /// Decoded remote frames before the screenshot is taken.
    pub screenshot_after_frames: u64,
    /// Save a PNG here the first time a call shows "reconnecting" (the path to the
    /// stranger was lost).
    pub screenshot_reconnecting: Option<PathBuf>,
    /// Save a PNG here a moment after the chat first says the app gave up on a call.
    pub screenshot_gave_up: Option<PathBuf>,
    /// Decoded-frame counter of the running engine (for the screenshot trigger).
    pub frames_decoded: Option<std::sync::Arc<crate::engine::stats::Counters>>,
    stage: Stage,
    /// The reconnecting screenshot was requested.
    reconnecting_done: bool,
    /// When the give-up line was first seen (the shot follows a moment later).
    gave_up_seen: Option<Instant>,
    /// The give-up screenshot was requested.
    gave_up_done: bool,
    /// A screenshot was requested and goes to this path.
    pending: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    /// Waiting for a live call with enough frames.
    #[default]
    WaitLive,
    /// The call screenshot is on its way.
    CallShot,
    /// Next was pressed; waiting for the Undo offer.
    WaitUndo,
    /// The Undo screenshot is on its way.
    UndoShot,
    Done,
}

pub fn tick(app: &mut PeerStreamApp, ctx: &egui::Context, now: Instant) {
    if app.automation.exit_at.is_some_and(|t| now >= t) {
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
    save_screenshot(app, ctx);
    if app.automation.pending.is_some() {
        return;
    }
    if network_states(app, ctx, now) {
        return;
    }
    match app.automation.stage {
        Stage::WaitLive => {
            let Some(path) = app.automation.screenshot.clone() else {
                return;
            };
            let decoded = app
                .automation
                .frames_decoded
                .as_ref()
                .map(|c| c.frames_decoded.load(Relaxed))
                .unwrap_or(0);
            if matches!(app.state.phase, Phase::Live { .. })
                && decoded >= app.automation.screenshot_after_frames
            {
                request(app, ctx, path, Stage::CallShot);
            }
        }
        Stage::CallShot => {
            if app.automation.screenshot_undo.is_some() {
                tracing::info!("automation: pressing Next");
                app.skip();
                app.automation.stage = Stage::WaitUndo;
            } else {
                app.automation.stage = Stage::Done;
            }
        }
        Stage::WaitUndo => {
            if app.undo_seconds_left(now).is_some() {
                if let Some(path) = app.automation.screenshot_undo.clone() {
                    request(app, ctx, path, Stage::UndoShot);
                }
            }
        }
        Stage::UndoShot => {
            if app.undo_seconds_left(now).is_some() {
                tracing::info!("automation: pressing Undo");
                app.undo();
            }
            app.automation.stage = Stage::Done;
        }
        Stage::Done => {}
    }
}

/// The chat line of a call the app gave up on (the session's plain line).
const GAVE_UP_LINE: &str = "Couldn't connect to this stranger";

/// How long the give-up line shows before its screenshot (the chat has settled).
const GAVE_UP_SETTLE: std::time::Duration = std::time::Duration::from_millis(400);

/// The reconnecting and give-up screenshots; true when one was requested this frame.
fn network_states(app: &mut PeerStreamApp, ctx: &egui::Context, now: Instant) -> bool {
    // The reconnecting shot shows the call's (frozen) picture, not the blurred one
    // with its "Show video" button: press it once the stranger's video is on screen.
    if app.automation.screenshot_reconnecting.is_some()
        && !app.automation.reconnecting_done
        && app.video_hidden()
        && app.remote_video_shown()
    {
        tracing::info!("automation: pressing Show video");
        app.reveal();
    }
    if !app.automation.reconnecting_done && app.state.peer_lost {
        if let Some(path) = app.automation.screenshot_reconnecting.clone() {
            tracing::info!("automation: reconnecting shown");
            app.automation.reconnecting_done = true;
            let stage = app.automation.stage;
            request(app, ctx, path, stage);
            return true;
        }
    }
    if app.automation.gave_up_done {
        return false;
    }
    let Some(path) = app.automation.screenshot_gave_up.clone() else {
        return false;
    };
    let shown = app
        .chat
        .lines
        .iter()
        .any(|l| l.speaker == Speaker::System && l.text.starts_with(GAVE_UP_LINE));
    if !shown {
        // Not yet, or a new match cleared the chat before the shot: wait for the next.
        app.automation.gave_up_seen = None;
        return false;
    }
    let seen = *app.automation.gave_up_seen.get_or_insert(now);
    if now.duration_since(seen) < GAVE_UP_SETTLE {
        ctx.request_repaint_after(GAVE_UP_SETTLE / 4);
        return false;
    }
    tracing::info!("automation: gave up shown");
    app.automation.gave_up_done = true;
    let stage = app.automation.stage;
    request(app, ctx, path, stage);
    true
}

fn request(app: &mut PeerStreamApp, ctx: &egui::Context, path: PathBuf, next: Stage) {
    app.automation.pending = Some(path);
    app.automation.stage = next;
    ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::default()));
}

fn save_screenshot(app: &mut PeerStreamApp, ctx: &egui::Context) {
    if app.automation.pending.is_none() {
        return;
    }
    let shot = ctx.input(|i| {
        i.events.iter().find_map(|e| match e {
            egui::Event::Screenshot { image, .. } => Some(image.clone()),
            _ => None,
        })
    });
    let Some(image) = shot else {
        return;
    };
    let Some(path) = app.automation.pending.take() else {
        return;
    };
    let [w, h] = image.size;
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    match image::RgbaImage::from_raw(w as u32, h as u32, bytes) {
        Some(img) => match img.save(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "screenshot saved"),
            Err(e) => tracing::error!("cannot save the screenshot: {e}"),
        },
        None => tracing::error!("screenshot had an unexpected size"),
    }
}
