//! The screens, one per file, plus the bar on top of every screen.

pub mod about;
pub mod call;
pub mod check;
pub mod home;
pub mod notice;
pub mod refused;

use super::PeerStreamApp;
use crate::session::machine::Phase;
use std::time::Instant;

/// Brand color, also used for the primary buttons.
pub const ACCENT: egui::Color32 = egui::Color32::from_rgb(0x2f, 0x80, 0xed);

pub fn top_bar(app: &mut PeerStreamApp, ctx: &egui::Context) {
    egui::TopBottomPanel::top("top-bar").show(ctx, |ui| {
        ui.horizontal(|ui| {
            ui.heading(egui::RichText::new("Peer Stream").color(ACCENT).strong());
            ui.separator();
            let st = app.engine_state();
            let status = match (&st.phase, st.server_error.as_ref()) {
                (_, Some(_)) | (Phase::Reconnecting, _) => {
                    let secs = app
                        .ui
                        .retry_at
                        .map(|t| t.saturating_duration_since(Instant::now()).as_secs() + 1);
                    match secs {
                        Some(s) => format!("Server unreachable — retrying in {s} s"),
                        None => "Server unreachable — retrying…".to_owned(),
                    }
                }
                (Phase::Offline, _) => "Connecting to the server…".to_owned(),
                _ => match st.online {
                    Some(n) => format!("{n} online"),
                    None => "Connected".to_owned(),
                },
            };
            let color = if st.server_error.is_some() {
                egui::Color32::from_rgb(0xd9, 0x53, 0x4f)
            } else {
                ui.visuals().weak_text_color()
            };
            ui.label(egui::RichText::new(status).color(color));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                egui::widgets::global_theme_preference_switch(ui);
            });
        });
    });
}

/// A big, colored button for the main action of a screen.
pub fn primary_button(ui: &mut egui::Ui, text: &str) -> egui::Response {
    ui.add(
        egui::Button::new(
            egui::RichText::new(text)
                .size(18.0)
                .color(egui::Color32::WHITE),
        )
        .fill(ACCENT)
        .min_size(egui::vec2(160.0, 40.0)),
    )
}
