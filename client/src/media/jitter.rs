//! A small playout buffer for 20 ms audio frames keyed by RTP sequence number.
//!
//! Packets arrive reordered and with uneven gaps; the speaker wants exactly one frame
//! every 20 ms. The buffer collects frames until it holds about `target_delay_ms` worth
//! (60 ms by default), then hands out one frame per [`JitterBuffer::pop`] in sequence
//! order. A frame that has not arrived by its turn yields `None` (play concealment);
//! one that arrives after its turn is dropped as late. The size is bounded, and when
//! the backlog grows well past the target (a burst after a stall) one frame per pull is
//! skipped so latency returns to the target instead of staying high for the rest of
//! the call. After a long run of empty pulls (the sender stopped) it goes back to
//! buffering so the next talk spurt starts with the full cushion again.
//!
//! It is generic over the frame type so the caller can store decoded PCM (the default
//! use) or encoded packets (to decode with FEC on a gap).

use std::collections::BTreeMap;

/// Tuning knobs. The defaults fit 20 ms Opus frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Duration of one frame.
    pub frame_ms: u32,
    /// Cushion to build up before playing, and to steer back to.
    pub target_delay_ms: u32,
    /// Frames of backlog above the target tolerated before skipping to catch up.
    pub catch_up_slack_frames: u32,
    /// Hard bound on stored frames; the oldest go first.
    pub max_frames: usize,
    /// Consecutive empty pulls after which the buffer re-buffers.
    pub rebuffer_after_misses: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            target_delay_ms: 60,
            catch_up_slack_frames: 4,
            max_frames: 50,
            rebuffer_after_misses: 10,
        }
    }
}

/// Counters for the stats panel and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub pushed: u64,
    pub played: u64,
    /// Pulls that found the due frame missing (caller played concealment).
    pub missing: u64,
    /// Frames dropped because their turn had already passed.
    pub late: u64,
    pub duplicates: u64,
    /// Frames dropped to respect `max_frames`.
    pub overflow: u64,
    /// Frames skipped to bring latency back to the target.
    pub catch_up: u64,
    pub rebuffers: u64,
}

/// What one pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull<T> {
    /// The due frame.
    Frame { frame: T, seq: u16, timestamp: u32 },
    /// Playing, but the due frame (`seq`) is missing: conceal it.
    Missing { seq: u16 },
    /// Still filling the cushion (or nothing ever arrived): play silence.
    Buffering,
}

struct Entry<T> {
    frame: T,
    timestamp: u32,
}

/// The playout buffer. Not thread-safe on its own; keep it on the audio thread.
pub struct JitterBuffer<T> {
    cfg: JitterConfig,
    frames: BTreeMap<u64, Entry<T>>,
    /// Highest extended sequence number seen (for unwrapping 16-bit sequence numbers).
    highest: Option<u64>,
    /// Extended sequence number due next; everything below is late.
    next: Option<u64>,
    playing: bool,
    misses_in_a_row: u32,
    stats: JitterStats,
}

impl<T> Default for JitterBuffer<T> {
    fn default() -> Self {
        Self::new(JitterConfig::default())
    }
}

impl<T> JitterBuffer<T> {
    pub fn new(cfg: JitterConfig) -> Self {
        Self {
            cfg,
            frames: BTreeMap::new(),
            highest: None,
            next: None,
            playing: false,
            misses_in_a_row: 0,
            stats: JitterStats::default(),
        }
    }

    fn target_frames(&self) -> u64 {
        u64::from(
            self.cfg
                .target_delay_ms
                .div_ceil(self.cfg.frame_ms.max(1))
                .max(1),
        )
    }

    /// Maps a 16-bit RTP sequence number onto a 64-bit line, picking the unwrapped value
    /// closest to the highest one seen (starting high so early reordering cannot go
    /// below zero).
    fn extend(&mut self, seq: u16) -> u64 {
        match self.highest {
            None => {
                let ext = (1u64 << 32) + u64::from(seq);
                self.highest = Some(ext);
                ext
            }
            Some(h) => {
                // Reinterpreting the 16-bit distance as signed is the point.
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                let ext = h.saturating_add_signed(delta);
                if ext > h {
                    self.highest = Some(ext);
                }
                ext
            }
        }
    }

    /// Adds a received frame. Late, duplicate and overflowing frames are dropped (and
    /// counted); returns whether the frame was kept.
    pub fn push(&mut self, seq: u16, timestamp: u32, frame: T) -> bool {
        self.stats.pushed += 1;
        let ext = self.extend(seq);
        if self.next.is_some_and(|n| ext < n) {
            self.stats.late += 1;
            return false;
        }
        if self.frames.contains_key(&ext) {
            self.stats.duplicates += 1;
            return false;
        }
        self.frames.insert(ext, Entry { frame, timestamp });
        while self.frames.len() > self.cfg.max_frames.max(1) {
            if let Some((old, _)) = self.frames.pop_first() {
                self.stats.overflow += 1;
                if self.next.is_some_and(|n| n <= old) {
                    self.next = Some(old + 1);
                }
            }
        }
        self.frames.contains_key(&ext)
    }

    /// The frame due now; call once per frame period (every 20 ms). `None` means
    /// "nothing to play": conceal (PLC) while playing, silence while buffering — use
    /// [`Self::pull`] to tell them apart.
    pub fn pop(&mut self) -> Option<T> {
        match self.pull() {
            Pull::Frame { frame, .. } => Some(frame),
            _ => None,
        }
    }

    /// Like [`Self::pop`], but says why there is no frame.
    pub fn pull(&mut self) -> Pull<T> {
        if !self.playing {
            let (Some((&first, _)), Some(h)) = (self.frames.first_key_value(), self.highest) else {
                return Pull::Buffering;
            };
            if h + 1 - first < self.target_frames() {
                return Pull::Buffering;
            }
            self.playing = true;
            self.misses_in_a_row = 0;
            self.next = Some(first);
        }
        let Some(mut due) = self.next else {
            return Pull::Buffering;
        };
        // Too much backlog: skip the oldest frame so latency drifts back to the target.
        if let Some(h) = self.highest {
            let backlog = (h + 1).saturating_sub(due);
            if backlog > self.target_frames() + u64::from(self.cfg.catch_up_slack_frames) {
                if self.frames.remove(&due).is_some() {
                    self.stats.catch_up += 1;
                }
                due += 1;
            }
        }
        self.next = Some(due + 1);
        // `due as u16` recovers the RTP sequence number (truncation intended).
        match self.frames.remove(&due) {
            Some(e) => {
                self.stats.played += 1;
                self.misses_in_a_row = 0;
                Pull::Frame {
                    frame: e.frame,
                    seq: due as u16,
                    timestamp: e.timestamp,
                }
            }
            None => {
                self.stats.missing += 1;
                self.misses_in_a_row += 1;
                if self.frames.is_empty() && self.misses_in_a_row >= self.cfg.rebuffer_after_misses
                {
                    self.playing = false;
                    self.stats.rebuffers += 1;
                }
                Pull::Missing { seq: due as u16 }
            }
        }
    }

    /// Whether the buffer is handing out frames (as opposed to filling its cushion).
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Frames currently stored.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Current buffering delay in milliseconds (stored span × frame duration).
    pub fn delay_ms(&self) -> u32 {
        match (
            self.next.or(self.frames.first_key_value().map(|(k, _)| *k)),
            self.highest,
        ) {
            (Some(n), Some(h)) if h + 1 > n => {
                u32::try_from((h + 1 - n) * u64::from(self.cfg.frame_ms)).unwrap_or(u32::MAX)
            }
            _ => 0,
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(jb: &mut JitterBuffer<u16>, n: usize) -> Vec<Option<u16>> {
        (0..n).map(|_| jb.pop()).collect()
    }

    #[test]
    fn waits_for_the_cushion_then_plays_in_order() {
        let mut jb = JitterBuffer::default();
        jb.push(10, 0, 10u16);
        assert_eq!(jb.pull(), Pull::Buffering);
        jb.push(12, 1920, 12);
        jb.push(11, 960, 11); // reordered
        assert_eq!(jb.delay_ms(), 60);
        assert_eq!(drain(&mut jb, 3), vec![Some(10), Some(11), Some(12)]);
        assert!(jb.is_playing());
        assert_eq!(jb.pull(), Pull::Missing { seq: 13 });
    }

    #[test]
    fn gaps_are_missing_and_late_frames_dropped() {
        let mut jb = JitterBuffer::default();
        for s in [0u16, 1, 3, 4] {
            jb.push(s, u32::from(s) * 960, s);
        }
        assert_eq!(jb.pop(), Some(0));
        assert_eq!(jb.pop(), Some(1));
        assert_eq!(jb.pull(), Pull::Missing { seq: 2 });
        assert!(!jb.push(2, 1920, 2), "frame 2 came after its turn");
        assert_eq!(jb.pop(), Some(3));
        assert!(
            !jb.push(3, 2880, 3),
            "duplicate of a played frame is late too"
        );
        jb.push(5, 0, 5);
        assert!(!jb.push(5, 0, 5), "duplicate");
        let st = jb.stats();
        assert_eq!(
            (st.late, st.duplicates, st.missing, st.played),
            (2, 1, 1, 3)
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::default();
        for s in [65534u16, 0, 65535, 1] {
            jb.push(s, 0, s);
        }
        assert_eq!(
            drain(&mut jb, 4),
            vec![Some(65534), Some(65535), Some(0), Some(1)]
        );
    }

    #[test]
    fn backlog_is_trimmed_back_towards_the_target() {
        let mut jb = JitterBuffer::default();
        for s in 0..3u16 {
            jb.push(s, 0, s);
        }
        assert_eq!(jb.pop(), Some(0));
        // A burst of 20 frames arrives at once after a stall.
        for s in 3..23u16 {
            jb.push(s, 0, s);
        }
        let mut played = Vec::new();
        for _ in 0..30 {
            if let Some(f) = jb.pop() {
                played.push(f);
            }
        }
        assert!(jb.stats().catch_up > 0);
        assert!(played.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(played.last(), Some(&22));
    }

    #[test]
    fn bounded_and_rebuffers_after_silence() {
        let cfg = JitterConfig {
            max_frames: 5,
            ..JitterConfig::default()
        };
        let mut jb = JitterBuffer::new(cfg);
        for s in 0..20u16 {
            jb.push(s, 0, s);
        }
        assert_eq!(jb.len(), 5);
        assert_eq!(jb.stats().overflow, 15);
        let got: Vec<_> = drain(&mut jb, 5).into_iter().flatten().collect();
        assert_eq!(got.first(), Some(&15));
        assert_eq!(got.last(), Some(&19));
        drain(&mut jb, 12);
        assert!(!jb.is_playing(), "went back to buffering");
        assert_eq!(jb.stats().rebuffers, 1);
        jb.push(40, 0, 40);
        assert_eq!(jb.pull(), Pull::Buffering);
    }
}
