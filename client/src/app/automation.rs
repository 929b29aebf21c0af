//! Kiosk and test automation for the real window: exit after a while, save a screenshot
//! once a call shows the stranger's video, and (for the docs and the undo test) press
//! Next, save a screenshot of the Undo countdown, then press Undo.

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
    /// Decoded-frame counter of the running engine (for the screenshot trigger).
    pub frames_decoded: Option<std::sync::Arc<crate::engine::stats::Counters>>,
    stage: Stage,
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
