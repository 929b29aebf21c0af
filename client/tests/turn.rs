//! TURN for real: two headless peers with `--ice-policy relay` call each other through
//! Debian's coturn running the shipped `deploy/coturn/turnserver.conf` (only its port
//! and secret swapped, plus loopback-only test settings appended), with the signaling
//! server handing out TURN REST credentials for the same secret. Both sides must decode
//! video and audio over a `relay` candidate pair, and coturn's log must show the
//! allocations, so the call cannot have gone direct.
//!
//! Also: `--ice-policy relay` against a server without TURN says so once and never
//! falls back to a direct path.
//!
//! Without coturn the relayed-call test skips with a message, and fails under
//! `CI=true` (`scripts/deps.sh --test` installs it).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::coturn::Coturn;
use common::u;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

const SHIPPED_CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/coturn/turnserver.conf"
);
const SECRET: &str = "relay-test-secret-4f2a";

/// One call at a time: the peers are CPU-heavy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Replaces `from`, which must occur exactly once in the shipped file.
fn swap(conf: &mut String, from: &str, to: &str) {
    let n = conf.matches(from).count();
    assert_eq!(
        n,
        1,
        "deploy/coturn/turnserver.conf should contain `{}` exactly once (found {n}); \
         client/tests/turn.rs derives its config from those lines",
        from.trim()
    );
    *conf = conf.replacen(from, to, 1);
}

/// The shipped configuration on `port` with [`SECRET`], confined to loopback.
fn test_conf(port: u16, dir: &Path) -> String {
    let mut conf = std::fs::read_to_string(SHIPPED_CONF)
        .unwrap_or_else(|e| panic!("read {SHIPPED_CONF}: {e}"));
    swap(
        &mut conf,
        "\nlistening-port=3478\n",
        &format!("\nlistening-port={port}\n"),
    );
    swap(
        &mut conf,
        "\nstatic-auth-secret=CHANGE_ME\n",
        &format!("\nstatic-auth-secret={SECRET}\n"),
    );
    let d = dir.display();
    // Both peers' relay addresses are 127.0.0.1 here, which the shipped file (rightly)
    // refuses as a peer: let exactly that address through, as its comment describes.
    conf.push_str(&format!(
        "\n# --- appended by client/tests/turn.rs ---\n\
         listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\n\
         allow-loopback-peers\nallowed-peer-ip=127.0.0.1\n\
         pidfile={d}/turnserver.pid\nuserdb={d}/turndb\nverbose\n"
    ));
    conf
}

/// coturn running the shipped configuration made test-safe by [`test_conf`].
fn start_coturn() -> Option<Coturn> {
    Coturn::start(|cmd, port, dir| {
        let conf = dir.join("turnserver.conf");
        std::fs::write(&conf, test_conf(port, dir)).unwrap();
        cmd.arg("-c").arg(&conf);
    })
}

/// A relay-only headless peer; its stderr goes to `stderr_path`.
fn relay_peer(port: u16, stderr_path: &Path, extra: &[&str]) -> Child {
    let mut cmd = common::headless_peer(port, "warn,rtc=error,webrtc=error");
    cmd.args(["--ice-policy", "relay"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr_path).unwrap());
    cmd.spawn().expect("start a headless peer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_coturn() {
    let _serial = SERIAL.lock().await;
    let Some(coturn) = start_coturn() else {
        return;
    };
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let server = common::start_server_with(0, None, |cfg| {
        cfg.turn_urls = vec![turn_url.clone()];
        cfg.turn_secret = Some(SECRET.to_owned());
    })
    .await;
    let logs = tempfile::tempdir().unwrap();
    let (a_err, b_err) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let a = relay_peer(
        server.port,
        &a_err,
        &["--duration", "14", "--tone-hz", "440"],
    );
    let b = relay_peer(
        server.port,
        &b_err,
        &["--duration", "14", "--tone-hz", "660"],
    );
    let (a, b) = common::summaries(a, b, Duration::from_secs(90)).await;
    server.stop().await;
    let log = coturn.log();
    drop(coturn);
    eprintln!("A: {a}\nB: {b}");
    let peer_logs = || {
        format!(
            "A stderr:\n{}\nB stderr:\n{}\ncoturn log (tail):\n{}",
            std::fs::read_to_string(&a_err).unwrap_or_default(),
            std::fs::read_to_string(&b_err).unwrap_or_default(),
            log.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    for (me, partner_tone) in [(&a, 660.0), (&b, 440.0)] {
        assert_eq!(u(me, "matches"), 1, "{me}\n{}", peer_logs());
        assert!(u(me, "frames_decoded") >= 60, "{me}\n{}", peer_logs());
        assert!(u(me, "audio_frames_decoded") >= 50, "{me}\n{}", peer_logs());
        let hz = me["audio_dominant_hz"].as_f64().expect("received audio");
        assert!((hz - partner_tone).abs() <= 20.0, "heard {hz} Hz: {me}");
        assert_eq!(me["candidate_type"], "relay", "{me}");
        assert_eq!(me["per_match"][0]["candidate_type"], "relay", "{me}");
    }
    // coturn really relayed: each peer allocated, and permissions for the partner's
    // relay address were installed.
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert!(
        count("ALLOCATE processed, success") >= 2,
        "coturn shows fewer than two allocations:\n{}",
        peer_logs()
    );
    assert!(
        count("CREATE_PERMISSION processed, success") + count("CHANNEL_BIND processed, success")
            >= 2,
        "coturn shows no permissions for the partners:\n{}",
        peer_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_policy_without_turn_warns_and_never_goes_direct() {
    let _serial = SERIAL.lock().await;
    // The usual test server: a STUN URL at most, no TURN.
    let server = common::start_server(0, None, 600).await;
    let logs = tempfile::tempdir().unwrap();
    let (a_err, b_err) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let a = relay_peer(server.port, &a_err, &["--duration", "6"]);
    let b = relay_peer(server.port, &b_err, &["--duration", "6"]);
    let (a, b) = common::summaries(a, b, Duration::from_secs(60)).await;
    server.stop().await;
    for (me, err) in [(&a, &a_err), (&b, &b_err)] {
        let stderr = std::fs::read_to_string(err).unwrap();
        // webrtc refuses to build a relay-only connection without a TURN server, so
        // the call never starts: no media, no candidate, one plain warning.
        assert_eq!(
            u(me, "frames_decoded"),
            0,
            "no relay, so no media: {me}\n{stderr}"
        );
        assert_eq!(me["candidate_type"], Value::Null, "{me}");
        assert_eq!(me["per_match"][0]["candidate_type"], Value::Null, "{me}");
        let warnings = stderr
            .lines()
            .filter(|l| l.contains("offers no TURN server"))
            .count();
        assert_eq!(warnings, 1, "one clear warning expected:\n{stderr}");
    }
}
