//! Home: own preview, device pickers with a live mic meter, interests, server address,
//! hosting, and Start.

use super::{primary_button, PeerStreamApp};
use crate::media::capture::{list_cameras, list_microphones, list_speakers, DeviceInfo};

fn device_picker(
    ui: &mut egui::Ui,
    label: &str,
    id: &str,
    devices: &[DeviceInfo],
    choice: &mut Option<usize>,
) {
    ui.label(label);
    let selected = match choice {
        Some(i) => devices
            .get(*i)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| "System default".to_owned()),
        None => "System default".to_owned(),
    };
    egui::ComboBox::from_id_salt(id)
        .selected_text(selected)
        .width(260.0)
        .show_ui(ui, |ui| {
            ui.selectable_value(choice, None, "System default");
            for (i, d) in devices.iter().enumerate() {
                ui.selectable_value(choice, Some(i), d.name.clone());
            }
        });
    ui.end_row();
}

pub fn show(app: &mut PeerStreamApp, ctx: &egui::Context) {
    let hidden = app.video_hidden();
    app.video.update(ctx, app.engine.as_ref(), true, hidden);
    egui::CentralPanel::default().show(ctx, |ui| {
        ui.columns(2, |cols| {
            let ui = &mut cols[0];
            ui.heading("You");
            let st = app.engine_state().clone();
            let avail = ui.available_width();
            let size = egui::vec2(avail, avail * 0.75);
            match (&app.video.local, st.camera_off) {
                (Some(tex), false) => {
                    ui.add(
                        egui::Image::new(tex)
                            .fit_to_exact_size(size)
                            .corner_radius(8.0),
                    );
                }
                _ => {
                    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
                    ui.painter()
                        .rect_filled(rect, 8.0, egui::Color32::from_gray(30));
                    ui.painter().text(
                        rect.center(),
                        egui::Align2::CENTER_CENTER,
                        if st.camera_off {
                            "Camera off"
                        } else {
                            "Starting camera…"
                        },
                        egui::FontId::proportional(18.0),
                        egui::Color32::LIGHT_GRAY,
                    );
                }
            }
            if st.video_synthetic {
                ui.label(
                    egui::RichText::new(
                        "Test pattern — no camera found (or the test pattern is selected)",
                    )
                    .italics()
                    .weak(),
                );
            } else {
                ui.label(egui::RichText::new(format!("Camera: {}", st.video_source)).weak());
            }
            ui.horizontal(|ui| {
                ui.label("Mic level");
                let level = app.engine.mic_level().clamp(0.0, 1.0);
                ui.add(egui::ProgressBar::new((level * 4.0).min(1.0)).desired_width(200.0));
            });
            if st.audio_synthetic {
                ui.label(
                    egui::RichText::new(
                        "Test tone — no microphone found (or the test tone is selected)",
                    )
                    .italics()
                    .weak(),
                );
            }

            let ui = &mut cols[1];
            ui.heading("Meet a random stranger");
            if let Some(counts) = super::call::counts_text(st.online, st.waiting) {
                ui.label(egui::RichText::new(counts).weak());
            }
            ui.add_space(8.0);
            egui::Grid::new("home-settings")
                .num_columns(2)
                .spacing([12.0, 10.0])
                .show(ui, |ui| {
                    let devices = app.devices.get_or_insert_with(|| {
                        (list_cameras(), list_microphones(), list_speakers())
                    });
                    device_picker(ui, "Camera", "camera", &devices.0, &mut app.settings.camera);
                    device_picker(
                        ui,
                        "Microphone",
                        "mic",
                        &devices.1,
                        &mut app.settings.microphone,
                    );
                    device_picker(
                        ui,
                        "Speaker",
                        "speaker",
                        &devices.2,
                        &mut app.settings.speaker,
                    );
                    ui.label("Test pattern");
                    ui.checkbox(
                        &mut app.settings.use_test_pattern,
                        "Send a test pattern and tone instead",
                    );
                    ui.end_row();
                    ui.label("Volume");
                    ui.add(
                        egui::Slider::new(&mut app.settings.volume, 0.0..=2.0).show_value(false),
                    );
                    ui.end_row();
                    ui.label("Interests");
                    ui.add(
                        egui::TextEdit::singleline(&mut app.ui.interests_text)
                            .hint_text("music, rust, chess (optional)")
                            .desired_width(260.0),
                    );
                    ui.end_row();
                    ui.label("Server");
                    ui.add(
                        egui::TextEdit::singleline(&mut app.ui.server_text)
                            .hint_text("built-in server on this computer")
                            .desired_width(260.0),
                    );
                    ui.end_row();
                    ui.label("");
                    ui.checkbox(
                        &mut app.settings.host_on_lan,
                        "Host a server on this computer",
                    );
                    ui.end_row();
                    ui.label("");
                    ui.checkbox(
                        &mut app.settings.auto_requeue,
                        "Find a new stranger when one leaves",
                    );
                    ui.end_row();
                    ui.label("");
                    ui.checkbox(
                        &mut app.settings.always_show_video,
                        "Always show video (don't blur strangers at first)",
                    );
                    ui.end_row();
                });
            let note = app
                .hosting_note
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(note) = note {
                ui.label(egui::RichText::new(note).strong());
            }
            ui.add_space(16.0);
            let can_start = app.settings.accepted_notice;
            if ui
                .add_enabled_ui(can_start, |ui| primary_button(ui, "Start"))
                .inner
                .clicked()
            {
                app.start();
            }
            ui.add_space(8.0);
            if ui.button("Check my setup").clicked() {
                super::check::open(app);
            }
            ui.add_space(8.0);
            ui.label(
                egui::RichText::new(
                    "Video and audio go directly between you and the stranger. The server only \
                     sees connection setup messages and chat text it relays.",
                )
                .small()
                .weak(),
            );
            ui.add_space(8.0);
            if ui.small_button("About").clicked() {
                app.ui.about_open = true;
            }
        });
    });
}
