//! Simple streaming sample-rate conversion and channel mixing for audio devices.
//!
//! The pipeline is fixed at 48 kHz mono; most devices offer that, but some only run at
//! 44.1 kHz or in stereo. Linear interpolation is crude for music, yet for a voice call
//! that is then squeezed through Opus at 32 kb/s it is inaudible and costs nothing,
//! which is why no resampling crate is pulled in.

/// Streaming linear-interpolation resampler for mono i16; keeps its phase between calls
/// so consecutive buffers join without clicks.
#[derive(Debug, Clone)]
pub struct LinearResampler {
    step: f64,
    /// Position of the next output sample, in input samples after `prev`.
    pos: f64,
    prev: i16,
    passthrough: bool,
}

impl LinearResampler {
    /// Converts from `from_hz` to `to_hz` (equal rates pass samples through untouched).
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        Self {
            step: f64::from(from_hz.max(1)) / f64::from(to_hz.max(1)),
            pos: 0.0,
            prev: 0,
            passthrough: from_hz == to_hz,
        }
    }

    /// Appends the resampled `input` to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        if input.is_empty() {
            return;
        }
        let n = input.len() as f64;
        // Index 0 is `prev`, index k ≥ 1 is input[k - 1].
        let at = |k: usize| -> f64 {
            if k == 0 {
                f64::from(self.prev)
            } else {
                f64::from(input[k - 1])
            }
        };
        while self.pos < n {
            let k = self.pos.floor() as usize;
            let frac = self.pos - k as f64;
            let v = at(k) + (at(k + 1) - at(k)) * frac;
            out.push(v.round().clamp(-32768.0, 32767.0) as i16);
            self.pos += self.step;
        }
        self.pos -= n;
        self.prev = input[input.len() - 1];
    }
}

/// Averages interleaved `channels`-channel samples down to mono.
pub fn downmix_to_mono(interleaved: &[i16], channels: usize, out: &mut Vec<i16>) {
    if channels <= 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    for frame in interleaved.chunks_exact(channels) {
        let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
        out.push((sum / channels as i32) as i16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_44100_to_48000_at_the_right_rate_without_clicks() {
        let mut r = LinearResampler::new(44_100, 48_000);
        let mut out = Vec::new();
        let input: Vec<i16> = (0..44_100)
            .map(|i| ((i as f64 * 0.05).sin() * 10_000.0) as i16)
            .collect();
        for chunk in input.chunks(441) {
            r.process(chunk, &mut out);
        }
        assert!((out.len() as i64 - 48_000).abs() <= 2, "{}", out.len());
        let max_step = out
            .windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max();
        assert!(max_step.unwrap_or(0) < 600, "{max_step:?}");
    }

    #[test]
    fn passthrough_and_downmix() {
        let mut r = LinearResampler::new(48_000, 48_000);
        let mut out = Vec::new();
        r.process(&[1, 2, 3], &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        let mut mono = Vec::new();
        downmix_to_mono(&[100, 200, -50, 50], 2, &mut mono);
        assert_eq!(mono, vec![150, 0]);
    }
}
