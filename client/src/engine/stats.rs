//! Counters every media stage bumps, and the snapshot the UI, the logs and the headless
//! summary read. Atomics and short-held locks only: stages never wait on a reader.

use crate::net::peer::PeerStats;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One match as the bot saw it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MatchRecord {
    pub match_id: String,
    /// Matched → first decoded remote video frame, if one came.
    pub setup_ms: Option<f64>,
    pub frames_decoded: u64,
    pub first_seq: Option<u32>,
    pub last_seq: Option<u32>,
    /// Decoded frames whose stamp went backwards (a repeat or someone else's video).
    pub seq_regressions: u64,
    pub audio_frames_decoded: u64,
    /// The selected local ICE candidate's type: host, srflx, prflx or relay (the last
    /// one seen in the match); `None` if the call never connected.
    pub candidate_type: Option<String>,
    /// The video codec negotiated for the call (what this side sends): "H264" or "VP8";
    /// null when the two sides share none (an audio-only call) or it never got that far.
    pub video_codec: Option<String>,
    /// Negotiation finished without a shared video codec: the call is audio only.
    #[serde(skip)]
    pub video_unavailable: bool,
    /// The longest gap in ms between two consecutive decoded remote frames of the
    /// match (reconnecting periods included); `None` with fewer than two frames.
    pub max_freeze_ms: Option<f64>,
    /// Every gap of at least [`FREEZE_LISTED_MS`] between two consecutive decoded remote
    /// frames, as `[ms from the match's start to the gap's start, gap ms]` (the first
    /// [`FREEZES_KEPT`]), so a freeze can be placed in the call (e.g. after a
    /// bottleneck's first seconds). The last entry may be the time from the last frame
    /// to the end of the call (or of the run): a freeze that never ended.
    pub freezes: Vec<[f64; 2]>,
    /// ICE restarts this side started in the match.
    pub ice_restarts: u64,
    /// When the last remote frame of the match was decoded.
    #[serde(skip)]
    pub last_frame_at: Option<Instant>,
    #[serde(skip)]
    pub started_at: Option<Instant>,
    /// The call is over ([`Counters::match_ended`]): its freezes are final.
    #[serde(skip)]
    pub ended: bool,
}

impl MatchRecord {
    /// Lists the gap from the last decoded frame to `now` when it is a freeze.
    fn push_tail(&mut self, now: Instant) {
        let (Some(last), Some(started)) = (self.last_frame_at, self.started_at) else {
            return;
        };
        let gap_ms = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
        if gap_ms >= FREEZE_LISTED_MS && self.freezes.len() < FREEZES_KEPT {
            let at_ms = last.saturating_duration_since(started).as_secs_f64() * 1000.0;
            self.freezes.push([at_ms.round(), gap_ms.round()]);
        }
    }
}

/// Shortest gap between decoded frames listed in [`MatchRecord::freezes`] (ms).
pub const FREEZE_LISTED_MS: f64 = 200.0;
/// Most freezes listed per match.
pub const FREEZES_KEPT: usize = 100;

#[derive(Default)]
pub struct Counters {
    pub frames_captured: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub frames_sent: AtomicU64,
    pub keyframes_sent: AtomicU64,
    pub video_bytes_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_decoded: AtomicU64,
    pub decode_errors: AtomicU64,
    pub video_bytes_received: AtomicU64,
    pub audio_frames_sent: AtomicU64,
    pub audio_frames_decoded: AtomicU64,
    /// Lost 20 ms frames the decoder filled from the next packet's in-band FEC or with
    /// its concealment (gaps up to 100 ms), played in their place.
    pub audio_frames_concealed: AtomicU64,
    pub keyframe_requests_received: AtomicU64,
    pub chat_received: AtomicU64,
    pub chat_sent: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    matches: Vec<MatchRecord>,
    current_started: Option<Instant>,
    latencies_ms: Vec<f64>,
    /// The last 0.5 s of decoded remote audio, for tone detection.
    recent_audio: Vec<i16>,
    peer: PeerStats,
}

const RECENT_AUDIO: usize = 24_000;

impl Counters {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the negotiated video codec of `match_id` (`None`: audio only).
    pub fn set_video_codec(
        &self,
        match_id: &str,
        codec: Option<crate::media::codec::video::VideoCodec>,
    ) {
        let mut i = self.inner();
        if let Some(rec) = i.matches.iter_mut().rev().find(|m| m.match_id == match_id) {
            rec.video_codec = codec.map(|c| c.name().to_owned());
            rec.video_unavailable = codec.is_none();
        }
    }

    /// Whether the current call turned out audio only (no video codec shared).
    pub fn video_unavailable(&self) -> bool {
        self.inner()
            .matches
            .last()
            .is_some_and(|m| m.video_unavailable)
    }

    pub fn match_started(&self, match_id: &str) {
        let mut i = self.inner();
        let now = Instant::now();
        i.current_started = Some(now);
        i.matches.push(MatchRecord {
            match_id: match_id.to_owned(),
            started_at: Some(now),
            ..Default::default()
        });
    }

    /// A decoded remote frame of the current match, with its stamp if it read back.
    pub fn frame_decoded(&self, match_id: &str, stamp: Option<(u32, f64)>) {
        self.frames_decoded.fetch_add(1, Relaxed);
        let mut i = self.inner();
        let started = i.current_started;
        let Some(rec) = i.matches.iter_mut().rev().find(|m| m.match_id == match_id) else {
            return;
        };
        rec.frames_decoded += 1;
        let now = Instant::now();
        if let Some(last) = rec.last_frame_at.replace(now) {
            let gap_ms = now.duration_since(last).as_secs_f64() * 1000.0;
            rec.max_freeze_ms = Some(rec.max_freeze_ms.map_or(gap_ms, |m| m.max(gap_ms)));
            if gap_ms >= FREEZE_LISTED_MS && rec.freezes.len() < FREEZES_KEPT {
                let at_ms = started.map_or(0.0, |s| {
                    last.saturating_duration_since(s).as_secs_f64() * 1000.0
                });
                rec.freezes.push([at_ms.round(), gap_ms.round()]);
            }
        }
        if rec.setup_ms.is_none() {
            rec.setup_ms = started.map(|s| s.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some((seq, latency_ms)) = stamp {
            if rec.first_seq.is_none() {
                rec.first_seq = Some(seq);
            }
            if rec.last_seq.is_some_and(|last| seq <= last) {
                rec.seq_regressions += 1;
            }
            rec.last_seq = Some(seq);
            if (0.0..10_000.0).contains(&latency_ms) {
                i.latencies_ms.push(latency_ms);
            }
        }
    }

    /// The call of `match_id` is over (its media stopped): a freeze running at its end
    /// is listed.
    pub fn match_ended(&self, match_id: &str) {
        let mut i = self.inner();
        if let Some(rec) = i.matches.iter_mut().rev().find(|m| m.match_id == match_id) {
            if !rec.ended {
                rec.ended = true;
                rec.push_tail(Instant::now());
            }
        }
    }

    /// This side restarted ICE in `match_id`.
    pub fn ice_restarted(&self, match_id: &str) {
        let mut i = self.inner();
        if let Some(rec) = i.matches.iter_mut().rev().find(|m| m.match_id == match_id) {
            rec.ice_restarts += 1;
        }
    }

    pub fn audio_decoded(&self, match_id: &str, pcm: &[i16]) {
        self.audio_frames_decoded.fetch_add(1, Relaxed);
        let mut i = self.inner();
        if let Some(rec) = i.matches.iter_mut().rev().find(|m| m.match_id == match_id) {
            rec.audio_frames_decoded += 1;
        }
        i.recent_audio.extend_from_slice(pcm);
        let len = i.recent_audio.len();
        if len > RECENT_AUDIO {
            i.recent_audio.drain(..len - RECENT_AUDIO);
        }
    }

    /// The current call's connection figures; a selected candidate type is also kept
    /// on the current match's record.
    pub fn set_peer_stats(&self, stats: PeerStats) {
        let mut i = self.inner();
        if let (Some(ty), Some(rec)) = (&stats.candidate_type, i.matches.last_mut()) {
            if rec.candidate_type.as_ref() != Some(ty) {
                rec.candidate_type = Some(ty.clone());
            }
        }
        i.peer = stats;
    }

    pub fn peer_stats(&self) -> PeerStats {
        self.inner().peer.clone()
    }

    /// The matches so far; a call still running lists the freeze it may be in.
    pub fn matches(&self) -> Vec<MatchRecord> {
        let mut matches = self.inner().matches.clone();
        if let Some(last) = matches.last_mut().filter(|m| !m.ended) {
            last.push_tail(Instant::now());
        }
        matches
    }

    pub fn latencies_ms(&self) -> Vec<f64> {
        self.inner().latencies_ms.clone()
    }

    pub fn recent_audio(&self) -> Vec<i16> {
        self.inner().recent_audio.clone()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        // One short lock, released before the literal below takes others (a guard made
        // inside the literal lives to its end, and `peer_stats` would deadlock on it).
        let (video_codec, video_unavailable) = {
            let i = self.inner();
            let last = i.matches.last();
            (
                last.and_then(|m| m.video_codec.clone()),
                last.is_some_and(|m| m.video_unavailable),
            )
        };
        StatsSnapshot {
            at: Instant::now(),
            frames_sent: self.frames_sent.load(Relaxed),
            frames_decoded: self.frames_decoded.load(Relaxed),
            frames_dropped: self.frames_dropped.load(Relaxed),
            video_bytes_sent: self.video_bytes_sent.load(Relaxed),
            video_bytes_received: self.video_bytes_received.load(Relaxed),
            audio_frames_sent: self.audio_frames_sent.load(Relaxed),
            audio_frames_decoded: self.audio_frames_decoded.load(Relaxed),
            peer: self.peer_stats(),
            video_codec,
            video_unavailable,
        }
    }
}

/// Cumulative figures at one instant; two of them give rates.
#[derive(Clone, Debug)]
pub struct StatsSnapshot {
    pub at: Instant,
    pub frames_sent: u64,
    pub frames_decoded: u64,
    pub frames_dropped: u64,
    pub video_bytes_sent: u64,
    pub video_bytes_received: u64,
    pub audio_frames_sent: u64,
    pub audio_frames_decoded: u64,
    pub peer: PeerStats,
    pub video_codec: Option<String>,
    pub video_unavailable: bool,
}

/// What the stats overlay shows: rates over the last interval plus connection facts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallStats {
    pub rtt_ms: Option<f64>,
    pub send_kbps: f64,
    pub recv_kbps: f64,
    pub fps_sent: f64,
    pub fps_decoded: f64,
    pub packets_lost: i64,
    pub frames_dropped: u64,
    /// host / srflx / prflx / relay
    pub candidate_type: Option<String>,
    /// The call's video codec ("H264", "VP8").
    pub video_codec: Option<String>,
    /// The stranger shares no video codec with us: the call is audio only.
    pub video_unavailable: bool,
}

impl CallStats {
    pub fn between(old: &StatsSnapshot, new: &StatsSnapshot) -> Self {
        let secs = new
            .at
            .saturating_duration_since(old.at)
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        CallStats {
            rtt_ms: new.peer.rtt_ms,
            send_kbps: rate(old.video_bytes_sent, new.video_bytes_sent) * 8.0 / 1000.0,
            recv_kbps: rate(old.video_bytes_received, new.video_bytes_received) * 8.0 / 1000.0,
            fps_sent: rate(old.frames_sent, new.frames_sent),
            fps_decoded: rate(old.frames_decoded, new.frames_decoded),
            packets_lost: new.peer.packets_lost,
            frames_dropped: new.frames_dropped,
            candidate_type: new.peer.candidate_type.clone(),
            video_codec: new.video_codec.clone(),
            video_unavailable: new.video_unavailable,
        }
    }
}

/// The median of a list (None when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

/// Nearest-rank percentile (None when empty).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), Some(4.0));
    }

    #[test]
    fn seq_regressions_are_counted_per_match() {
        let c = Counters::default();
        c.match_started("a");
        c.frame_decoded("a", Some((10, 20.0)));
        c.frame_decoded("a", Some((11, 20.0)));
        c.frame_decoded("a", Some((5, 20.0)));
        c.match_started("b");
        c.frame_decoded("b", Some((1, 20.0)));
        let m = c.matches();
        assert_eq!(m[0].seq_regressions, 1);
        assert_eq!(m[0].frames_decoded, 3);
        assert_eq!(m[1].seq_regressions, 0);
        assert!(m[1].setup_ms.is_some());
    }

    #[test]
    fn freezes_list_the_long_gaps_with_where_they_began() {
        let c = Counters::default();
        c.match_started("a");
        c.frame_decoded("a", None);
        c.frame_decoded("a", None);
        std::thread::sleep(Duration::from_millis(250));
        c.frame_decoded("a", None);
        let m = &c.matches()[0];
        assert_eq!(
            m.freezes.len(),
            1,
            "only the gap over 200 ms: {:?}",
            m.freezes
        );
        let [at, gap] = m.freezes[0];
        assert!(gap >= 250.0 && at < gap, "{:?}", m.freezes);
        assert_eq!(m.max_freeze_ms.map(f64::round), Some(gap));
        // A freeze that lasts to the end of the call is listed too, once.
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(c.matches()[0].freezes.len(), 2, "the running freeze");
        c.match_ended("a");
        std::thread::sleep(Duration::from_millis(50));
        let m = &c.matches()[0];
        assert_eq!(m.freezes.len(), 2, "{:?}", m.freezes);
        assert!(m.freezes[1][1] >= 250.0, "{:?}", m.freezes);
    }

    #[test]
    fn snapshot_does_not_hold_the_lock_across_itself() {
        let c = Counters::default();
        c.match_started("m1");
        c.set_video_codec("m1", Some(crate::media::codec::video::VideoCodec::Vp8));
        // Would deadlock (and hang this test) if one lock guard outlived its use.
        let snap = c.snapshot();
        assert_eq!(snap.video_codec.as_deref(), Some("VP8"));
        assert!(!snap.video_unavailable);
        c.set_video_codec("m1", None);
        assert!(c.snapshot().video_unavailable);
    }

    #[test]
    fn candidate_type_is_kept_per_match() {
        let c = Counters::default();
        let with = |ty: Option<&str>| PeerStats {
            candidate_type: ty.map(str::to_owned),
            ..Default::default()
        };
        c.match_started("a");
        c.set_peer_stats(with(None));
        c.set_peer_stats(with(Some("relay")));
        // A later snapshot without a selected pair (closing) does not erase it.
        c.set_peer_stats(with(None));
        c.match_started("b");
        c.set_peer_stats(with(None));
        let m = c.matches();
        assert_eq!(m[0].candidate_type.as_deref(), Some("relay"));
        assert_eq!(m[1].candidate_type, None);
    }
}
