//! The headless bot: a full peer without a window, for end-to-end tests, benchmarks and
//! demos. It searches, streams, greets every stranger in the chat, echoes what they
//! write (`echo: …`, never echoing an echo), optionally skips after a while, and at
//! the end reports what it saw as one JSON object.

use crate::engine::stats::{median, percentile, Counters, MatchRecord};
use crate::engine::{Command, Engine, EngineConfig, EngineEvent};
use crate::media::tone::goertzel_power;
use crate::session::machine::{Notice, Phase};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Prefix of echoed lines; a line that already has it is never echoed again.
pub const ECHO_PREFIX: &str = "echo: ";

#[derive(Clone, Debug)]
pub struct HeadlessOptions {
    pub engine: EngineConfig,
    pub interests: Vec<String>,
    /// Skip to the next stranger this long after a call goes live.
    pub next_after: Option<Duration>,
    /// Stop after this long (otherwise run until the shutdown future resolves).
    pub duration: Option<Duration>,
    /// What to say to every new stranger.
    pub say: String,
}

/// The bot's report, printed as one line of JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// How many strangers it met (matches whose call started).
    pub matches: usize,
    pub frames_sent: u64,
    pub frames_decoded: u64,
    pub keyframes_sent: u64,
    pub decode_errors: u64,
    pub audio_frames_sent: u64,
    pub audio_frames_decoded: u64,
    /// Lost audio frames filled by FEC or concealment (played instead of silence).
    pub audio_frames_concealed: u64,
    pub chat_sent: u64,
    pub chat_received: u64,
    /// Matched → first decoded remote video frame, median over matches (ms).
    pub setup_ms: Option<f64>,
    pub setup_ms_p99: Option<f64>,
    /// Capture → decoded remote frame, from the stamp in the picture, median (ms).
    pub latency_ms: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// The strongest frequency in the last half second of received audio (Hz).
    pub audio_dominant_hz: Option<f64>,
    /// The last match's selected local ICE candidate type (host, srflx, prflx, relay),
    /// null if it never connected or there was no match.
    pub candidate_type: Option<String>,
    pub video_source: String,
    pub audio_source: String,
    pub per_match: Vec<MatchRecord>,
    pub chat_lines: Vec<String>,
    /// The session's plain lines, in order ("Stranger's connection was lost.",
    /// "Couldn't connect to this stranger — finding someone new.", …).
    pub system_lines: Vec<String>,
    /// `join`s re-sent because the server answered `unavailable` (a cluster node that
    /// cannot reach its Redis: "Service busy — retrying"); 0 when the service never was.
    pub service_busy_retries: u64,
}

impl Summary {
    /// Success as the exit code reports it: met someone and decoded their video or
    /// their audio (a call with a partner that shares no video codec is audio only).
    pub fn success(&self) -> bool {
        self.matches >= 1 && (self.frames_decoded > 0 || self.audio_frames_decoded > 0)
    }
}

/// Runs the bot until `duration` passes or `shutdown` resolves.
pub async fn run(opts: HeadlessOptions, shutdown: impl Future<Output = ()>) -> Summary {
    let mut engine = Engine::start(
        opts.engine.clone(),
        &tokio::runtime::Handle::current(),
        Arc::new(|| {}),
    );
    let Some(mut events) = engine.take_events() else {
        return summarize(&engine, Vec::new());
    };
    engine.send(Command::Start {
        interests: opts.interests.clone(),
    });
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    tokio::pin!(shutdown);
    let mut skip_at: Option<tokio::time::Instant> = None;
    let mut chat_lines = Vec::new();
    let mut system_lines = Vec::new();
    // Re-sent joins: the phase's own count while the service is busy, summed over
    // every busy spell.
    let mut busy_retries = 0u64;
    let mut busy_seen = 0u32;
    loop {
        let skip = async {
            match skip_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut shutdown => break,
            _ = skip => {
                skip_at = None;
                tracing::info!("skipping to the next stranger");
                engine.send(Command::Next);
            }
            ev = events.recv() => match ev {
                None => break,
                Some(EngineEvent::Phase(Phase::Live { match_id })) => {
                    tracing::info!(%match_id, "live");
                    engine.send(Command::SendChat(opts.say.clone()));
                    if let Some(after) = opts.next_after {
                        skip_at = Some(tokio::time::Instant::now() + after);
                    }
                }
                Some(EngineEvent::Phase(Phase::Refused { code, message })) => {
                    tracing::error!(%code, %message, "the server refused us");
                    break;
                }
                Some(EngineEvent::Phase(Phase::ServiceBusy { retries })) => {
                    busy_retries += u64::from(retries.saturating_sub(busy_seen));
                    busy_seen = retries;
                }
                Some(EngineEvent::Phase(_)) => busy_seen = 0,
                Some(EngineEvent::Notice(Notice::Chat { from_me, text })) => {
                    chat_lines.push(format!("{}: {text}", if from_me { "me" } else { "stranger" }));
                    if !from_me && !text.starts_with(ECHO_PREFIX) {
                        engine.send(Command::SendChat(format!("{ECHO_PREFIX}{text}")));
                    }
                }
                Some(EngineEvent::Notice(Notice::Matched { .. })) => skip_at = None,
                Some(EngineEvent::Notice(Notice::System(text))) => system_lines.push(text),
                Some(_) => {}
            }
        }
    }
    let mut summary = summarize(&engine, chat_lines);
    summary.system_lines = system_lines;
    summary.service_busy_retries = busy_retries;
    engine.shutdown().await;
    summary
}

fn summarize(engine: &Engine, chat_lines: Vec<String>) -> Summary {
    let state = engine.state();
    summarize_counters(
        &engine.counters,
        state.video_source,
        state.audio_source,
        chat_lines,
    )
}

/// The summary from an engine's counters (also printed by the window at exit).
pub fn summarize_counters(
    c: &Counters,
    video_source: String,
    audio_source: String,
    chat_lines: Vec<String>,
) -> Summary {
    let per_match = c.matches();
    let setups: Vec<f64> = per_match.iter().filter_map(|m| m.setup_ms).collect();
    let latencies = c.latencies_ms();
    Summary {
        matches: per_match.len(),
        frames_sent: c.frames_sent.load(Relaxed),
        frames_decoded: c.frames_decoded.load(Relaxed),
        keyframes_sent: c.keyframes_sent.load(Relaxed),
        decode_errors: c.decode_errors.load(Relaxed),
        audio_frames_sent: c.audio_frames_sent.load(Relaxed),
        audio_frames_decoded: c.audio_frames_decoded.load(Relaxed),
        audio_frames_concealed: c.audio_frames_concealed.load(Relaxed),
        chat_sent: c.chat_sent.load(Relaxed),
        chat_received: c.chat_received.load(Relaxed),
        setup_ms: median(&setups),
        setup_ms_p99: percentile(&setups, 99.0),
        latency_ms: median(&latencies),
        latency_ms_p99: percentile(&latencies, 99.0),
        audio_dominant_hz: dominant_frequency(&c.recent_audio()),
        candidate_type: per_match.last().and_then(|m| m.candidate_type.clone()),
        video_source,
        audio_source,
        per_match,
        chat_lines,
        system_lines: Vec::new(),
        service_busy_retries: 0,
    }
}

/// The strongest frequency between 100 Hz and 2 kHz (10 Hz steps), if there is sound.
pub fn dominant_frequency(samples: &[i16]) -> Option<f64> {
    if samples.len() < 4800 || samples.iter().all(|s| s.unsigned_abs() < 64) {
        return None;
    }
    (10..=200)
        .map(|k| f64::from(k) * 10.0)
        .map(|f| (f, goertzel_power(samples, f as f32, 48_000) as f64))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(f, _)| f)
}
