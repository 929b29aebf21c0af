//! The first-run notice: who may use it, how to behave, what is shared with whom.

use super::{primary_button, PeerStreamApp};

pub const TITLE: &str = "Before you start";

pub fn show(app: &mut PeerStreamApp, ctx: &egui::Context) {
    egui::Modal::new(egui::Id::new("first-run-notice")).show(ctx, |ui| {
        ui.set_max_width(420.0);
        ui.heading(TITLE);
        ui.add_space(6.0);
        ui.label("• Peer Stream is for adults: you must be 18 or older.");
        ui.label("• Be respectful. Strangers can report you, and reported users get banned.");
        ui.label(
            "• Your video and audio go peer to peer, directly to the stranger you are \
             matched with. The server only pairs you and relays connection setup and chat \
             text; it never sees your video or audio.",
        );
        ui.label(
            "• Your IP address is visible to the stranger's app, as with any peer-to-peer call.",
        );
        ui.add_space(10.0);
        if primary_button(ui, "I am 18+ and agree").clicked() {
            app.settings.accepted_notice = true;
        }
    });
}
