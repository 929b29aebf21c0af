//! The About box, through the real UI with a fake engine (egui_kittest, headless):
//! reachable from the home screen, shows the version, build, licence and repository.

#![allow(clippy::unwrap_used)]

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use peer_stream::app::build_info;
use peer_stream::app::handle::FakeEngine;
use peer_stream::app::settings::Settings;
use peer_stream::app::{PeerStreamApp, Screen};

#[test]
fn about_box_opens_from_home_and_shows_version_build_and_licence() {
    let fake = FakeEngine::default();
    let settings = Settings {
        accepted_notice: true,
        ..Default::default()
    };
    let app = PeerStreamApp::new(settings, Box::new(fake), None);
    let mut h = Harness::builder()
        .with_size([1100.0, 720.0])
        .build_state(|ctx, app: &mut PeerStreamApp| app.ui(ctx), app);
    h.run_steps(3);
    assert_eq!(h.state().screen(), Screen::Home);
    assert!(h.query_by_label("About Peer Stream").is_none());

    h.get_by_label("About").click();
    h.run_steps(3);
    h.get_by_label("About Peer Stream");
    let version = format!("Version {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(version, format!("Version {}", build_info::VERSION));
    h.get_by_label(&version);
    h.get_by_label(&build_info::build_line());
    assert!(!build_info::GIT_COMMIT.is_empty());
    assert!(
        build_info::PROFILE == "debug" || build_info::PROFILE == "release",
        "{}",
        build_info::PROFILE
    );
    h.get_by_label("MIT OR Apache-2.0");
    h.get_by_label("github.com/peer-stream/peer-stream");

    h.get_by_label("Close").click();
    h.run_steps(3);
    assert!(h.query_by_label("About Peer Stream").is_none());
    assert!(h.query_by_label(&version).is_none());
    assert_eq!(h.state().screen(), Screen::Home);
}
