//! A call outlives its signaling connection: a TCP proxy between peer A and the real
//! server cuts A's WebSocket mid-call (both sockets dropped, no close frame), A's app
//! reconnects with `hello` + `resume`, and the one match goes on.
//!
//! Two tests: the app's own signaling task and session machine (no media) against the
//! real server, chatting both ways after the cut; and two headless peer processes whose
//! JSON shows one match whose video kept coming after the cut.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::proxy::Proxy;
use common::u;
use peer_stream::net::signaling::{self, SignalingEvent};
use peer_stream::session::machine::{Input, Notice, Output, Phase, Session};
use peer_stream_shared::ServerMessage;
use serde_json::Value;
use std::collections::VecDeque;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The capture rate of the headless peer's synthetic camera: a frame's number can never
/// run ahead of this many per second since the peer started.
const FPS: f64 = 30.0;

/// The app's session without media: its real signaling task and session machine, with a
/// call that "connects" as soon as it starts. The test reads its phase and notices.
struct Bot {
    inputs: mpsc::UnboundedSender<Input>,
    notices: mpsc::UnboundedReceiver<Notice>,
    phase: Arc<Mutex<Phase>>,
    /// `welcome`s with `resumed: true` the machine has handled.
    resumed: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl Bot {
    fn start(url: String) -> Bot {
        let (inputs, mut input_rx) = mpsc::unbounded_channel::<Input>();
        let (notice_tx, notices) = mpsc::unbounded_channel();
        let phase = Arc::new(Mutex::new(Phase::Offline));
        let resumed = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let (out_tx, out_rx) = mpsc::channel(256);
        let (ev_tx, mut ev_rx) = mpsc::channel(1024);
        tokio::spawn(signaling::run(url, out_rx, ev_tx, cancel.clone()));
        tokio::spawn({
            let phase = Arc::clone(&phase);
            let resumed = Arc::clone(&resumed);
            let cancel = cancel.clone();
            async move {
                let mut s = Session::new("resume-test/1", false);
                let mut pending = VecDeque::new();
                loop {
                    let input = tokio::select! {
                        _ = cancel.cancelled() => return,
                        i = input_rx.recv() => match i { Some(i) => i, None => return },
                        ev = ev_rx.recv() => match ev {
                            Some(SignalingEvent::Connected) => Input::ServerConnected,
                            Some(SignalingEvent::Message(m)) => Input::Server(m),
                            Some(SignalingEvent::Lost { .. }) => Input::ServerLost,
                            None => return,
                        },
                    };
                    let resumes = matches!(
                        &input,
                        Input::Server(ServerMessage::Welcome { resumed: true, .. })
                    );
                    pending.push_back(input);
                    while let Some(input) = pending.pop_front() {
                        s.handle(input);
                        while let Some(out) = s.poll_output() {
                            match out {
                                Output::Send(m) => {
                                    let _ = out_tx.send(m).await;
                                }
                                Output::StartPeer { match_id, .. } => {
                                    pending.push_back(Input::PeerConnected(match_id));
                                }
                                Output::Notify(n) => {
                                    let _ = notice_tx.send(n);
                                }
                                // Media outputs: this bot has no media.
                                _ => {}
                            }
                        }
                    }
                    *phase.lock().unwrap() = s.phase().clone();
                    if resumes {
                        resumed.fetch_add(1, Relaxed);
                    }
                }
            }
        });
        Bot {
            inputs,
            notices,
            phase,
            resumed,
            cancel,
        }
    }

    fn phase(&self) -> Phase {
        self.phase.lock().unwrap().clone()
    }

    fn live_match(&self) -> Option<String> {
        match self.phase() {
            Phase::Live { match_id } => Some(match_id.0),
            _ => None,
        }
    }

    /// Waits for a chat line from the stranger; returns every notice seen before it.
    async fn expect_chat(&mut self, text: &str) -> Vec<Notice> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.notices.recv()).await {
                Ok(Some(Notice::Chat {
                    from_me: false,
                    text: t,
                })) if t == text => return seen,
                Ok(Some(n)) => seen.push(n),
                Ok(None) | Err(_) => panic!("no chat {text:?}; notices: {seen:?}"),
            }
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_session_survives_a_cut_signaling_connection() {
    let server = common::start_server_with(0, None, |cfg| cfg.resume_window_secs = 10).await;
    let proxy = Proxy::start(server.port).await;
    let mut a = Bot::start(format!("ws://127.0.0.1:{}/ws", proxy.port));
    let mut b = Bot::start(format!("ws://127.0.0.1:{}/ws", server.port));
    a.inputs.send(Input::Start { interests: vec![] }).unwrap();
    b.inputs.send(Input::Start { interests: vec![] }).unwrap();
    wait_until("both live in one match", || {
        a.live_match().is_some() && a.live_match() == b.live_match()
    })
    .await;
    let m = a.live_match().unwrap();
    a.inputs.send(Input::SendChat("before".into())).unwrap();
    b.expect_chat("before").await;
    // What the match start showed is not under test below.
    while a.notices.try_recv().is_ok() {}
    while b.notices.try_recv().is_ok() {}

    proxy.cut();
    wait_until("A's session resumed", || a.resumed.load(Relaxed) == 1).await;
    // A's call never stopped, B heard nothing; chat goes both ways in the same match.
    assert_eq!(
        a.live_match().as_deref(),
        Some(m.as_str()),
        "{:?}",
        a.phase()
    );
    assert_eq!(
        b.live_match().as_deref(),
        Some(m.as_str()),
        "{:?}",
        b.phase()
    );
    a.inputs
        .send(Input::SendChat("after the cut".into()))
        .unwrap();
    let seen_by_b = b.expect_chat("after the cut").await;
    b.inputs.send(Input::SendChat("still here".into())).unwrap();
    let seen_by_a = a.expect_chat("still here").await;
    for n in seen_by_a.iter().chain(&seen_by_b) {
        assert!(
            !matches!(n, Notice::Matched { .. } | Notice::System(_)),
            "no new match, no 'connection lost' line: {n:?}"
        );
    }
    assert!(proxy.accepted.load(Relaxed) >= 2, "A reconnected");
    let text = common::metrics_text(server.port).await;
    assert_eq!(
        metric(&text, "peer_stream_sessions_resumed_total"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "peer_stream_matches_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "peer_stream_resume_expired_total"), 0.0);
    assert_eq!(metric(&text, "peer_stream_sessions_detached"), 0.0);
    drop((a, b, proxy));
    server.stop().await;
}

/// Kills peer processes still running when a test ends early (by their own ids; disarmed
/// once the test has waited for them).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn peer(port: u16, duration_secs: u32) -> Child {
    let mut cmd = common::headless_peer(port, "warn,peer_stream=info,rtc=error,webrtc=error");
    cmd.args(["--duration", &duration_secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().expect("start a headless peer")
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The highest frame number of the stranger's video that `v` decoded in its one match.
fn last_seq(v: &Value) -> f64 {
    v["per_match"][0]["last_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no decoded stamp: {v}")) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_goes_on_when_the_signaling_connection_is_cut() {
    let server = common::start_server_with(0, None, |cfg| {
        cfg.rematch_cooldown_secs = 600;
        cfg.resume_window_secs = 10;
    })
    .await;
    let proxy = Proxy::start(server.port).await;
    let a_started = Instant::now();
    let a = peer(proxy.port, 24);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_started = Instant::now();
    let b = peer(server.port, 22);
    let mut reaper = Reaper(vec![a.id(), b.id()]);

    // Matched, then a few seconds of call; then A's signaling connection is cut.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        &common::metrics_text(server.port).await,
        "peer_stream_matches_total",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the peers were not matched");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a_at_cut = a_started.elapsed().as_secs_f64();
    let b_at_cut = b_started.elapsed().as_secs_f64();
    proxy.cut();

    let (a, b) = common::summaries(a, b, Duration::from_secs(90)).await;
    reaper.0.clear();
    let text = common::metrics_text(server.port).await;
    eprintln!("A: {a}\nB: {b}");
    assert!(
        proxy.accepted.load(Relaxed) >= 2,
        "A reconnected through the proxy after the cut"
    );
    assert_eq!(
        metric(&text, "peer_stream_sessions_resumed_total"),
        1.0,
        "A resumed its session once:\n{text}"
    );
    assert_eq!(metric(&text, "peer_stream_resume_expired_total"), 0.0);
    assert_eq!(
        metric(&text, "peer_stream_matches_total"),
        1.0,
        "no second match:\n{text}"
    );
    for (name, v) in [("A", &a), ("B", &b)] {
        assert_eq!(u(v, "matches"), 1, "{name} had one match that went on: {v}");
        assert_eq!(v["per_match"][0]["seq_regressions"], 0, "{name}: {v}");
    }
    // Video kept coming after the cut: each side decoded frames the other captured
    // later than the cut (a frame's number is at most FPS per second since its start).
    let b_seq_at_cut = FPS * b_at_cut;
    assert!(
        last_seq(&a) > b_seq_at_cut + FPS,
        "A saw B's video only up to frame {} (B could not be past frame {b_seq_at_cut:.0} \
         at the cut): {a}",
        last_seq(&a)
    );
    let a_seq_at_cut = FPS * a_at_cut;
    assert!(
        last_seq(&b) > a_seq_at_cut + FPS,
        "B saw A's video only up to frame {} (A could not be past frame {a_seq_at_cut:.0} \
         at the cut): {b}",
        last_seq(&b)
    );
    // B's greeting reached A and came back as an echo before the cut; the chat ends up
    // in one transcript per side (no second "Say hi" from a new match).
    assert!(u(&a, "chat_received") >= 1 && u(&b, "chat_received") >= 1);
    drop(proxy);
    server.stop().await;
}
