//! Synthetic capture: the moving test pattern and the sine tone, each paced by an
//! absolute schedule so they behave like real devices.
//!
//! Pacing matters: a receiver's jitter buffer, the encoder's rate control and the
//! browser's audio playout all assume media arrives in real time (Chrome plays nothing
//! if Opus frames come in bursts). Frame `n` is due at `start + n·period`, so sleeping
//! jitter never accumulates into drift: over any long stretch the audio source yields
//! exactly 50 frames per second.

use super::{AudioSource, VideoSource};
use crate::media::clock::now_us;
use crate::media::frame::{VideoFrame, AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use crate::media::pattern;
use crate::media::tone::ToneGenerator;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Sleeps until each frame's slot on a fixed timeline.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    period: Duration,
    n: u64,
    /// How far behind (in periods) we may fall and still catch up by returning frames
    /// immediately; beyond that the timeline restarts from now.
    max_lag: u32,
    enabled: bool,
}

impl Pacer {
    pub fn new(period: Duration, max_lag: u32) -> Self {
        Self {
            start: Instant::now(),
            period,
            n: 0,
            max_lag,
            enabled: true,
        }
    }

    /// Blocks until the next slot.
    pub fn wait(&mut self) {
        if !self.enabled {
            return;
        }
        let offset = Duration::from_nanos(
            u64::try_from(self.period.as_nanos().saturating_mul(u128::from(self.n)))
                .unwrap_or(u64::MAX),
        );
        let due = self.start + offset;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > self.period * self.max_lag {
            // Stalled for long (suspend, debugger): restart rather than burst.
            tracing::debug!(
                behind_ms = (now - due).as_millis() as u64,
                "pacer restarting its timeline"
            );
            self.start = now;
            self.n = 0;
        }
        self.n += 1;
    }
}

/// The moving test pattern at a fixed frame rate; `capture_us` is wall-clock time.
pub struct SyntheticVideo {
    width: u32,
    height: u32,
    seq: u64,
    pacer: Pacer,
}

impl SyntheticVideo {
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        let fps = fps.clamp(1, 240);
        Self {
            width: (width & !1).max(2),
            height: (height & !1).max(2),
            seq: 0,
            // A video source that fell behind skips ahead instead of bursting frames.
            pacer: Pacer::new(Duration::from_secs(1) / fps, 1),
        }
    }

    /// Returns frames as fast as asked (benchmarks, offline tests).
    pub fn unpaced(mut self) -> Self {
        self.pacer.enabled = false;
        self
    }
}

impl VideoSource for SyntheticVideo {
    fn next_frame(&mut self) -> Result<VideoFrame> {
        self.pacer.wait();
        let frame = pattern::render(self.seq, now_us(), self.width, self.height);
        self.seq += 1;
        Ok(frame)
    }

    fn name(&self) -> String {
        format!("Synthetic test pattern {}x{}", self.width, self.height)
    }

    fn is_synthetic(&self) -> bool {
        true
    }
}

/// The tone, 960 samples every 20 ms.
pub struct SyntheticAudio {
    gen: ToneGenerator,
    pacer: Pacer,
}

impl SyntheticAudio {
    pub fn new(gen: ToneGenerator) -> Self {
        let period = Duration::from_secs(1) * AUDIO_FRAME_SAMPLES as u32 / AUDIO_RATE;
        Self {
            gen,
            // Audio catches up after short hiccups (up to 200 ms) so no samples go missing.
            pacer: Pacer::new(period, 10),
        }
    }

    /// Returns frames as fast as asked (benchmarks, offline tests).
    pub fn unpaced(mut self) -> Self {
        self.pacer.enabled = false;
        self
    }
}

impl AudioSource for SyntheticAudio {
    fn next_frame(&mut self) -> Result<Vec<i16>> {
        self.pacer.wait();
        Ok(self.gen.next_frame())
    }

    fn name(&self) -> String {
        format!("Synthetic tone {} Hz", self.gen.freq_hz())
    }

    fn is_synthetic(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::pattern::read_stamp_i420;

    fn count_for(d: Duration, mut f: impl FnMut()) -> u32 {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < d {
            f();
            n += 1;
        }
        n
    }

    #[test]
    fn video_is_paced_and_stamped() {
        let mut v = SyntheticVideo::new(320, 240, 30);
        let mut last = None;
        let n = count_for(Duration::from_millis(500), || {
            if let Ok(f) = v.next_frame() {
                last = Some(f);
            }
        });
        // 15 expected; generous bounds for a loaded 2-core CI machine.
        assert!((10..=18).contains(&n), "{n} frames in 0.5 s");
        let f = last.expect("frames");
        let stamp = read_stamp_i420(&f.data, f.width, f.height).expect("stamp");
        assert_eq!(u64::from(stamp.seq), f.seq);
        assert!(f.capture_us > 1_600_000_000_000_000);
    }

    #[test]
    fn audio_is_paced_without_drift() {
        let mut a = SyntheticAudio::new(ToneGenerator::new(440.0));
        let start = Instant::now();
        for _ in 0..25 {
            assert_eq!(a.next_frame().map(|f| f.len()).ok(), Some(960));
        }
        // 25 frames = 480 ms of schedule (the first frame is due immediately).
        let ms = start.elapsed().as_millis();
        assert!((460..=700).contains(&ms), "25 frames took {ms} ms");
    }

    #[test]
    fn unpaced_sources_are_fast() {
        let mut a = SyntheticAudio::new(ToneGenerator::new(440.0)).unpaced();
        let start = Instant::now();
        for _ in 0..100 {
            let _ = a.next_frame();
        }
        assert!(start.elapsed() < Duration::from_millis(1500));
    }
}
