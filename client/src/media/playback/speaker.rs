//! A real speaker through cpal, fed from a small bounded ring.
//!
//! `play` converts 48 kHz mono to the device rate and appends to the ring; the device's
//! callback drains it, copying mono to every channel and applying the volume. If the
//! producer runs ahead (its clock is faster than the sound card's, or a burst arrived),
//! the oldest samples are dropped so latency stays bounded; if it runs behind, the
//! callback plays silence. Either way nothing blocks.

use super::null::{apply_gain, clamp_gain};
use super::AudioSink;
use crate::media::audio_device::{self, choose_config, pick, Direction, StreamGuard};
use crate::media::device::SinkChoice;
use crate::media::frame::AUDIO_RATE;
use crate::media::resample::LinearResampler;
use anyhow::{anyhow, bail, Result};
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ring size: 200 ms at the device rate.
const RING_MS: u32 = 200;

#[derive(Debug, Default)]
struct Shared {
    ring: Mutex<VecDeque<i16>>,
    /// f32 gain stored as bits so the callback reads it without locking.
    gain_bits: AtomicU32,
    overflow_samples: AtomicU64,
    underrun_callbacks: AtomicU64,
}

/// An open speaker stream.
pub struct SpeakerSink {
    name: String,
    shared: Arc<Shared>,
    resampler: LinearResampler,
    device_rate: u32,
    capacity: usize,
    scratch: Vec<i16>,
    _guard: StreamGuard,
}

impl SpeakerSink {
    pub fn open(choice: &SinkChoice) -> Result<Self> {
        let shared = Arc::new(Shared {
            gain_bits: AtomicU32::new(1.0f32.to_bits()),
            ..Shared::default()
        });
        let cb_shared = Arc::clone(&shared);
        let (info_tx, info_rx) = mpsc::channel::<(String, u32)>();
        let choice = choice.as_device_choice();
        let guard = audio_device::spawn_stream("speaker-stream", move || {
            let device = pick(Direction::Output, &choice)?;
            let name = device.name().unwrap_or_else(|_| "speaker".to_string());
            let (config, format) = choose_config(&device, Direction::Output)?;
            tracing::debug!(%name, ?config, ?format, "opening speaker");
            let stream = match format {
                SampleFormat::I16 => build::<i16>(&device, &config, cb_shared)?,
                SampleFormat::F32 => build::<f32>(&device, &config, cb_shared)?,
                SampleFormat::I32 => build::<i32>(&device, &config, cb_shared)?,
                SampleFormat::U16 => build::<u16>(&device, &config, cb_shared)?,
                SampleFormat::U8 => build::<u8>(&device, &config, cb_shared)?,
                SampleFormat::I8 => build::<i8>(&device, &config, cb_shared)?,
                SampleFormat::F64 => build::<f64>(&device, &config, cb_shared)?,
                other => bail!("unsupported speaker sample format {other:?}"),
            };
            stream
                .play()
                .map_err(|e| anyhow!("starting speaker: {e}"))?;
            let _ = info_tx.send((name, config.sample_rate.0));
            Ok(stream)
        })?;
        let (name, device_rate) = info_rx
            .recv_timeout(Duration::from_millis(100))
            .map_err(|_| anyhow!("speaker thread vanished"))?;
        let capacity = (device_rate * RING_MS / 1000) as usize;
        Ok(Self {
            name,
            shared,
            resampler: LinearResampler::new(AUDIO_RATE, device_rate),
            device_rate,
            capacity,
            scratch: Vec::new(),
            _guard: guard,
        })
    }

    /// Samples dropped because the ring was full, and callbacks that ran dry.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.shared.overflow_samples.load(Ordering::Relaxed),
            self.shared.underrun_callbacks.load(Ordering::Relaxed),
        )
    }
}

fn build<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    shared: Arc<Shared>,
) -> Result<cpal::Stream>
where
    T: SizedSample + FromSample<i16> + Send + 'static,
{
    let channels = usize::from(config.channels.max(1));
    device
        .build_output_stream::<T, _, _>(
            config,
            move |out: &mut [T], _| {
                let gain = f32::from_bits(shared.gain_bits.load(Ordering::Relaxed));
                let mut ring = shared.ring.lock().unwrap_or_else(|e| e.into_inner());
                let mut ran_dry = false;
                for frame in out.chunks_mut(channels) {
                    let s = match ring.pop_front() {
                        Some(s) => apply_gain(s, gain),
                        None => {
                            ran_dry = true;
                            0
                        }
                    };
                    frame.fill(T::from_sample_(s));
                }
                if ran_dry {
                    shared.underrun_callbacks.fetch_add(1, Ordering::Relaxed);
                }
            },
            |e| tracing::warn!(error = %e, "speaker stream error"),
            None,
        )
        .map_err(|e| anyhow!("building speaker stream: {e}"))
}

impl AudioSink for SpeakerSink {
    fn play(&mut self, frame: &[i16]) {
        self.scratch.clear();
        self.resampler.process(frame, &mut self.scratch);
        let mut ring = self.shared.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.extend(self.scratch.iter().copied());
        let excess = ring.len().saturating_sub(self.capacity);
        if excess > 0 {
            ring.drain(..excess);
            self.shared
                .overflow_samples
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn is_null(&self) -> bool {
        false
    }

    fn set_volume(&mut self, gain: f32) {
        self.shared
            .gain_bits
            .store(clamp_gain(gain).to_bits(), Ordering::Relaxed);
    }

    fn queued_ms(&self) -> u32 {
        let len = self.shared.ring.lock().map(|r| r.len()).unwrap_or(0);
        (len as u64 * 1000 / u64::from(self.device_rate.max(1))) as u32
    }
}
