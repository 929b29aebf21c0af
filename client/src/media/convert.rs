//! Pixel format conversions between what cameras give, what the encoder takes and what
//! the UI shows.
//!
//! Cameras (through nokhwa) hand out packed RGB at whatever size they settled on; the
//! H.264 encoder wants I420 at the size we negotiated; the self-view wants RGBA. These
//! are plain scalar loops (BT.601 limited range, like webcams and openh264's decoder):
//! at 640×480 they cost well under a millisecond in release builds, which does not
//! justify SIMD or another dependency.

use super::frame::{RgbaFrame, VideoFrame};

/// Converts packed RGB (`src_w * src_h * 3` bytes) to I420 at `dst_w`×`dst_h`
/// (rounded down to even), scaling with nearest-neighbour sampling when the sizes
/// differ. Returns `None` if `rgb` is too short or a size is zero.
pub fn rgb_to_i420(rgb: &[u8], src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Option<Vec<u8>> {
    let (sw, sh) = (src_w as usize, src_h as usize);
    let (dw, dh) = ((dst_w & !1) as usize, (dst_h & !1) as usize);
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 || rgb.len() < sw * sh * 3 {
        return None;
    }
    // Source column / row for every destination column / row.
    let xs: Vec<usize> = (0..dw).map(|x| x * sw / dw).collect();
    let ys: Vec<usize> = (0..dh).map(|y| y * sh / dh).collect();
    let px = |x: usize, y: usize| {
        let i = (ys[y] * sw + xs[x]) * 3;
        (
            i32::from(rgb[i]),
            i32::from(rgb[i + 1]),
            i32::from(rgb[i + 2]),
        )
    };
    let mut out = vec![0u8; dw * dh * 3 / 2];
    let (y_plane, uv) = out.split_at_mut(dw * dh);
    let (u_plane, v_plane) = uv.split_at_mut(dw * dh / 4);
    for y in 0..dh {
        for x in 0..dw {
            let (r, g, b) = px(x, y);
            y_plane[y * dw + x] = clamp_u8(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16);
        }
    }
    for cy in 0..dh / 2 {
        for cx in 0..dw / 2 {
            // Average the 2×2 block so chroma does not alias.
            let (mut r, mut g, mut b) = (0, 0, 0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(cx * 2 + dx, cy * 2 + dy);
                r += p.0;
                g += p.1;
                b += p.2;
            }
            let (r, g, b) = (r / 4, g / 4, b / 4);
            let i = cy * (dw / 2) + cx;
            u_plane[i] = clamp_u8(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128);
            v_plane[i] = clamp_u8(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128);
        }
    }
    Some(out)
}

/// Converts an I420 frame to RGBA for display (e.g. the local self-view, which never
/// goes through the decoder). A malformed frame gives a black picture of its size.
pub fn i420_to_rgba(frame: &VideoFrame) -> RgbaFrame {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut data = vec![0u8; w * h * 4];
    if frame.data.len() >= w * h * 3 / 2 && (w | h) & 1 == 0 {
        let (y_plane, uv) = frame.data.split_at(w * h);
        let (u_plane, v_plane) = uv.split_at(w * h / 4);
        for y in 0..h {
            for x in 0..w {
                let c = i32::from(y_plane[y * w + x]) - 16;
                let ci = (y / 2) * (w / 2) + x / 2;
                let d = i32::from(u_plane[ci]) - 128;
                let e = i32::from(v_plane[ci]) - 128;
                let o = (y * w + x) * 4;
                data[o] = clamp_u8((298 * c + 409 * e + 128) >> 8);
                data[o + 1] = clamp_u8((298 * c - 100 * d - 208 * e + 128) >> 8);
                data[o + 2] = clamp_u8((298 * c + 516 * d + 128) >> 8);
                data[o + 3] = 255;
            }
        }
    } else {
        for px in data.chunks_exact_mut(4) {
            px[3] = 255;
        }
    }
    RgbaFrame {
        width: frame.width,
        height: frame.height,
        data,
    }
}

/// Peak signal-to-noise ratio between two equally sized 8-bit planes, in dB
/// (`f64::INFINITY` when identical). Used to judge codec quality on the test pattern.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    if sse == 0.0 {
        return f64::INFINITY;
    }
    let mse = sse / n as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_i420_rgba_round_trip_is_close() {
        // A 4×2 picture of pure colours, scaled ×2 to 8×4.
        let colours: [(u8, u8, u8); 4] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 200)];
        let mut rgb = Vec::new();
        for _ in 0..2 {
            for &(r, g, b) in &colours {
                rgb.extend_from_slice(&[r, g, b]);
            }
        }
        let i420 = rgb_to_i420(&rgb, 4, 2, 8, 4).expect("valid input");
        assert_eq!(i420.len(), 8 * 4 * 3 / 2);
        let frame = VideoFrame {
            width: 8,
            height: 4,
            data: i420,
            capture_us: 0,
            seq: 0,
        };
        let rgba = i420_to_rgba(&frame);
        // Pixel (0,0)..(1,1) is red; chroma is shared per 2×2 so it comes back nearly exact.
        let p = &rgba.data[0..4];
        assert!(p[0] > 240 && p[1] < 15 && p[2] < 15, "{p:?}");
        let grey = &rgba.data[(6 * 4)..(6 * 4 + 4)];
        assert!(
            grey.iter().take(3).all(|&c| (190..=210).contains(&c)),
            "{grey:?}"
        );
    }

    #[test]
    fn bad_input_does_not_panic() {
        assert!(rgb_to_i420(&[0; 5], 2, 2, 2, 2).is_none());
        let f = VideoFrame {
            width: 4,
            height: 4,
            data: vec![],
            capture_us: 0,
            seq: 0,
        };
        assert_eq!(i420_to_rgba(&f).data.len(), 64);
        assert_eq!(psnr(&[1, 2, 3], &[1, 2, 3]), f64::INFINITY);
        assert!((psnr(&[0; 4], &[255; 4])).abs() < 1e-9);
    }
}
