//! H.264 encoder and decoder on openh264, set up for real-time calls with browsers.
//!
//! Choices, and why:
//! * **Constrained Baseline** — the profile every WebRTC endpoint must decode. The SPS
//!   says `42c01e` at 640×480 and `42c01f` at 1280×720 (openh264 picks the level from
//!   size and rate); browsers offering `42e01f` accept both.
//! * **Bitrate rate control** with the caller's target; openh264's default is a 120 kb/s
//!   quality mode that looks awful at 640×480.
//! * **Frame skipping on** — without it openh264 cannot hold the target when the picture
//!   gets busy (it warns "bitrate can't be controlled" and overshoots several times),
//!   and on a real network overshoot means loss. Skipped frames come back as
//!   `Ok(None)`. Real timestamps are passed in so the rate controller knows the pace.
//! * **Scene-change detection off** — it inserted IDRs every ~16 frames on synthetic
//!   content; keyframes should come from the intra period or from a PLI.
//! * **Intra period ≈ 2 s** so a receiver that missed a keyframe recovers even when
//!   PLIs never reach us, and [`H264Encoder::force_keyframe`] for PLI/FIR.
//! * **One thread** — the machine also decodes, renders and runs the network; a
//!   single encoder thread is predictable and fast enough (see the `codec-bench` binary).
//!
//! Output is an Annex-B byte stream (NAL units behind `00 00 00 01` start codes); every
//! IDR access unit carries SPS and PPS in front, so any keyframe can start decoding.
//! Splitting into RTP packets (packetization-mode 1) is the RTP layer's job.

use crate::media::frame::{EncodedVideo, RgbaFrame, VideoFrame};
use anyhow::{anyhow, bail, Result};
use openh264::decoder::{Decoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::{OpenH264API, Timestamp};

/// NAL unit types we care about.
pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;

/// Settings of an [`H264Encoder`]; [`H264Encoder::new`] fills in the defaults above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H264Settings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// Keyframe interval in frames (0 = only on demand).
    pub intra_period: u32,
    /// Let the rate controller drop frames to hold the bitrate.
    pub skip_frames: bool,
}

/// H.264 encoder for one outgoing video stream.
pub struct H264Encoder {
    settings: H264Settings,
    enc: Encoder,
    keyframe_pending: bool,
    /// First capture time seen (µs); encoder timestamps count from here.
    epoch_us: Option<u64>,
    last_ts_ms: Option<u64>,
    frames_in: u64,
    frames_out: u64,
    skipped: u64,
}

impl H264Encoder {
    /// An encoder for `width`×`height` (even) pictures at `fps` frames per second aiming
    /// at `bitrate_bps`, with a keyframe every ~2 s.
    pub fn new(width: u32, height: u32, fps: u32, bitrate_bps: u32) -> Result<Self> {
        Self::with_settings(H264Settings {
            width,
            height,
            fps: fps.max(1),
            bitrate_bps,
            intra_period: fps.max(1) * 2,
            skip_frames: true,
        })
    }

    /// An encoder with explicit settings.
    pub fn with_settings(settings: H264Settings) -> Result<Self> {
        if settings.width == 0
            || settings.height == 0
            || (settings.width | settings.height) & 1 != 0
        {
            bail!(
                "H.264 needs a non-zero even size, got {}x{}",
                settings.width,
                settings.height
            );
        }
        Ok(Self {
            settings,
            enc: make_encoder(&settings)?,
            keyframe_pending: false,
            epoch_us: None,
            last_ts_ms: None,
            frames_in: 0,
            frames_out: 0,
            skipped: 0,
        })
    }

    pub fn settings(&self) -> H264Settings {
        self.settings
    }

    /// Makes the next encoded frame an IDR (with SPS/PPS), e.g. on a PLI from the far side.
    pub fn force_keyframe(&mut self) {
        self.keyframe_pending = true;
    }

    /// Changes the target bitrate. openh264's safe API cannot retune a running encoder,
    /// so this re-creates it: the next frame becomes a keyframe, which is why small
    /// changes (under 10 %) are ignored. Returns whether the encoder was re-created.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<bool> {
        let old = f64::from(self.settings.bitrate_bps.max(1));
        if (f64::from(bitrate_bps) - old).abs() / old < 0.10 {
            return Ok(false);
        }
        let settings = H264Settings {
            bitrate_bps,
            ..self.settings
        };
        self.enc = make_encoder(&settings)?;
        self.settings = settings;
        // The fresh encoder starts with an IDR anyway; the timestamp base stays.
        self.keyframe_pending = false;
        Ok(true)
    }

    /// Encodes one frame. `Ok(None)` when the rate controller skipped it. A frame of a
    /// different size re-creates the encoder at that size (and yields a keyframe).
    pub fn encode(&mut self, frame: &VideoFrame) -> Result<Option<EncodedVideo>> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        if frame.data.len() < w * h * 3 / 2 || w == 0 || h == 0 || (w | h) & 1 != 0 {
            bail!(
                "bad I420 frame: {}x{} with {} bytes",
                frame.width,
                frame.height,
                frame.data.len()
            );
        }
        if (frame.width, frame.height) != (self.settings.width, self.settings.height) {
            let settings = H264Settings {
                width: frame.width,
                height: frame.height,
                ..self.settings
            };
            self.enc = make_encoder(&settings)?;
            self.settings = settings;
            self.keyframe_pending = false;
        }
        self.frames_in += 1;
        let ts = self.timestamp_ms(frame.capture_us);
        if self.keyframe_pending {
            self.enc.force_intra_frame();
        }
        let (y, rest) = frame.data.split_at(w * h);
        let (u, v) = rest.split_at(w * h / 4);
        let yuv = YUVSlices::new((y, u, &v[..w * h / 4]), (w, h), (w, w / 2, w / 2));
        let bitstream = self
            .enc
            .encode_at(&yuv, Timestamp::from_millis(ts))
            .map_err(|e| anyhow!("openh264 encode failed: {e}"))?;
        let frame_type = bitstream.frame_type();
        let data = bitstream.to_vec();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) || data.is_empty() {
            self.skipped += 1;
            return Ok(None);
        }
        // Only an IDR is a place a decoder can start; a plain I slice is not.
        let keyframe = nal_types(&data).any(|t| t == NAL_IDR);
        if keyframe {
            self.keyframe_pending = false;
        }
        self.frames_out += 1;
        Ok(Some(EncodedVideo {
            data,
            keyframe,
            capture_us: frame.capture_us,
        }))
    }

    /// Frames given to [`Self::encode`], frames that produced output, frames skipped.
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.frames_in, self.frames_out, self.skipped)
    }

    /// Milliseconds since the first frame, never going backwards (the wall clock may).
    fn timestamp_ms(&mut self, capture_us: u64) -> u64 {
        let epoch = *self.epoch_us.get_or_insert(capture_us);
        let mut ts = capture_us.saturating_sub(epoch) / 1000;
        if let Some(last) = self.last_ts_ms {
            if ts <= last {
                ts = last + 1;
            }
        }
        self.last_ts_ms = Some(ts);
        ts
    }
}

fn make_encoder(s: &H264Settings) -> Result<Encoder> {
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(s.bitrate_bps))
        .max_frame_rate(FrameRate::from_hz(s.fps as f32))
        .rate_control_mode(RateControlMode::Bitrate)
        .skip_frames(s.skip_frames)
        .usage_type(UsageType::CameraVideoRealTime)
        .profile(Profile::Baseline)
        .complexity(Complexity::Medium)
        .sps_pps_strategy(SpsPpsStrategy::ConstantId)
        .scene_change_detect(false)
        .background_detection(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(s.intra_period))
        .num_threads(1);
    Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| anyhow!("openh264 encoder init failed: {e}"))
}

/// Types of the NAL units in an Annex-B buffer, in order.
pub fn nal_types(annex_b: &[u8]) -> impl Iterator<Item = u8> + '_ {
    nal_units(annex_b).filter_map(|n| n.first().map(|b| b & 0x1f))
}

/// The NAL units of an Annex-B buffer, start codes removed.
pub fn nal_units(annex_b: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    // Positions just after each 00 00 01 start code (a 4-byte code ends the same way).
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= annex_b.len() {
        if annex_b[i] == 0 && annex_b[i + 1] == 0 && annex_b[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // Trim the start code and any zero bytes before it.
            let mut e = s - 3;
            while e > 0 && annex_b[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(annex_b.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| e > s)
        .map(move |(s, e)| &annex_b[s..e])
}

/// H.264 decoder for one incoming video stream.
pub struct H264Decoder {
    dec: Decoder,
    frames: u64,
    errors: u64,
}

impl H264Decoder {
    pub fn new() -> Result<Self> {
        let dec = Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
            .map_err(|e| anyhow!("openh264 decoder init failed: {e}"))?;
        Ok(Self {
            dec,
            frames: 0,
            errors: 0,
        })
    }

    /// Decodes one Annex-B access unit (or any run of complete NAL units) into RGBA.
    /// `Ok(None)` when no picture is ready yet (e.g. only SPS/PPS). An error means the
    /// stream is damaged: ask the sender for a keyframe.
    pub fn decode(&mut self, annex_b: &[u8]) -> Result<Option<RgbaFrame>> {
        self.decode_with(annex_b, |yuv| {
            let (w, h) = yuv.dimensions();
            let mut data = vec![0u8; w * h * 4];
            yuv.write_rgba8(&mut data);
            RgbaFrame {
                width: w as u32,
                height: h as u32,
                data,
            }
        })
    }

    /// Like [`Self::decode`] but returns the I420 picture (tight planes, `seq` and
    /// `capture_us` zero): for quality measurements and for re-encoding.
    pub fn decode_i420(&mut self, annex_b: &[u8]) -> Result<Option<VideoFrame>> {
        self.decode_with(annex_b, |yuv| {
            let (w, h) = yuv.dimensions();
            let (sy, su, sv) = yuv.strides();
            let mut data = Vec::with_capacity(w * h * 3 / 2);
            for row in 0..h {
                data.extend_from_slice(&yuv.y()[row * sy..row * sy + w]);
            }
            for row in 0..h / 2 {
                data.extend_from_slice(&yuv.u()[row * su..row * su + w / 2]);
            }
            for row in 0..h / 2 {
                data.extend_from_slice(&yuv.v()[row * sv..row * sv + w / 2]);
            }
            VideoFrame {
                width: w as u32,
                height: h as u32,
                data,
                capture_us: 0,
                seq: 0,
            }
        })
    }

    fn decode_with<R>(
        &mut self,
        annex_b: &[u8],
        convert: impl FnOnce(&openh264::decoder::DecodedYUV<'_>) -> R,
    ) -> Result<Option<R>> {
        match self.dec.decode(annex_b) {
            Ok(Some(yuv)) => {
                self.frames += 1;
                Ok(Some(convert(&yuv)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.errors += 1;
                Err(anyhow!("openh264 decode failed: {e}"))
            }
        }
    }

    /// Pictures decoded and decode errors so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.frames, self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nal_splitting_handles_3_and_4_byte_start_codes() {
        let buf = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let units: Vec<&[u8]> = nal_units(&buf).collect();
        assert_eq!(
            units,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
        assert_eq!(nal_types(&buf).collect::<Vec<_>>(), vec![7, 8, 5]);
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn rejects_odd_sizes() {
        assert!(H264Encoder::new(641, 480, 30, 1_000_000).is_err());
    }
}
