//! The "kinder stranger chat" features of the desktop UI (issue 12), driven with the
//! fake engine through egui_kittest: blur until revealed, undo an accidental Next (button
//! and Alt+U), live counts, block and mute.

#![allow(clippy::unwrap_used)]

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use peer_stream::app::handle::FakeEngine;
use peer_stream::app::settings::Settings;
use peer_stream::app::{PeerStreamApp, VIDEO_HIDDEN_LINE};
use peer_stream::engine::Command;
use peer_stream::media::frame::RgbaFrame;
use peer_stream::session::machine::{EndReason, Notice, Phase};
use peer_stream_shared::{PartnerLeftReason, Role};
use std::time::{Duration, Instant};

const BLOCK: &str = "Don't match me with this person again";

fn app_with(fake: &FakeEngine, settings: Settings) -> Harness<'static, PeerStreamApp> {
    let settings = Settings {
        accepted_notice: true,
        ..settings
    };
    let app = PeerStreamApp::new(settings, Box::new(fake.clone()), None);
    let mut h = Harness::builder()
        .with_size([1100.0, 720.0])
        .build_state(|ctx, app: &mut PeerStreamApp| app.ui(ctx), app);
    h.run_steps(3);
    h
}

/// A picture with sharp detail, as the decoder would hand it over.
fn frame() -> RgbaFrame {
    let (w, h) = (64u32, 48u32);
    let data = (0..w * h)
        .flat_map(|i| {
            let v = if (i % w + i / w) % 2 == 0 { 255 } else { 0 };
            [v, v, v, 255]
        })
        .collect();
    RgbaFrame {
        width: w,
        height: h,
        data,
    }
}

fn started(fake: &FakeEngine, settings: Settings) -> Harness<'static, PeerStreamApp> {
    let mut h = app_with(fake, settings);
    h.get_by_label("Start").click();
    h.run_steps(2);
    h
}

/// A new call goes live, as the engine reports it (with the stranger's picture).
fn live(fake: &FakeEngine, h: &mut Harness<'static, PeerStreamApp>, id: &str, version: u64) {
    fake.notice(Notice::Matched {
        common_interests: vec![],
    });
    fake.notice(Notice::System(
        "You're now chatting with a random stranger. Say hi!".into(),
    ));
    // The stranger's greeting often arrives with the opening lines.
    fake.notice(Notice::Chat {
        from_me: false,
        text: "hi".into(),
    });
    fake.set_phase(Phase::Connecting {
        match_id: id.into(),
        role: Role::Offerer,
    });
    h.run_steps(2);
    fake.with(|i| {
        i.remote = Some((version, frame()));
        i.state.can_block = true;
    });
    fake.set_phase(Phase::Live {
        match_id: id.into(),
    });
    h.run_steps(2);
}

#[test]
fn the_strangers_video_is_blurred_until_shown_in_each_call() {
    let fake = FakeEngine::default();
    let mut h = started(&fake, Settings::default());
    live(&fake, &mut h, "m1", 1);
    assert!(h.state().remote_video_shown());
    assert!(h.state().remote_video_blurred(), "blurred by default");
    h.get_by_label(VIDEO_HIDDEN_LINE);
    h.get_by_label("Video hidden until you show it");
    // The chat says it right after the opening line.
    let lines: Vec<String> = h
        .state()
        .chat
        .lines
        .iter()
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(
        lines,
        vec![
            "You're now chatting with a random stranger. Say hi!".to_string(),
            VIDEO_HIDDEN_LINE.to_string(),
            "hi".to_string()
        ]
    );

    h.get_by_label("Show video").click();
    h.run_steps(2);
    assert!(
        !h.state().remote_video_blurred(),
        "shown at once, same frame"
    );
    assert!(h.query_by_label("Show video").is_none());
    assert!(fake
        .take_sent()
        .iter()
        .all(|c| !matches!(c, Command::Next | Command::Stop | Command::UndoNext)));
    // New frames stay sharp for the rest of the call.
    fake.with(|i| i.remote = Some((2, frame())));
    h.run_steps(2);
    assert!(!h.state().remote_video_blurred());

    // The next call starts blurred again.
    live(&fake, &mut h, "m2", 3);
    assert!(h.state().remote_video_blurred());
    h.get_by_label("Show video");
}

#[test]
fn always_show_video_turns_the_blur_off() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, Settings::default());
    h.get_by_label("Always show video (don't blur strangers at first)")
        .click();
    h.run_steps(1);
    assert!(h.state().settings.always_show_video);
    h.get_by_label("Start").click();
    h.run_steps(2);
    live(&fake, &mut h, "m1", 1);
    assert!(h.state().remote_video_shown());
    assert!(!h.state().remote_video_blurred());
    assert!(h.query_by_label("Show video").is_none());
    assert!(h.query_by_label(VIDEO_HIDDEN_LINE).is_none());
}

#[test]
fn undo_is_offered_after_next_and_sends_undo_next() {
    let fake = FakeEngine::default();
    let mut h = started(&fake, Settings::default());
    live(&fake, &mut h, "m1", 1);
    fake.take_sent();
    assert!(h.query_by_label_contains("Undo (Alt+U)").is_none());
    h.get_by_label("Next (Esc)").click();
    h.run_steps(2);
    h.get_by_label("Really? Press again").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::Next]);
    // The engine opens the undo window (5 s) and searches.
    fake.with(|i| i.state.undo_until = Some(Instant::now() + Duration::from_millis(4_900)));
    fake.set_phase(Phase::Searching { waiting: 2 });
    h.run_steps(2);
    // A countdown in whole seconds.
    h.get_by_label("Undo (Alt+U) · 5 s").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::UndoNext]);
    assert!(
        h.query_by_label_contains("Undo (Alt+U)").is_none(),
        "one undo"
    );

    // Gone once the window is over.
    fake.with(|i| i.state.undo_until = Some(Instant::now() - Duration::from_millis(1)));
    h.run_steps(2);
    assert!(h.query_by_label_contains("Undo (Alt+U)").is_none());
}

/// Alt+U as egui-winit delivers it on Linux: in one frame, the key and the text "u"
/// (only Ctrl/Cmd suppress the text event).
fn alt_u(h: &mut Harness<'static, PeerStreamApp>) {
    let input = h.input_mut();
    input.modifiers = egui::Modifiers::ALT;
    input.events.push(egui::Event::Key {
        key: egui::Key::U,
        physical_key: Some(egui::Key::U),
        pressed: true,
        repeat: false,
        modifiers: egui::Modifiers::ALT,
    });
    input.events.push(egui::Event::Text("u".into()));
    h.step();
    let input = h.input_mut();
    input.modifiers = egui::Modifiers::NONE;
    input.events.push(egui::Event::Key {
        key: egui::Key::U,
        physical_key: Some(egui::Key::U),
        pressed: false,
        repeat: false,
        modifiers: egui::Modifiers::ALT,
    });
    h.run_steps(2);
}

#[test]
fn alt_u_undoes_without_typing_into_the_chat_box() {
    let fake = FakeEngine::default();
    let mut h = started(&fake, Settings::default());
    // Undo is still offered in the new call the server made right after Next.
    live(&fake, &mut h, "m2", 1);
    fake.with(|i| i.state.undo_until = Some(Instant::now() + Duration::from_secs(4)));
    h.run_steps(2);
    let input = h.get_by_label("Message");
    input.focus();
    input.type_text("hi");
    h.run_steps(2);
    fake.take_sent();
    alt_u(&mut h);
    let sent = fake.take_sent();
    assert!(sent.contains(&Command::UndoNext), "{sent:?}");
    assert_eq!(
        h.get_by_label("Message").value().as_deref(),
        Some("hi"),
        "nothing typed"
    );
    // Without an offer, Alt+U does nothing (and still types nothing).
    alt_u(&mut h);
    assert!(!fake.take_sent().contains(&Command::UndoNext));
    assert_eq!(h.get_by_label("Message").value().as_deref(), Some("hi"));
}

#[test]
fn live_counts_on_home_and_searching_screens() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, Settings::default());
    h.get_by_label("42 online · 3 waiting");
    fake.with(|i| {
        i.state.online = Some(57);
        i.state.waiting = Some(8);
    });
    h.run_steps(2);
    h.get_by_label("57 online · 8 waiting");
    assert!(h.query_by_label("42 online · 3 waiting").is_none(), "live");

    h.get_by_label("Start").click();
    h.run_steps(2);
    fake.set_phase(Phase::Searching { waiting: 8 });
    h.run_steps(2);
    h.get_by_label("Looking for a stranger…");
    h.get_by_label("57 online · 8 waiting");
    fake.with(|i| i.state.waiting = Some(9));
    h.run_steps(2);
    h.get_by_label("57 online · 9 waiting");
}

#[test]
fn block_from_the_report_dialog_and_after_a_call() {
    let fake = FakeEngine::default();
    let mut h = started(&fake, Settings::default());
    live(&fake, &mut h, "m1", 1);
    fake.take_sent();
    h.get_by_label("Report").click();
    h.run_steps(2);
    h.get_by_label("Harassment or hate").click();
    h.get_by_label(BLOCK).click();
    h.run_steps(1);
    h.get_by_label("Send report").click();
    h.run_steps(2);
    assert_eq!(
        fake.take_sent(),
        vec![Command::Block, Command::Report("Harassment or hate".into())]
    );

    // Reporting without ticking the box does not block.
    live(&fake, &mut h, "m2", 2);
    fake.take_sent();
    h.get_by_label("Report").click();
    h.run_steps(2);
    h.get_by_label("Send report").click();
    h.run_steps(2);
    assert_eq!(
        fake.take_sent(),
        vec![Command::Report("Harassment or hate".into())]
    );

    // After the stranger left: one click.
    live(&fake, &mut h, "m3", 3);
    fake.take_sent();
    fake.set_phase(Phase::Ended {
        reason: EndReason::PartnerLeft(PartnerLeftReason::Left),
    });
    h.run_steps(2);
    h.get_by_label(BLOCK).click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::Block]);
    assert!(h.query_by_label(BLOCK).is_none(), "once");

    // Also while already searching again (auto-requeue), for the last stranger.
    fake.with(|i| i.state.can_block = true);
    fake.set_phase(Phase::Searching { waiting: 1 });
    h.run_steps(2);
    h.get_by_label(BLOCK).click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::Block]);
}

#[test]
fn mute_chat_hides_the_strangers_lines_for_the_call() {
    let fake = FakeEngine::default();
    let mut h = started(&fake, Settings::default());
    live(&fake, &mut h, "m1", 1);
    fake.notice(Notice::Chat {
        from_me: false,
        text: "hello".into(),
    });
    h.run_steps(2);
    h.get_by_label("Stranger: hello");
    fake.take_sent();
    h.get_by_label("Mute chat").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::MuteChat(true)]);
    h.get_by_label("Unmute chat");
    fake.notice(Notice::Chat {
        from_me: false,
        text: "buy my stuff".into(),
    });
    fake.notice(Notice::Chat {
        from_me: true,
        text: "bye".into(),
    });
    h.run_steps(2);
    assert!(
        h.query_by_label("Stranger: buy my stuff").is_none(),
        "hidden"
    );
    h.get_by_label("You: bye");
    h.get_by_label("Unmute chat").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::MuteChat(false)]);
}
