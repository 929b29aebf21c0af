//! The video codec of a call, chosen during negotiation: H.264 when both sides have it
//! (cheaper, hardware friendly, what every browser can decode), VP8 otherwise. One
//! encoder and one decoder type for the call pipeline, whatever the codec.

use super::h264::{H264Decoder, H264Encoder};
#[cfg(feature = "vp8")]
use super::vp8::{Vp8Decoder, Vp8Encoder};
use crate::media::frame::{EncodedVideo, RgbaFrame, VideoFrame};
use anyhow::Result;

/// A video codec this app can speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Vp8,
}

impl VideoCodec {
    /// The codecs this build supports, most preferred first.
    pub fn supported() -> &'static [VideoCodec] {
        #[cfg(feature = "vp8")]
        {
            &[VideoCodec::H264, VideoCodec::Vp8]
        }
        #[cfg(not(feature = "vp8"))]
        {
            &[VideoCodec::H264]
        }
    }

    /// The name used in the headless JSON (`per_match[].video_codec`) and the UI.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H264",
            VideoCodec::Vp8 => "VP8",
        }
    }

    /// From an SDP encoding name or MIME type (`H264`, `video/VP8`, any case).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.rsplit('/').next().unwrap_or(name);
        if name.eq_ignore_ascii_case("h264") {
            Some(VideoCodec::H264)
        } else if name.eq_ignore_ascii_case("vp8") {
            Some(VideoCodec::Vp8)
        } else {
            None
        }
    }

    pub fn is_supported(self) -> bool {
        Self::supported().contains(&self)
    }
}

/// `--video-codec`: which video codecs a call may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VideoCodecChoice {
    /// H.264 when the partner has it, else VP8.
    #[default]
    Auto,
    /// H.264 only (partners without it get an audio-only call).
    H264,
    /// VP8 only.
    Vp8,
}

impl VideoCodecChoice {
    /// The codecs to offer and accept, most preferred first (only what this build has).
    pub fn codecs(self) -> Vec<VideoCodec> {
        let wanted: &[VideoCodec] = match self {
            Self::Auto => VideoCodec::supported(),
            Self::H264 => &[VideoCodec::H264],
            Self::Vp8 => &[VideoCodec::Vp8],
        };
        wanted
            .iter()
            .copied()
            .filter(|c| c.is_supported())
            .collect()
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The encoder of the outgoing video.
pub enum VideoEncoder {
    // Boxed: openh264's encoder state is ~7 KiB, libvpx's lives on the C heap.
    H264(Box<H264Encoder>),
    #[cfg(feature = "vp8")]
    Vp8(Vp8Encoder),
}

impl VideoEncoder {
    pub fn new(
        codec: VideoCodec,
        width: u32,
        height: u32,
        fps: u32,
        bitrate_bps: u32,
    ) -> Result<Self> {
        match codec {
            VideoCodec::H264 => Ok(Self::H264(Box::new(H264Encoder::new(
                width,
                height,
                fps,
                bitrate_bps,
            )?))),
            #[cfg(feature = "vp8")]
            VideoCodec::Vp8 => Ok(Self::Vp8(Vp8Encoder::new(width, height, fps, bitrate_bps)?)),
            #[cfg(not(feature = "vp8"))]
            VideoCodec::Vp8 => anyhow::bail!("this build has no VP8 (feature `vp8` off)"),
        }
    }

    pub fn codec(&self) -> VideoCodec {
        match self {
            Self::H264(_) => VideoCodec::H264,
            #[cfg(feature = "vp8")]
            Self::Vp8(_) => VideoCodec::Vp8,
        }
    }

    pub fn bitrate_bps(&self) -> u32 {
        match self {
            Self::H264(e) => e.settings().bitrate_bps,
            #[cfg(feature = "vp8")]
            Self::Vp8(e) => e.bitrate_bps(),
        }
    }

    /// Retargets the bitrate; returns whether the encoder changed it.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<bool> {
        match self {
            Self::H264(e) => e.set_bitrate(bitrate_bps),
            #[cfg(feature = "vp8")]
            Self::Vp8(e) => e.set_bitrate(bitrate_bps),
        }
    }

    pub fn force_keyframe(&mut self) {
        match self {
            Self::H264(e) => e.force_keyframe(),
            #[cfg(feature = "vp8")]
            Self::Vp8(e) => e.force_keyframe(),
        }
    }

    /// `Ok(None)` when rate control skipped the frame.
    pub fn encode(&mut self, frame: &VideoFrame) -> Result<Option<EncodedVideo>> {
        match self {
            Self::H264(e) => e.encode(frame),
            #[cfg(feature = "vp8")]
            Self::Vp8(e) => e.encode(frame),
        }
    }
}

/// The decoder of the partner's video.
pub enum VideoDecoder {
    H264(H264Decoder),
    #[cfg(feature = "vp8")]
    Vp8(Vp8Decoder),
}

impl VideoDecoder {
    pub fn new(codec: VideoCodec) -> Result<Self> {
        match codec {
            VideoCodec::H264 => Ok(Self::H264(H264Decoder::new()?)),
            #[cfg(feature = "vp8")]
            VideoCodec::Vp8 => Ok(Self::Vp8(Vp8Decoder::new()?)),
            #[cfg(not(feature = "vp8"))]
            VideoCodec::Vp8 => anyhow::bail!("this build has no VP8 (feature `vp8` off)"),
        }
    }

    pub fn codec(&self) -> VideoCodec {
        match self {
            Self::H264(_) => VideoCodec::H264,
            #[cfg(feature = "vp8")]
            Self::Vp8(_) => VideoCodec::Vp8,
        }
    }

    /// One frame (H.264: an Annex-B access unit) to RGBA; an error means damage.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<RgbaFrame>> {
        match self {
            Self::H264(d) => d.decode(data),
            #[cfg(feature = "vp8")]
            Self::Vp8(d) => d.decode(data),
        }
    }

    /// Like [`Self::decode`] but the I420 picture (quality measurements).
    pub fn decode_i420(&mut self, data: &[u8]) -> Result<Option<VideoFrame>> {
        match self {
            Self::H264(d) => d.decode_i420(data),
            #[cfg(feature = "vp8")]
            Self::Vp8(d) => d.decode_i420(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in [VideoCodec::H264, VideoCodec::Vp8] {
            assert_eq!(VideoCodec::from_name(c.name()), Some(c));
        }
        assert_eq!(VideoCodec::from_name("video/h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::from_name("video/VP8"), Some(VideoCodec::Vp8));
        assert_eq!(VideoCodec::from_name("VP9"), None);
        assert_eq!(VideoCodec::supported()[0], VideoCodec::H264);
    }

    #[test]
    fn every_supported_codec_encodes_and_decodes() {
        for &codec in VideoCodec::supported() {
            let mut enc = VideoEncoder::new(codec, 320, 240, 30, 400_000).expect("encoder");
            let mut dec = VideoDecoder::new(codec).expect("decoder");
            let mut decoded = 0;
            for seq in 0..10u64 {
                let frame = VideoFrame {
                    width: 320,
                    height: 240,
                    data: (0..320 * 240 * 3 / 2)
                        .map(|i| ((i as u64 + seq * 7) % 251) as u8)
                        .collect(),
                    capture_us: 1_000_000 + seq * 33_333,
                    seq,
                };
                if let Some(out) = enc.encode(&frame).expect("encode") {
                    if dec.decode(&out.data).expect("decode").is_some() {
                        decoded += 1;
                    }
                }
            }
            assert!(decoded >= 5, "{codec}: {decoded} frames decoded");
        }
    }
}
