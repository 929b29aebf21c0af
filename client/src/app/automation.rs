//! Kiosk and test automation for the real window: exit after a while, and save a
//! screenshot once a call shows the stranger's video.

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
    /// Decoded remote frames before the screenshot is taken.
    pub screenshot_after_frames: u64,
    /// Decoded-frame counter of the running engine (for the screenshot trigger).
    pub frames_decoded: Option<std::sync::Arc<crate::engine::stats::Counters>>,
    requested: bool,
    saved: bool,
}

pub fn tick(app: &mut PeerStreamApp, ctx: &egui::Context, now: Instant) {
    let a = &mut app.automation;
    if a.exit_at.is_some_and(|t| now >= t) {
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
    let Some(path) = a.screenshot.clone() else {
        return;
    };
    if !a.requested {
        let decoded = a
            .frames_decoded
            .as_ref()
            .map(|c| c.frames_decoded.load(Relaxed))
            .unwrap_or(0);
        if matches!(app.state.phase, Phase::Live { .. }) && decoded >= a.screenshot_after_frames {
            a.requested = true;
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::default()));
        }
        return;
    }
    if a.saved {
        return;
    }
    let shot = ctx.input(|i| {
        i.events.iter().find_map(|e| match e {
            egui::Event::Screenshot { image, .. } => Some(image.clone()),
            _ => None,
        })
    });
    if let Some(image) = shot {
        a.saved = true;
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
}
