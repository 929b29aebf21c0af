//! `codec-bench`: how fast openh264, libvpx's VP8 and Opus run on this machine, single-threaded, on
//! the synthetic test pattern and tone — the numbers that decide which resolutions can
//! be sent in real time. Also sweeps the encoder's rate control (with and without
//! frame skipping) to show how well it holds its target. And the blur that hides a
//! stranger's video until it is revealed (`--blur-only` runs just that).
//!
//! Run in release: `cargo run --release -p peer-stream --bin codec-bench [-- --frames N]`.
//! Prints a table, then one JSON line with every figure.
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context, Result};
use peer_stream::media::blur::Blur;
use peer_stream::media::codec::h264::{H264Decoder, H264Encoder, H264Settings};
use peer_stream::media::codec::opus::{OpusDecoder, OpusEncoder};
use peer_stream::media::codec::video::{VideoCodec, VideoDecoder, VideoEncoder};
use peer_stream::media::convert::{i420_to_rgba, psnr, rgb_to_i420};
use peer_stream::media::frame::VideoFrame;
use peer_stream::media::pattern;
use peer_stream::media::tone::ToneGenerator;
use std::time::Instant;

const FPS: u32 = 30;

fn capture_us(seq: u64) -> u64 {
    1_764_000_000_000_000 + seq * 1_000_000 / u64::from(FPS)
}

fn frames(n: usize, w: u32, h: u32) -> Vec<VideoFrame> {
    (0..n as u64)
        .map(|s| pattern::render(s, capture_us(s), w, h))
        .collect()
}

struct VideoResult {
    label: String,
    bitrate_kbps: u32,
    encode_fps: f64,
    encode_ms: f64,
    decode_fps: f64,
    decode_ms: f64,
    actual_kbps: f64,
    skipped: u64,
    psnr_mean: f64,
}

fn bench_video(codec: VideoCodec, w: u32, h: u32, bitrate: u32, n: usize) -> Result<VideoResult> {
    let input = frames(n, w, h);
    let mut enc = VideoEncoder::new(codec, w, h, FPS, bitrate)?;
    let mut encoded = Vec::with_capacity(n);
    let start = Instant::now();
    for f in &input {
        encoded.push(enc.encode(f)?);
    }
    let enc_s = start.elapsed().as_secs_f64();
    let skipped = encoded.iter().filter(|e| e.is_none()).count() as u64;
    let bytes: usize = encoded.iter().flatten().map(|e| e.data.len()).sum();

    let mut dec = VideoDecoder::new(codec)?;
    let outputs: Vec<_> = encoded.iter().flatten().collect();
    let start = Instant::now();
    for e in &outputs {
        dec.decode(&e.data)?;
    }
    let dec_s = start.elapsed().as_secs_f64();

    // Quality, outside the timed loops.
    let mut qdec = VideoDecoder::new(codec)?;
    let luma = (w * h) as usize;
    let mut psnr_sum = 0.0;
    let mut psnr_n: f64 = 0.0;
    for (src, e) in input.iter().zip(&encoded) {
        if let Some(e) = e {
            if let Some(pic) = qdec.decode_i420(&e.data)? {
                psnr_sum += psnr(&src.data[..luma], &pic.data[..luma]);
                psnr_n += 1.0;
            }
        }
    }
    Ok(VideoResult {
        label: format!("{codec} {w}x{h}"),
        bitrate_kbps: bitrate / 1000,
        encode_fps: n as f64 / enc_s,
        encode_ms: enc_s * 1000.0 / n as f64,
        decode_fps: outputs.len() as f64 / dec_s,
        decode_ms: dec_s * 1000.0 / outputs.len().max(1) as f64,
        actual_kbps: bytes as f64 * 8.0 / (n as f64 / f64::from(FPS)) / 1000.0,
        skipped,
        psnr_mean: psnr_sum / psnr_n.max(1.0),
    })
}

struct RateResult {
    target_kbps: u32,
    skip: bool,
    actual_kbps: f64,
    out_fps: f64,
    psnr_mean: f64,
}

fn rate_sweep(n: usize) -> Result<Vec<RateResult>> {
    let (w, h) = (640, 480);
    let input = frames(n, w, h);
    let luma = (w * h) as usize;
    let mut out = Vec::new();
    for &kbps in &[250u32, 500, 1000, 2000] {
        for skip in [true, false] {
            let mut enc = H264Encoder::with_settings(H264Settings {
                width: w,
                height: h,
                fps: FPS,
                bitrate_bps: kbps * 1000,
                intra_period: FPS * 2,
                skip_frames: skip,
            })?;
            let mut dec = H264Decoder::new()?;
            let (mut bytes, mut frames_out, mut psnr_sum) = (0usize, 0u32, 0.0);
            for f in &input {
                if let Some(e) = enc.encode(f)? {
                    bytes += e.data.len();
                    frames_out += 1;
                    if let Some(pic) = dec.decode_i420(&e.data)? {
                        psnr_sum += psnr(&f.data[..luma], &pic.data[..luma]);
                    }
                }
            }
            let secs = n as f64 / f64::from(FPS);
            out.push(RateResult {
                target_kbps: kbps,
                skip,
                actual_kbps: bytes as f64 * 8.0 / secs / 1000.0,
                out_fps: f64::from(frames_out) / secs,
                psnr_mean: psnr_sum / f64::from(frames_out.max(1)),
            });
        }
    }
    Ok(out)
}

struct AudioResult {
    encode_us: f64,
    decode_us: f64,
    kbps: f64,
}

fn bench_opus(frames: usize) -> Result<AudioResult> {
    let mut gen = ToneGenerator::new(440.0).with_chirp(20.0, 4.0);
    let pcm: Vec<Vec<i16>> = (0..frames).map(|_| gen.next_frame()).collect();
    let mut enc = OpusEncoder::new()?;
    let start = Instant::now();
    let packets = pcm
        .iter()
        .map(|f| enc.encode(f))
        .collect::<Result<Vec<_>>>()?;
    let enc_s = start.elapsed().as_secs_f64();
    let mut dec = OpusDecoder::new()?;
    let start = Instant::now();
    for p in &packets {
        dec.decode(p)?;
    }
    let dec_s = start.elapsed().as_secs_f64();
    let bytes: usize = packets.iter().map(Vec::len).sum();
    Ok(AudioResult {
        encode_us: enc_s * 1e6 / frames as f64,
        decode_us: dec_s * 1e6 / frames as f64,
        kbps: bytes as f64 * 8.0 / (frames as f64 * 0.02) / 1000.0,
    })
}

/// Cost of producing a frame: rendering the pattern, and a camera's RGB → I420.
fn bench_helpers(n: usize) -> (f64, f64) {
    let start = Instant::now();
    for s in 0..n as u64 {
        std::hint::black_box(pattern::render(s, capture_us(s), 640, 480));
    }
    let render_ms = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let rgb = vec![100u8; 640 * 480 * 3];
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(rgb_to_i420(&rgb, 640, 480, 640, 480));
    }
    let convert_ms = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    (render_ms, convert_ms)
}

/// The blur of a decoded 640×480 RGBA frame (one thread), in ms per frame.
fn bench_blur(n: usize) -> f64 {
    let rgba: Vec<_> = (0..8u64)
        .map(|s| {
            let f = pattern::render(s, capture_us(s), 640, 480);
            i420_to_rgba(&f)
        })
        .collect();
    let mut blur = Blur::new();
    let mut out = Vec::new();
    // Warm up (buffers sized once, as in the app).
    blur.rgba_into(&rgba[0].data, 640, 480, &mut out);
    let start = Instant::now();
    for i in 0..n {
        let f = &rgba[i % rgba.len()];
        blur.rgba_into(&f.data, f.width, f.height, &mut out);
        std::hint::black_box(&out);
    }
    start.elapsed().as_secs_f64() * 1000.0 / n as f64
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut n = 300usize;
    let mut blur_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => {
                n = args
                    .next()
                    .context("--frames needs a number")?
                    .parse()
                    .context("--frames")?
            }
            "--blur-only" => blur_only = true,
            "-h" | "--help" => {
                println!(
                    "usage: codec-bench [--frames N] [--blur-only]   (default 300 video frames per size)"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if cfg!(debug_assertions) {
        println!("warning: debug build; run with --release for meaningful figures");
    }
    let blur_ms = bench_blur(n.max(300));
    println!(
        "Blur 640x480 RGBA (until revealed): {blur_ms:.2} ms/frame = {:.0} fps on one core",
        1000.0 / blur_ms
    );
    if blur_only {
        println!(
            "{{\"bench\":\"blur\",\"release\":{},\"blur_640x480_ms\":{blur_ms:.3},\"blur_640x480_fps\":{:.0}}}",
            !cfg!(debug_assertions),
            1000.0 / blur_ms
        );
        return Ok(());
    }
    let mut video = Vec::new();
    for &codec in VideoCodec::supported() {
        video.push(bench_video(codec, 640, 480, 1_000_000, n)?);
        video.push(bench_video(codec, 1280, 720, 2_500_000, n)?);
    }
    let sweep = rate_sweep(n.min(150))?;
    let audio = bench_opus(1500)?;
    let (render_ms, convert_ms) = bench_helpers(60);

    println!("H.264 (openh264) and VP8 (libvpx, cpu-used 8), 1 thread, synthetic pattern, {n} frames at {FPS} fps");
    println!("codec size     target kb/s  actual kb/s  skipped  PSNR-Y dB  encode fps (ms/frame)  decode→RGBA fps (ms/frame)");
    for v in &video {
        println!(
            "{:<14} {:>11} {:>12.0} {:>8} {:>10.1} {:>12.0} ({:>5.2}) {:>16.0} ({:>5.2})",
            v.label,
            v.bitrate_kbps,
            v.actual_kbps,
            v.skipped,
            v.psnr_mean,
            v.encode_fps,
            v.encode_ms,
            v.decode_fps,
            v.decode_ms
        );
    }
    println!();
    println!("Rate control at 640x480 ({} frames):", n.min(150));
    println!("target kb/s  frame skip  actual kb/s  output fps  PSNR-Y dB");
    for r in &sweep {
        println!(
            "{:>11} {:>11} {:>12.0} {:>11.1} {:>10.1}",
            r.target_kbps,
            if r.skip { "on" } else { "off" },
            r.actual_kbps,
            r.out_fps,
            r.psnr_mean
        );
    }
    println!();
    println!(
        "Opus 48 kHz mono 20 ms, 32 kb/s VOIP+FEC: encode {:.1} µs/frame, decode {:.1} µs/frame, {:.1} kb/s actual",
        audio.encode_us, audio.decode_us, audio.kbps
    );
    println!("Pattern render 640x480: {render_ms:.2} ms/frame; RGB→I420 640x480: {convert_ms:.2} ms/frame");

    let vjson: Vec<String> = video
        .iter()
        .map(|v| {
            format!(
                "{{\"size\":\"{}\",\"target_kbps\":{},\"actual_kbps\":{:.0},\"skipped\":{},\"psnr_y_db\":{:.1},\"encode_fps\":{:.1},\"encode_ms\":{:.3},\"decode_fps\":{:.1},\"decode_ms\":{:.3}}}",
                v.label, v.bitrate_kbps, v.actual_kbps, v.skipped, v.psnr_mean, v.encode_fps, v.encode_ms, v.decode_fps, v.decode_ms
            )
        })
        .collect();
    let sjson: Vec<String> = sweep
        .iter()
        .map(|r| {
            format!(
                "{{\"target_kbps\":{},\"skip\":{},\"actual_kbps\":{:.0},\"out_fps\":{:.1},\"psnr_y_db\":{:.1}}}",
                r.target_kbps, r.skip, r.actual_kbps, r.out_fps, r.psnr_mean
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"codec\",\"release\":{},\"frames\":{n},\"video\":[{}],\"rate_control_640x480\":[{}],\"opus\":{{\"encode_us\":{:.1},\"decode_us\":{:.1},\"kbps\":{:.1}}},\"render_640x480_ms\":{:.3},\"rgb_to_i420_640x480_ms\":{:.3},\"blur_640x480_ms\":{:.3}}}",
        !cfg!(debug_assertions),
        vjson.join(","),
        sjson.join(","),
        audio.encode_us,
        audio.decode_us,
        audio.kbps,
        render_ms,
        convert_ms,
        blur_ms
    );
    Ok(())
}
