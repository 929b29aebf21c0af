//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.
//! Plain atomics: every connection task updates them without a lock.

use peer_stream_shared::{CallPath, ErrorCode};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-match histogram buckets.
const MATCH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the call setup-time histogram buckets (`call_report`).
const CALL_SETUP_BUCKETS: [f64; 7] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

/// How an `undo_next` ended, the label of `peer_stream_undo_total{result=…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndoResult {
    /// The two were matched again (`matched` with `resumed: true`).
    Resumed,
    /// No `next` to undo: none yet, already undone, or older than the window.
    Expired,
    /// The skipped person disconnected or stopped.
    Gone,
    /// The skipped person is already in (or was in) a new match.
    Busy,
    /// One of the two blocked the other.
    Blocked,
}

impl UndoResult {
    pub const ALL: [UndoResult; 5] = [
        UndoResult::Resumed,
        UndoResult::Expired,
        UndoResult::Gone,
        UndoResult::Busy,
        UndoResult::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UndoResult::Resumed => "resumed",
            UndoResult::Expired => "expired",
            UndoResult::Gone => "gone",
            UndoResult::Busy => "busy",
            UndoResult::Blocked => "blocked",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub sessions: AtomicI64,
    pub waiting: AtomicI64,
    pub active_matches: AtomicI64,
    pub matches_total: AtomicU64,
    pub messages_relayed: AtomicU64,
    pub reports_total: AtomicU64,
    pub bans_total: AtomicU64,
    pub slow_readers_total: AtomicU64,
    pub heartbeat_timeouts_total: AtomicU64,
    pub blocks_total: AtomicU64,
    pub counts_sent_total: AtomicU64,
    /// Sessions whose connection was lost and that wait for their client to resume.
    pub sessions_detached: AtomicI64,
    /// `hello` with a valid `resume` token: the session came back.
    pub sessions_resumed_total: AtomicU64,
    /// Sessions this node handed over to another node of the cluster (resumed there).
    pub sessions_handed_over_total: AtomicU64,
    /// Detached sessions whose resume window ran out (ended like a disconnect).
    pub resume_expired_total: AtomicU64,
    undo: [AtomicU64; UndoResult::ALL.len()],
    errors: [AtomicU64; ErrorCode::ALL.len()],
    match_buckets: [AtomicU64; MATCH_BUCKETS.len()],
    match_count: AtomicU64,
    match_sum_us: AtomicU64,
    calls: [AtomicU64; CallPath::ALL.len()],
    call_setup_buckets: [AtomicU64; CALL_SETUP_BUCKETS.len()],
    call_setup_count: AtomicU64,
    call_setup_sum_ms: AtomicU64,
}

impl Metrics {
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    pub fn undo(&self, result: UndoResult) {
        if let Some(i) = UndoResult::ALL.iter().position(|r| *r == result) {
            self.undo[i].fetch_add(1, Relaxed);
        }
    }

    pub fn observe_time_to_match(&self, waited: Duration) {
        let secs = waited.as_secs_f64();
        for (i, le) in MATCH_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.match_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.match_count.fetch_add(1, Relaxed);
        self.match_sum_us.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// One side's `call_report`: counted by path; `setup_ms` (when given, and the call
    /// did not fail) goes into the setup-time histogram.
    pub fn observe_call(&self, path: CallPath, setup_ms: Option<u64>) {
        if let Some(i) = CallPath::ALL.iter().position(|p| *p == path) {
            self.calls[i].fetch_add(1, Relaxed);
        }
        let Some(ms) = setup_ms.filter(|_| path != CallPath::Failed) else {
            return;
        };
        let secs = ms as f64 / 1e3;
        for (i, le) in CALL_SETUP_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.call_setup_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.call_setup_count.fetch_add(1, Relaxed);
        self.call_setup_sum_ms.fetch_add(ms, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        gauge(
            &mut o,
            "peer_stream_connections",
            "Open WebSocket connections.",
            self.connections.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_connections_total",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
        );
        gauge(
            &mut o,
            "peer_stream_sessions",
            "Connections that completed hello.",
            self.sessions.load(Relaxed),
        );
        gauge(
            &mut o,
            "peer_stream_waiting",
            "Sessions waiting in the queue.",
            self.waiting.load(Relaxed),
        );
        gauge(
            &mut o,
            "peer_stream_active_matches",
            "Matches in progress.",
            self.active_matches.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_matches_total",
            "Matches made.",
            self.matches_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_messages_relayed_total",
            "Signal, chat and typing messages relayed.",
            self.messages_relayed.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_reports_total",
            "Reports received.",
            self.reports_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_bans_total",
            "Addresses banned.",
            self.bans_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_slow_readers_total",
            "Connections dropped for not reading.",
            self.slow_readers_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_heartbeat_timeouts_total",
            "Connections dropped for silence.",
            self.heartbeat_timeouts_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_blocks_total",
            "Block requests accepted (a pair that is never matched again).",
            self.blocks_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_counts_sent_total",
            "Live counts messages sent to subscribed clients.",
            self.counts_sent_total.load(Relaxed),
        );
        gauge(
            &mut o,
            "peer_stream_sessions_detached",
            "Sessions whose connection was lost, waiting within the resume window.",
            self.sessions_detached.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_sessions_resumed_total",
            "Sessions brought back by hello with a valid resume token.",
            self.sessions_resumed_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_sessions_handed_over_total",
            "Sessions handed over to another cluster node, where their client resumed them.",
            self.sessions_handed_over_total.load(Relaxed),
        );
        counter(
            &mut o,
            "peer_stream_resume_expired_total",
            "Detached sessions whose resume window ran out.",
            self.resume_expired_total.load(Relaxed),
        );
        o.push_str("# HELP peer_stream_undo_total undo_next requests, by result.\n# TYPE peer_stream_undo_total counter\n");
        for (i, result) in UndoResult::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "peer_stream_undo_total{{result=\"{}\"}} {}",
                result.as_str(),
                self.undo[i].load(Relaxed)
            );
        }
        o.push_str("# HELP peer_stream_errors_total Error replies sent, by code.\n# TYPE peer_stream_errors_total counter\n");
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "peer_stream_errors_total{{code=\"{code}\"}} {}",
                self.errors[i].load(Relaxed)
            );
        }
        o.push_str("# HELP peer_stream_time_to_match_seconds Time from join to matched.\n# TYPE peer_stream_time_to_match_seconds histogram\n");
        for (i, le) in MATCH_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "peer_stream_time_to_match_seconds_bucket{{le=\"{le}\"}} {}",
                self.match_buckets[i].load(Relaxed)
            );
        }
        let count = self.match_count.load(Relaxed);
        let _ = writeln!(
            o,
            "peer_stream_time_to_match_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "peer_stream_time_to_match_seconds_sum {}",
            self.match_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "peer_stream_time_to_match_seconds_count {count}");
        o.push_str("# HELP peer_stream_calls_total Calls reported by clients (call_report, one per side and match), by how the media connected.\n# TYPE peer_stream_calls_total counter\n");
        for (i, path) in CallPath::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "peer_stream_calls_total{{path=\"{}\"}} {}",
                path.as_str(),
                self.calls[i].load(Relaxed)
            );
        }
        o.push_str("# HELP peer_stream_call_setup_seconds Time from matched to the first decoded remote frame, as reported by clients.\n# TYPE peer_stream_call_setup_seconds histogram\n");
        for (i, le) in CALL_SETUP_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "peer_stream_call_setup_seconds_bucket{{le=\"{le}\"}} {}",
                self.call_setup_buckets[i].load(Relaxed)
            );
        }
        let count = self.call_setup_count.load(Relaxed);
        let _ = writeln!(
            o,
            "peer_stream_call_setup_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "peer_stream_call_setup_seconds_sum {}",
            self.call_setup_sum_ms.load(Relaxed) as f64 / 1e3
        );
        let _ = writeln!(o, "peer_stream_call_setup_seconds_count {count}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_time_to_match(Duration::from_millis(30));
        m.observe_time_to_match(Duration::from_secs(3));
        m.error(ErrorCode::BadJson);
        m.undo(UndoResult::Busy);
        let text = m.render();
        assert!(text.contains("peer_stream_undo_total{result=\"busy\"} 1"));
        assert!(text.contains("peer_stream_undo_total{result=\"resumed\"} 0"));
        assert!(text.contains("peer_stream_time_to_match_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("peer_stream_time_to_match_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("peer_stream_time_to_match_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("peer_stream_time_to_match_seconds_count 2"));
        assert!(text.contains("peer_stream_errors_total{code=\"bad_json\"} 1"));
    }

    #[test]
    fn call_reports_count_by_path_and_fill_the_setup_histogram() {
        let m = Metrics::default();
        m.observe_call(CallPath::Relay, Some(800));
        m.observe_call(CallPath::Host, Some(120));
        m.observe_call(CallPath::Host, None);
        m.observe_call(CallPath::Failed, Some(10_000));
        let text = m.render();
        assert!(text.contains("peer_stream_calls_total{path=\"host\"} 2"));
        assert!(text.contains("peer_stream_calls_total{path=\"relay\"} 1"));
        assert!(text.contains("peer_stream_calls_total{path=\"failed\"} 1"));
        assert!(text.contains("peer_stream_calls_total{path=\"srflx\"} 0"));
        assert!(text.contains("peer_stream_call_setup_seconds_bucket{le=\"0.1\"} 0"));
        assert!(text.contains("peer_stream_call_setup_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("peer_stream_call_setup_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("peer_stream_call_setup_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("peer_stream_call_setup_seconds_sum 0.92"));
        assert!(text.contains("peer_stream_call_setup_seconds_count 2"));
    }
}
