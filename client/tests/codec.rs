//! End-to-end checks of the media codecs on the synthetic sources: what a call sends
//! must come out the other side recognisable (stamps, tone), good enough (PSNR) and
//! at about the bitrate asked for.
#![allow(clippy::print_stderr)]

use peer_stream::media::codec::h264::{
    nal_types, nal_units, H264Decoder, H264Encoder, NAL_IDR, NAL_PPS, NAL_SPS,
};
use peer_stream::media::codec::opus::{OpusDecoder, OpusEncoder};
use peer_stream::media::convert::psnr;
use peer_stream::media::frame::AUDIO_RATE;
use peer_stream::media::pattern::{self, read_stamp_i420, read_stamp_rgba};
use peer_stream::media::tone::{tone_dominates, ToneGenerator};

const W: u32 = 640;
const H: u32 = 480;
const FPS: u32 = 30;
const BITRATE: u32 = 1_000_000;

/// Capture time of frame `seq` on a 30 fps timeline starting at a realistic epoch.
fn capture_us(seq: u64) -> u64 {
    1_764_000_000_000_000 + seq * 1_000_000 / u64::from(FPS)
}

#[test]
fn h264_round_trip_keeps_stamps_quality_and_bitrate() {
    let mut enc = H264Encoder::new(W, H, FPS, BITRATE).expect("encoder");
    let mut dec = H264Decoder::new().expect("decoder");
    let mut rgba_dec = H264Decoder::new().expect("decoder");
    let frames = 60u64;
    let mut bytes = 0usize;
    let mut decoded = 0;
    let mut min_psnr = f64::INFINITY;
    let mut sum_psnr = 0.0;
    let mut keyframes = 0;
    for seq in 0..frames {
        let src = pattern::render(seq, capture_us(seq), W, H);
        let Some(out) = enc.encode(&src).expect("encode") else {
            continue;
        };
        bytes += out.data.len();
        assert_eq!(&out.data[..4], &[0, 0, 0, 1], "Annex-B start code");
        let types: Vec<u8> = nal_types(&out.data).collect();
        if out.keyframe {
            keyframes += 1;
            let idr = types.iter().position(|&t| t == NAL_IDR).expect("IDR NAL");
            let sps = types
                .iter()
                .position(|&t| t == NAL_SPS)
                .expect("SPS before IDR");
            let pps = types
                .iter()
                .position(|&t| t == NAL_PPS)
                .expect("PPS before IDR");
            assert!(sps < idr && pps < idr, "{types:?}");
        }
        let pic = dec
            .decode_i420(&out.data)
            .expect("decode")
            .expect("picture");
        assert_eq!((pic.width, pic.height), (W, H));
        let stamp = read_stamp_i420(&pic.data, W, H).expect("stamp readable after coding");
        assert_eq!(u64::from(stamp.seq), seq);
        assert_eq!(stamp.capture_ms, (capture_us(seq) / 1000) as u32);
        let rgba = rgba_dec
            .decode(&out.data)
            .expect("decode")
            .expect("picture");
        assert_eq!(read_stamp_rgba(&rgba.data, W, H), Some(stamp));
        let luma = (W * H) as usize;
        let p = psnr(&src.data[..luma], &pic.data[..luma]);
        min_psnr = min_psnr.min(p);
        sum_psnr += p;
        decoded += 1;
    }
    let (fin, fout, skipped) = enc.counters();
    let kbps = bytes as f64 * 8.0 / (frames as f64 / f64::from(FPS)) / 1000.0;
    eprintln!(
        "h264 640x480@30 target 1000 kb/s: {kbps:.0} kb/s, {decoded}/{frames} frames decoded \
         ({fin} in, {fout} out, {skipped} skipped), {keyframes} keyframes, \
         luma PSNR min {min_psnr:.1} dB mean {:.1} dB",
        sum_psnr / f64::from(decoded.max(1))
    );
    assert!(decoded >= 55, "only {decoded} of {frames} frames came out");
    assert!(keyframes >= 1);
    // Measured on the pattern: min 48.8 dB, mean 54.3 dB; 996 kb/s.
    assert!(min_psnr >= 40.0, "min PSNR {min_psnr:.1} dB");
    let target = f64::from(BITRATE) / 1000.0;
    assert!(
        kbps > 0.3 * target && kbps < 1.5 * target,
        "{kbps:.0} kb/s for {target} kb/s"
    );
}

#[test]
fn h264_stamps_survive_a_starved_encoder() {
    // 200 kb/s at 640x480 is far below what a call should use; the stamp must still
    // read back on every frame that comes out.
    let mut enc = H264Encoder::new(W, H, FPS, 200_000).expect("encoder");
    let mut dec = H264Decoder::new().expect("decoder");
    let mut read = 0;
    for seq in 0..45u64 {
        let src = pattern::render(seq, capture_us(seq), W, H);
        if let Some(out) = enc.encode(&src).expect("encode") {
            let rgba = dec.decode(&out.data).expect("decode").expect("picture");
            let stamp = read_stamp_rgba(&rgba.data, W, H).expect("stamp");
            assert_eq!(u64::from(stamp.seq), seq);
            read += 1;
        }
    }
    assert!(read >= 30, "{read} frames out of 45");
}

#[test]
fn h264_sps_says_constrained_baseline() {
    for (w, h, level) in [(640u32, 480u32, 30u8), (1280, 720, 31)] {
        let mut enc = H264Encoder::new(w, h, FPS, BITRATE).expect("encoder");
        let out = enc
            .encode(&pattern::render(0, capture_us(0), w, h))
            .expect("encode")
            .expect("first frame");
        let sps = nal_units(&out.data)
            .find(|n| n.first().map(|b| b & 0x1f) == Some(NAL_SPS))
            .expect("SPS");
        eprintln!(
            "{w}x{h}: SPS profile-level-id {:02x}{:02x}{:02x}",
            sps[1], sps[2], sps[3]
        );
        assert_eq!(sps[1], 66, "profile_idc Baseline");
        assert_ne!(
            sps[2] & 0x40,
            0,
            "constraint_set1_flag (Constrained Baseline)"
        );
        assert!(sps[3] >= level, "level {} too low for {w}x{h}@30", sps[3]);
    }
}

#[test]
fn h264_force_keyframe_and_periodic_keyframes() {
    let mut enc = H264Encoder::new(320, 240, FPS, 500_000).expect("encoder");
    let mut keys = Vec::new();
    for seq in 0..75u64 {
        if seq == 10 {
            enc.force_keyframe();
        }
        let f = pattern::render(seq, capture_us(seq), 320, 240);
        if let Some(out) = enc.encode(&f).expect("encode") {
            if out.keyframe {
                keys.push(seq);
            }
        }
    }
    eprintln!("keyframes at {keys:?}");
    assert_eq!(keys.first(), Some(&0), "stream starts with an IDR");
    assert!(
        keys.iter().any(|&k| (10..=12).contains(&k)),
        "forced keyframe: {keys:?}"
    );
    assert!(
        keys.iter().any(|&k| (55..=75).contains(&k)),
        "periodic keyframe after ~2 s: {keys:?}"
    );
}

#[test]
fn h264_set_bitrate_recreates_encoder_and_lowers_rate() {
    let mut enc = H264Encoder::new(W, H, FPS, 2_000_000).expect("encoder");
    let count = |enc: &mut H264Encoder, from: u64| {
        let mut bytes = 0;
        for seq in from..from + 30 {
            if let Some(out) = enc
                .encode(&pattern::render(seq, capture_us(seq), W, H))
                .expect("encode")
            {
                bytes += out.data.len();
            }
        }
        bytes
    };
    let high = count(&mut enc, 0);
    assert!(
        !enc.set_bitrate(2_050_000).expect("small change"),
        "small change ignored"
    );
    assert!(enc.set_bitrate(250_000).expect("big change"));
    let low = count(&mut enc, 30);
    eprintln!("bytes per second at 2 Mb/s: {high}, at 250 kb/s: {low}");
    assert!(low < high, "{low} >= {high}");
}

#[test]
fn h264_decoder_survives_garbage() {
    let mut dec = H264Decoder::new().expect("decoder");
    let _ = dec.decode(&[0, 0, 0, 1, 0x65, 0xff, 0x00, 0x12, 0x34]);
    let _ = dec.decode(&[]);
    // A valid stream still decodes afterwards.
    let mut enc = H264Encoder::new(320, 240, FPS, 500_000).expect("encoder");
    let out = enc
        .encode(&pattern::render(0, capture_us(0), 320, 240))
        .expect("encode")
        .expect("first frame");
    assert!(dec.decode(&out.data).expect("decode").is_some());
}

#[test]
fn opus_fec_recovers_a_dropped_frame() {
    // A 440 Hz tone, except frame 25 which is 660 Hz: concealment would guess 440 Hz,
    // only the FEC copy inside packet 26 knows about 660 Hz.
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut low = ToneGenerator::new(440.0);
    let mut high = ToneGenerator::new(660.0);
    let packets: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let (a, b) = (low.next_frame(), high.next_frame());
            enc.encode(if i == 25 { &b } else { &a }).expect("encode")
        })
        .collect();

    let mut with_fec = OpusDecoder::new().expect("decoder");
    let mut with_plc = OpusDecoder::new().expect("decoder");
    let mut fec_frame = Vec::new();
    let mut plc_frame = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        if i == 25 {
            fec_frame = with_fec.decode_fec(&packets[26]).expect("fec");
            plc_frame = with_plc.decode_lost().expect("plc");
            continue;
        }
        assert_eq!(with_fec.decode(p).expect("decode").len(), 960);
        assert_eq!(with_plc.decode(p).expect("decode").len(), 960);
    }
    let energy = |f: &[i16]| f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / f.len() as f64;
    eprintln!(
        "FEC frame rms {:.0}, PLC frame rms {:.0}",
        energy(&fec_frame).sqrt(),
        energy(&plc_frame).sqrt()
    );
    // Skip the first few ms (decoder delay still carries the 440 Hz tail).
    assert!(
        tone_dominates(&fec_frame[240..], 660.0, AUDIO_RATE),
        "FEC did not rebuild the 660 Hz frame"
    );
    assert!(
        !tone_dominates(&plc_frame[240..], 660.0, AUDIO_RATE),
        "PLC should not know about 660 Hz"
    );
}

#[test]
fn opus_round_trip_tone_and_plc_length() {
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut dec = OpusDecoder::new().expect("decoder");
    let mut gen = ToneGenerator::new(660.0).with_chirp(20.0, 4.0);
    let mut out = Vec::new();
    for _ in 0..50 {
        let p = enc.encode(&gen.next_frame()).expect("encode");
        out.extend(dec.decode(&p).expect("decode"));
    }
    assert!(tone_dominates(&out[9600..], 660.0, AUDIO_RATE));
    assert!(!tone_dominates(&out[9600..], 440.0, AUDIO_RATE));
    assert_eq!(dec.decode_lost().expect("plc").len(), 960);
    assert_eq!(dec.decode(&[]).expect("empty = lost").len(), 960);
}
