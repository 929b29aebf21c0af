//! A sink that plays nothing: it counts frames and keeps the most recent samples.
//!
//! Used when there is no speaker (CI, servers, the headless bot). Its [`NullTap`] is a
//! cloneable read handle, so code that moved the sink into the playout thread can
//! still ask "how many frames played, and is the last second the other peer's tone?".

use super::AudioSink;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    frames: u64,
    samples: u64,
    recent: VecDeque<i16>,
}

/// Read handle onto a [`NullSink`]'s counters and recent samples.
#[derive(Debug, Clone)]
pub struct NullTap {
    state: Arc<Mutex<State>>,
}

impl NullTap {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames played so far.
    pub fn frames(&self) -> u64 {
        self.lock().frames
    }

    /// Samples played so far.
    pub fn samples(&self) -> u64 {
        self.lock().samples
    }

    /// The last `n` samples played (fewer if fewer were kept), oldest first.
    pub fn recent(&self, n: usize) -> Vec<i16> {
        let s = self.lock();
        let skip = s.recent.len().saturating_sub(n);
        s.recent.iter().skip(skip).copied().collect()
    }
}

/// The null sink. Keeps the last `keep` samples (after volume).
#[derive(Debug)]
pub struct NullSink {
    tap: NullTap,
    keep: usize,
    gain: f32,
}

impl Default for NullSink {
    /// Keeps the last second (48 000 samples).
    fn default() -> Self {
        Self::new(48_000)
    }
}

impl NullSink {
    pub fn new(keep: usize) -> Self {
        Self {
            tap: NullTap {
                state: Arc::new(Mutex::new(State::default())),
            },
            keep,
            gain: 1.0,
        }
    }

    /// A read handle that stays valid after the sink is boxed or moved.
    pub fn tap(&self) -> NullTap {
        self.tap.clone()
    }
}

impl AudioSink for NullSink {
    fn play(&mut self, frame: &[i16]) {
        let gain = self.gain;
        let mut s = self.tap.lock();
        s.frames += 1;
        s.samples += frame.len() as u64;
        s.recent.extend(frame.iter().map(|&x| apply_gain(x, gain)));
        let excess = s.recent.len().saturating_sub(self.keep);
        s.recent.drain(..excess);
    }

    fn name(&self) -> String {
        "Null sink (no speaker)".to_string()
    }

    fn is_null(&self) -> bool {
        true
    }

    fn set_volume(&mut self, gain: f32) {
        self.gain = clamp_gain(gain);
    }
}

/// Scales a sample, saturating instead of wrapping.
pub fn apply_gain(x: i16, gain: f32) -> i16 {
    if gain == 1.0 {
        return x;
    }
    (f32::from(x) * gain).round().clamp(-32768.0, 32767.0) as i16
}

/// Volume range accepted by the sinks (NaN mutes).
pub fn clamp_gain(gain: f32) -> f32 {
    if gain.is_nan() {
        0.0
    } else {
        gain.clamp(0.0, 4.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keeps_and_scales() {
        let mut s = NullSink::new(1000);
        let tap = s.tap();
        s.play(&[100; 960]);
        s.set_volume(0.5);
        s.play(&[100; 960]);
        assert_eq!(tap.frames(), 2);
        assert_eq!(tap.samples(), 1920);
        let r = tap.recent(2000);
        assert_eq!(r.len(), 1000);
        assert_eq!(r[0], 100);
        assert_eq!(r[999], 50);
        assert_eq!(apply_gain(30_000, 2.0), 32767);
        assert_eq!(clamp_gain(f32::NAN), 0.0);
    }
}
