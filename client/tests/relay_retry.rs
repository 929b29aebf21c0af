//! The relay-only retry (issue #8 item 5), in the network lab (`lab/mod.rs`: peers A
//! and B in their own namespaces behind a router namespace with the signaling server
//! and coturn): a call that cannot connect with the candidates it gathered retries once
//! with fresh TURN relay candidates only, and the same match goes on.
//!
//! The scenario: no direct path between A and B (only relay pairs can work), and coturn
//! out of reach when the call starts (the router drops UDP to its port), as during a
//! TURN server's brief outage. The first attempt gathers no relay candidate, so it
//! cannot connect; when its 10 s run out the offerer switches to relay-only and
//! restarts ICE (sockets rebound, new TURN allocations), the answerer follows. The test
//! lets coturn be reached again as soon as a peer logs that switch, so the first
//! attempt can never have connected, and only the retry can.
//!
//! Needs root, iproute2, nftables and coturn: skipped with a message otherwise,
//! failing under `CI=true`.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod lab;

use lab::{nft, Impairment, Lab};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The frame rate of the fake camera (the engine's default).
const FPS: u64 = 30;

const RETRY: &str = "Still no connection — trying once more through a relay server…";
const GAVE_UP: &str = "Couldn't connect to this stranger — finding someone new.";
const PARTNER_LOST: &str = "Stranger's connection was lost.";

/// Not a test: the signaling server of a lab, run by `Lab::new` in the router
/// namespace (does nothing when started any other way).
#[tokio::test]
#[ignore = "helper process of the network lab, started by Lab::new"]
async fn lab_server_process() {
    lab::server_helper().await;
}

/// coturn is out of reach for both peers (UDP to its port dropped on the router's
/// input from either access link).
fn block_turn(lab: &Lab) {
    nft(
        &lab.router,
        &format!(
            "table inet turnblock {{\n chain pre {{ type filter hook prerouting priority -200; \
             policy accept; iifname {{ \"ra\", \"rb\" }} udp dport {} drop; }}\n}}\n",
            lab::TURN_PORT
        ),
    );
}

fn unblock_turn(lab: &Lab) {
    nft(&lab.router, "delete table inet turnblock\n");
}

/// What `Peer::use_relay_only` logs when a side switches to relay-only.
const SWITCH_LOG: &str = "relay-only: the next ICE gathering uses the TURN relay only";

fn system_lines(v: &Value) -> Vec<String> {
    v["system_lines"]
        .as_array()
        .unwrap_or_else(|| panic!("system_lines missing in {v}"))
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_connect_retries_relay_only_and_goes_on() {
    let Some(mut lab) = Lab::new() else {
        return;
    };
    lab.impair(Impairment {
        no_direct_path: true,
        ..Impairment::default()
    });
    block_turn(&lab);
    // ~0.5 s: matched; ~10.5 s: the first attempt's window is over, relay-only retry;
    // the call then runs to 26 s.
    let secs = "26";
    let log =
        std::env::var("RELAY_RETRY_LOG").unwrap_or_else(|_| "info,rtc=warn,webrtc=warn".to_owned());
    let log = log.as_str();
    let (a_ns, b_ns) = (lab.a.clone(), lab.b.clone());
    let a = lab.peer(&a_ns, log, &["--duration", secs, "--tone-hz", "440"]);
    let b = lab.peer(&b_ns, log, &["--duration", secs, "--tone-hz", "660"]);
    let (a_log, b_log) = (a.stderr_path.clone(), b.stderr_path.clone());
    let (lab, a, b, switched) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut switched = None;
        while started.elapsed() < Duration::from_secs(40) {
            let logs = [&a_log, &b_log].map(|p| std::fs::read_to_string(p).unwrap_or_default());
            if logs.iter().any(|l| l.contains(SWITCH_LOG)) {
                switched = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unblock_turn(&lab);
        let limit = Duration::from_secs(90);
        let (a, b) = (lab::summary(a, limit), lab::summary(b, limit));
        (lab, a, b, switched)
    })
    .await
    .unwrap();
    let coturn = lab.coturn_log();
    let ctx = || {
        format!(
            "A: {}\nB: {}\nA stderr:\n{}\nB stderr:\n{}\ncoturn:\n{}",
            a.0,
            b.0,
            a.1,
            b.1,
            coturn
                .lines()
                .filter(|l| l.contains("ALLOCATE") || l.contains("error"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let switched = switched.unwrap_or_else(|| panic!("nobody switched to relay-only:\n{}", ctx()));
    eprintln!("relay-only switch {switched:?} after the start");
    let mut restarts = Vec::new();
    for me in [&a.0, &b.0] {
        assert_eq!(
            me["matches"].as_u64(),
            Some(1),
            "the same call goes on:\n{}",
            ctx()
        );
        let lines = system_lines(me);
        assert!(
            lines.iter().any(|l| l == RETRY),
            "both sides took the relay-only retry:\n{}",
            ctx()
        );
        assert!(!lines.iter().any(|l| l == GAVE_UP), "{}", ctx());
        assert!(!lines.iter().any(|l| l == PARTNER_LOST), "{}", ctx());
        let m = &me["per_match"][0];
        assert_eq!(m["candidate_type"], "relay", "{}", ctx());
        // Video flowed for a good part of the ~14 s left after the retry.
        let frames = m["frames_decoded"].as_u64().unwrap_or(0);
        assert!(
            frames >= 5 * FPS,
            "{frames} frames after the retry:\n{}",
            ctx()
        );
        restarts.push(m["ice_restarts"].as_u64().expect("ice_restarts"));
    }
    restarts.sort_unstable();
    assert_eq!(
        restarts,
        [0, 1],
        "the offerer restarted once (the relay-only retry), the answerer never:\n{}",
        ctx()
    );
    for (name, me) in [("A", &a.0), ("B", &b.0)] {
        let m = &me["per_match"][0];
        eprintln!(
            "relay retry: {name} setup_ms {} ice_restarts {} frames_decoded {}",
            m["setup_ms"], m["ice_restarts"], m["frames_decoded"]
        );
    }
}
