//! The session screen: the stranger's video large with our own picture in picture, the
//! chat on the side, and the controls below. It also covers searching, connecting and
//! the moment after the stranger left (the chat stays readable).

use super::{primary_button, PeerStreamApp, ACCENT};
use crate::app::chatlog::Speaker;
use crate::app::REPORT_REASONS;
use crate::engine::stats::CallStats;
use crate::engine::Command;
use crate::session::machine::{EndReason, Phase, SERVICE_BUSY_LINE};
use std::time::Instant;

/// Good / Fair / Poor from the last second's figures.
pub fn quality(stats: &CallStats) -> (&'static str, egui::Color32) {
    let rtt = stats.rtt_ms.unwrap_or(0.0);
    if stats.fps_decoded < 10.0 || rtt > 400.0 {
        ("Poor", egui::Color32::from_rgb(0xd9, 0x53, 0x4f))
    } else if stats.fps_decoded < 20.0 || rtt > 150.0 {
        ("Fair", egui::Color32::from_rgb(0xf0, 0xad, 0x4e))
    } else {
        ("Good", egui::Color32::from_rgb(0x5c, 0xb8, 0x5c))
    }
}

/// A status line in the middle of the video area (a real label, so screen readers and
/// UI tests see it).
fn centered_message(ui: &mut egui::Ui, rect: egui::Rect, text: &str) {
    let area = egui::Rect::from_center_size(rect.center(), egui::vec2(rect.width(), 40.0));
    ui.put(
        area,
        egui::Label::new(
            egui::RichText::new(text)
                .size(22.0)
                .color(egui::Color32::from_gray(220)),
        ),
    );
}

/// "Don't match me with this person again" (the current or last stranger).
pub const BLOCK_LABEL: &str = "Don't match me with this person again";

/// "3 online · 1 waiting" (what is known of it).
pub fn counts_text(online: Option<u64>, waiting: Option<u64>) -> Option<String> {
    match (online, waiting) {
        (Some(o), Some(w)) => Some(format!("{o} online · {w} waiting")),
        (Some(o), None) => Some(format!("{o} online")),
        (None, Some(w)) => Some(format!("{w} waiting")),
        (None, None) => None,
    }
}

/// A weaker line under a centered message.
fn centered_note(ui: &mut egui::Ui, rect: egui::Rect, dy: f32, text: &str) {
    let area = egui::Rect::from_center_size(
        rect.center() + egui::vec2(0.0, dy),
        egui::vec2(rect.width(), 24.0),
    );
    ui.put(
        area,
        egui::Label::new(
            egui::RichText::new(text)
                .size(15.0)
                .color(egui::Color32::from_gray(170)),
        ),
    );
}

/// A button centered below the middle of `rect`.
fn centered_button(ui: &mut egui::Ui, rect: egui::Rect, dy: f32, button: egui::Button) -> bool {
    let size = egui::vec2(ui.available_width().min(320.0), 36.0);
    let area = egui::Rect::from_center_size(rect.center() + egui::vec2(0.0, dy), size);
    ui.put(area, button).clicked()
}

pub fn show(app: &mut PeerStreamApp, ctx: &egui::Context, now: Instant) {
    let hidden = app.video_hidden();
    app.video.update(ctx, app.engine.as_ref(), true, hidden);
    let st = app.engine_state().clone();
    let in_call = matches!(st.phase, Phase::Connecting { .. } | Phase::Live { .. });

    egui::TopBottomPanel::bottom("controls").show(ctx, |ui| {
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            let armed = app.ui.next_armed_until.is_some_and(|t| now <= t);
            match &st.phase {
                Phase::Ended { .. } => {
                    if primary_button(ui, "New stranger").clicked() {
                        app.skip();
                    }
                }
                _ => {
                    let label = if armed {
                        "Really? Press again"
                    } else {
                        "Next (Esc)"
                    };
                    if primary_button(ui, label).clicked() {
                        app.press_next(now);
                    }
                }
            }
            if let Some(secs) = app.undo_seconds_left(now) {
                let undo = egui::Button::new(
                    egui::RichText::new(format!("Undo (Alt+U) · {secs} s"))
                        .size(16.0)
                        .color(egui::Color32::BLACK),
                )
                .fill(egui::Color32::from_rgb(0xf0, 0xc0, 0x4e))
                .min_size(egui::vec2(150.0, 40.0));
                if ui
                    .add(undo)
                    .on_hover_text("Bring back the stranger you just skipped")
                    .clicked()
                {
                    app.undo();
                }
            }
            if ui
                .add(egui::Button::new("Stop").min_size(egui::vec2(80.0, 40.0)))
                .clicked()
            {
                app.stop();
            }
            ui.separator();
            let mic = if st.mic_muted {
                "Unmute mic"
            } else {
                "Mute mic"
            };
            if ui
                .add(egui::Button::new(mic).selected(st.mic_muted))
                .clicked()
            {
                app.send(Command::SetMicMuted(!st.mic_muted));
            }
            let cam = if st.camera_off {
                "Camera on"
            } else {
                "Camera off"
            };
            if ui
                .add(egui::Button::new(cam).selected(st.camera_off))
                .clicked()
            {
                app.send(Command::SetCameraOff(!st.camera_off));
            }
            let can_report = in_call || matches!(st.phase, Phase::Ended { .. });
            if ui
                .add_enabled(can_report, egui::Button::new("Report"))
                .clicked()
            {
                app.ui.report_open = true;
                app.ui.report_block = false;
            }
            ui.separator();
            if in_call {
                let (q, color) = quality(&st.stats);
                let (dot, _) = ui.allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
                ui.painter().circle_filled(dot.center(), 5.0, color);
                ui.label(egui::RichText::new(format!("Connection: {q}")).color(color));
            }
            ui.toggle_value(&mut app.ui.show_stats, "Stats");
        });
        ui.add_space(6.0);
    });

    egui::SidePanel::right("chat")
        .resizable(true)
        .default_width(320.0)
        .min_width(240.0)
        .show(ctx, |ui| chat_panel(app, ui, in_call, now));

    egui::CentralPanel::default()
        .frame(egui::Frame::NONE.fill(egui::Color32::from_gray(16)))
        .show(ctx, |ui| {
            let rect = ui.max_rect();
            match &st.phase {
                Phase::Live { .. } | Phase::Connecting { .. } => {
                    match &app.video.remote {
                        Some(tex) => {
                            let size = tex.size_vec2();
                            let scale = (rect.width() / size.x).min(rect.height() / size.y);
                            let video_rect =
                                egui::Rect::from_center_size(rect.center(), size * scale);
                            egui::Image::new(tex).paint_at(ui, video_rect);
                        }
                        // Audio only: the stranger's app or browser shares no video
                        // format with this one; say so instead of "connecting" forever.
                        None if st.stats.video_unavailable => centered_message(
                            ui,
                            rect,
                            "Video isn't available with this stranger — you can still talk and chat",
                        ),
                        None => centered_message(ui, rect, "Connecting to the stranger…"),
                    }
                    // The path to the stranger vanished (their network or ours); the
                    // server may be fine, so this is not "Server unreachable".
                    if st.peer_lost {
                        let band = egui::Rect::from_center_size(
                            rect.center(),
                            egui::vec2(rect.width(), 80.0),
                        );
                        ui.painter().rect_filled(
                            band,
                            0.0,
                            egui::Color32::from_black_alpha(170),
                        );
                        centered_message(
                            ui,
                            rect,
                            "Connection to the stranger lost — reconnecting…",
                        );
                    }
                    // While reconnecting, the band above is what matters; the Show video
                    // button comes back with the connection.
                    if hidden && !st.peer_lost {
                        let (dy, note) = if app.video.remote.is_some() {
                            (-30.0, "Video hidden until you show it")
                        } else {
                            (30.0, "The video will stay blurred until you show it")
                        };
                        centered_note(ui, rect, dy, note);
                        let show = egui::Button::new(
                            egui::RichText::new("Show video")
                                .size(18.0)
                                .color(egui::Color32::WHITE),
                        )
                        .fill(ACCENT);
                        if centered_button(ui, rect, dy + 40.0, show) {
                            app.reveal();
                        }
                    }
                }
                Phase::Searching { .. } | Phase::ServiceBusy { .. } => {
                    if let Phase::ServiceBusy { .. } = st.phase {
                        // The server is up but cannot queue anyone for now (a cluster
                        // node without its Redis); the engine re-sends `join` by itself.
                        centered_message(ui, rect, SERVICE_BUSY_LINE);
                    } else {
                        centered_message(ui, rect, "Looking for a stranger…");
                        if let Some(counts) = counts_text(st.online, st.waiting) {
                            centered_note(ui, rect, 28.0, &counts);
                        }
                    }
                    ui.put(
                        egui::Rect::from_center_size(
                            rect.center() + egui::vec2(0.0, 50.0),
                            egui::vec2(40.0, 40.0),
                        ),
                        egui::Spinner::new().size(32.0),
                    );
                    let cancel = egui::Rect::from_center_size(
                        rect.center() + egui::vec2(0.0, 110.0),
                        egui::vec2(120.0, 36.0),
                    );
                    if ui.put(cancel, egui::Button::new("Cancel")).clicked() {
                        app.stop();
                    }
                    if st.can_block
                        && centered_button(ui, rect, 160.0, egui::Button::new(BLOCK_LABEL))
                    {
                        app.block();
                    }
                }
                Phase::Ended { reason } => {
                    let text = match reason {
                        EndReason::PartnerLeft(_) => "Stranger has disconnected.",
                        EndReason::WeLeft => "You have disconnected.",
                        EndReason::ConnectionFailed => "The connection to the stranger failed.",
                        EndReason::ServerLost => "Lost the connection to the server.",
                    };
                    centered_message(ui, rect, text);
                    if st.can_block
                        && centered_button(ui, rect, 50.0, egui::Button::new(BLOCK_LABEL))
                    {
                        app.block();
                    }
                }
                Phase::Reconnecting | Phase::Offline => {
                    centered_message(ui, rect, "Server unreachable — reconnecting…");
                }
                Phase::Idle => centered_message(ui, rect, "Ready."),
                Phase::Refused { .. } => {}
            }
            // Own picture in picture, bottom right.
            if let Some(tex) = &app.video.local {
                if !st.camera_off {
                    let w = (rect.width() * 0.22).clamp(120.0, 260.0);
                    let pip = egui::Rect::from_min_size(
                        rect.right_bottom() - egui::vec2(w + 12.0, w * 0.75 + 12.0),
                        egui::vec2(w, w * 0.75),
                    );
                    egui::Image::new(tex).corner_radius(6.0).paint_at(ui, pip);
                    ui.painter().rect_stroke(
                        pip,
                        6.0,
                        egui::Stroke::new(2.0, ACCENT),
                        egui::StrokeKind::Outside,
                    );
                }
            }
            if app.ui.show_stats {
                stats_overlay(ui, rect, &st.stats);
            }
        });

    if app.ui.report_open {
        report_dialog(app, ctx);
    }
}

fn stats_overlay(ui: &mut egui::Ui, rect: egui::Rect, s: &CallStats) {
    let text = format!(
        "RTT {}\nsend {:.0} kb/s · recv {:.0} kb/s\nfps sent {:.0} · decoded {:.0}\npackets lost {} · frames dropped {}\n{} · video {}",
        s.rtt_ms.map(|r| format!("{r:.0} ms")).unwrap_or_else(|| "—".into()),
        s.send_kbps,
        s.recv_kbps,
        s.fps_sent,
        s.fps_decoded,
        s.packets_lost,
        s.frames_dropped,
        match s.candidate_type.as_deref() {
            Some("relay") => "relayed (TURN)".to_owned(),
            Some(t) => format!("direct ({t})"),
            None => "path unknown".to_owned(),
        },
        match (&s.video_codec, s.video_unavailable) {
            (Some(codec), _) => codec.as_str(),
            (None, true) => "none (audio only)",
            (None, false) => "—",
        }
    );
    let pos = rect.left_top() + egui::vec2(12.0, 12.0);
    let galley =
        ui.painter()
            .layout_no_wrap(text, egui::FontId::monospace(13.0), egui::Color32::WHITE);
    let bg = egui::Rect::from_min_size(pos, galley.size() + egui::vec2(16.0, 12.0));
    ui.painter()
        .rect_filled(bg, 6.0, egui::Color32::from_black_alpha(170));
    ui.painter()
        .galley(pos + egui::vec2(8.0, 6.0), galley, egui::Color32::WHITE);
}

fn chat_panel(app: &mut PeerStreamApp, ui: &mut egui::Ui, in_call: bool, now: Instant) {
    ui.horizontal(|ui| {
        ui.heading("Chat");
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            let muted = app.engine_state().chat_muted;
            let label = if muted { "Unmute chat" } else { "Mute chat" };
            if ui
                .add_enabled(in_call, egui::Button::new(label).selected(muted))
                .on_hover_text("Hide the stranger's messages for the rest of this call")
                .clicked()
            {
                app.set_chat_muted(!muted);
            }
        });
    });
    ui.separator();
    let typing = app.engine_state().stranger_typing && in_call;
    let input_height = 64.0;
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .max_height(ui.available_height() - input_height)
        .show(ui, |ui| {
            for line in &app.chat.lines {
                let text = match line.speaker {
                    Speaker::Me => egui::RichText::new(format!("You: {}", line.text)).color(ACCENT),
                    Speaker::Stranger => egui::RichText::new(format!("Stranger: {}", line.text))
                        .color(egui::Color32::from_rgb(0xe0, 0x5a, 0x47)),
                    Speaker::System => egui::RichText::new(&line.text).italics().weak(),
                    Speaker::Error => egui::RichText::new(&line.text)
                        .color(egui::Color32::from_rgb(0xd9, 0x53, 0x4f)),
                };
                ui.add(egui::Label::new(text).wrap());
            }
            if typing {
                ui.label(egui::RichText::new("Stranger is typing…").italics().weak());
            }
        });
    ui.separator();
    ui.horizontal(|ui| {
        let label = ui.label("Message");
        let edit = egui::TextEdit::singleline(&mut app.ui.chat_input)
            .hint_text(if in_call {
                "Type a message…"
            } else {
                "Chat opens when you meet someone"
            })
            .char_limit(peer_stream_shared::limits::MAX_CHAT_CHARS)
            .desired_width(ui.available_width() - 60.0);
        let response = ui.add_enabled(in_call, edit).labelled_by(label.id);
        let submitted = response.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let changed = response.changed();
        let send = ui.add_enabled(in_call, egui::Button::new("Send")).clicked();
        if in_call && (submitted || send) {
            app.send_chat();
            response.request_focus();
        }
        app.typing_tick(changed, now);
    });
}

fn report_dialog(app: &mut PeerStreamApp, ctx: &egui::Context) {
    let mut open = true;
    let mut submit = false;
    egui::Window::new("Report the stranger")
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::vec2(0.0, 0.0))
        .open(&mut open)
        .show(ctx, |ui| {
            ui.label("Why are you reporting this stranger? Reporting also skips to someone new.");
            for (i, reason) in REPORT_REASONS.iter().enumerate() {
                ui.radio_value(&mut app.ui.report_reason, i, *reason);
            }
            ui.add_space(6.0);
            if app.engine_state().can_block {
                ui.checkbox(&mut app.ui.report_block, BLOCK_LABEL);
                ui.add_space(6.0);
            }
            if primary_button(ui, "Send report").clicked() {
                submit = true;
            }
        });
    if submit {
        let reason = REPORT_REASONS
            .get(app.ui.report_reason)
            .copied()
            .unwrap_or("Something else")
            .to_owned();
        if app.ui.report_block {
            app.block();
        }
        app.send(Command::Report(reason));
        app.ui.report_open = false;
        app.ui.next_armed_until = None;
    } else if !open {
        app.ui.report_open = false;
    }
}
