//! Capture that lives as long as the engine (so the home screen can show a preview and
//! a call starts without reopening the camera): one thread per source, publishing the
//! newest video frame to a watch channel (slow consumers skip frames, never queue them)
//! and every audio frame to a short broadcast ring.

use super::stats::Counters;
use crate::media::capture::{AudioSource, VideoSource};
use crate::media::frame::VideoFrame;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{broadcast, watch};

/// Shared switches the UI flips while capture runs.
#[derive(Default)]
pub struct CaptureControls {
    pub mic_muted: AtomicBool,
    pub camera_off: AtomicBool,
    /// RMS level of the last microphone frame, 0.0–1.0 (f32 bits), for the level meter.
    mic_level: AtomicU32,
    stop: AtomicBool,
}

impl CaptureControls {
    pub fn mic_level(&self) -> f32 {
        f32::from_bits(self.mic_level.load(Ordering::Relaxed))
    }
}

fn rms(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|s| f64::from(*s) * f64::from(*s)).sum();
    ((sum / pcm.len() as f64).sqrt() / f64::from(i16::MAX)) as f32
}

pub struct CaptureHub {
    pub video: watch::Receiver<Option<Arc<VideoFrame>>>,
    pub audio: broadcast::Sender<Arc<Vec<i16>>>,
    pub controls: Arc<CaptureControls>,
    pub video_name: String,
    pub video_synthetic: bool,
    pub audio_name: String,
    pub audio_synthetic: bool,
    threads: Vec<JoinHandle<()>>,
}

impl CaptureHub {
    pub fn start(
        mut video: Box<dyn VideoSource>,
        mut audio: Box<dyn AudioSource>,
        counters: Arc<Counters>,
    ) -> Self {
        let controls = Arc::new(CaptureControls::default());
        let (video_tx, video_rx) = watch::channel(None);
        let (audio_tx, _) = broadcast::channel(50);
        let video_name = video.name();
        let video_synthetic = video.is_synthetic();
        let audio_name = audio.name();
        let audio_synthetic = audio.is_synthetic();
        let mut threads = Vec::new();

        let c = Arc::clone(&controls);
        let spawn_video = std::thread::Builder::new()
            .name("capture-video".into())
            .spawn(move || {
                let mut failures = 0u32;
                while !c.stop.load(Ordering::Relaxed) {
                    match video.next_frame() {
                        Ok(mut frame) => {
                            failures = 0;
                            counters
                                .frames_captured
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if c.camera_off.load(Ordering::Relaxed) {
                                blank(&mut frame);
                            }
                            video_tx.send_replace(Some(Arc::new(frame)));
                        }
                        Err(e) => {
                            failures += 1;
                            if failures == 1 || failures.is_multiple_of(100) {
                                tracing::warn!("video capture failed ({failures}x): {e:#}");
                            }
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                }
            });
        let c = Arc::clone(&controls);
        let tx = audio_tx.clone();
        let spawn_audio = std::thread::Builder::new()
            .name("capture-audio".into())
            .spawn(move || {
                let mut failures = 0u32;
                while !c.stop.load(Ordering::Relaxed) {
                    match audio.next_frame() {
                        Ok(mut pcm) => {
                            failures = 0;
                            if c.mic_muted.load(Ordering::Relaxed) {
                                pcm.iter_mut().for_each(|s| *s = 0);
                            }
                            c.mic_level.store(rms(&pcm).to_bits(), Ordering::Relaxed);
                            // No receiver (no call) is fine: the frame is simply not needed.
                            let _ = tx.send(Arc::new(pcm));
                        }
                        Err(e) => {
                            failures += 1;
                            if failures == 1 || failures.is_multiple_of(100) {
                                tracing::warn!("audio capture failed ({failures}x): {e:#}");
                            }
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                }
            });
        for spawned in [spawn_video, spawn_audio] {
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!("cannot start a capture thread: {e}"),
            }
        }
        Self {
            video: video_rx,
            audio: audio_tx,
            controls,
            video_name,
            video_synthetic,
            audio_name,
            audio_synthetic,
            threads,
        }
    }

    pub fn stop(&mut self) {
        self.controls.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for CaptureHub {
    fn drop(&mut self) {
        self.controls.stop.store(true, Ordering::Relaxed);
    }
}

/// Camera off: a black picture keeps the stream (and its timing) alive.
fn blank(frame: &mut VideoFrame) {
    let luma = ((frame.width * frame.height) as usize).min(frame.data.len());
    let (y, uv) = frame.data.split_at_mut(luma);
    y.fill(16);
    uv.fill(128);
}
