//! Synthetic audio: a sine tone the far side can recognise, and the Goertzel detector
//! that recognises it.
//!
//! Two bots in one call each send their own frequency (e.g. 440 Hz and 660 Hz); a test
//! then proves that the audio it hears is the *other* peer's, not silence, not its own
//! echo and not packet-loss concealment noise. An optional slow chirp (a small
//! frequency wobble) keeps a codec from treating the tone as perfectly stationary
//! while staying inside the detector's bin.

use super::frame::{AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use std::f64::consts::TAU;

/// Phase-continuous sine generator producing 20 ms mono frames at 48 kHz.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    freq_hz: f64,
    amplitude: f64,
    chirp: Option<(f64, f64)>,
    phase: f64,
    sample: u64,
}

impl ToneGenerator {
    /// A steady tone at `freq_hz` with amplitude 8000 (about −12 dBFS).
    pub fn new(freq_hz: f32) -> Self {
        Self {
            freq_hz: f64::from(freq_hz),
            amplitude: 8000.0,
            chirp: None,
            phase: 0.0,
            sample: 0,
        }
    }

    /// Wobbles the frequency by ±`depth_hz` with a period of `period_s` seconds. Keep
    /// `depth_hz` under ~30 Hz for [`tone_dominates`] to still recognise the tone.
    pub fn with_chirp(mut self, depth_hz: f32, period_s: f32) -> Self {
        if period_s > 0.0 && depth_hz > 0.0 {
            self.chirp = Some((f64::from(depth_hz), f64::from(period_s)));
        }
        self
    }

    /// Sets the peak amplitude (0‥32767).
    pub fn with_amplitude(mut self, amplitude: i16) -> Self {
        self.amplitude = f64::from(amplitude.max(0));
        self
    }

    /// Nominal frequency in Hz.
    pub fn freq_hz(&self) -> f32 {
        self.freq_hz as f32
    }

    /// The next 20 ms (960 samples).
    pub fn next_frame(&mut self) -> Vec<i16> {
        let mut out = vec![0i16; AUDIO_FRAME_SAMPLES];
        self.fill(&mut out);
        out
    }

    /// Fills `out` with the next samples of the tone.
    pub fn fill(&mut self, out: &mut [i16]) {
        let rate = f64::from(AUDIO_RATE);
        for s in out {
            let f = match self.chirp {
                Some((depth, period)) => {
                    let t = self.sample as f64 / rate;
                    self.freq_hz + depth * (TAU * t / period).sin()
                }
                None => self.freq_hz,
            };
            *s = (self.amplitude * self.phase.sin()).round() as i16;
            self.phase = (self.phase + TAU * f / rate) % TAU;
            self.sample += 1;
        }
    }
}

/// Power of `samples` at `freq_hz`: one Goertzel filter over the whole Hann-windowed
/// buffer, divided by N² so buffers of different lengths compare (a full-scale sine
/// exactly at `freq_hz` gives about 1/16). Its bandwidth is about 2·rate/N, i.e. very
/// narrow for long buffers: prefer [`block_power`] / [`tone_ratio`] for those.
pub fn goertzel_power(samples: &[i16], freq_hz: f32, rate: u32) -> f32 {
    let n = samples.len();
    if n == 0 || rate == 0 {
        return 0.0;
    }
    let w = TAU * f64::from(freq_hz) / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let denom = (n.max(2) - 1) as f64;
    for (i, &x) in samples.iter().enumerate() {
        // The Hann window keeps a loud neighbour from leaking into the measured bin.
        let win = 0.5 - 0.5 * (TAU * i as f64 / denom).cos();
        let s0 = f64::from(x) / 32768.0 * win + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    (power / (n as f64 * n as f64)) as f32
}

/// [`goertzel_power`] averaged over consecutive 20 ms blocks (960 samples at 48 kHz).
///
/// One Goertzel over a long buffer is a very narrow filter (1.25 Hz wide for 0.8 s), so
/// a chirping tone or a slightly off-rate sound card would slip out of it; averaging
/// short blocks keeps the detector ~50 Hz wide whatever the buffer length.
pub fn block_power(samples: &[i16], freq_hz: f32, rate: u32) -> f32 {
    let block = (rate as usize / 50).max(1);
    let (mut sum, mut n) = (0.0f32, 0u32);
    for chunk in samples.chunks(block) {
        // A short tail would be a wider, noisier filter: use it only if it is all we have.
        if chunk.len() == block || n == 0 {
            sum += goertzel_power(chunk, freq_hz, rate);
            n += 1;
        }
    }
    sum / n.max(1) as f32
}

/// Ratio of the power at `freq_hz` to the strongest of a few off-frequencies
/// (½, 0.7, 1.4, 1.5 and 2 times the tone: covers octave errors and a 440/660 mix-up),
/// measured with [`block_power`].
pub fn tone_ratio(samples: &[i16], freq_hz: f32, rate: u32) -> f32 {
    let on = block_power(samples, freq_hz, rate);
    let off = [0.5f32, 0.7, 1.4, 1.5, 2.0]
        .iter()
        .map(|k| block_power(samples, freq_hz * k, rate))
        .fold(0.0f32, f32::max);
    on / off.max(1e-12)
}

/// True when `samples` clearly carry the tone: at least 10× (10 dB) more power at
/// `freq_hz` than at any off-frequency, and not near-silent.
pub fn tone_dominates(samples: &[i16], freq_hz: f32, rate: u32) -> bool {
    block_power(samples, freq_hz, rate) > 1e-6 && tone_ratio(samples, freq_hz, rate) >= 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_960_and_continuous() {
        let mut g = ToneGenerator::new(440.0);
        let a = g.next_frame();
        let b = g.next_frame();
        assert_eq!(a.len(), AUDIO_FRAME_SAMPLES);
        // No click at the frame boundary: the step is like any other step.
        let step = (i32::from(b[0]) - i32::from(a[959])).abs();
        assert!(step < 600, "step {step}");
        assert!(a.iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0) > 7900);
    }

    #[test]
    fn goertzel_tells_440_from_660() {
        let a = ToneGenerator::new(440.0).next_frame();
        let b = ToneGenerator::new(660.0).with_chirp(20.0, 4.0).next_frame();
        assert!(tone_dominates(&a, 440.0, AUDIO_RATE));
        assert!(!tone_dominates(&a, 660.0, AUDIO_RATE));
        assert!(tone_dominates(&b, 660.0, AUDIO_RATE));
        assert!(!tone_dominates(&b, 440.0, AUDIO_RATE));
        assert!(!tone_dominates(&[0i16; 960], 440.0, AUDIO_RATE));
        let mixed: Vec<i16> = a.iter().zip(&b).map(|(x, y)| x / 2 + y / 2).collect();
        assert!(!tone_dominates(&mixed, 440.0, AUDIO_RATE));
    }

    #[test]
    fn long_chirping_buffers_are_recognised() {
        let mut g = ToneGenerator::new(660.0).with_chirp(20.0, 4.0);
        let long: Vec<i16> = (0..100).flat_map(|_| g.next_frame()).collect();
        assert!(tone_dominates(&long, 660.0, AUDIO_RATE));
        assert!(!tone_dominates(&long, 440.0, AUDIO_RATE));
    }

    #[test]
    fn chirp_stays_detectable_over_time() {
        let mut g = ToneGenerator::new(440.0).with_chirp(25.0, 3.0);
        for i in 0..200 {
            let f = g.next_frame();
            assert!(tone_dominates(&f, 440.0, AUDIO_RATE), "frame {i}");
        }
    }
}
