//! A small safe wrapper around libvpx: a real-time VP8 (or VP9) encoder that takes I420
//! pictures and a decoder that gives them back.
//!
//! Why a crate of our own: the workspace forbids `unsafe`, and FFI needs it. Keeping every
//! call into C in this one file — each `unsafe` block with the invariant it relies on —
//! lets the rest of the app stay `forbid(unsafe_code)`. The maintained high-level binding
//! (`vpx-rs`) needs libvpx ≥ 1.13, newer than Debian 12's 1.12; this wrapper uses only API
//! that has been stable since libvpx 1.8, through `env-libvpx-sys`'s raw bindings.
//!
//! Only what a video call needs is exposed: constant-bitrate real-time encoding with
//! keyframes on demand, a bitrate that can change between frames, and decoding to tightly
//! packed I420.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_uint, c_ulong};
use std::ptr;
use vpx_sys as ffi;

/// Which libvpx codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    Vp9,
}

impl Codec {
    fn encoder_iface(self) -> *const ffi::vpx_codec_iface_t {
        // SAFETY: these functions only return a pointer to a static interface table.
        unsafe {
            match self {
                Codec::Vp8 => ffi::vpx_codec_vp8_cx() as *const _,
                Codec::Vp9 => ffi::vpx_codec_vp9_cx() as *const _,
            }
        }
    }

    fn decoder_iface(self) -> *const ffi::vpx_codec_iface_t {
        // SAFETY: as above, a pointer to a static interface table.
        unsafe {
            match self {
                Codec::Vp8 => ffi::vpx_codec_vp8_dx() as *const _,
                Codec::Vp9 => ffi::vpx_codec_vp9_dx() as *const _,
            }
        }
    }
}

/// What went wrong in libvpx (its own error text when it gave one).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("libvpx {call} failed: {message}")]
    Codec { call: &'static str, message: String },
    #[error("bad picture: {0}")]
    BadInput(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Encoder settings. [`EncoderConfig::new`] fills in real-time defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// At most this many frames between keyframes (0: only on demand).
    pub keyframe_interval: u32,
    /// libvpx's speed knob for real-time encoding (VP8: 4..16, higher is faster and
    /// blurrier). 8 keeps 640×480@30 well under a fifth of a core here.
    pub cpu_used: i32,
    pub threads: u32,
}

impl EncoderConfig {
    pub fn new(codec: Codec, width: u32, height: u32, fps: u32, bitrate_bps: u32) -> Self {
        let fps = fps.max(1);
        Self {
            codec,
            width,
            height,
            fps,
            bitrate_bps,
            keyframe_interval: fps * 2,
            cpu_used: 8,
            threads: 1,
        }
    }
}

/// One compressed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

/// A real-time encoder. Not `Sync`; move it to the thread that encodes.
pub struct Encoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
    cfg: Box<ffi::vpx_codec_enc_cfg_t>,
    config: EncoderConfig,
}

// SAFETY: a libvpx codec context is plain heap state owned by this value; libvpx keeps no
// thread-local state for it, so using it from another thread (never from two at once:
// every method takes `&mut self`) is sound.
unsafe impl Send for Encoder {}

fn check(
    ctx: *mut ffi::vpx_codec_ctx_t,
    err: ffi::vpx_codec_err_t,
    call: &'static str,
) -> Result<()> {
    if err == ffi::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: `vpx_codec_err_to_string` returns a static C string for any error value;
    // `vpx_codec_error_detail` returns null or a string owned by a live context.
    let message = unsafe {
        let text = CStr::from_ptr(ffi::vpx_codec_err_to_string(err))
            .to_string_lossy()
            .into_owned();
        let detail = if ctx.is_null() {
            ptr::null()
        } else {
            ffi::vpx_codec_error_detail(ctx)
        };
        if detail.is_null() {
            text
        } else {
            format!("{text} ({})", CStr::from_ptr(detail).to_string_lossy())
        }
    };
    Err(Error::Codec { call, message })
}

impl Encoder {
    pub fn new(config: EncoderConfig) -> Result<Self> {
        if config.width == 0 || config.height == 0 || (config.width | config.height) & 1 != 0 {
            return Err(Error::BadInput(format!(
                "size must be non-zero and even, got {}x{}",
                config.width, config.height
            )));
        }
        let iface = config.codec.encoder_iface();
        // SAFETY: a zeroed config is a valid place for libvpx to write its defaults into.
        let mut cfg: Box<ffi::vpx_codec_enc_cfg_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        // SAFETY: `iface` is a valid interface, `cfg` points to a writable config.
        let err = unsafe { ffi::vpx_codec_enc_config_default(iface as _, &mut *cfg, 0) };
        check(ptr::null_mut(), err, "enc_config_default")?;
        apply_config(&mut cfg, &config);
        // SAFETY: a zeroed context is what `vpx_codec_enc_init_ver` expects to initialize.
        let mut ctx: Box<ffi::vpx_codec_ctx_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        // SAFETY: valid context storage, interface and config; the ABI version is the one
        // the bindings were generated against.
        let err = unsafe {
            ffi::vpx_codec_enc_init_ver(
                &mut *ctx,
                iface as _,
                &*cfg,
                0,
                ffi::VPX_ENCODER_ABI_VERSION as c_int,
            )
        };
        check(&mut *ctx, err, "enc_init")?;
        let mut enc = Self { ctx, cfg, config };
        enc.control(
            ffi::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
            config.cpu_used,
        )?;
        if config.codec == Codec::Vp8 {
            // Camera noise filtering costs CPU and blurs; the static threshold lets the
            // encoder skip unchanged blocks (most of a talking-head picture).
            enc.control(
                ffi::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY as c_int,
                0,
            )?;
            enc.control(
                ffi::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD as c_int,
                1,
            )?;
        } else {
            enc.control(
                ffi::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD as c_int,
                1,
            )?;
            enc.control(ffi::vp8e_enc_control_id::VP9E_SET_AQ_MODE as c_int, 3)?;
        }
        Ok(enc)
    }

    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    fn control(&mut self, id: c_int, value: c_int) -> Result<()> {
        // SAFETY: a live context; the controls used here all take one `int`.
        let err = unsafe { ffi::vpx_codec_control_(&mut *self.ctx, id, value) };
        check(&mut *self.ctx, err, "codec_control")
    }

    /// Changes the target bitrate from the next frame on (no keyframe needed).
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<()> {
        self.config.bitrate_bps = bitrate_bps;
        self.cfg.rc_target_bitrate = (bitrate_bps / 1000).max(1);
        // SAFETY: a live context and a config it was created with, changed only in rate
        // control fields, which libvpx allows between frames.
        let err = unsafe { ffi::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        check(&mut *self.ctx, err, "enc_config_set")
    }

    /// Encodes one tightly packed I420 picture of the configured size. `pts_ms` must
    /// increase. Returns the frames libvpx produced (none when its rate control dropped
    /// this picture; real-time mode never holds frames back).
    pub fn encode(
        &mut self,
        i420: &[u8],
        pts_ms: i64,
        force_keyframe: bool,
    ) -> Result<Vec<Packet>> {
        let (w, h) = (self.config.width as usize, self.config.height as usize);
        let need = w * h + 2 * ((w / 2) * (h / 2));
        if i420.len() < need {
            return Err(Error::BadInput(format!(
                "{w}x{h} I420 needs {need} bytes, got {}",
                i420.len()
            )));
        }
        // SAFETY: zeroed storage for `vpx_img_wrap` to fill in.
        let mut img: ffi::vpx_image_t = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: the buffer holds a whole w×h I420 picture (checked above) and outlives
        // the image, which is used only within this call. The pointer is `*mut` only
        // because `vpx_image_t` is shared with the decoder: the encoder never writes
        // through the planes of a picture it is given.
        let wrapped = unsafe {
            ffi::vpx_img_wrap(
                &mut img,
                ffi::vpx_img_fmt::VPX_IMG_FMT_I420,
                w as c_uint,
                h as c_uint,
                1,
                i420.as_ptr().cast_mut(),
            )
        };
        if wrapped.is_null() {
            return Err(Error::BadInput("vpx_img_wrap refused the picture".into()));
        }
        let flags = if force_keyframe {
            ffi::VPX_EFLAG_FORCE_KF as ffi::vpx_enc_frame_flags_t
        } else {
            0
        };
        // SAFETY: a live context and an image wrapping a buffer that outlives the call.
        let err = unsafe {
            ffi::vpx_codec_encode(
                &mut *self.ctx,
                &img,
                pts_ms,
                1,
                flags,
                ffi::VPX_DL_REALTIME as c_ulong,
            )
        };
        check(&mut *self.ctx, err, "encode")?;
        let mut out = Vec::new();
        let mut iter: ffi::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: a live context and its iterator; the packet stays valid until the
            // next call into the encoder, and its bytes are copied out before that.
            let pkt = unsafe { ffi::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: non-null, points at a packet owned by the context (see above).
            let pkt = unsafe { &*pkt };
            if pkt.kind != ffi::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            // SAFETY: for a frame packet the `frame` member of the union is the live one.
            let frame = unsafe { pkt.data.frame };
            if frame.buf.is_null() || frame.sz == 0 {
                continue;
            }
            // SAFETY: libvpx guarantees `buf` holds `sz` bytes for this packet.
            let data =
                unsafe { std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize) }
                    .to_vec();
            out.push(Packet {
                data,
                keyframe: frame.flags & ffi::VPX_FRAME_IS_KEY != 0,
            });
        }
        Ok(out)
    }
}

fn apply_config(cfg: &mut ffi::vpx_codec_enc_cfg_t, c: &EncoderConfig) {
    cfg.g_w = c.width;
    cfg.g_h = c.height;
    cfg.g_threads = c.threads.max(1);
    // Millisecond timestamps.
    cfg.g_timebase = ffi::vpx_rational { num: 1, den: 1000 };
    // Real time: no look-ahead, every frame out at once.
    cfg.g_lag_in_frames = 0;
    // Keep decoding across lost frames as well as VP8 can (what WebRTC senders use).
    cfg.g_error_resilient = 1;
    cfg.rc_end_usage = ffi::vpx_rc_mode::VPX_CBR;
    cfg.rc_target_bitrate = (c.bitrate_bps / 1000).max(1);
    cfg.rc_min_quantizer = 2;
    cfg.rc_max_quantizer = 56;
    cfg.rc_undershoot_pct = 100;
    cfg.rc_overshoot_pct = 15;
    cfg.rc_buf_initial_sz = 500;
    cfg.rc_buf_optimal_sz = 600;
    cfg.rc_buf_sz = 1000;
    // Drop a frame rather than overshoot badly: overshoot on a real network means loss.
    cfg.rc_dropframe_thresh = 25;
    if c.keyframe_interval == 0 {
        cfg.kf_mode = ffi::vpx_kf_mode::VPX_KF_DISABLED;
    } else {
        cfg.kf_mode = ffi::vpx_kf_mode::VPX_KF_AUTO;
        cfg.kf_max_dist = c.keyframe_interval;
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialized in `new` and is destroyed exactly once.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// A decoded picture, tightly packed I420 (`width * height` luma bytes, then U, then V).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A decoder. Not `Sync`; move it to the thread that decodes.
pub struct Decoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
}

// SAFETY: as for `Encoder`: heap state owned by this value, used through `&mut self`.
unsafe impl Send for Decoder {}

impl Decoder {
    pub fn new(codec: Codec) -> Result<Self> {
        let cfg = ffi::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        // SAFETY: a zeroed context is what `vpx_codec_dec_init_ver` expects.
        let mut ctx: Box<ffi::vpx_codec_ctx_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        // SAFETY: valid context storage, interface and config; matching ABI version.
        let err = unsafe {
            ffi::vpx_codec_dec_init_ver(
                &mut *ctx,
                codec.decoder_iface() as _,
                &cfg,
                0,
                ffi::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        check(&mut *ctx, err, "dec_init")?;
        Ok(Self { ctx })
    }

    /// Decodes one compressed frame. `Ok(None)` when it produced no picture (e.g. a
    /// frame the encoder marked invisible). An error means the data was damaged or
    /// references a frame this decoder never saw: ask the sender for a keyframe.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Image>> {
        if data.is_empty() {
            return Err(Error::BadInput("empty frame".into()));
        }
        let len =
            c_uint::try_from(data.len()).map_err(|_| Error::BadInput("frame too large".into()))?;
        // SAFETY: a live context and a buffer of `len` readable bytes for this call.
        let err = unsafe {
            ffi::vpx_codec_decode(&mut *self.ctx, data.as_ptr(), len, ptr::null_mut(), 0)
        };
        check(&mut *self.ctx, err, "decode")?;
        let mut iter: ffi::vpx_codec_iter_t = ptr::null();
        let mut picture = None;
        loop {
            // SAFETY: a live context and its iterator; the image is valid until the next
            // decode call, and is copied out before that.
            let img = unsafe { ffi::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: non-null image owned by the context (see above).
            let img = unsafe { &*img };
            picture = Some(copy_i420(img)?);
        }
        Ok(picture)
    }
}

/// Copies a decoded 8-bit 4:2:0 image into a tight I420 buffer.
fn copy_i420(img: &ffi::vpx_image_t) -> Result<Image> {
    if img.fmt != ffi::vpx_img_fmt::VPX_IMG_FMT_I420 {
        return Err(Error::BadInput(format!(
            "unexpected image format {:?}",
            img.fmt
        )));
    }
    let (w, h) = (img.d_w as usize, img.d_h as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut data = Vec::with_capacity(w * h + 2 * cw * ch);
    for (plane, (pw, ph)) in [(w, h), (cw, ch), (cw, ch)].into_iter().enumerate() {
        let base = img.planes[plane];
        let stride = img.stride[plane];
        if base.is_null() || stride < pw as c_int {
            return Err(Error::BadInput("decoded image without its planes".into()));
        }
        for row in 0..ph {
            // SAFETY: libvpx's image holds `ph` rows of `stride` bytes for this plane,
            // of which the first `pw` are the picture.
            let line = unsafe { std::slice::from_raw_parts(base.add(row * stride as usize), pw) };
            data.extend_from_slice(line);
        }
    }
    Ok(Image {
        width: w as u32,
        height: h as u32,
        data,
    })
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed exactly once.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// The version string of the libvpx this binary runs with (for the About box and logs).
pub fn version() -> String {
    // SAFETY: returns a static C string.
    unsafe { CStr::from_ptr(ffi::vpx_codec_version_str()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moving gradient, so the encoder has something to do.
    fn picture(w: usize, h: usize, t: usize) -> Vec<u8> {
        let mut data = vec![128u8; w * h * 3 / 2];
        for y in 0..h {
            for x in 0..w {
                data[y * w + x] = ((x + y + 4 * t) % 256) as u8;
            }
        }
        data
    }

    fn round_trip(codec: Codec) {
        let (w, h) = (320, 240);
        let mut enc = Encoder::new(EncoderConfig::new(codec, w, h, 30, 500_000)).expect("encoder");
        let mut dec = Decoder::new(codec).expect("decoder");
        let mut decoded = 0;
        let mut keyframes = 0;
        for t in 0..30 {
            let pic = picture(w as usize, h as usize, t);
            for p in enc.encode(&pic, t as i64 * 33, t == 20).expect("encode") {
                keyframes += usize::from(p.keyframe);
                if let Some(img) = dec.decode(&p.data).expect("decode") {
                    assert_eq!((img.width, img.height), (w, h));
                    assert_eq!(img.data.len(), (w * h * 3 / 2) as usize);
                    decoded += 1;
                }
            }
        }
        assert!(
            decoded >= 25,
            "{codec:?}: only {decoded} of 30 pictures decoded"
        );
        assert!(
            keyframes >= 2,
            "{codec:?}: first frame and the forced one are keyframes, got {keyframes}"
        );
    }

    #[test]
    fn vp8_round_trip() {
        round_trip(Codec::Vp8);
    }

    #[test]
    fn vp9_round_trip() {
        round_trip(Codec::Vp9);
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        assert!(Encoder::new(EncoderConfig::new(Codec::Vp8, 641, 480, 30, 500_000)).is_err());
        assert!(Encoder::new(EncoderConfig::new(Codec::Vp8, 0, 480, 30, 500_000)).is_err());
        let mut enc =
            Encoder::new(EncoderConfig::new(Codec::Vp8, 64, 64, 30, 100_000)).expect("encoder");
        assert!(enc.encode(&[0u8; 10], 0, false).is_err());
        let mut dec = Decoder::new(Codec::Vp8).expect("decoder");
        assert!(dec.decode(&[]).is_err());
        assert!(dec.decode(&[0xff; 64]).is_err());
        // Garbage after a failure does not poison the decoder for a real keyframe.
        let pic = picture(64, 64, 0);
        let p = enc.encode(&pic, 0, true).expect("encode");
        assert!(dec.decode(&p[0].data).expect("keyframe decodes").is_some());
    }

    #[test]
    fn bitrate_changes_between_frames() {
        let mut enc =
            Encoder::new(EncoderConfig::new(Codec::Vp8, 160, 120, 30, 300_000)).expect("encoder");
        enc.set_bitrate(100_000).expect("set bitrate");
        assert_eq!(enc.config().bitrate_bps, 100_000);
        let pic = picture(160, 120, 1);
        assert!(!enc.encode(&pic, 0, false).expect("encode").is_empty());
    }

    #[test]
    fn reports_its_version() {
        assert!(
            version().starts_with('v')
                || version().chars().next().is_some_and(|c| c.is_ascii_digit())
        );
    }
}
