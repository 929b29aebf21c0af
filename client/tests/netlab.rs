//! Calls across a real (namespaced) network: peer A and peer B in their own network
//! namespaces behind a router namespace that runs the signaling server and coturn
//! (`lab/mod.rs`), with nftables impairments in the router.
//!
//! - direct path, no loss: host candidates on both sides, video and audio decode;
//! - no direct path (UDP between the peers dropped): the call goes through coturn
//!   (`relay` on both sides);
//! - no direct path and 5 % random UDP loss: the relayed call still connects and
//!   carries video;
//! - direct path with 50 ± 20 ms one-way delay (an NFQUEUE program in the router) and
//!   5 % loss: the call connects host to host and carries video and audio.
//!
//! Needs root, iproute2, nftables, coturn (and iptables-legacy for the delay): skipped
//! with a message otherwise, and
//! failing under `CI=true`. `bench_real_networks` (ignored) measures the figures of
//! BENCHMARKS.md "Real networks (#8)":
//! `cargo test -p peer-stream --test netlab -- --ignored --nocapture bench_real_networks`.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod lab;

use lab::delay::DelaySpec;
use lab::{Impairment, Lab};
use serde_json::Value;
use std::time::Duration;

/// One lab call at a time: the peers are CPU-heavy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The peers' log filter: `PEER_STREAM_NETLAB_LOG`, else info with webrtc's warnings.
fn peer_log() -> String {
    std::env::var("PEER_STREAM_NETLAB_LOG").unwrap_or_else(|_| "info,rtc=warn,webrtc=warn".into())
}

/// `PEER_STREAM_NETLAB_VERBOSE=1`: the benchmark prints both peers' logs and coturn's
/// after every call.
fn verbose() -> bool {
    std::env::var("PEER_STREAM_NETLAB_VERBOSE").is_ok_and(|v| v == "1")
}

/// Not a test: the signaling server of a lab, run by `Lab::new` in the router
/// namespace (does nothing when started any other way).
#[tokio::test]
#[ignore = "helper process of the network lab, started by Lab::new"]
async fn lab_server_process() {
    lab::server_helper().await;
}

/// Not a test: the delay program of a lab (NFQUEUE), run by `Lab::impair` in the
/// router namespace (does nothing when started any other way).
#[test]
#[ignore = "helper process of the network lab, started by Lab::impair"]
fn lab_delay_process() {
    lab::delay::delay_helper();
}

/// The "real" access network: 50 ± 20 ms one way.
const DELAY_50_20: DelaySpec = DelaySpec {
    delay_ms: 50,
    jitter_ms: 20,
};

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The two summaries (and stderr logs) of one call between A and B, each running
/// `secs` seconds with `extra` flags.
async fn call(lab: &mut Lab, secs: u32, extra: &[&str]) -> ((Value, String), (Value, String)) {
    let secs = secs.to_string();
    let mut a_args = vec!["--duration", &secs, "--tone-hz", "440"];
    a_args.extend_from_slice(extra);
    let mut b_args = vec!["--duration", &secs, "--tone-hz", "660"];
    b_args.extend_from_slice(extra);
    let (a_ns, b_ns) = (lab.a.clone(), lab.b.clone());
    let a = lab.peer(&a_ns, &peer_log(), &a_args);
    let b = lab.peer(&b_ns, &peer_log(), &b_args);
    let limit = Duration::from_secs(120);
    tokio::task::spawn_blocking(move || (lab::summary(a, limit), lab::summary(b, limit)))
        .await
        .unwrap()
}

/// Context for a failed assertion: both peers' logs and the tail of coturn's.
fn context(lab: &Lab, a: &(Value, String), b: &(Value, String)) -> String {
    let log = lab.coturn_log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    format!(
        "A: {}\nB: {}\nA stderr:\n{}\nB stderr:\n{}\ncoturn log (tail):\n{tail}",
        a.0, b.0, a.1, b.1
    )
}

/// Both sides met once, decoded video and audio from the other, on `candidate_type`.
fn assert_call(lab: &Lab, a: &(Value, String), b: &(Value, String), candidate_type: &str) {
    let ctx = || context(lab, a, b);
    for me in [&a.0, &b.0] {
        assert_eq!(u(me, "matches"), 1, "{}", ctx());
        assert!(u(me, "frames_decoded") >= 60, "{}", ctx());
        assert!(u(me, "audio_frames_decoded") >= 50, "{}", ctx());
        assert_eq!(me["candidate_type"], candidate_type, "{}", ctx());
        assert_eq!(
            me["per_match"][0]["candidate_type"],
            candidate_type,
            "{}",
            ctx()
        );
    }
    for (me, tone) in [(&a.0, 660.0), (&b.0, 440.0)] {
        let hz = me["audio_dominant_hz"].as_f64().expect("received audio");
        assert!((hz - tone).abs() <= 20.0, "heard {hz} Hz:\n{}", ctx());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_without_loss_connects_host_to_host() {
    let _serial = SERIAL.lock().await;
    let Some(mut lab) = Lab::new() else {
        return;
    };
    lab.impair(Impairment::default());
    let (a, b) = call(&mut lab, 10, &[]).await;
    assert_call(&lab, &a, &b, "host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_direct_path_the_call_goes_through_coturn() {
    let _serial = SERIAL.lock().await;
    let Some(mut lab) = Lab::new() else {
        return;
    };
    lab.impair(Impairment {
        no_direct_path: true,
        ..Impairment::default()
    });
    let (a, b) = call(&mut lab, 12, &[]).await;
    assert_call(&lab, &a, &b, "relay");
    let log = lab.coturn_log();
    assert!(
        log.matches("ALLOCATE processed, success").count() >= 2,
        "{}",
        context(&lab, &a, &b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_call_connects_under_five_percent_loss() {
    let _serial = SERIAL.lock().await;
    let Some(mut lab) = Lab::new() else {
        return;
    };
    lab.impair(Impairment {
        no_direct_path: true,
        loss_percent: 5,
        ..Impairment::default()
    });
    let (a, b) = call(&mut lab, 15, &[]).await;
    assert_call(&lab, &a, &b, "relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_call_with_delay_jitter_and_loss_carries_video_and_audio() {
    let _serial = SERIAL.lock().await;
    if !lab::delay_available() {
        return;
    }
    let Some(mut lab) = Lab::new() else {
        return;
    };
    lab.impair(Impairment {
        loss_percent: 5,
        delay: Some(DELAY_50_20),
        ..Impairment::default()
    });
    let (a, b) = call(&mut lab, 12, &[]).await;
    assert_call(&lab, &a, &b, "host");
    // The packets really went through the delay program, and were held for about
    // the delay (the holds' median; jitter keeps within 30..=70 ms plus queueing).
    let stats = lab.delay_stats();
    let field = |name: &str| -> f64 {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in the delay stats {stats:?}"))
    };
    assert!(field("packets") >= 1000.0, "{stats}");
    let p50 = field("p50");
    assert!((30.0..=90.0).contains(&p50), "{stats}");
}

/// Median of `values` (sorted in place); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The figures of BENCHMARKS.md "Real networks (#8)" (not assertions), by case
/// (`PEER_STREAM_NETLAB_CASES`, comma-separated, default all):
/// - `relay`: ten relayed calls with 5 % loss end to end in each direction (how many
///   decoded their first frame within 3 s of the match on both sides, the slower side's
///   setup time, and the share of the partner's sent frames each side decoded), ten
///   relay-only calls (`--ice-policy relay`) without loss and ten calls without a direct
///   path or loss (default `--ice-policy all`, so the relay pair wins after the relay
///   wait) (matched → first frame, median);
/// - `delay`: direct calls with 5 % loss and 50 ± 20 ms one-way delay: frames and audio
///   decoded on both sides, the longest freeze, latency;
/// - `rate`: direct calls through a 500 kb/s bottleneck each way: the longest freeze
///   after the first 5 s of video, frames decoded, latency.
///
/// Tries per case: `PEER_STREAM_NETLAB_TRIES` (default 10); call length of the `delay`
/// and `rate` cases: `PEER_STREAM_NETLAB_SECS` (default 20 and 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (about 20 minutes): cargo test -p peer-stream --test netlab -- --ignored --nocapture bench_real_networks"]
async fn bench_real_networks() {
    let _serial = SERIAL.lock().await;
    let Some(mut lab) = Lab::new() else {
        return;
    };
    let tries: usize = std::env::var("PEER_STREAM_NETLAB_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let secs = |default: u32| -> u32 {
        std::env::var("PEER_STREAM_NETLAB_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let cases =
        std::env::var("PEER_STREAM_NETLAB_CASES").unwrap_or_else(|_| "relay,delay,rate".to_owned());
    let cases: Vec<&str> = cases.split(',').map(str::trim).collect();
    if cases.contains(&"relay") {
        bench_relay(&mut lab, tries).await;
    }
    if cases.contains(&"delay") && lab::delay_available() {
        lab.impair(Impairment {
            loss_percent: 5,
            delay: Some(DELAY_50_20),
            ..Impairment::default()
        });
        bench_direct(&mut lab, tries, secs(20), "direct + 5 % loss + 50 ± 20 ms").await;
    }
    if cases.contains(&"rate") {
        lab.impair(Impairment {
            rate_kbit: 500,
            ..Impairment::default()
        });
        bench_direct(&mut lab, tries, secs(30), "direct, 500 kb/s bottleneck").await;
    }
}

async fn bench_relay(lab: &mut Lab, tries: usize) {
    lab.impair(Impairment {
        no_direct_path: true,
        loss_percent: 5,
        ..Impairment::default()
    });
    let mut within_3s = 0;
    let mut setups = Vec::new();
    let mut fractions = Vec::new();
    for i in 0..tries {
        let (a, b) = call(lab, 12, &[]).await;
        if verbose() {
            eprintln!("{}", context(lab, &a, &b));
        }
        let setup = |v: &Value| v["per_match"][0]["setup_ms"].as_f64();
        let slower = match (setup(&a.0), setup(&b.0)) {
            (Some(x), Some(y)) => Some(x.max(y)),
            _ => None,
        };
        if slower.is_some_and(|s| s <= 3000.0) {
            within_3s += 1;
        }
        if let Some(s) = slower {
            setups.push(s);
        }
        let (fa, fb) = (
            sent_fraction(&a.0, &b.0, "frames_decoded", "frames_sent"),
            sent_fraction(&b.0, &a.0, "frames_decoded", "frames_sent"),
        );
        fractions.extend(fa.into_iter().chain(fb));
        eprintln!(
            "relay + 5 % loss, try {}: setup A {:?} B {:?} ms, types {} / {}, decoded \
             A {:?} B {:?} of the partner's sent frames",
            i + 1,
            setup(&a.0),
            setup(&b.0),
            a.0["candidate_type"],
            b.0["candidate_type"],
            fa,
            fb
        );
    }
    let mut fr = fractions.clone();
    eprintln!(
        "RESULT relay + 5 % loss: {within_3s}/{tries} connected (first frame both sides) \
         within 3 s; slower side's setup p50 {:?} ms, max {:?} ms; frames decoded p50 {:?}, \
         min {:.3} (over {} sides)",
        median(&mut setups),
        setups.iter().copied().reduce(f64::max),
        median(&mut fr),
        min(&fractions),
        fractions.len()
    );

    lab.impair(Impairment::default());
    no_loss_setups(
        lab,
        tries,
        &["--ice-policy", "relay"],
        "relay-only, no loss",
    )
    .await;

    lab.impair(Impairment {
        no_direct_path: true,
        ..Impairment::default()
    });
    no_loss_setups(lab, tries, &[], "no direct path, no loss").await;
}

/// `me`'s `mine` over the partner's `theirs` (e.g. frames decoded / frames sent).
fn sent_fraction(me: &Value, partner: &Value, mine: &str, theirs: &str) -> Option<f64> {
    let sent = u(partner, theirs);
    (sent > 0).then(|| u(me, mine) as f64 / sent as f64)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The longest freeze of `me`'s last match after the first 5 s of its video
/// (`per_match[].freezes`, which end with a freeze running at the end of the call;
/// one that began earlier counts from the 5 s mark), 0 when there was none; `None`
/// without video.
fn freeze_after_5s(me: &Value) -> Option<f64> {
    let m = me["per_match"].as_array()?.last()?;
    let from = m["setup_ms"].as_f64()? + 5000.0;
    let freezes = m["freezes"].as_array()?;
    Some(
        freezes
            .iter()
            .filter_map(|f| Some((f[0].as_f64()?, f[1].as_f64()?)))
            .map(|(at, gap)| (at + gap - from).min(gap))
            .fold(0.0, f64::max),
    )
}

/// The longest freeze over `me`'s matches (`max_freeze_ms`, gaps between two frames).
fn max_freeze(me: &Value) -> Option<f64> {
    me["per_match"]
        .as_array()?
        .iter()
        .filter_map(|m| m["max_freeze_ms"].as_f64())
        .reduce(f64::max)
}

/// `tries` direct calls of `secs` on the lab's current impairment: per side the share
/// of the partner's sent video frames decoded, the longest freeze (all of it, and
/// after the first 5 s), the share of the partner's audio frames decoded and played
/// (decoded + lost frames filled by FEC or concealment), capture → decode latency.
async fn bench_direct(lab: &mut Lab, tries: usize, secs: u32, label: &str) {
    let (mut video, mut freeze, mut freeze_5s, mut audio, mut played) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut lat50, mut lat99, mut connected) = (vec![], vec![], 0);
    for i in 0..tries {
        let (a, b) = call(lab, secs, &[]).await;
        if verbose() {
            eprintln!("{}", context(lab, &a, &b));
        }
        if a.0["candidate_type"] == "host" && b.0["candidate_type"] == "host" {
            connected += 1;
        }
        let mut line = format!("{label}, try {}:", i + 1);
        for (name, me, partner) in [("A", &a.0, &b.0), ("B", &b.0, &a.0)] {
            let v = sent_fraction(me, partner, "frames_decoded", "frames_sent");
            let au = sent_fraction(me, partner, "audio_frames_decoded", "audio_frames_sent");
            let sent = u(partner, "audio_frames_sent");
            let pl = (sent > 0).then(|| {
                (u(me, "audio_frames_decoded") + me["audio_frames_concealed"].as_u64().unwrap_or(0))
                    as f64
                    / sent as f64
            });
            let fr = max_freeze(me);
            let f5 = freeze_after_5s(me);
            let (l50, l99) = (me["latency_ms"].as_f64(), me["latency_ms_p99"].as_f64());
            line.push_str(&format!(
                " {name}: video {v:.3?} audio {au:.3?} played {pl:.3?} max_freeze {fr:.0?} \
                 after 5 s {f5:?} latency p50/p99 {l50:?}/{l99:?} keyframes sent {} \
                 type {} matches {};",
                partner["keyframes_sent"], me["candidate_type"], me["matches"]
            ));
            video.extend(v);
            audio.extend(au);
            played.extend(pl);
            freeze.extend(fr);
            freeze_5s.extend(f5);
            lat50.extend(l50);
            lat99.extend(l99);
        }
        eprintln!(
            "{line} delay: {} links: {}",
            lab.delay_stats(),
            lab.rate_stats()
        );
    }
    let sides = video.len();
    eprintln!(
        "RESULT {label}: {connected}/{tries} calls host-host; over {sides} sides: video \
         decoded p50 {:.3?} min {:.3}; max_freeze p50 {:?} max {:?} ms; after the first \
         5 s max {:?} ms; audio decoded p50 {:.3?} min {:.3}, played p50 {:.3?} min {:.3}; \
         latency p50 {:?} ms (max over sides {:?}), p99 max {:?} ms",
        median(&mut video.clone()),
        min(&video),
        median(&mut freeze.clone()),
        (!freeze.is_empty()).then(|| max(&freeze)),
        (!freeze_5s.is_empty()).then(|| max(&freeze_5s)),
        median(&mut audio.clone()),
        min(&audio),
        median(&mut played.clone()),
        min(&played),
        median(&mut lat50.clone()),
        (!lat50.is_empty()).then(|| max(&lat50)),
        (!lat99.is_empty()).then(|| max(&lat99)),
    );
}

/// `tries` calls of 10 s with `extra` flags on the lab's current impairment: prints
/// each side's matched -> first frame and candidate type, then the median and maximum
/// over all sides (`RESULT {label}: ...`).
async fn no_loss_setups(lab: &mut Lab, tries: usize, extra: &[&str], label: &str) {
    let mut setups = Vec::new();
    for i in 0..tries {
        let (a, b) = call(lab, 10, extra).await;
        if verbose() {
            eprintln!("{}", context(lab, &a, &b));
        }
        for me in [&a.0, &b.0] {
            if let Some(s) = me["per_match"][0]["setup_ms"].as_f64() {
                setups.push(s);
            }
        }
        eprintln!(
            "{label}, try {}: setup A {} B {} ms, types {} / {}",
            i + 1,
            a.0["per_match"][0]["setup_ms"],
            b.0["per_match"][0]["setup_ms"],
            a.0["candidate_type"],
            b.0["candidate_type"]
        );
    }
    let n = setups.len();
    eprintln!(
        "RESULT {label}: matched -> first frame p50 {:?} ms, max {:?} ms \
         ({n} sides of {tries} calls)",
        median(&mut setups),
        setups.iter().copied().reduce(f64::max),
    );
}
