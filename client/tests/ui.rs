//! The real UI code, driven through every screen with a fake engine (state in, commands
//! out). No GPU, no window, no network: egui_kittest runs the UI headless and queries it
//! through its accessibility tree.

#![allow(clippy::unwrap_used)]

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use peer_stream::app::handle::FakeEngine;
use peer_stream::app::settings::Settings;
use peer_stream::app::{PeerStreamApp, Screen};
use peer_stream::engine::Command;
use peer_stream::session::machine::{EndReason, Notice, Phase};
use peer_stream_shared::{ErrorCode, PartnerLeftReason, Role};

fn app_with(fake: &FakeEngine, accepted: bool) -> Harness<'static, PeerStreamApp> {
    let settings = Settings {
        accepted_notice: accepted,
        ..Default::default()
    };
    let app = PeerStreamApp::new(settings, Box::new(fake.clone()), None);
    let mut h = Harness::builder()
        .with_size([1100.0, 720.0])
        .build_state(|ctx, app: &mut PeerStreamApp| app.ui(ctx), app);
    h.run_steps(3);
    h
}

fn live(fake: &FakeEngine, h: &mut Harness<'static, PeerStreamApp>) {
    fake.notice(Notice::Matched {
        common_interests: vec!["music".into()],
    });
    fake.notice(Notice::System(
        "You're now chatting with a random stranger. Say hi!".into(),
    ));
    fake.notice(Notice::System("You both like: music".into()));
    fake.set_phase(Phase::Connecting {
        match_id: "m1".into(),
        role: Role::Offerer,
    });
    h.run_steps(2);
    fake.set_phase(Phase::Live {
        match_id: "m1".into(),
    });
    h.run_steps(2);
}

#[test]
fn first_run_notice_must_be_accepted_before_start() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, false);
    h.get_by_label_contains("you must be 18 or older");
    h.get_by_label("I am 18+ and agree").click();
    h.run_steps(3);
    assert!(h.state().settings.accepted_notice);
    assert!(h.query_by_label("I am 18+ and agree").is_none());
}

#[test]
fn home_shows_preview_label_devices_and_online_count() {
    let fake = FakeEngine::default();
    let h = app_with(&fake, true);
    h.get_by_label_contains("Test pattern — no camera found");
    h.get_by_label("42 online");
    h.get_by_label("Camera");
    h.get_by_label("Microphone");
    h.get_by_label("Speaker");
    h.get_by_label("Host a server on this computer");
    assert_eq!(h.state().screen(), Screen::Home);
}

#[test]
fn start_search_call_partner_left_and_next() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    h.get_by_label("Start").click();
    h.run_steps(2);
    let sent = fake.take_sent();
    assert!(
        sent.contains(&Command::Start { interests: vec![] }),
        "{sent:?}"
    );
    assert_eq!(h.state().screen(), Screen::Session);

    fake.set_phase(Phase::Searching { waiting: 3 });
    h.run_steps(2);
    h.get_by_label_contains("Looking for a stranger…");
    h.get_by_label("Cancel");

    live(&fake, &mut h);
    h.get_by_label("You both like: music");
    h.get_by_label("Next (Esc)");
    h.get_by_label("Report");

    fake.notice(Notice::System("Stranger has disconnected.".into()));
    fake.set_phase(Phase::Ended {
        reason: EndReason::PartnerLeft(PartnerLeftReason::Left),
    });
    h.run_steps(2);
    // The chat stays readable (the line is in the chat and on the video area) and a new
    // stranger is one click away.
    assert_eq!(
        h.query_all_by_label("Stranger has disconnected.").count(),
        2
    );
    h.get_by_label("You both like: music");
    h.get_by_label("New stranger").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::Next]);
}

#[test]
fn next_needs_a_second_press_within_the_window() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    h.get_by_label("Start").click();
    h.run_steps(2);
    live(&fake, &mut h);
    fake.take_sent();
    h.get_by_label("Next (Esc)").click();
    h.run_steps(2);
    assert!(fake.take_sent().is_empty(), "the first press only arms");
    h.get_by_label("Really? Press again").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::Next]);

    // Esc works the same way.
    live(&fake, &mut h);
    fake.take_sent();
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert!(fake.take_sent().is_empty());
    h.key_press(egui::Key::Escape);
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::Next]);
}

#[test]
fn chat_send_receive_and_typing_indicator() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    h.get_by_label("Start").click();
    h.run_steps(2);
    live(&fake, &mut h);
    fake.take_sent();

    let input = h.get_by_label("Message");
    input.focus();
    input.type_text("hello there");
    h.run_steps(2);
    assert!(fake.take_sent().contains(&Command::Typing(true)));
    h.get_by_label("Send").click();
    h.run_steps(2);
    let sent = fake.take_sent();
    assert!(
        sent.contains(&Command::SendChat("hello there".into())),
        "{sent:?}"
    );
    assert!(sent.contains(&Command::Typing(false)), "{sent:?}");

    fake.notice(Notice::Chat {
        from_me: true,
        text: "hello there".into(),
    });
    fake.with(|i| i.state.stranger_typing = true);
    h.run_steps(2);
    h.get_by_label("Stranger is typing…");
    fake.with(|i| i.state.stranger_typing = false);
    fake.notice(Notice::Chat {
        from_me: false,
        text: "hi!".into(),
    });
    h.run_steps(2);
    h.get_by_label("You: hello there");
    h.get_by_label("Stranger: hi!");
    assert!(h.query_by_label("Stranger is typing…").is_none());
}

#[test]
fn mute_and_camera_toggles_reach_the_engine() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    h.get_by_label("Start").click();
    h.run_steps(2);
    live(&fake, &mut h);
    fake.take_sent();
    h.get_by_label("Mute mic").click();
    h.run_steps(2);
    h.get_by_label("Camera off").click();
    h.run_steps(2);
    assert_eq!(
        fake.take_sent(),
        vec![Command::SetMicMuted(true), Command::SetCameraOff(true)]
    );
    h.get_by_label("Unmute mic");
    h.get_by_label("Camera on").click();
    h.run_steps(2);
    assert_eq!(fake.take_sent(), vec![Command::SetCameraOff(false)]);
}

#[test]
fn report_dialog_sends_the_chosen_reason() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    h.get_by_label("Start").click();
    h.run_steps(2);
    live(&fake, &mut h);
    fake.take_sent();
    h.get_by_label("Report").click();
    h.run_steps(2);
    h.get_by_label("Spam or advertising").click();
    h.run_steps(1);
    h.get_by_label("Send report").click();
    h.run_steps(2);
    assert_eq!(
        fake.take_sent(),
        vec![Command::Report("Spam or advertising".into())]
    );
    assert!(h.query_by_label("Send report").is_none(), "dialog closed");
}

#[test]
fn stop_returns_home() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    h.get_by_label("Start").click();
    h.run_steps(2);
    live(&fake, &mut h);
    h.get_by_label("Stop").click();
    h.run_steps(2);
    assert!(fake.take_sent().contains(&Command::Stop));
    assert_eq!(h.state().screen(), Screen::Home);
}

#[test]
fn error_screens_speak_plainly() {
    let fake = FakeEngine::default();
    let mut h = app_with(&fake, true);
    fake.with(|i| i.state.server_error = Some("connection refused".into()));
    fake.with(|i| {
        i.events
            .push(peer_stream::engine::EngineEvent::ServerUnreachable {
                error: "connection refused".into(),
                retry_in: std::time::Duration::from_secs(5),
            })
    });
    h.run_steps(2);
    h.get_by_label_contains("Server unreachable — retrying in");

    fake.with(|i| i.state.server_error = None);
    fake.set_phase(Phase::Refused {
        code: ErrorCode::Banned,
        message: "this address is banned".into(),
    });
    h.run_steps(2);
    h.get_by_label("You have been banned");
    assert_eq!(h.state().screen(), Screen::Refused);

    fake.set_phase(Phase::Refused {
        code: ErrorCode::VersionUnsupported,
        message: "speaks 2".into(),
    });
    h.run_steps(2);
    h.get_by_label("Please update Peer Stream");
}
