//! One call: the peer connection plus the media stages wired to it.
//!
//! send:    capture hub → encoder thread → bounded channel → peer (video)
//!          capture hub → Opus task → peer (audio)
//! receive: peer → decoder thread → latest-frame mailbox (video)
//!          peer → Opus decoder thread → audio sink (audio)
//!
//! Everything stops when the call's cancellation token fires; the decoder checks it
//! before publishing, so a frame of an old match never reaches the screen.

use super::stats::Counters;
use crate::media::codec::opus::{packet_loss_perc_for, OpusDecoder, OpusEncoder};
use crate::media::codec::video::{VideoCodec, VideoDecoder, VideoEncoder};
use crate::media::frame::{RgbaFrame, VideoFrame, AUDIO_FRAME_SAMPLES};
use crate::media::jitter::{JitterBuffer, Pull};
use crate::media::mailbox::FrameMailbox;
use crate::media::pattern;
use crate::media::playback::AudioSink;
use crate::net::peer::{
    Peer, PeerEvent, PeerSettings, ReceivedMedia, RemoteSinks, AUDIO_FRAME_DURATION,
};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Video settings of the sending side.
#[derive(Clone, Debug)]
pub struct VideoSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
}

/// What a call needs from the engine.
#[derive(Clone)]
pub struct CallContext {
    pub counters: Arc<Counters>,
    pub remote_video: Arc<FrameMailbox<RgbaFrame>>,
    pub sink: Arc<Mutex<Box<dyn AudioSink>>>,
    pub video: VideoSettings,
    pub repaint: Arc<dyn Fn() + Send + Sync>,
    /// The capture hub's newest video frame.
    pub video_frames: watch::Receiver<Option<Arc<VideoFrame>>>,
    /// The capture hub's audio frames.
    pub audio_frames: broadcast::Sender<Arc<Vec<i16>>>,
}

pub struct Call {
    pub match_id: String,
    pub peer: Peer,
    pub events: mpsc::Receiver<PeerEvent>,
    cancel: CancellationToken,
    force_keyframe: Arc<AtomicBool>,
    /// The encoder's bitrate target (bits/s), adjusted from the partner's loss reports.
    bitrate: Arc<AtomicU32>,
    /// The Opus encoder's expected loss (%), from the partner's reports on our audio: it
    /// decides how much in-band FEC each packet carries.
    audio_loss_perc: Arc<AtomicI32>,
    sending: bool,
    ctx: CallContext,
}

/// What `OpusEncoder::new` plans for before the first receiver report (5 %).
const INITIAL_AUDIO_LOSS_PERC: i32 = 5;

fn now_ms() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0)
}

impl Call {
    /// Builds the peer connection and starts the receive side; sending starts once
    /// the connection is up ([`Call::connected`]).
    pub async fn start(
        match_id: String,
        settings: &PeerSettings,
        ctx: CallContext,
    ) -> anyhow::Result<Self> {
        let (events_tx, events) = mpsc::channel(256);
        let (video_tx, video_rx) = std::sync::mpsc::sync_channel::<ReceivedMedia>(16);
        let (audio_tx, audio_rx) = std::sync::mpsc::sync_channel::<ReceivedMedia>(64);
        let remote_codec = Arc::new(Mutex::new(None));
        let peer = Peer::new(
            settings,
            events_tx,
            RemoteSinks {
                video: video_tx,
                audio: audio_tx,
                video_codec: Arc::clone(&remote_codec),
            },
        )
        .await?;
        ctx.counters.match_started(&match_id);
        let cancel = CancellationToken::new();
        let call = Self {
            match_id,
            peer,
            events,
            cancel,
            force_keyframe: Arc::new(AtomicBool::new(true)),
            bitrate: Arc::new(AtomicU32::new(ctx.video.bitrate_bps)),
            audio_loss_perc: Arc::new(AtomicI32::new(INITIAL_AUDIO_LOSS_PERC)),
            sending: false,
            ctx,
        };
        call.spawn_video_decoder(video_rx, remote_codec)?;
        call.spawn_audio_decoder(audio_rx)?;
        Ok(call)
    }

    /// The connection is up: start encoding and sending, opening with a keyframe.
    pub fn connected(&mut self) {
        if self.sending {
            return;
        }
        self.sending = true;
        self.force_keyframe.store(true, Relaxed);
        match self.peer.video_codec() {
            Some(codec) => {
                self.ctx
                    .counters
                    .set_video_codec(&self.match_id, Some(codec));
                if let Err(e) = self.spawn_video_sender(codec) {
                    tracing::error!("cannot start video sending: {e:#}");
                }
            }
            // Not a failed call: the partner (e.g. a browser without H.264 talking to a
            // build without VP8) shares no video codec, so the call is audio only.
            None => self.ctx.counters.set_video_codec(&self.match_id, None),
        }
        self.spawn_audio_sender();
    }

    /// Retargets the video encoder (applied before the next frame).
    pub fn set_bitrate(&self, bps: u32) {
        self.bitrate.store(bps, Relaxed);
    }

    /// The partner's latest report of the fraction of our audio it lost (0‥1).
    pub fn set_audio_loss(&self, fraction_lost: f64) {
        self.audio_loss_perc
            .store(packet_loss_perc_for(fraction_lost), Relaxed);
    }

    pub fn request_keyframe_from_us(&self) {
        self.ctx
            .counters
            .keyframe_requests_received
            .fetch_add(1, Relaxed);
        self.force_keyframe.store(true, Relaxed);
    }

    pub async fn close(self) {
        self.cancel.cancel();
        self.peer.close().await;
    }

    fn spawn_video_sender(&self, codec: VideoCodec) -> anyhow::Result<()> {
        let mut frames = self.ctx.video_frames.clone();
        frames.mark_unchanged();
        let (enc_tx, mut enc_rx) = mpsc::channel::<(Bytes, bool)>(4);
        let v = self.ctx.video.clone();
        let cancel = self.cancel.clone();
        let force = Arc::clone(&self.force_keyframe);
        let bitrate = Arc::clone(&self.bitrate);
        let counters = Arc::clone(&self.ctx.counters);
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("video-encode".into())
            .spawn(move || {
                let mut encoder =
                    match VideoEncoder::new(codec, v.width, v.height, v.fps, v.bitrate_bps) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!("{codec} encoder: {e:#}");
                            return;
                        }
                    };
                while !cancel.is_cancelled() {
                    let changed = rt.block_on(async {
                        tokio::time::timeout(Duration::from_millis(200), frames.changed()).await
                    });
                    match changed {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break, // capture stopped
                        Err(_) => continue,  // no frame for a while; check cancel
                    }
                    let Some(frame) = frames.borrow_and_update().clone() else {
                        continue;
                    };
                    let target = bitrate.load(Relaxed);
                    if target != encoder.bitrate_bps() {
                        match encoder.set_bitrate(target) {
                            Ok(_) => tracing::debug!(target, "video bitrate adapted"),
                            Err(e) => tracing::warn!("cannot change the bitrate: {e:#}"),
                        }
                    }
                    if force.swap(false, Relaxed) {
                        encoder.force_keyframe();
                    }
                    match encoder.encode(&frame) {
                        Ok(Some(encoded)) => {
                            counters.frames_encoded.fetch_add(1, Relaxed);
                            let key = encoded.keyframe;
                            if enc_tx.try_send((Bytes::from(encoded.data), key)).is_err() {
                                // The network side is behind: drop this frame, and restart
                                // the picture chain with a keyframe so the partner recovers.
                                counters.frames_dropped.fetch_add(1, Relaxed);
                                force.store(true, Relaxed);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("{codec} encode failed: {e:#}"),
                    }
                }
            })?;
        let peer = self.peer.clone();
        let counters = Arc::clone(&self.ctx.counters);
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => break,
                    item = enc_rx.recv() => item,
                };
                let Some((data, key)) = item else { break };
                let len = data.len() as u64;
                match peer.send_video(data).await {
                    Ok(()) => {
                        counters.frames_sent.fetch_add(1, Relaxed);
                        counters.video_bytes_sent.fetch_add(len, Relaxed);
                        if key {
                            counters.keyframes_sent.fetch_add(1, Relaxed);
                        }
                    }
                    Err(e) => {
                        if cancel.is_cancelled() {
                            break;
                        }
                        tracing::debug!("video send: {e:#}");
                    }
                }
            }
        });
        Ok(())
    }

    fn spawn_audio_sender(&self) {
        let mut audio = self.ctx.audio_frames.subscribe();
        let peer = self.peer.clone();
        let counters = Arc::clone(&self.ctx.counters);
        let cancel = self.cancel.clone();
        let loss = Arc::clone(&self.audio_loss_perc);
        tokio::spawn(async move {
            let mut planned_loss = INITIAL_AUDIO_LOSS_PERC;
            let mut encoder = match OpusEncoder::new() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("Opus encoder: {e:#}");
                    return;
                }
            };
            loop {
                let pcm = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = audio.recv() => match r {
                        Ok(pcm) => pcm,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!("audio sender lagged by {n} frames");
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                };
                let reported = loss.load(Relaxed);
                if reported != planned_loss {
                    match encoder.set_packet_loss_perc(reported) {
                        Ok(()) => {
                            tracing::debug!(reported, "Opus FEC follows the reported loss");
                            planned_loss = reported;
                        }
                        Err(e) => tracing::warn!("Opus loss setting: {e:#}"),
                    }
                }
                let packet = match encoder.encode(&pcm) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("Opus encode failed: {e:#}");
                        continue;
                    }
                };
                match peer.send_audio(Bytes::from(packet)).await {
                    Ok(()) => {
                        counters.audio_frames_sent.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        if cancel.is_cancelled() {
                            break;
                        }
                        tracing::debug!("audio send: {e:#}");
                    }
                }
            }
        });
    }

    /// The decoder follows the codec of the partner's track (`remote_codec`, set when
    /// the track arrives), so it is made on the first frame and re-made if that changes.
    fn spawn_video_decoder(
        &self,
        rx: std::sync::mpsc::Receiver<ReceivedMedia>,
        remote_codec: Arc<Mutex<Option<VideoCodec>>>,
    ) -> anyhow::Result<()> {
        let cancel = self.cancel.clone();
        let ctx = self.ctx.clone();
        let match_id = self.match_id.clone();
        let peer = self.peer.clone();
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("video-decode".into())
            .spawn(move || {
                let mut decoder: Option<VideoDecoder> = None;
                let mut last_request = Instant::now() - Duration::from_secs(10);
                let mut request_keyframe = |why: &str| {
                    if last_request.elapsed() >= Duration::from_millis(500) {
                        last_request = Instant::now();
                        tracing::debug!("asking for a keyframe: {why}");
                        let peer = peer.clone();
                        rt.spawn(async move { peer.request_keyframe().await });
                    }
                };
                while !cancel.is_cancelled() {
                    let media = match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(m) => m,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    ctx.counters
                        .video_bytes_received
                        .fetch_add(media.data.len() as u64, Relaxed);
                    if media.dropped_before > 0 {
                        request_keyframe("packets lost");
                    }
                    let codec = (*remote_codec.lock().unwrap_or_else(PoisonError::into_inner))
                        .unwrap_or(VideoCodec::H264);
                    if decoder.as_ref().map(VideoDecoder::codec) != Some(codec) {
                        match VideoDecoder::new(codec) {
                            Ok(d) => decoder = Some(d),
                            Err(e) => {
                                tracing::error!("{codec} decoder: {e:#}");
                                break;
                            }
                        }
                    }
                    let Some(decoder) = decoder.as_mut() else {
                        break;
                    };
                    match decoder.decode(&media.data) {
                        Ok(Some(frame)) => {
                            let stamp =
                                pattern::read_stamp_rgba(&frame.data, frame.width, frame.height)
                                    .map(|s| (s.seq, f64::from(pattern::latency_ms(&s, now_ms()))));
                            if cancel.is_cancelled() {
                                break;
                            }
                            ctx.counters.frame_decoded(&match_id, stamp);
                            ctx.remote_video.put(frame);
                            (ctx.repaint)();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            ctx.counters.decode_errors.fetch_add(1, Relaxed);
                            tracing::debug!("{codec} decode failed: {e:#}");
                            request_keyframe("decode error");
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// Opus packets → decoder (with FEC/concealment for gaps) → jitter buffer → a
    /// playout thread that hands the sink one 20 ms frame every 20 ms.
    fn spawn_audio_decoder(
        &self,
        rx: std::sync::mpsc::Receiver<ReceivedMedia>,
    ) -> anyhow::Result<()> {
        let jitter: Arc<Mutex<JitterBuffer<Vec<i16>>>> =
            Arc::new(Mutex::new(JitterBuffer::default()));
        let cancel = self.cancel.clone();
        let ctx = self.ctx.clone();
        let match_id = self.match_id.clone();
        let buffer = Arc::clone(&jitter);
        std::thread::Builder::new()
            .name("audio-decode".into())
            .spawn(move || {
                let mut decoder = match OpusDecoder::new() {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!("Opus decoder: {e:#}");
                        return;
                    }
                };
                let frame_ts = AUDIO_FRAME_SAMPLES as u32;
                // RTP timestamps advance 960 per 20 ms frame: that is the frame's number.
                let seq_of = |ts: u32| (ts / frame_ts) as u16;
                let push = |ts: u32, pcm: Vec<i16>| {
                    buffer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(seq_of(ts), ts, pcm);
                };
                let mut last_ts: Option<u32> = None;
                while !cancel.is_cancelled() {
                    let media = match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(m) => m,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    // Conceal up to 100 ms of lost frames; the last missing one comes
                    // back from this packet's in-band FEC.
                    if let Some(prev) = last_ts {
                        let gap = media.rtp_timestamp.wrapping_sub(prev) / frame_ts;
                        if (2..=6).contains(&gap) {
                            for i in 1..gap {
                                let pcm = if i == gap - 1 {
                                    decoder.decode_fec(&media.data)
                                } else {
                                    decoder.decode_lost()
                                };
                                if let Ok(pcm) = pcm {
                                    ctx.counters.audio_frames_concealed.fetch_add(1, Relaxed);
                                    push(prev.wrapping_add(i * frame_ts), pcm);
                                }
                            }
                        }
                    }
                    last_ts = Some(media.rtp_timestamp);
                    match decoder.decode(&media.data) {
                        Ok(pcm) => {
                            ctx.counters.audio_decoded(&match_id, &pcm);
                            push(media.rtp_timestamp, pcm);
                        }
                        Err(e) => tracing::debug!("Opus decode failed: {e:#}"),
                    }
                }
            })?;
        let cancel = self.cancel.clone();
        let ctx = self.ctx.clone();
        std::thread::Builder::new()
            .name("audio-playout".into())
            .spawn(move || {
                let silence = vec![0i16; AUDIO_FRAME_SAMPLES];
                let mut last: Option<Vec<i16>> = None;
                let start = Instant::now();
                let mut tick: u32 = 0;
                while !cancel.is_cancelled() {
                    tick = tick.wrapping_add(1);
                    let due = start + AUDIO_FRAME_DURATION * tick;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let pulled = jitter.lock().unwrap_or_else(PoisonError::into_inner).pull();
                    match pulled {
                        Pull::Frame { frame, .. } => {
                            play(&ctx, &frame);
                            last = Some(frame);
                        }
                        // A frame that never came: fade the last one rather than click.
                        Pull::Missing { .. } => {
                            let faded: Vec<i16> = last
                                .take()
                                .map(|f| f.iter().map(|s| s / 2).collect())
                                .unwrap_or_else(|| silence.clone());
                            play(&ctx, &faded);
                            last = Some(faded);
                        }
                        Pull::Buffering => {}
                    }
                }
            })?;
        Ok(())
    }
}

fn play(ctx: &CallContext, pcm: &[i16]) {
    ctx.sink
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .play(pcm);
}

impl Drop for Call {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.ctx.counters.match_ended(&self.match_id);
    }
}
