//! The About box: version, build (commit, target, profile), licence and the repository.
//! Opened from the home screen's "About" button.

use super::{PeerStreamApp, ACCENT};
use crate::app::build_info;

pub const TITLE: &str = "About Peer Stream";

pub fn show(app: &mut PeerStreamApp, ctx: &egui::Context) {
    let mut open = app.ui.about_open;
    let mut close = false;
    egui::Window::new(TITLE)
        .id(egui::Id::new("about-window"))
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::vec2(0.0, 0.0))
        .show(ctx, |ui| {
            ui.set_min_width(320.0);
            ui.vertical_centered(|ui| {
                ui.heading(egui::RichText::new("Peer Stream").color(ACCENT).strong());
                ui.label(format!("Version {}", build_info::VERSION));
            });
            ui.add_space(8.0);
            egui::Grid::new("about-grid")
                .num_columns(2)
                .spacing([12.0, 6.0])
                .show(ui, |ui| {
                    ui.label("Build");
                    ui.label(build_info::build_line());
                    ui.end_row();
                    ui.label("Licence");
                    ui.label(build_info::LICENSE);
                    ui.end_row();
                    ui.label("Source");
                    ui.hyperlink_to(
                        build_info::REPOSITORY.trim_start_matches("https://"),
                        build_info::REPOSITORY,
                    );
                    ui.end_row();
                });
            ui.add_space(8.0);
            ui.label(
                egui::RichText::new(
                    "Meet a random stranger over peer-to-peer video. Video and audio go \
                     directly between you and the stranger.",
                )
                .small()
                .weak(),
            );
            ui.add_space(4.0);
            ui.vertical_centered(|ui| {
                if ui.button("Close").clicked() {
                    close = true;
                }
            });
        });
    app.ui.about_open = open && !close;
}
