//! The call screen when the path to the stranger vanishes (issue #8 item 4): the real UI
//! code with a fake engine (egui_kittest, no window, no network).

#![allow(clippy::unwrap_used)]

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use peer_stream::app::handle::FakeEngine;
use peer_stream::app::settings::Settings;
use peer_stream::app::PeerStreamApp;
use peer_stream::session::machine::{Notice, Phase};
use peer_stream_shared::Role;

const RECONNECTING: &str = "Connection to the stranger lost — reconnecting…";

#[test]
fn a_lost_path_shows_reconnecting_over_the_call_not_server_unreachable() {
    let fake = FakeEngine::default();
    let settings = Settings {
        accepted_notice: true,
        ..Default::default()
    };
    let app = PeerStreamApp::new(settings, Box::new(fake.clone()), None);
    let mut h = Harness::builder()
        .with_size([1100.0, 720.0])
        .build_state(|ctx, app: &mut PeerStreamApp| app.ui(ctx), app);
    h.run_steps(3);
    h.get_by_label("Start").click();
    h.run_steps(2);
    fake.notice(Notice::Matched {
        common_interests: vec![],
    });
    fake.set_phase(Phase::Connecting {
        match_id: "m1".into(),
        role: Role::Offerer,
    });
    h.run_steps(2);
    fake.set_phase(Phase::Live {
        match_id: "m1".into(),
    });
    h.run_steps(2);
    assert!(h.query_by_label(RECONNECTING).is_none());

    fake.with(|f| f.state.peer_lost = true);
    h.run_steps(2);
    h.get_by_label(RECONNECTING);
    assert!(h.query_by_label_contains("Server unreachable").is_none());

    fake.with(|f| f.state.peer_lost = false);
    h.run_steps(2);
    assert!(h.query_by_label(RECONNECTING).is_none());
}
