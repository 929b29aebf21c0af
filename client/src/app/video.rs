//! Turns mailbox frames into egui textures: one copy (RGBA bytes → texture upload) per
//! new frame, none when nothing changed. Until the user reveals it, the stranger's
//! video is blurred here, on the decoded frame, before it becomes a texture (the sharp
//! picture never reaches the screen).

use super::handle::EngineHandle;
use crate::media::blur::Blur;
use crate::media::frame::RgbaFrame;

#[derive(Default)]
pub struct Textures {
    pub remote: Option<egui::TextureHandle>,
    remote_version: u64,
    /// The newest remote frame as decoded, so revealing it needs no new frame.
    remote_frame: Option<RgbaFrame>,
    /// Whether `remote` holds a blurred picture.
    remote_blurred: bool,
    blur: Blur,
    blurred: Vec<u8>,
    pub local: Option<egui::TextureHandle>,
    local_version: Option<u64>,
}

fn image(width: u32, height: u32, data: &[u8]) -> Option<egui::ColorImage> {
    let (w, h) = (width as usize, height as usize);
    (data.len() == w * h * 4).then(|| egui::ColorImage::from_rgba_unmultiplied([w, h], data))
}

fn upload(
    ctx: &egui::Context,
    slot: &mut Option<egui::TextureHandle>,
    name: &str,
    img: egui::ColorImage,
) {
    match slot {
        Some(t) => t.set(img, egui::TextureOptions::LINEAR),
        None => *slot = Some(ctx.load_texture(name, img, egui::TextureOptions::LINEAR)),
    }
}

impl Textures {
    /// Takes new frames. `blur_remote`: the stranger's video is still hidden.
    pub fn update(
        &mut self,
        ctx: &egui::Context,
        engine: &dyn EngineHandle,
        want_local: bool,
        blur_remote: bool,
    ) {
        let mut remote_changed = false;
        if let Some((version, frame)) = engine.remote_frame(self.remote_version) {
            self.remote_version = version;
            self.remote_frame = Some(frame);
            remote_changed = true;
        }
        if remote_changed || (self.remote.is_some() && self.remote_blurred != blur_remote) {
            if let Some(frame) = &self.remote_frame {
                let img = if blur_remote {
                    self.blur
                        .rgba_into(&frame.data, frame.width, frame.height, &mut self.blurred);
                    image(frame.width, frame.height, &self.blurred)
                } else {
                    image(frame.width, frame.height, &frame.data)
                };
                if let Some(img) = img {
                    upload(ctx, &mut self.remote, "remote-video", img);
                    self.remote_blurred = blur_remote;
                }
            }
        }
        if want_local {
            if let Some((version, frame)) = engine.local_frame(self.local_version) {
                self.local_version = Some(version);
                if let Some(img) = image(frame.width, frame.height, &frame.data) {
                    upload(ctx, &mut self.local, "local-video", img);
                }
            }
        }
    }

    /// Whether the shown remote picture is the blurred one.
    pub fn remote_blurred(&self) -> bool {
        self.remote.is_some() && self.remote_blurred
    }

    /// Forgets the partner's picture (a new call must never show the old one).
    pub fn clear_remote(&mut self) {
        self.remote = None;
        self.remote_frame = None;
    }
}
