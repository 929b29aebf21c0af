//! The server refused us for good: banned, or this app is too old.

use super::PeerStreamApp;
use crate::session::machine::Phase;
use peer_stream_shared::ErrorCode;

pub fn show(app: &mut PeerStreamApp, ctx: &egui::Context) {
    let (title, body) = match &app.engine_state().phase {
        Phase::Refused { code: ErrorCode::Banned, .. } => (
            "You have been banned",
            "Other users reported this connection. You cannot meet strangers on this server for now.",
        ),
        Phase::Refused { code: ErrorCode::VersionUnsupported, .. } => (
            "Please update Peer Stream",
            "This version of the app is too old for the server. Install the latest version and try again.",
        ),
        _ => ("The server refused the connection", "Try another server or try again later."),
    };
    egui::CentralPanel::default().show(ctx, |ui| {
        ui.vertical_centered(|ui| {
            ui.add_space(80.0);
            ui.heading(title);
            ui.add_space(8.0);
            ui.label(body);
            if let Phase::Refused { message, .. } = &app.engine_state().phase {
                ui.label(egui::RichText::new(format!("Server said: {message}")).weak());
            }
        });
    });
}
