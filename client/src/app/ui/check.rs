//! "Check my setup": the server (reachable, round trip), camera (with the preview),
//! microphone (with the level meter), speaker (a test tone) and what the network allows,
//! in plain words. The check runs in the background (`EngineHandle::start_check`); this
//! screen only polls its result, so it never blocks.

use super::{primary_button, PeerStreamApp};
use crate::check::job::{CheckStatus, ToneState};
use crate::check::{CanCall, CheckReport};

const GOOD: egui::Color32 = egui::Color32::from_rgb(0x2e, 0x9d, 0x5b);
const WARN: egui::Color32 = egui::Color32::from_rgb(0xd0, 0x8a, 0x1e);
const BAD: egui::Color32 = egui::Color32::from_rgb(0xd9, 0x53, 0x4f);

/// Opens the screen and starts a check.
pub fn open(app: &mut PeerStreamApp) {
    app.ui.check_open = true;
    app.engine.start_check();
}

impl PeerStreamApp {
    /// Opens "Check my setup" and starts a check (`--check-screen`).
    pub fn open_setup_check(&mut self) {
        open(self);
    }
}

/// The network verdict in plain words.
pub fn verdict_text(report: &CheckReport) -> &'static str {
    match (report.server_ok, report.can_call) {
        (false, _) => "Calls need the server: it could not be reached",
        (true, CanCall::Direct) => "Direct calls work",
        (true, CanCall::Relay) => "Calls will go through a relay (TURN)",
        (true, CanCall::None) => "Your network blocks calls",
    }
}

/// The server line in plain words.
pub fn server_text(report: &CheckReport) -> String {
    match (report.server_ok, report.server_rtt_ms) {
        (true, Some(ms)) if ms < 10.0 => format!("Server reachable — round trip {ms:.1} ms"),
        (true, Some(ms)) => format!("Server reachable — round trip {ms:.0} ms"),
        (true, None) => "Server reachable".to_owned(),
        (false, _) => "Server not reachable".to_owned(),
    }
}

/// The small print under the verdict: candidate counts and STUN/TURN.
pub fn candidates_text(report: &CheckReport) -> String {
    let c = &report.candidates;
    let yes_no = |offered: bool, ok: bool| match (offered, ok) {
        (false, _) => "not offered",
        (true, true) => "works",
        (true, false) => "failed",
    };
    format!(
        "Candidates: {} host, {} server-reflexive, {} relay · STUN {} · TURN {}",
        c.host,
        c.srflx,
        c.relay,
        yes_no(report.stun_offered, report.stun_ok),
        yes_no(report.turn_offered, report.turn_ok),
    )
}

/// How a line turned out: fine, missing but calls still work, or broken.
#[derive(Clone, Copy)]
enum Mark {
    Good,
    Warn,
    Bad,
}

fn mark(ui: &mut egui::Ui, mark: Option<Mark>) {
    let (text, color) = match mark {
        Some(Mark::Good) => ("✔", GOOD),
        Some(Mark::Warn) => ("!", WARN),
        Some(Mark::Bad) => ("✘", BAD),
        None => ("…", ui.visuals().weak_text_color()),
    };
    ui.label(egui::RichText::new(text).color(color).strong().size(18.0));
}

fn found(ok: bool, otherwise: Mark) -> Mark {
    if ok {
        Mark::Good
    } else {
        otherwise
    }
}

fn small(ui: &mut egui::Ui, text: impl Into<String>) {
    ui.label(egui::RichText::new(text.into()).small().weak());
}

pub fn show(app: &mut PeerStreamApp, ctx: &egui::Context) {
    let hidden = app.video_hidden();
    app.video.update(ctx, app.engine.as_ref(), true, hidden);
    let status = app.engine.check_status();
    let report = match &status {
        CheckStatus::Done(r) => Some(r.clone()),
        _ => None,
    };
    let running = status == CheckStatus::Running;
    let st = app.engine_state().clone();
    egui::CentralPanel::default().show(ctx, |ui| {
        ui.heading("Check my setup");
        if running {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Checking… (this takes up to 10 seconds)");
            });
        } else if report.is_none() {
            ui.label("Press \"Run again\" to check your setup.");
        }
        ui.add_space(8.0);
        egui::Grid::new("setup-check")
            .num_columns(3)
            .spacing([12.0, 14.0])
            .min_col_width(24.0)
            .show(ui, |ui| {
                // Server
                mark(ui, report.as_ref().map(|r| found(r.server_ok, Mark::Bad)));
                ui.label(egui::RichText::new("Server").strong());
                ui.vertical(|ui| match &report {
                    Some(r) => {
                        ui.label(server_text(r));
                        small(ui, r.server.clone());
                        if let Some(e) = &r.server_error {
                            small(ui, e.clone());
                        }
                    }
                    None => {
                        ui.label("Checking…");
                    }
                });
                ui.end_row();

                // Camera, with the preview calls send
                mark(
                    ui,
                    report
                        .as_ref()
                        .map(|r| found(r.camera.is_some(), Mark::Warn)),
                );
                ui.label(egui::RichText::new("Camera").strong());
                ui.vertical(|ui| {
                    match report.as_ref().map(|r| r.camera.clone()) {
                        Some(Some(name)) => ui.label(format!("Camera found: {name}")),
                        Some(None) => {
                            ui.label("No camera found — calls send a moving test pattern instead")
                        }
                        None => ui.label("Looking for a camera…"),
                    };
                    let size = egui::vec2(240.0, 180.0);
                    match (&app.video.local, st.camera_off) {
                        (Some(tex), false) => {
                            ui.add(
                                egui::Image::new(tex)
                                    .fit_to_exact_size(size)
                                    .corner_radius(6.0),
                            );
                        }
                        _ => {
                            let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
                            ui.painter()
                                .rect_filled(rect, 6.0, egui::Color32::from_gray(30));
                        }
                    }
                    small(ui, format!("Preview: {}", st.video_source));
                });
                ui.end_row();

                // Microphone, with the level meter
                mark(
                    ui,
                    report
                        .as_ref()
                        .map(|r| found(r.microphone.is_some(), Mark::Warn)),
                );
                ui.label(egui::RichText::new("Microphone").strong());
                ui.vertical(|ui| {
                    match report.as_ref().map(|r| r.microphone.clone()) {
                        Some(Some(name)) => ui.label(format!("Microphone found: {name}")),
                        Some(None) => {
                            ui.label("No microphone found — calls send a test tone instead")
                        }
                        None => ui.label("Looking for a microphone…"),
                    };
                    ui.horizontal(|ui| {
                        ui.label("Level");
                        let level = app.engine.mic_level().clamp(0.0, 1.0);
                        ui.add(egui::ProgressBar::new((level * 4.0).min(1.0)).desired_width(200.0));
                    });
                    small(ui, "Speak: the bar should move.");
                });
                ui.end_row();

                // Speaker, with a test tone
                mark(
                    ui,
                    report
                        .as_ref()
                        .map(|r| found(r.speaker.is_some(), Mark::Warn)),
                );
                ui.label(egui::RichText::new("Speaker").strong());
                ui.vertical(|ui| {
                    match report.as_ref().map(|r| r.speaker.clone()) {
                        Some(Some(name)) => ui.label(format!("Speaker found: {name}")),
                        Some(None) => ui.label("No speaker found — you will not hear strangers"),
                        None => ui.label("Looking for a speaker…"),
                    };
                    let tone = app.engine.test_tone();
                    ui.horizontal(|ui| {
                        let playing = matches!(tone, ToneState::Playing(_));
                        if ui
                            .add_enabled(!playing, egui::Button::new("Play test tone"))
                            .clicked()
                        {
                            let volume = app.settings.volume;
                            app.engine.play_test_tone(volume);
                        }
                        match &tone {
                            ToneState::Idle => {}
                            ToneState::Playing(_) => {
                                ui.label("Playing a short beep…");
                            }
                            ToneState::Played(name) => {
                                ui.label(format!("Played a beep on {name}. Did you hear it?"));
                            }
                            ToneState::NoSpeaker => {
                                ui.label(
                                    egui::RichText::new("No speaker could be opened").color(BAD),
                                );
                            }
                        }
                    });
                });
                ui.end_row();

                // Network
                let net = report.as_ref().map(|r| match (r.server_ok, r.can_call) {
                    (true, CanCall::Direct) => Mark::Good,
                    (true, CanCall::Relay) => Mark::Warn,
                    _ => Mark::Bad,
                });
                mark(ui, net);
                ui.label(egui::RichText::new("Network").strong());
                ui.vertical(|ui| match &report {
                    Some(r) => {
                        let color = match (r.server_ok, r.can_call) {
                            (true, CanCall::Direct) => GOOD,
                            (true, CanCall::Relay) => WARN,
                            _ => BAD,
                        };
                        ui.label(
                            egui::RichText::new(verdict_text(r))
                                .color(color)
                                .strong()
                                .size(16.0),
                        );
                        small(ui, candidates_text(r));
                    }
                    None => {
                        ui.label("Testing what your network allows…");
                    }
                });
                ui.end_row();
            });
        ui.add_space(16.0);
        ui.horizontal(|ui| {
            if ui
                .add_enabled_ui(!running, |ui| primary_button(ui, "Run again"))
                .inner
                .clicked()
            {
                app.engine.start_check();
            }
            ui.add_space(12.0);
            if ui.button("Back").clicked() {
                app.ui.check_open = false;
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Candidates;

    fn report(server_ok: bool, can_call: CanCall) -> CheckReport {
        CheckReport {
            server_ok,
            server_rtt_ms: server_ok.then_some(3.4),
            camera: None,
            microphone: None,
            speaker: None,
            stun_ok: false,
            turn_ok: can_call == CanCall::Relay,
            candidates: Candidates {
                host: 2,
                srflx: 0,
                relay: u32::from(can_call == CanCall::Relay),
            },
            can_call,
            server: "ws://127.0.0.1:3000/ws".into(),
            server_error: None,
            server_local: true,
            stun_offered: false,
            turn_offered: can_call == CanCall::Relay,
            elapsed_ms: 100,
        }
    }

    #[test]
    fn plain_words() {
        assert_eq!(
            verdict_text(&report(true, CanCall::Direct)),
            "Direct calls work"
        );
        assert_eq!(
            verdict_text(&report(true, CanCall::Relay)),
            "Calls will go through a relay (TURN)"
        );
        assert_eq!(
            verdict_text(&report(true, CanCall::None)),
            "Your network blocks calls"
        );
        assert!(verdict_text(&report(false, CanCall::None)).contains("could not be reached"));
        assert_eq!(
            server_text(&report(true, CanCall::Direct)),
            "Server reachable — round trip 3.4 ms"
        );
        assert_eq!(
            candidates_text(&report(true, CanCall::Relay)),
            "Candidates: 2 host, 0 server-reflexive, 1 relay · STUN not offered · TURN works"
        );
    }
}
