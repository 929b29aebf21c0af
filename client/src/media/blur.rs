//! A heavy, cheap blur for the stranger's video before it is revealed ("blur until
//! revealed"): faces must be unrecognizable, and it runs on every decoded frame on the
//! UI thread, so it has to cost a few milliseconds at most.
//!
//! How: average the picture down by a block factor (1/32 of the longer side, so the
//! blur looks the same at every resolution: 20 px blocks at 640×480), smooth that tiny
//! picture once more with a [1 2 1] kernel (so block edges and fine detail cannot be
//! read back; the whole blur spans about three blocks, ~60 px at 640×480), then scale it
//! back up with bilinear filtering. Every step is O(pixels) and independent of the blur
//! strength; the output has the input's size. `codec-bench` measures it (BENCHMARKS.md).

/// How many blocks the longer side of the picture is reduced to.
pub const BLOCKS_ON_LONG_SIDE: u32 = 32;

/// The block size used for a `width`×`height` picture (at least 4 px).
pub fn block_size(width: u32, height: u32) -> u32 {
    (width.max(height) / BLOCKS_ON_LONG_SIDE).max(4)
}

/// Reusable buffers, so blurring a stream of frames allocates nothing per frame.
#[derive(Default, Debug)]
pub struct Blur {
    /// The reduced picture, RGBA, one pixel per block.
    small: Vec<u32>,
    /// Scratch for smoothing `small`.
    tmp: Vec<u32>,
    /// Per output column: left source column and its weight (0–256) of the right one.
    cols: Vec<(u32, u32)>,
    /// Per output row, as for `cols`.
    rows: Vec<(u32, u32)>,
    /// Two rows of the reduced picture stretched to the full width (RGBA, ×256).
    row_a: Vec<u32>,
    row_b: Vec<u32>,
    /// Which reduced rows `row_a`/`row_b` hold.
    loaded: (u32, u32),
}

/// Bilinear taps from a `dst`-long axis into a `src`-long one, sampling pixel centers.
fn taps(dst: u32, src: u32, out: &mut Vec<(u32, u32)>) {
    out.clear();
    let last = src.saturating_sub(1);
    for i in 0..dst {
        // Position in source pixels, ×256: (i + 0.5) * src / dst - 0.5.
        let pos = ((2 * i as u64 + 1) * src as u64 * 256 / (2 * dst as u64)) as i64 - 128;
        let pos = pos.clamp(0, last as i64 * 256) as u64;
        let left = (pos / 256) as u32;
        let frac = (pos % 256) as u32;
        out.push((left.min(last), if left >= last { 0 } else { frac }));
    }
}

impl Blur {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blurs a tightly packed RGBA picture into `out` (resized to match). A buffer whose
    /// length does not match `width * height * 4` is copied as is (nothing to blur).
    pub fn rgba_into(&mut self, src: &[u8], width: u32, height: u32, out: &mut Vec<u8>) {
        let (w, h) = (width as usize, height as usize);
        out.clear();
        if w == 0 || h == 0 || src.len() != w * h * 4 {
            out.extend_from_slice(src);
            return;
        }
        let block = block_size(width, height) as usize;
        let (sw, sh) = (w.div_ceil(block), h.div_ceil(block));

        // 1. Box-average each block (edge blocks may be smaller).
        self.small.clear();
        self.small.resize(sw * sh * 4, 0);
        for y in 0..h {
            let row = &src[y * w * 4..(y + 1) * w * 4];
            let acc = &mut self.small[(y / block) * sw * 4..(y / block + 1) * sw * 4];
            for (bx, px) in row.chunks(block * 4).enumerate() {
                let (mut r, mut g, mut b) = (0u32, 0u32, 0u32);
                for p in px.chunks_exact(4) {
                    r += u32::from(p[0]);
                    g += u32::from(p[1]);
                    b += u32::from(p[2]);
                }
                acc[bx * 4] += r;
                acc[bx * 4 + 1] += g;
                acc[bx * 4 + 2] += b;
            }
        }
        for by in 0..sh {
            let bh = block.min(h - by * block);
            for bx in 0..sw {
                let bw = block.min(w - bx * block);
                let n = (bw * bh) as u32;
                let i = (by * sw + bx) * 4;
                for c in 0..3 {
                    self.small[i + c] = (self.small[i + c] + n / 2) / n;
                }
            }
        }

        // 2. Smooth the small picture: [1 2 1] across, then down (edges clamped).
        smooth(&mut self.small, &mut self.tmp, sw, sh);

        // 3. Bilinear back up to full size: rows of the small picture are stretched
        // horizontally once each, then every output row mixes two stretched rows.
        taps(width, sw as u32, &mut self.cols);
        taps(height, sh as u32, &mut self.rows);
        self.row_a.resize(w * 3, 0);
        self.row_b.resize(w * 3, 0);
        self.loaded = (u32::MAX, u32::MAX);
        out.resize(w * h * 4, 255);
        for y in 0..h {
            let (top, wy) = self.rows[y];
            let bottom = (top + 1).min(sh as u32 - 1);
            if self.loaded.0 != top {
                if self.loaded.1 == top {
                    std::mem::swap(&mut self.row_a, &mut self.row_b);
                    self.loaded.0 = top;
                    self.loaded.1 = u32::MAX;
                } else {
                    stretch(&self.small, sw, top as usize, &self.cols, &mut self.row_a);
                    self.loaded.0 = top;
                }
            }
            if self.loaded.1 != bottom {
                stretch(
                    &self.small,
                    sw,
                    bottom as usize,
                    &self.cols,
                    &mut self.row_b,
                );
                self.loaded.1 = bottom;
            }
            let dst = &mut out[y * w * 4..(y + 1) * w * 4];
            for ((d, a), b) in dst
                .chunks_exact_mut(4)
                .zip(self.row_a.chunks_exact(3))
                .zip(self.row_b.chunks_exact(3))
            {
                for c in 0..3 {
                    // a, b are ×256; the mix adds another ×256.
                    let v = a[c] * (256 - wy) + b[c] * wy;
                    d[c] = ((v + (1 << 15)) >> 16) as u8;
                }
                d[3] = 255;
            }
        }
    }

    /// Convenience: blurs into a new buffer.
    pub fn rgba(&mut self, src: &[u8], width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.rgba_into(src, width, height, &mut out);
        out
    }
}

/// A [1 2 1] / 4 blur of an RGBA picture of `w`×`h` (alpha untouched), rounded so a
/// flat picture stays exactly flat.
fn smooth(px: &mut [u32], tmp: &mut Vec<u32>, w: usize, h: usize) {
    tmp.clear();
    tmp.resize(px.len(), 0);
    let at = |x: usize, y: usize, c: usize| (y * w + x) * 4 + c;
    for y in 0..h {
        for x in 0..w {
            let (l, r) = (x.saturating_sub(1), (x + 1).min(w - 1));
            for c in 0..3 {
                tmp[at(x, y, c)] =
                    (px[at(l, y, c)] + 2 * px[at(x, y, c)] + px[at(r, y, c)] + 2) / 4;
            }
        }
    }
    for y in 0..h {
        let (u, d) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            for c in 0..3 {
                px[at(x, y, c)] =
                    (tmp[at(x, u, c)] + 2 * tmp[at(x, y, c)] + tmp[at(x, d, c)] + 2) / 4;
            }
        }
    }
}

/// One row of the small picture stretched to the full width, RGB ×256.
fn stretch(small: &[u32], sw: usize, row: usize, cols: &[(u32, u32)], out: &mut [u32]) {
    let line = &small[row * sw * 4..(row + 1) * sw * 4];
    for (o, &(left, wx)) in out.chunks_exact_mut(3).zip(cols) {
        let l = left as usize * 4;
        let r = (left as usize + 1).min(sw - 1) * 4;
        for c in 0..3 {
            o[c] = line[l + c] * (256 - wx) + line[r + c] * wx;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture with sharp detail: a checkerboard of 2 px squares plus a gradient.
    fn detailed(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h {
            for x in 0..w {
                let check = if (x / 2 + y / 2) % 2 == 0 { 255 } else { 0 };
                v.extend_from_slice(&[check, (x * 255 / w.max(1)) as u8, (y % 256) as u8, 255]);
            }
        }
        v
    }

    /// Mean absolute difference between horizontally adjacent pixels (sharpness).
    fn sharpness(p: &[u8], w: u32, h: u32) -> f64 {
        let (w, h) = (w as usize, h as usize);
        let mut sum = 0u64;
        let mut n = 0u64;
        for y in 0..h {
            for x in 1..w {
                let a = (y * w + x - 1) * 4;
                let b = (y * w + x) * 4;
                sum += u64::from(p[a].abs_diff(p[b]));
                n += 1;
            }
        }
        sum as f64 / n.max(1) as f64
    }

    #[test]
    fn blurs_detail_away_and_keeps_the_size() {
        let (w, h) = (640, 480);
        let src = detailed(w, h);
        let out = Blur::new().rgba(&src, w, h);
        assert_eq!(out.len(), src.len(), "dimensions preserved");
        assert_ne!(out, src, "output differs from input");
        let (before, after) = (sharpness(&src, w, h), sharpness(&out, w, h));
        assert!(before > 100.0, "{before}");
        assert!(after < 2.0, "checkerboard gone: {before} -> {after}");
        // The checkerboard averages to mid grey.
        let mid = out[((240 * w + 320) * 4) as usize];
        assert!((120..=135).contains(&mid), "{mid}");
        assert!(out.chunks_exact(4).all(|p| p[3] == 255), "opaque");
    }

    #[test]
    fn a_flat_picture_stays_flat() {
        for (w, h) in [(640, 480), (33, 17), (1280, 720)] {
            let src: Vec<u8> = std::iter::repeat_n([12u8, 200, 77, 255], (w * h) as usize)
                .flatten()
                .collect();
            let out = Blur::new().rgba(&src, w, h);
            assert_eq!(out, src, "{w}x{h}");
        }
    }

    #[test]
    fn tiny_and_odd_sizes_do_not_panic() {
        let mut blur = Blur::new();
        for (w, h) in [
            (0, 0),
            (1, 1),
            (1, 7),
            (7, 1),
            (2, 2),
            (3, 5),
            (5, 3),
            (17, 9),
            (641, 479),
        ] {
            let src = detailed(w, h);
            let out = blur.rgba(&src, w, h);
            assert_eq!(out.len(), (w * h * 4) as usize, "{w}x{h}");
        }
        // A buffer of the wrong length is passed through, never indexed out of range.
        assert_eq!(blur.rgba(&[1, 2, 3], 10, 10), vec![1, 2, 3]);
    }

    #[test]
    fn buffers_are_reused_across_sizes() {
        let mut blur = Blur::new();
        let mut out = Vec::new();
        for (w, h) in [(640, 480), (320, 240), (640, 480)] {
            let src = detailed(w, h);
            blur.rgba_into(&src, w, h, &mut out);
            assert_eq!(out, Blur::new().rgba(&src, w, h), "{w}x{h}");
        }
    }

    #[test]
    fn gradients_stay_smooth_and_in_range() {
        // A horizontal ramp stays a monotonic ramp (no block edges).
        let (w, h) = (640u32, 64u32);
        let src: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).flat_map(|x| [(x * 255 / (w - 1)) as u8, 0, 0, 255]))
            .collect();
        let out = Blur::new().rgba(&src, w, h);
        let row: Vec<u8> = out[..(w * 4) as usize].iter().step_by(4).copied().collect();
        assert!(row.windows(2).all(|p| p[1] >= p[0]), "monotonic");
        assert!(row[0] < 10 && row[row.len() - 1] > 245);
    }
}
