//! VP8 encoder and decoder on libvpx (through the `peer-stream-vpx` wrapper), for
//! partners that lack H.264 — Firefox without its OpenH264 plugin, for one.
//!
//! Set up like the H.264 side so either codec behaves the same in a call: constant
//! bitrate with frame dropping instead of overshoot, a keyframe every ~2 s and on demand
//! (PLI/FIR), one thread, real-time speed (`cpu_used` 8). Unlike openh264, libvpx changes
//! its bitrate between frames without a new keyframe.

use crate::media::convert::i420_to_rgba;
use crate::media::frame::{EncodedVideo, RgbaFrame, VideoFrame};
use anyhow::{bail, Context, Result};
use peer_stream_vpx::{Codec, Decoder, Encoder, EncoderConfig};

/// VP8 encoder for one outgoing video stream.
pub struct Vp8Encoder {
    enc: Encoder,
    fps: u32,
    keyframe_pending: bool,
    epoch_us: Option<u64>,
    last_ts_ms: Option<i64>,
}

impl Vp8Encoder {
    pub fn new(width: u32, height: u32, fps: u32, bitrate_bps: u32) -> Result<Self> {
        let fps = fps.max(1);
        let enc = Encoder::new(EncoderConfig::new(
            Codec::Vp8,
            width,
            height,
            fps,
            bitrate_bps,
        ))
        .context("libvpx VP8 encoder")?;
        Ok(Self {
            enc,
            fps,
            keyframe_pending: false,
            epoch_us: None,
            last_ts_ms: None,
        })
    }

    pub fn bitrate_bps(&self) -> u32 {
        self.enc.config().bitrate_bps
    }

    pub fn force_keyframe(&mut self) {
        self.keyframe_pending = true;
    }

    /// Retargets the rate control from the next frame on. Returns whether it changed.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<bool> {
        if bitrate_bps == self.bitrate_bps() {
            return Ok(false);
        }
        self.enc.set_bitrate(bitrate_bps).context("VP8 bitrate")?;
        Ok(true)
    }

    /// Encodes one I420 frame; `Ok(None)` when rate control dropped it. A frame of
    /// another size re-creates the encoder (the next output is a keyframe).
    pub fn encode(&mut self, frame: &VideoFrame) -> Result<Option<EncodedVideo>> {
        let (w, h) = (frame.width, frame.height);
        if w == 0 || h == 0 || (w | h) & 1 != 0 {
            bail!("bad I420 frame: {w}x{h}");
        }
        let config = self.enc.config();
        if (config.width, config.height) != (w, h) {
            self.enc = Encoder::new(EncoderConfig::new(
                Codec::Vp8,
                w,
                h,
                self.fps,
                config.bitrate_bps,
            ))
            .context("libvpx VP8 encoder")?;
        }
        let ts = self.timestamp_ms(frame.capture_us);
        let force = std::mem::take(&mut self.keyframe_pending);
        let packets = self
            .enc
            .encode(&frame.data, ts, force)
            .context("VP8 encode")?;
        // Real-time mode yields at most one frame per picture.
        Ok(packets.into_iter().next().map(|p| EncodedVideo {
            data: p.data,
            keyframe: p.keyframe,
            capture_us: frame.capture_us,
        }))
    }

    /// Milliseconds since the first frame, strictly increasing (libvpx requires it).
    fn timestamp_ms(&mut self, capture_us: u64) -> i64 {
        let epoch = *self.epoch_us.get_or_insert(capture_us);
        let mut ts = i64::try_from(capture_us.saturating_sub(epoch) / 1000).unwrap_or(i64::MAX);
        if let Some(last) = self.last_ts_ms {
            if ts <= last {
                ts = last + 1;
            }
        }
        self.last_ts_ms = Some(ts);
        ts
    }
}

/// VP8 decoder for one incoming video stream.
pub struct Vp8Decoder {
    dec: Decoder,
}

impl Vp8Decoder {
    pub fn new() -> Result<Self> {
        Ok(Self {
            dec: Decoder::new(Codec::Vp8).context("libvpx VP8 decoder")?,
        })
    }

    /// Decodes one VP8 frame into RGBA; an error means damage: ask for a keyframe.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<RgbaFrame>> {
        Ok(self.decode_i420(data)?.map(|f| i420_to_rgba(&f)))
    }

    /// Like [`Self::decode`] but returns the I420 picture (for quality measurements).
    pub fn decode_i420(&mut self, data: &[u8]) -> Result<Option<VideoFrame>> {
        let image = self.dec.decode(data).context("VP8 decode")?;
        Ok(image.map(|img| VideoFrame {
            width: img.width,
            height: img.height,
            data: img.data,
            capture_us: 0,
            seq: 0,
        }))
    }
}

/// Whether a VP8 frame (as the encoder emits it, no RTP descriptor) is a keyframe:
/// bit 0 of the first byte of the frame tag is 0 for key frames (RFC 6386 §9.1).
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}
