//! Retransmissions go out as RTX (RFC 4588, issue #8 item 3), in the network lab
//! (`lab/mod.rs`): two headless peers call each other directly with 5 % random UDP loss
//! on the path, each way. The partner's NACKs are answered on the video's RTX SSRC and
//! payload type (webrtc's stats count them as retransmissions only when they came on the
//! RTX stream), the receiver unwraps them before its frame assembler, and the holes they
//! fill keep nearly every frame decodable.
//!
//! Each peer logs its repair counters when the call ends (`Peer::log_repairs`); this
//! test reads them from the peers' logs. Needs root, iproute2, nftables and coturn:
//! skipped with a message otherwise, failing under `CI=true`.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod lab;

use lab::{Impairment, Lab};
use std::time::Duration;

/// Not a test: the signaling server of a lab, run by `Lab::new` in the router
/// namespace (does nothing when started any other way).
#[tokio::test]
#[ignore = "helper process of the network lab, started by Lab::new"]
async fn lab_server_process() {
    lab::server_helper().await;
}

/// The value of `key=N` on the first "video repairs" line of a peer's log.
fn repair_count(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("video repairs in this call"))
        .unwrap_or_else(|| panic!("no repair line in:\n{log}"));
    // Strip ANSI colour codes (tracing colours field names).
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in {plain}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_packets_are_resent_as_rtx_and_fill_the_holes() {
    let Some(mut lab) = Lab::new() else {
        return;
    };
    lab.impair(Impairment {
        loss_percent: 5,
        ..Impairment::default()
    });
    let log = "info,rtc=warn,webrtc=warn";
    let (a_ns, b_ns) = (lab.a.clone(), lab.b.clone());
    let a = lab.peer(&a_ns, log, &["--duration", "15", "--tone-hz", "440"]);
    let b = lab.peer(&b_ns, log, &["--duration", "15", "--tone-hz", "660"]);
    let (_lab, a, b) = tokio::task::spawn_blocking(move || {
        let limit = Duration::from_secs(60);
        let (a, b) = (lab::summary(a, limit), lab::summary(b, limit));
        (lab, a, b)
    })
    .await
    .unwrap();
    let ctx = || {
        format!(
            "A: {}\nB: {}\nA stderr:\n{}\nB stderr:\n{}",
            a.0, b.0, a.1, b.1
        )
    };
    for (me, partner) in [(&a, &b), (&b, &a)] {
        assert_eq!(me.0["matches"].as_u64(), Some(1), "{}", ctx());
        let rtx_received = repair_count(&me.1, "rtx_received");
        let rtx_sent = repair_count(&partner.1, "rtx_sent");
        eprintln!(
            "rtx: sent {rtx_sent} by the partner, received {rtx_received}; \
             NACKs sent {}, packets_lost in the inbound stats {}; frames {} of {}",
            repair_count(&me.1, "nacks_sent"),
            repair_count(&me.1, "video_packets_lost"),
            me.0["frames_decoded"],
            partner.0["frames_sent"]
        );
        // With ~5 % of ~100 packets/s lost for ~14 s, dozens of holes: some must have
        // been repaired on the RTX stream (a plain resend on the media SSRC does not
        // count as a retransmission in webrtc's stats).
        assert!(
            rtx_sent > 0,
            "the partner resent nothing as RTX:\n{}",
            ctx()
        );
        assert!(rtx_received > 0, "no RTX packet arrived:\n{}", ctx());
        let decoded = me.0["frames_decoded"].as_u64().unwrap_or(0);
        let sent = partner.0["frames_sent"].as_u64().unwrap_or(0);
        assert!(
            decoded * 10 >= sent * 8,
            "holes were not filled: {decoded} of {sent} frames decoded:\n{}",
            ctx()
        );
    }
}
