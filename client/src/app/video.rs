//! Turns mailbox frames into egui textures: one copy (RGBA bytes → texture upload) per
//! new frame, none when nothing changed.

use super::handle::EngineHandle;
use crate::media::frame::RgbaFrame;

#[derive(Default)]
pub struct Textures {
    pub remote: Option<egui::TextureHandle>,
    remote_version: u64,
    pub local: Option<egui::TextureHandle>,
    local_version: Option<u64>,
}

fn image(frame: &RgbaFrame) -> Option<egui::ColorImage> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    (frame.data.len() == w * h * 4)
        .then(|| egui::ColorImage::from_rgba_unmultiplied([w, h], &frame.data))
}

impl Textures {
    pub fn update(&mut self, ctx: &egui::Context, engine: &dyn EngineHandle, want_local: bool) {
        if let Some((version, frame)) = engine.remote_frame(self.remote_version) {
            self.remote_version = version;
            if let Some(img) = image(&frame) {
                match &mut self.remote {
                    Some(t) => t.set(img, egui::TextureOptions::LINEAR),
                    None => {
                        self.remote = Some(ctx.load_texture(
                            "remote-video",
                            img,
                            egui::TextureOptions::LINEAR,
                        ))
                    }
                }
            }
        }
        if want_local {
            if let Some((version, frame)) = engine.local_frame(self.local_version) {
                self.local_version = Some(version);
                if let Some(img) = image(&frame) {
                    match &mut self.local {
                        Some(t) => t.set(img, egui::TextureOptions::LINEAR),
                        None => {
                            self.local = Some(ctx.load_texture(
                                "local-video",
                                img,
                                egui::TextureOptions::LINEAR,
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Forgets the partner's picture (a new call must never show the old one).
    pub fn clear_remote(&mut self) {
        self.remote = None;
    }
}
