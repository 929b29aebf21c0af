//! Opus encoder and decoder for the call's audio: 48 kHz mono, 20 ms frames.
//!
//! Settings, and why: the VOIP application (speech-tuned, favours intelligibility);
//! ~32 kb/s, plenty for wideband speech; in-band FEC on with an expected loss of 5 % so
//! every packet also carries a coarse copy of the previous frame (during a call the
//! sender should follow the loss its partner reports in RTCP receiver reports:
//! [`OpusEncoder::set_packet_loss_perc`] with [`packet_loss_perc_for`]); and the signal type
//! pinned to *voice*. FEC only exists in Opus' SILK layer, and Opus' music detector
//! otherwise switches tonal input (our synthetic tone, a whistle, background music) to
//! the CELT-only mode, which silently carries no FEC at all. When a packet is lost
//! but the next one arrives in time, [`OpusDecoder::decode_fec`] rebuilds the lost
//! frame from it; when both are gone, [`OpusDecoder::decode_lost`] runs Opus' own
//! concealment (PLC).

use crate::media::frame::{AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use anyhow::{anyhow, bail, Result};
use opus::{Application, Bitrate, Channels, Signal};

/// Largest packet we let Opus produce (RFC 7587 recommends staying far below MTU).
const MAX_PACKET: usize = 1275;

/// Opus encoder for 20 ms mono frames.
pub struct OpusEncoder {
    enc: opus::Encoder,
}

impl OpusEncoder {
    /// VOIP, 32 kb/s, in-band FEC on, 5 % expected loss, voice signal.
    pub fn new() -> Result<Self> {
        Self::with_bitrate(32_000)
    }

    pub fn with_bitrate(bitrate_bps: i32) -> Result<Self> {
        let mut enc = opus::Encoder::new(AUDIO_RATE, Channels::Mono, Application::Voip)
            .map_err(|e| anyhow!("opus encoder: {e}"))?;
        enc.set_bitrate(Bitrate::Bits(bitrate_bps))
            .map_err(|e| anyhow!("opus bitrate: {e}"))?;
        enc.set_inband_fec(true)
            .map_err(|e| anyhow!("opus fec: {e}"))?;
        enc.set_packet_loss_perc(5)
            .map_err(|e| anyhow!("opus loss: {e}"))?;
        enc.set_signal(Signal::Voice)
            .map_err(|e| anyhow!("opus signal: {e}"))?;
        Ok(Self { enc })
    }

    /// Tells the encoder how lossy the path is (0‥100 %); more loss → stronger FEC.
    pub fn set_expected_loss(&mut self, percent: i32) -> Result<()> {
        self.set_packet_loss_perc(percent)
    }

    /// The packet loss (0‥100 %) Opus plans its in-band FEC for: with 0 it sends no FEC
    /// at all; the higher, the more bits go to the coarse copy of the previous frame
    /// (and the fewer to this one). Feed it [`packet_loss_perc_for`] of the
    /// `fraction_lost` the partner reports for our audio in its RTCP receiver reports.
    pub fn set_packet_loss_perc(&mut self, percent: i32) -> Result<()> {
        self.enc
            .set_packet_loss_perc(percent.clamp(0, 100))
            .map_err(|e| anyhow!("opus loss: {e}"))
    }

    /// The packet loss the encoder currently plans FEC for (%).
    pub fn packet_loss_perc(&mut self) -> Result<i32> {
        self.enc
            .get_packet_loss_perc()
            .map_err(|e| anyhow!("opus loss: {e}"))
    }

    pub fn set_bitrate(&mut self, bitrate_bps: i32) -> Result<()> {
        self.enc
            .set_bitrate(Bitrate::Bits(bitrate_bps.clamp(6_000, 510_000)))
            .map_err(|e| anyhow!("opus bitrate: {e}"))
    }

    /// Encodes exactly 960 samples (20 ms) into one packet.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>> {
        if pcm.len() != AUDIO_FRAME_SAMPLES {
            bail!(
                "opus frames are {AUDIO_FRAME_SAMPLES} samples, got {}",
                pcm.len()
            );
        }
        self.enc
            .encode_vec(pcm, MAX_PACKET)
            .map_err(|e| anyhow!("opus encode: {e}"))
    }
}

/// The FEC loss setting for a reported loss (`fraction_lost` of an RTCP receiver report,
/// 0.0‥1.0): the loss rounded up to a whole percent, at least [`MIN_FEC_LOSS_PERC`] (so
/// the first loss after a clean stretch is already covered: a receiver report comes only
/// every second or so) and at most [`MAX_FEC_LOSS_PERC`] (beyond that FEC would starve the
/// frame itself and concealment does as well).
pub fn packet_loss_perc_for(fraction_lost: f64) -> i32 {
    let percent = (fraction_lost.clamp(0.0, 1.0) * 100.0).ceil() as i32;
    percent.clamp(MIN_FEC_LOSS_PERC, MAX_FEC_LOSS_PERC)
}

/// See [`packet_loss_perc_for`].
pub const MIN_FEC_LOSS_PERC: i32 = 2;
/// See [`packet_loss_perc_for`].
pub const MAX_FEC_LOSS_PERC: i32 = 30;

/// Opus decoder for one incoming stream; always returns 960 samples per call.
pub struct OpusDecoder {
    dec: opus::Decoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self> {
        let dec = opus::Decoder::new(AUDIO_RATE, Channels::Mono)
            .map_err(|e| anyhow!("opus decoder: {e}"))?;
        Ok(Self { dec })
    }

    /// Decodes one packet into 20 ms of audio.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>> {
        if packet.is_empty() {
            return self.decode_lost();
        }
        self.run(packet, false)
    }

    /// 20 ms of packet-loss concealment for a frame that never arrived.
    pub fn decode_lost(&mut self) -> Result<Vec<i16>> {
        self.run(&[], false)
    }

    /// Rebuilds the frame *before* `next_packet` from the FEC data inside it. Call it
    /// for the lost frame, then [`Self::decode`] `next_packet` itself as usual. Without
    /// FEC data in the packet Opus falls back to concealment.
    pub fn decode_fec(&mut self, next_packet: &[u8]) -> Result<Vec<i16>> {
        if next_packet.is_empty() {
            return self.decode_lost();
        }
        self.run(next_packet, true)
    }

    fn run(&mut self, packet: &[u8], fec: bool) -> Result<Vec<i16>> {
        let mut out = vec![0i16; AUDIO_FRAME_SAMPLES];
        // A longer packet fails (buffer too small); a shorter one leaves zeros at the end.
        self.dec
            .decode(packet, &mut out, fec)
            .map_err(|e| anyhow!("opus decode: {e}"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tone::{tone_dominates, ToneGenerator};

    #[test]
    fn round_trip_keeps_the_tone() {
        let mut enc = OpusEncoder::new().expect("encoder");
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut gen = ToneGenerator::new(440.0);
        let mut bytes = 0usize;
        let mut decoded = Vec::new();
        for _ in 0..50 {
            let pkt = enc.encode(&gen.next_frame()).expect("encode");
            bytes += pkt.len();
            decoded.extend(dec.decode(&pkt).expect("decode"));
        }
        // Skip the first 100 ms (codec start-up), then check a full second's worth.
        let tail = &decoded[4800..];
        assert!(tone_dominates(tail, 440.0, AUDIO_RATE));
        assert!(!tone_dominates(tail, 660.0, AUDIO_RATE));
        let kbps = bytes as f64 * 8.0 / 1000.0;
        assert!((10.0..=48.0).contains(&kbps), "{kbps} kb/s for one second");
        assert!(enc.encode(&[0; 100]).is_err());
    }

    /// Packets of a 440 Hz tone whose frame 25 is 660 Hz, encoded with `loss` % planned.
    fn tone_with_a_blip(loss: i32) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new().expect("encoder");
        enc.set_packet_loss_perc(loss).expect("loss");
        assert_eq!(enc.packet_loss_perc().expect("get"), loss);
        let mut low = ToneGenerator::new(440.0);
        let mut high = ToneGenerator::new(660.0);
        (0..40)
            .map(|i| {
                let (a, b) = (low.next_frame(), high.next_frame());
                enc.encode(if i == 25 { &b } else { &a }).expect("encode")
            })
            .collect()
    }

    /// What `decode_fec` of packet 26 rebuilds for the lost frame 25.
    fn rebuilt_frame_25(packets: &[Vec<u8>]) -> Vec<i16> {
        let mut dec = OpusDecoder::new().expect("decoder");
        for p in &packets[..25] {
            dec.decode(p).expect("decode");
        }
        dec.decode_fec(&packets[26]).expect("fec")
    }

    #[test]
    fn fec_data_appears_only_with_packet_loss_planned() {
        // With loss planned, packet 26 carries a copy of frame 25 (the 660 Hz blip that
        // concealment could not guess); with 0 % Opus sends no FEC and the decoder can
        // only conceal (440 Hz continued).
        let with = tone_with_a_blip(10);
        let without = tone_with_a_blip(0);
        assert!(tone_dominates(
            &rebuilt_frame_25(&with)[240..],
            660.0,
            AUDIO_RATE
        ));
        assert!(!tone_dominates(
            &rebuilt_frame_25(&without)[240..],
            660.0,
            AUDIO_RATE
        ));
        // The FEC copy costs bytes.
        let size = |ps: &[Vec<u8>]| ps[5..].iter().map(Vec::len).sum::<usize>();
        assert!(
            size(&with) > size(&without),
            "{} vs {}",
            size(&with),
            size(&without)
        );
    }

    #[test]
    fn reported_loss_maps_to_a_bounded_fec_setting() {
        assert_eq!(packet_loss_perc_for(0.0), MIN_FEC_LOSS_PERC);
        assert_eq!(packet_loss_perc_for(0.031), 4);
        assert_eq!(packet_loss_perc_for(0.10), 10);
        assert_eq!(packet_loss_perc_for(0.9), MAX_FEC_LOSS_PERC);
        assert_eq!(packet_loss_perc_for(f64::NAN), MIN_FEC_LOSS_PERC);
        assert_eq!(packet_loss_perc_for(-1.0), MIN_FEC_LOSS_PERC);
    }
}
