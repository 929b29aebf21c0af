//! The picture and sound types that travel between media stages.

/// One raw picture in I420 (planar YUV 4:2:0): `width * height` luma bytes, then the
/// quarter-size U and V planes. Width and height are even. This is what cameras are
/// converted to and what the H.264 encoder takes.
#[derive(Clone, Debug)]
pub struct VideoFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Wall-clock capture time, microseconds since the Unix epoch.
    pub capture_us: u64,
    /// Capture sequence number (0, 1, 2, …).
    pub seq: u64,
}

/// One decoded picture ready for display: tightly packed RGBA, `width * height * 4` bytes.
#[derive(Clone, Debug)]
pub struct RgbaFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// One encoded H.264 access unit (Annex-B byte stream).
#[derive(Clone, Debug)]
pub struct EncodedVideo {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub capture_us: u64,
}

/// Audio is mono, 48 kHz, signed 16-bit, in 20 ms frames of this many samples.
pub const AUDIO_RATE: u32 = 48_000;
pub const AUDIO_FRAME_SAMPLES: usize = 960;
