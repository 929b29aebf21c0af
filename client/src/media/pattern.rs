//! A synthetic moving test picture with a machine-readable stamp.
//!
//! Machines without a camera (CI, the headless bot, this project's own test boxes) still
//! need to send video that proves the pipeline works end to end. The picture therefore
//! has two parts:
//!
//! * **Motion** — 75 % colour bars scrolling sideways over a vertical brightness ramp
//!   in the upper two thirds, a slowly churning colour "plasma" in the lower third, and
//!   an orange box bouncing over both. A person sees at a glance that video is live.
//!   The bars and the box are whole-pixel translations that motion compensation
//!   predicts almost for free; the plasma changes shape every frame, like a face or a
//!   hand, so the encoder has real work and its rate control something to control —
//!   without the noise that would make a 1 Mb/s target meaningless.
//! * **Stamp** — in the top-left corner, on a still grey quiet zone, 80 big black/white
//!   blocks carry a magic byte, the frame number (u32), the capture time in wall-clock
//!   milliseconds (u32, wrapping) and a CRC-8. At 640×480 each block is 16×16 px and sits
//!   exactly on one H.264 macroblock, so even a starved encoder keeps each block flat
//!   and its colour unambiguous. The receiver reads it back from the decoded picture to
//!   count lost/late frames and to measure glass-to-glass latency; the magic, the
//!   "every block clearly black or white" rule and the CRC make a misread (or a real
//!   camera picture) come back as `None` instead of a wrong number.

use super::clock::ms_u32;
use super::frame::VideoFrame;

/// Stamp grid columns (blocks).
pub const STAMP_COLS: u32 = 10;
/// Stamp grid rows (blocks). `COLS * ROWS` = 80 bits = 10 bytes.
pub const STAMP_ROWS: u32 = 8;
const STAMP_BYTES: usize = 10;
const STAMP_MAGIC: u8 = 0xB5;
const BLACK_Y: u8 = 16;
const WHITE_Y: u8 = 235;
const QUIET_Y: u8 = 128;
/// Block averages below this read as 0, above `256 - this` as 1, anything between is
/// "unsure" and rejects the whole stamp.
const CLEAR_MARGIN: u32 = 96;

/// What the stamp carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Frame number, the low 32 bits of [`VideoFrame::seq`].
    pub seq: u32,
    /// Capture wall-clock time in milliseconds since the epoch, low 32 bits.
    pub capture_ms: u32,
}

impl Stamp {
    /// The stamp for a frame with this sequence number and capture time (µs since epoch).
    pub fn new(seq: u64, capture_us: u64) -> Self {
        Self {
            // Truncation intended: the stamp keeps the low 32 bits.
            seq: seq as u32,
            capture_ms: ms_u32(capture_us),
        }
    }

    fn to_bytes(self) -> [u8; STAMP_BYTES] {
        let mut b = [0u8; STAMP_BYTES];
        b[0] = STAMP_MAGIC;
        b[1..5].copy_from_slice(&self.seq.to_be_bytes());
        b[5..9].copy_from_slice(&self.capture_ms.to_be_bytes());
        b[9] = crc8(&b[..9]);
        b
    }

    fn from_bytes(b: &[u8; STAMP_BYTES]) -> Option<Self> {
        if b[0] != STAMP_MAGIC || crc8(&b[..9]) != b[9] {
            return None;
        }
        Some(Self {
            seq: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            capture_ms: u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
        })
    }
}

/// Age of a stamp in milliseconds given "now" in the same wrapping millisecond clock
/// (see [`super::clock::now_ms_u32`]). Correct across the 32-bit wrap.
pub fn latency_ms(stamp: &Stamp, now_ms: u32) -> u32 {
    now_ms.wrapping_sub(stamp.capture_ms)
}

/// Where the stamp sits in a picture of a given size: blocks of `block`×`block` pixels,
/// the first one at (`block`, `block`), inside a grey quiet zone that starts at (0, 0)
/// and is one block wider than the grid on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampLayout {
    pub block: u32,
}

impl StampLayout {
    /// The largest of 16, 8 or 4 px blocks whose quiet zone fits; `None` for pictures
    /// too small to carry a stamp (under 48×40).
    pub fn for_size(width: u32, height: u32) -> Option<Self> {
        [16u32, 8, 4]
            .into_iter()
            .find(|b| (STAMP_COLS + 2) * b <= width && (STAMP_ROWS + 2) * b <= height)
            .map(|block| Self { block })
    }

    /// Size of the still quiet zone in the top-left corner, in pixels.
    pub fn quiet_zone(&self) -> (u32, u32) {
        ((STAMP_COLS + 2) * self.block, (STAMP_ROWS + 2) * self.block)
    }

    fn block_origin(&self, bit: u32) -> (u32, u32) {
        let col = bit % STAMP_COLS;
        let row = bit / STAMP_COLS;
        (self.block * (1 + col), self.block * (1 + row))
    }
}

/// Renders frame `seq` of the pattern, `width`×`height` (odd sizes are rounded down to
/// even, minimum 2×2), stamped with `seq` and `capture_us`.
pub fn render(seq: u64, capture_us: u64, width: u32, height: u32) -> VideoFrame {
    let w = (width & !1).max(2);
    let h = (height & !1).max(2);
    let mut data = vec![0u8; (w * h * 3 / 2) as usize];
    render_into(&mut data, seq, capture_us, w, h);
    VideoFrame {
        width: w,
        height: h,
        data,
        capture_us,
        seq,
    }
}

/// Renders into an existing I420 buffer of `w * h * 3 / 2` bytes (`w`, `h` even).
/// Lets a capture loop reuse one allocation.
pub fn render_into(data: &mut [u8], seq: u64, capture_us: u64, w: u32, h: u32) {
    let (wu, hu) = (w as usize, h as usize);
    if data.len() < wu * hu * 3 / 2 {
        return;
    }
    let scene = Scene::new(seq, w, h);
    let (y_plane, uv) = data.split_at_mut(wu * hu);
    let (u_plane, v_plane) = uv.split_at_mut(wu * hu / 4);
    for y in 0..h {
        let row = &mut y_plane[(y as usize) * wu..(y as usize + 1) * wu];
        for (x, px) in (0..w).zip(row.iter_mut()) {
            *px = scene.yuv(x, y).0;
        }
    }
    let cw = wu / 2;
    for cy in 0..h / 2 {
        for cx in 0..w / 2 {
            let (_, u, v) = scene.yuv(cx * 2, cy * 2);
            let i = cy as usize * cw + cx as usize;
            u_plane[i] = u;
            v_plane[i] = v;
        }
    }
    if let Some(layout) = StampLayout::for_size(w, h) {
        draw_stamp(
            y_plane,
            u_plane,
            v_plane,
            w,
            layout,
            Stamp::new(seq, capture_us),
        );
    }
}

/// 75 % colour bars (white, yellow, cyan, green, magenta, red, blue, black) in BT.601
/// limited-range YUV.
const BARS: [(u8, u8, u8); 8] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
    (16, 128, 128),
];
const BOX_FILL: (u8, u8, u8) = (152, 50, 189); // orange
const BOX_EDGE: (u8, u8, u8) = (16, 128, 128); // black

/// Positions of the moving parts for one frame. All motion is in even pixels so the
/// half-resolution chroma moves with the luma.
struct Scene {
    h: u32,
    plasma_top: u32,
    /// Plasma terms that depend only on x, only on y, and only on x + y.
    plasma_x: Vec<f32>,
    plasma_y: Vec<f32>,
    plasma_xy: Vec<f32>,
    /// Colour bar index of every column (the scroll is applied here, once per frame).
    bar_of_x: Vec<u8>,
    box_x: u32,
    box_y: u32,
    box_size: u32,
    box_edge: u32,
}

impl Scene {
    fn new(seq: u64, w: u32, h: u32) -> Self {
        let speed = (w / 160).max(2) & !1;
        let bar_w = ((w / 8) & !1).max(2);
        let period = u64::from(bar_w * 8);
        let bar_shift = (seq.wrapping_mul(u64::from(speed)) % period) as u32;
        let box_size = ((h / 6) & !1).max(2).min(w & !1);
        let box_edge = ((box_size / 16) & !1).max(2);
        let vx = u64::from(speed * 3 / 2) & !1;
        let vy = u64::from(speed);
        let plasma_top = (h * 2 / 3) & !1;
        // Spatial frequencies scale with the width so 720p looks like 480p.
        let k = 640.0 / w as f32;
        let t = (seq % 100_000) as f32;
        let plasma_x = (0..w)
            .map(|x| (x as f32 * k / 17.0 + t * 0.21).sin())
            .collect();
        let plasma_y = (0..h)
            .map(|y| (y as f32 * k / 13.0 - t * 0.13).sin())
            .collect();
        let plasma_xy = (0..w + h)
            .map(|d| (d as f32 * k / 23.0 + t * 0.17).sin())
            .collect();
        Self {
            h,
            plasma_top,
            plasma_x,
            plasma_y,
            plasma_xy,
            bar_of_x: (0..w)
                .map(|x| (((x + bar_shift) % (bar_w * 8)) / bar_w) as u8)
                .collect(),
            box_x: triangle(seq.wrapping_mul(vx), w - box_size),
            box_y: triangle(seq.wrapping_mul(vy), h.saturating_sub(box_size)),
            box_size,
            box_edge,
        }
    }

    fn yuv(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let (bx, by, s, e) = (self.box_x, self.box_y, self.box_size, self.box_edge);
        if x >= bx && x < bx + s && y >= by && y < by + s {
            let inner = x >= bx + e && x < bx + s - e && y >= by + e && y < by + s - e;
            return if inner { BOX_FILL } else { BOX_EDGE };
        }
        if y >= self.plasma_top {
            let v = self.plasma_x[x as usize]
                + self.plasma_y[y as usize]
                + self.plasma_xy[(x + y) as usize];
            return (
                (128.0 + v * 30.0) as u8,
                (128.0 + v * 14.0) as u8,
                (128.0 - v * 10.0) as u8,
            );
        }
        let (by_, u, v) = BARS[usize::from(self.bar_of_x[x as usize]) % 8];
        // Brightness ramp from 62 % at the top to 100 % at the bottom.
        let gain = 160 + 96 * y / self.h.max(1);
        let luma = 16 + (u32::from(by_) - 16) * gain / 256;
        (luma.min(235) as u8, u, v)
    }
}

/// Bounces `t` back and forth over `0..=range`.
fn triangle(t: u64, range: u32) -> u32 {
    if range == 0 {
        return 0;
    }
    let r = u64::from(range);
    let p = t % (2 * r);
    (if p <= r { p } else { 2 * r - p }) as u32
}

fn draw_stamp(y: &mut [u8], u: &mut [u8], v: &mut [u8], w: u32, layout: StampLayout, stamp: Stamp) {
    let (qw, qh) = layout.quiet_zone();
    let wu = w as usize;
    for row in 0..qh as usize {
        y[row * wu..row * wu + qw as usize].fill(QUIET_Y);
    }
    for row in 0..(qh / 2) as usize {
        let range = row * wu / 2..row * wu / 2 + (qw / 2) as usize;
        u[range.clone()].fill(128);
        v[range].fill(128);
    }
    let bytes = stamp.to_bytes();
    let b = layout.block as usize;
    for bit in 0..STAMP_COLS * STAMP_ROWS {
        let on = bytes[(bit / 8) as usize] & (0x80 >> (bit % 8)) != 0;
        let (x0, y0) = layout.block_origin(bit);
        let (x0, y0) = (x0 as usize, y0 as usize);
        for row in y0..y0 + b {
            y[row * wu + x0..row * wu + x0 + b].fill(if on { WHITE_Y } else { BLACK_Y });
        }
    }
}

/// Reads the stamp from a decoded RGBA picture (`width * height * 4` bytes), as the
/// receiving side gets it from the H.264 decoder. `None` if the picture is too small,
/// carries no stamp, or any block or the checksum is doubtful.
pub fn read_stamp_rgba(rgba: &[u8], width: u32, height: u32) -> Option<Stamp> {
    let (w, h) = (width as usize, height as usize);
    if rgba.len() < w * h * 4 {
        return None;
    }
    read_stamp_with(width, height, |x, y| {
        let i = (y as usize * w + x as usize) * 4;
        // BT.601 luma weights; the stamp is grey so any weighting works.
        let l =
            u32::from(rgba[i]) * 77 + u32::from(rgba[i + 1]) * 150 + u32::from(rgba[i + 2]) * 29;
        l >> 8
    })
}

/// Reads the stamp from an I420 picture (only the luma plane is looked at).
pub fn read_stamp_i420(i420: &[u8], width: u32, height: u32) -> Option<Stamp> {
    let w = width as usize;
    if i420.len() < w * height as usize {
        return None;
    }
    read_stamp_with(width, height, |x, y| {
        u32::from(i420[y as usize * w + x as usize])
    })
}

fn read_stamp_with(width: u32, height: u32, luma: impl Fn(u32, u32) -> u32) -> Option<Stamp> {
    let layout = StampLayout::for_size(width, height)?;
    let b = layout.block;
    // Average only the middle half of each block: edges blur after lossy coding.
    let (lo, hi) = (b / 4, b - b / 4);
    let mut bytes = [0u8; STAMP_BYTES];
    for bit in 0..STAMP_COLS * STAMP_ROWS {
        let (x0, y0) = layout.block_origin(bit);
        let mut sum = 0u32;
        let mut n = 0u32;
        for y in y0 + lo..y0 + hi {
            for x in x0 + lo..x0 + hi {
                sum += luma(x, y);
                n += 1;
            }
        }
        let avg = sum / n.max(1);
        if avg >= 256 - CLEAR_MARGIN {
            bytes[(bit / 8) as usize] |= 0x80 >> (bit % 8);
        } else if avg > CLEAR_MARGIN {
            return None;
        }
    }
    Stamp::from_bytes(&bytes)
}

/// CRC-8 (polynomial 0x07, initial value 0), enough to catch a flipped block.
fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::convert::i420_to_rgba;

    #[test]
    fn stamp_round_trips_in_i420_and_rgba() {
        for &(w, h) in &[
            (640u32, 480u32),
            (1280, 720),
            (320, 240),
            (160, 120),
            (64, 48),
        ] {
            let f = render(123_456_789, 1_700_000_000_123_456, w, h);
            assert_eq!(f.data.len(), (w * h * 3 / 2) as usize);
            let want = Stamp {
                seq: 123_456_789,
                capture_ms: ms_u32(1_700_000_000_123_456),
            };
            assert_eq!(read_stamp_i420(&f.data, w, h), Some(want), "{w}x{h} i420");
            let rgba = i420_to_rgba(&f);
            assert_eq!(
                read_stamp_rgba(&rgba.data, w, h),
                Some(want),
                "{w}x{h} rgba"
            );
        }
    }

    #[test]
    fn too_small_or_unstamped_pictures_read_none() {
        let f = render(1, 2, 40, 30);
        assert_eq!(read_stamp_i420(&f.data, 40, 30), None);
        let grey = vec![128u8; 640 * 480 * 3 / 2];
        assert_eq!(read_stamp_i420(&grey, 640, 480), None);
        let black = vec![16u8; 640 * 480 * 3 / 2];
        assert_eq!(
            read_stamp_i420(&black, 640, 480),
            None,
            "magic must reject all-zero"
        );
    }

    #[test]
    fn flipped_block_is_detected() {
        let mut f = render(42, 1_000_000, 640, 480);
        // Invert one data block (bit 20): the CRC must reject the stamp.
        let layout = StampLayout::for_size(640, 480).expect("fits");
        let (x0, y0) = layout.block_origin(20);
        for y in y0..y0 + 16 {
            for x in x0..x0 + 16 {
                let p = &mut f.data[(y * 640 + x) as usize];
                *p = if *p > 128 { BLACK_Y } else { WHITE_Y };
            }
        }
        assert_eq!(read_stamp_i420(&f.data, 640, 480), None);
    }

    #[test]
    fn pattern_moves_but_stamp_zone_is_still() {
        let a = render(10, 0, 640, 480);
        let b = render(11, 0, 640, 480);
        assert_ne!(a.data, b.data);
        // Outside the stamp blocks the quiet zone is identical.
        assert_eq!(a.data[0..16], b.data[0..16]);
        // Stamp differs only in its bits; latency helper wraps correctly.
        let s = Stamp {
            seq: 0,
            capture_ms: u32::MAX - 9,
        };
        assert_eq!(latency_ms(&s, 10), 20);
    }

    #[test]
    fn odd_sizes_round_down() {
        let f = render(0, 0, 641, 481);
        assert_eq!((f.width, f.height), (640, 480));
    }
}
