//! A real microphone through cpal, delivered as 20 ms mono 48 kHz frames.
//!
//! The cpal callback (on the audio system's thread) converts whatever the device gives
//! (i16/f32/…, any channel count, any rate) to mono i16 at 48 kHz and hands each buffer
//! over a bounded channel; `next_frame` gathers 960 samples. If the consumer stalls,
//! buffers are dropped at the channel and the backlog is trimmed, so the microphone
//! never adds latency to the call.

use super::AudioSource;
use crate::media::audio_device::{self, choose_config, pick, Direction, StreamGuard};
use crate::media::device::AudioChoice;
use crate::media::frame::{AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use crate::media::resample::{downmix_to_mono, LinearResampler};
use anyhow::{anyhow, bail, Result};
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Buffers in flight between the callback and `next_frame`.
const CHANNEL_BUFFERS: usize = 32;
/// Backlog (in frames) beyond which old samples are discarded.
const MAX_BACKLOG_FRAMES: usize = 5;

/// An open microphone stream.
pub struct MicrophoneSource {
    name: String,
    rx: Receiver<Vec<i16>>,
    pending: VecDeque<i16>,
    dropped_buffers: Arc<AtomicU64>,
    _guard: StreamGuard,
}

impl MicrophoneSource {
    /// Opens the chosen input device and waits (up to 1.5 s) for its first buffer, so a
    /// device that opens but never delivers counts as a failure.
    pub fn open(choice: &AudioChoice) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<i16>>(CHANNEL_BUFFERS);
        let (name_tx, name_rx) = mpsc::channel::<String>();
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_cb = Arc::clone(&dropped);
        let choice = choice.clone();
        let guard = audio_device::spawn_stream("mic-stream", move || {
            let device = pick(Direction::Input, &choice)?;
            let name = device.name().unwrap_or_else(|_| "microphone".to_string());
            let (config, format) = choose_config(&device, Direction::Input)?;
            tracing::debug!(%name, ?config, ?format, "opening microphone");
            let stream = match format {
                SampleFormat::I16 => build::<i16>(&device, &config, tx, dropped_cb)?,
                SampleFormat::F32 => build::<f32>(&device, &config, tx, dropped_cb)?,
                SampleFormat::I32 => build::<i32>(&device, &config, tx, dropped_cb)?,
                SampleFormat::U16 => build::<u16>(&device, &config, tx, dropped_cb)?,
                SampleFormat::U8 => build::<u8>(&device, &config, tx, dropped_cb)?,
                SampleFormat::I8 => build::<i8>(&device, &config, tx, dropped_cb)?,
                SampleFormat::F64 => build::<f64>(&device, &config, tx, dropped_cb)?,
                other => bail!("unsupported microphone sample format {other:?}"),
            };
            stream
                .play()
                .map_err(|e| anyhow!("starting microphone: {e}"))?;
            let _ = name_tx.send(name);
            Ok(stream)
        })?;
        let name = name_rx
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_else(|_| "microphone".to_string());
        let first = rx
            .recv_timeout(Duration::from_millis(1500))
            .map_err(|_| anyhow!("microphone {name} opened but delivered no audio"))?;
        Ok(Self {
            name,
            rx,
            pending: first.into(),
            dropped_buffers: dropped,
            _guard: guard,
        })
    }

    /// Buffers the callback had to drop because nobody was reading.
    pub fn dropped_buffers(&self) -> u64 {
        self.dropped_buffers.load(Ordering::Relaxed)
    }
}

fn build<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    tx: SyncSender<Vec<i16>>,
    dropped: Arc<AtomicU64>,
) -> Result<cpal::Stream>
where
    T: SizedSample + Send + 'static,
    i16: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let mut resampler = LinearResampler::new(config.sample_rate.0, AUDIO_RATE);
    let mut interleaved: Vec<i16> = Vec::new();
    let mut mono: Vec<i16> = Vec::new();
    device
        .build_input_stream::<T, _, _>(
            config,
            move |data: &[T], _| {
                interleaved.clear();
                interleaved.extend(
                    data.iter()
                        .map(|&s| <i16 as FromSample<T>>::from_sample_(s)),
                );
                mono.clear();
                downmix_to_mono(&interleaved, channels, &mut mono);
                let mut out = Vec::with_capacity(mono.len() * 2);
                resampler.process(&mono, &mut out);
                if tx.try_send(out).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
            |e| tracing::warn!(error = %e, "microphone stream error"),
            None,
        )
        .map_err(|e| anyhow!("building microphone stream: {e}"))
}

impl AudioSource for MicrophoneSource {
    fn next_frame(&mut self) -> Result<Vec<i16>> {
        while self.pending.len() < AUDIO_FRAME_SAMPLES {
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(chunk) => self.pending.extend(chunk),
                Err(RecvTimeoutError::Timeout) => {
                    bail!("microphone {} delivered no audio for 1 s", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("microphone {} stream ended", self.name)
                }
            }
        }
        let excess = self
            .pending
            .len()
            .saturating_sub(MAX_BACKLOG_FRAMES * AUDIO_FRAME_SAMPLES);
        self.pending.drain(..excess);
        Ok(self.pending.drain(..AUDIO_FRAME_SAMPLES).collect())
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn is_synthetic(&self) -> bool {
        false
    }
}
